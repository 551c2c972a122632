"""Webdataset shards as an evaluation :class:`~vispre.eval.datasets.SplitSource`, read with vispre's own stages.

The shard list comes from :func:`vispre.data.resolve_shards` (brace patterns, globs, a folder, ``pipe:``,
remote URLs) and every shard is read by :func:`vispre.data.stages.tar_member_expander` (gopen + the fast tar
reader) and webdataset's ``group_by_keys``, the training stream's stages. Each shard's samples are batched on
their own (a batch never spans two shards), so the batches are the same whatever the ranks and workers; rank r
of W reads ``shards[r::W]``, its worker w of N ``[w::N]`` of those. Sample j of shard i has position
``i * 2**32 + j``: the original order, restored when the features are assembled.

Class names: ``classes.json`` beside the first local shard (a JSON list of names, or ``{"0": name, ...}``).
A sample without a ``.cls`` label stops the evaluation naming the shard and key; an image that cannot be
decoded is a zero image with ``ok=False`` (counted and named); a shard that cannot be read is counted in a
:class:`vispre.data.BadSampleCounter` (:meth:`ShardSource.stream_errors`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info
from torchvision.io import ImageReadMode, decode_image
from webdataset.tariterators import group_by_keys

from vispre.data.bad_samples import BadSampleCounter
from vispre.data.shard_list import is_remote, resolve_shards, shard_hint
from vispre.data.stages import tar_member_expander
from vispre.data.streaming import IMAGE_EXTS
from vispre.eval.datasets import ResizeCropView, SplitSource, _blank, subset_indices
from vispre.errors import VispreError

CLASSES_NAME = "classes.json"
POSITION_SHIFT = 32


def read_class_names(path: Path) -> list[str] | None:
    """Class names from a ``classes.json`` (list of names, or {index: name}); None when there is no file.

    Raises:
        VispreError: naming the file when it is not such a JSON value.
    """
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
        if isinstance(value, dict):
            value = [value[str(i)] for i in range(len(value))]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("not a list of names")
    except (ValueError, KeyError) as err:
        raise VispreError(f"{path}: expected a JSON list of class names (or {{\"0\": name, ...}}): {err}") from err
    return value


def _item(image: Tensor, label: int, position: int, problem: str = "") -> dict[str, Any]:
    return {"image": image, "label": torch.tensor(label, dtype=torch.int64),
            "position": torch.tensor(position, dtype=torch.int64), "ok": torch.tensor(not problem),
            "problem": problem}


def _samples(url: str, handler: Any) -> Iterator[dict[str, Any]]:
    return group_by_keys(tar_member_expander([{"url": url}], handler=handler), handler=handler)


class ShardBatches(IterableDataset):
    """Batches of decoded samples of some shards (see the module docstring).

    Args:
        shards: (shard index, URL) pairs of this rank. selected: {shard index: sample indices kept} or None (all).
        batch_size: samples per batch (at most; a shard's last batch is smaller). img_size, in_chans: output.
        counter: shard-level failures are counted here (one row per worker).
    """

    def __init__(self, shards: list[tuple[int, str]], selected: dict[int, set[int]] | None, batch_size: int,
                 img_size: int, in_chans: int, counter: BadSampleCounter) -> None:
        self.shards, self.selected, self.batch_size, self.counter = shards, selected, batch_size, counter
        self.img_size, self.in_chans = img_size, in_chans
        self.mode = ImageReadMode.GRAY if in_chans == 1 else ImageReadMode.RGB
        self.view = ResizeCropView(img_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        handler = self.counter.handler(worker)
        for index, url in self.shards[worker::workers]:
            keep = None if self.selected is None else self.selected.get(index, set())
            items: list[dict[str, Any]] = []
            for j, sample in enumerate(_samples(url, handler)):
                if keep is not None and j not in keep:
                    continue
                items.append(self._decode(sample, (index << POSITION_SHIFT) + j))
                if len(items) == self.batch_size:
                    yield default_collate(items)
                    items = []
            if items:
                yield default_collate(items)

    def _decode(self, raw: dict[str, Any], position: int) -> dict[str, Any]:
        where = f"sample {raw.get('__key__')!r} in shard {raw.get('__url__')}"
        label, fatal = -1, ""
        try:
            label = int(raw["cls"].decode().strip())
        except KeyError:
            fatal = f"{where} has no .cls label: evaluation shards need KEY.cls class labels (vispre shards --labels)"
        except ValueError:
            fatal = f"{where}: its .cls label {raw['cls'][:20]!r} is not an integer"
        try:
            data = next((raw[e] for e in IMAGE_EXTS if e in raw), None)
            if data is None:
                raise ValueError(f"no image ({'/'.join(IMAGE_EXTS)}) among {sorted(k for k in raw if k[:2] != '__')}")
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=self.mode)
            if image.dtype == torch.uint16:  # 16-bit PNG: value >> 8, as for image folders
                image = (image.view(torch.int16).to(torch.int32) & 0xFFFF).bitwise_right_shift(8).to(torch.uint8)
            item = _item(self.view(image)[0].as_subclass(Tensor), label, position)
        except Exception as err:  # noqa: BLE001 - counted and named by the caller
            item = _item(_blank(self.in_chans, self.img_size), label, position,
                         f"{where}: {type(err).__name__}: {err}")
        item["fatal"] = fatal
        return item


class ShardSource(SplitSource):
    """Shards of one split (see the module docstring).

    Args:
        urls: resolved shard URLs. counts: samples per shard (index.json) or None. img_size, in_chans: output.
        identity: the cache-key descriptor. name: for messages. class_names: from classes.json, or None.
        selected: {shard index: kept sample indices} (a limit subset) or None.
    """

    def __init__(self, urls: list[str], counts: list[int] | None, img_size: int, in_chans: int,
                 identity: dict[str, Any], name: str, class_names: list[str] | None,
                 selected: dict[int, set[int]] | None = None) -> None:
        self.urls, self.counts, self.img_size, self.in_chans = urls, counts, img_size, in_chans
        self._identity, self.name, self.class_names, self.selected = identity, name, class_names, selected
        self.counter = BadSampleCounter(0)

    def identity(self) -> dict[str, Any]:
        selected = None if self.selected is None else hashlib.sha256(
            repr(sorted((k, sorted(v)) for k, v in self.selected.items())).encode()).hexdigest()[:16]
        return {**self._identity, "selected": selected}

    def select(self, limit: int | None, seed: int = 0) -> ShardSource:
        """A seeded random subset of ``limit`` samples over all shards (counts from index.json, else one
        counting pass over the shards that decodes nothing)."""
        if limit is None:
            return self
        counts = self.counts or [sum(1 for _ in _samples(url, lambda err: True)) for url in self.urls]
        if limit >= sum(counts):
            return self
        starts = torch.tensor([0, *counts]).cumsum(0)
        selected: dict[int, set[int]] = {}
        for g in subset_indices(int(starts[-1]), limit, seed).tolist():
            shard = int(torch.searchsorted(starts, g, right=True)) - 1
            selected.setdefault(shard, set()).add(g - int(starts[shard]))
        return ShardSource(self.urls, counts, self.img_size, self.in_chans, self._identity, self.name,
                           self.class_names, selected)

    def _rank_shards(self, rank: int, world_size: int) -> list[tuple[int, str]]:
        return list(enumerate(self.urls))[rank::world_size]

    def num_batches(self, batch_size: int, rank: int = 0, world_size: int = 1) -> int | None:
        if self.counts is None:
            return None
        sizes = [len(self.selected.get(i, ())) if self.selected is not None else self.counts[i]
                 for i, _ in self._rank_shards(rank, world_size)]
        return sum(-(-n // batch_size) for n in sizes)

    def batches(self, batch_size: int, num_workers: int = 0, rank: int = 0, world_size: int = 1,
                pin_memory: bool = False) -> Iterator[dict[str, Any]]:
        shards = self._rank_shards(rank, world_size)
        workers = min(num_workers, len(shards))
        self.counter = BadSampleCounter(workers)
        if not shards:
            return iter(())
        dataset = ShardBatches(shards, self.selected, batch_size, self.img_size, self.in_chans, self.counter)
        return iter(DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory))

    def stream_errors(self) -> tuple[int, str]:
        """(shards / members that could not be read in the last pass, the first such message)."""
        _, bad = self.counter.totals()
        return bad, self.counter.first_error() if bad else ""


def shard_identity(urls: list[str], class_names: list[str] | None, img_size: int, in_chans: int) -> dict[str, Any]:
    """Cache-key descriptor of a shard list: each local shard's path, size and mtime and the index.json beside
    it; remote URLs as they are (their content is not checked)."""
    files, indexes = [], {}
    for url in urls:
        if is_remote(url):
            files.append(url)
            continue
        path = Path(url.removeprefix("file://"))
        stat = path.stat()
        files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
        index = path.parent / "index.json"
        if path.parent not in indexes and index.is_file():
            indexes[str(path.parent)] = hashlib.sha256(index.read_bytes()).hexdigest()
    return {"kind": "shards", "shards": files, "index_json": indexes, "classes": class_names,
            "img_size": img_size, "in_chans": in_chans}


def shard_source(urls: str | Sequence[str], img_size: int, in_chans: int) -> ShardSource:
    """The shards matched by ``urls`` as a source (resolving and stat-ing them; no shard is read).

    Raises:
        FileNotFoundError: a local pattern matching nothing. VispreError: a bad classes.json, bad ``in_chans``.
    """
    if in_chans not in (1, 3):
        raise VispreError(f"in_chans must be 1 or 3 for shard images, got {in_chans}")
    shards = resolve_shards(urls if isinstance(urls, str) else list(urls))
    local = next((u for u in shards.urls if not is_remote(u)), None)
    names = read_class_names(Path(local.removeprefix("file://")).parent / CLASSES_NAME) if local else None
    identity = shard_identity(shards.urls, names, img_size, in_chans)
    return ShardSource(shards.urls, shards.counts, img_size, in_chans, identity,
                       f"shards {shard_hint(shards.urls)}", names)


__all__ = ["CLASSES_NAME", "ShardBatches", "ShardSource", "read_class_names", "shard_identity", "shard_source"]

