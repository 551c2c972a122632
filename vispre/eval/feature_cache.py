"""On-disk feature cache of the evaluation suite: cheap keys, chunked writes, assembly in the original order.

While a split is extracted, each rank writes its features chunk by chunk (about 8k rows each) into
``<cache_dir>/.<key>.parts/chunk-RRR-NNNNNN.safetensors`` (``{choice: [n, D], "labels", "positions": [n],
"ok": [n]}``), so memory holds one chunk of features at a time whatever the number of images. Rank 0 then
scatters the chunks into [N, D] tensors at their positions (the data's order, whatever the rank / worker layout
that wrote them) and writes the entry ``<cache_dir>/<key>.safetensors`` atomically (features as float32 or
float16, labels, the ok mask, and the unread-image record in the metadata); the parts folder is removed. An
existing entry is the cache hit, decided without reading any image.

The key (:func:`cache_key`) is a sha256 over the weights digest and JSON descriptors (the data's identity:
file list with sizes and mtimes, shard URLs with their sizes and index.json; view, feature choices, subset,
storage dtype); never the pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save as save_safetensors
from torch import Tensor

from vispre.errors import VispreError
from vispre.io import atomic_write_bytes

CACHE_FORMAT = "vispre-features/2"
FEATURE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
_META = ("labels", "positions", "ok")


class ExtractedSplit(NamedTuple):
    """Features of one split in the data's order.

    Attributes:
        features: {choice: [N, D_choice] float32}. labels: [N] int64. ok: [N] bool (False: the image could not
        be read; its feature row is meaningless). bad: number of unread images. bad_names: the first few of
        them, ``"PATH: reason"``.
    """

    features: dict[str, Tensor]
    labels: Tensor
    ok: Tensor
    bad: int
    bad_names: list[str]


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 (hex) over a module's state-dict names and tensor bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(weights: str, *parts: object) -> str:
    """24 hex digits of sha256 over ``weights`` (a :func:`weights_digest`) and ``parts`` (JSON, else repr)."""
    digest = hashlib.sha256(weights.encode())
    for part in parts:
        try:
            text = json.dumps(part, sort_keys=True, default=repr)
        except TypeError:
            text = repr(part)
        digest.update(text.encode())
    return digest.hexdigest()[:24]


def ensure_writable(cache_dir: str | Path) -> Path:
    """Create ``cache_dir`` and check that files can be written there.

    Raises:
        VispreError: naming the folder when it cannot be created or written (suggesting ``cache_dir``).
    """
    folder = Path(cache_dir)
    probe = folder / f".write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise VispreError(f"feature cache folder {folder} is not writable ({err.strerror or err}); set "
                          "`cache_dir:` in the evaluation YAML to a writable folder (or null for no cache)") from err
    return folder


class ChunkSink:
    """Collects feature batches of one rank and emits chunks of about ``chunk_rows`` rows, either into
    memory (``folder=None``) or as safetensors files in ``folder``.

    Args:
        folder: where chunk files go (None: keep them in memory). rank: the writing rank (file names).
        dtype: storage dtype of the features ("float32" or "float16"). chunk_rows: rows per chunk.
    """

    def __init__(self, folder: Path | None, rank: int = 0, dtype: str = "float32", chunk_rows: int = 8192) -> None:
        if dtype not in FEATURE_DTYPES:
            raise VispreError(f"feature_dtype must be one of {sorted(FEATURE_DTYPES)}, got {dtype!r}")
        self.folder, self.rank, self.dtype, self.chunk_rows = folder, rank, FEATURE_DTYPES[dtype], chunk_rows
        self.pending: list[dict[str, Tensor]] = []
        self.rows = 0
        self.count = 0
        self.chunks: list[dict[str, Tensor]] = []  # in-memory mode

    def add(self, features: Mapping[str, Tensor], labels: Tensor, positions: Tensor, ok: Tensor) -> None:
        """Add one batch: features {choice: [b, D]}, labels / positions [b] int64, ok [b] bool."""
        # copy=True: a feature is often a view of the batch's whole token tensor ([B, N, D], e.g. the cls
        # token); keeping the view would keep all of it alive until the chunk is written (N x the memory)
        batch = {k: v.detach().to("cpu", self.dtype, copy=True) for k, v in features.items()}
        batch.update(labels=labels.cpu().long(), positions=positions.cpu().long(), ok=ok.cpu().bool())
        self.pending.append(batch)
        self.rows += labels.shape[0]
        if self.rows >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        """Emit the pending rows as one chunk."""
        if not self.pending:
            return
        chunk = {k: torch.cat([b[k] for b in self.pending]).contiguous() for k in self.pending[0]}
        self.pending, self.rows = [], 0
        if self.folder is None:
            self.chunks.append(chunk)
        else:
            name = f"chunk-{self.rank:03d}-{self.count:06d}.safetensors"
            atomic_write_bytes(self.folder / name, save_safetensors(chunk))
        self.count += 1


def chunk_files(folder: Path) -> list[Path]:
    """The chunk files of a cached split (any rank), in name order."""
    return sorted(folder.glob("chunk-*.safetensors"))


def _load_chunk(path: Path) -> dict[str, Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def assemble(chunks: Iterable[dict[str, Tensor]], total: int, choices: Sequence[str], dims: Mapping[str, int],
             order: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Scatter chunks into [N, D] float32 tensors at their rows.

    Args:
        chunks: dicts as written by :class:`ChunkSink` (read lazily: one chunk in memory at a time).
        total: N. choices, dims: feature choices and their widths. order: [N] every position, sorted (row i
            holds position ``order[i]``).

    Returns:
        (features {choice: [N, D]}, labels [N], ok [N]).
    """
    feats = {c: torch.empty(total, dims[c], dtype=torch.float32) for c in choices}
    labels, ok = torch.full((total,), -1, dtype=torch.int64), torch.zeros(total, dtype=torch.bool)
    filled = 0
    for chunk in chunks:
        rows = torch.searchsorted(order, chunk["positions"])
        for c in choices:
            feats[c][rows] = chunk[c].float()
        labels[rows], ok[rows] = chunk["labels"], chunk["ok"]
        filled += rows.shape[0]
    if filled != total:
        raise RuntimeError(f"feature chunks hold {filled} rows, expected {total}")
    return feats, labels, ok


def entry_path(cache_dir: Path, key: str) -> Path:
    """The cache file of one split: ``<cache_dir>/<key>.safetensors``."""
    return cache_dir / f"{key}.safetensors"


def parts_folder(cache_dir: Path, key: str) -> Path:
    """Where the ranks write their chunks while extracting (removed once the entry is written)."""
    return cache_dir / f".{key}.parts"


def chunk_positions(chunks: Sequence[dict[str, Tensor]] | None, files: Sequence[Path] = ()) -> Tensor:
    """Every position held by the chunks (in memory, or the files), sorted: row i of the split is ``order[i]``."""
    parts = [c["positions"] for c in chunks] if chunks is not None else [_load_chunk_key(f, "positions") for f in files]
    return torch.cat(parts).sort().values if parts else torch.zeros(0, dtype=torch.int64)


def write_entry(path: Path, split: ExtractedSplit, dtype: str) -> None:
    """Write a split as one safetensors file (features in ``dtype``, the bad-image record in its metadata),
    atomically (:func:`vispre.io.atomic_write_bytes`)."""
    tensors = {f"feature.{k}": v.to(FEATURE_DTYPES[dtype]).contiguous() for k, v in split.features.items()}
    tensors.update(labels=split.labels.contiguous(), ok=split.ok.contiguous())
    meta = {"format": CACHE_FORMAT, "bad": str(split.bad), "bad_names": json.dumps(split.bad_names)}
    atomic_write_bytes(path, save_safetensors(tensors, metadata=meta))


def read_entry(path: Path) -> ExtractedSplit | None:
    """A cached split, or None when there is no (readable, current-format) entry at ``path``."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != CACHE_FORMAT:
                return None
            feats = {k.removeprefix("feature."): f.get_tensor(k).float() for k in f.keys() if k.startswith("feature.")}
            labels, ok = f.get_tensor("labels"), f.get_tensor("ok")
    except (OSError, ValueError, RuntimeError):  # a damaged entry is recomputed
        return None
    return ExtractedSplit(feats, labels, ok, int(meta["bad"]), json.loads(meta["bad_names"]))


def _load_chunk_key(path: Path, key: str) -> Tensor:
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(key)


def load_chunk(path: Path) -> dict[str, Tensor]:
    """One chunk file as written by :class:`ChunkSink`."""
    return _load_chunk(path)


__all__ = ["CACHE_FORMAT", "ChunkSink", "ExtractedSplit", "FEATURE_DTYPES", "assemble", "cache_key", "chunk_files",
           "chunk_positions", "ensure_writable", "entry_path", "load_chunk", "parts_folder", "read_entry",
           "weights_digest", "write_entry"]
