"""Streamed, cached and (optionally) multi-process feature extraction of the evaluation suite.

:func:`extract_split` runs a frozen timm ViT over a :class:`~vispre.eval.datasets.SplitSource`'s DataLoader
(workers decode and resize, pinned memory when the backbone is on CUDA), writes the features chunk by chunk
into the on-disk cache (vispre.eval.feature_cache) and reads the finished entry back: memory holds the
features, never the images. A cache hit (same weights, data identity, view, choices, subset, dtype) reads the
entry without opening any image.

Several processes: when ``torch.distributed`` is initialised (a Lightning Fabric / Trainer launch, or
``torchrun``), rank r extracts its share only (map-style sets: a contiguous block of the fixed batches;
shards: ``shards[r::W]``; nothing padded, no sample twice), writes its chunks into the shared cache folder, and
rank 0 assembles them in the original order (without a cache folder the chunks are gathered to rank 0 over the
process group). Every batch holds the same samples whatever the layout, so the features are bit-identical to
one process. :func:`extract_with_fabric` launches such a run from one process.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor
from tqdm.auto import tqdm

from vispre.data.transforms import EvalView, ViewTransform
from vispre.eval.datasets import SplitSource, open_task
from vispre.eval.feature_cache import (ChunkSink, ExtractedSplit, assemble, cache_key, chunk_files, chunk_positions,
                                       ensure_writable, entry_path, load_chunk, parts_folder, read_entry,
                                       weights_digest, write_entry)
from vispre.eval.features import FEATURE_CHOICES, apply_view, token_features
from vispre.errors import VispreError

BAD_NAMES_KEPT = 5


class RankInfo(NamedTuple):
    """This process's rank and the number of processes (0, 1 without a process group)."""

    rank: int
    world_size: int


def rank_info() -> RankInfo:
    """The torch.distributed rank / world size, or (0, 1) when no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return RankInfo(dist.get_rank(), dist.get_world_size())
    return RankInfo(0, 1)


class _RankResult(NamedTuple):
    rows: int
    dims: dict[str, int]
    bad: int
    bad_names: list[str]


def _extract_rank(vit: VisionTransformer, source: SplitSource, view: ViewTransform, choices: Sequence[str],
                  sink: ChunkSink, batch_size: int, num_workers: int, ranks: RankInfo, desc: str) -> _RankResult:
    """Run this rank's batches through the backbone into ``sink``."""
    device = next(vit.parameters()).device
    pin = device.type == "cuda"
    rows, bad, names, dims = 0, 0, [], {}
    batches = source.batches(batch_size, num_workers, ranks.rank, ranks.world_size, pin_memory=pin)
    total = source.num_batches(batch_size, ranks.rank, ranks.world_size)
    for batch in tqdm(batches, total=total, desc=desc, leave=False, disable=ranks.rank > 0):
        fatal = [f for f in batch.get("fatal", ()) if f]
        if fatal:
            raise VispreError(fatal[0])
        problems = [p for p in batch["problem"] if p]
        bad += len(problems)
        names += problems[: max(0, BAD_NAMES_KEPT - len(names))]
        images = apply_view(view, batch["image"].to(device, non_blocking=pin))
        feats = token_features(vit, images, choices)
        dims = {c: int(v.shape[1]) for c, v in feats.items()}
        sink.add(feats, batch["label"], batch["position"], batch["ok"])
        rows += batch["label"].shape[0]
    sink.flush()
    stream_bad, first = source.stream_errors()
    if stream_bad:
        bad += stream_bad
        names = [first, *names][:BAD_NAMES_KEPT]
    return _RankResult(rows, dims, bad, names)


def _merge(results: Sequence[_RankResult]) -> _RankResult:
    dims = next((r.dims for r in results if r.dims), {})
    names = [n for r in results for n in r.bad_names][:BAD_NAMES_KEPT]
    return _RankResult(sum(r.rows for r in results), dims, sum(r.bad for r in results), names)


def _gather(obj: Any, ranks: RankInfo) -> list[Any]:
    if ranks.world_size == 1:
        return [obj]
    out: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(out, obj)
    return out


@torch.inference_mode()
def extract_split(vit: VisionTransformer, source: SplitSource, view: ViewTransform,
                  choices: Sequence[str] = FEATURE_CHOICES, *, cache_dir: str | Path | None = None,
                  key_parts: Sequence[object] = (), weights: str | None = None, batch_size: int = 512,
                  num_workers: int = 0, feature_dtype: str = "float32", desc: str = "features") -> ExtractedSplit:
    """Features of every selected sample of ``source``, from the cache when present.

    Args:
        vit: frozen timm VisionTransformer (eval mode for the pass, mode restored after).
        source: the split (its ``identity()`` keys the cache). view: deterministic batch view (EvalView).
        choices: subset of FEATURE_CHOICES. cache_dir: cache folder (None: no cache; features gathered in memory).
        key_parts: further descriptors of the key (e.g. the split name). weights: a precomputed
            :func:`~vispre.eval.feature_cache.weights_digest` of ``vit`` (computed when None).
        batch_size: images per forward pass. num_workers: DataLoader workers.
        feature_dtype: "float32" or "float16" storage in the cache (read back as float32).

    Returns:
        ExtractedSplit (features [N, D] float32 per choice, labels, ok mask, unread count and first names),
        on every rank.

    Raises:
        VispreError: an empty split, a sample without a label (shards), an unwritable cache folder.
    """
    ranks = rank_info()
    weights = weights or weights_digest(vit)
    key = cache_key(weights, source.identity(), repr(view), list(choices), feature_dtype, list(key_parts))
    folder = ensure_writable(cache_dir) if cache_dir is not None else None
    if folder is not None:
        cached = read_entry(entry_path(folder, key))
        if cached is not None:
            return cached
    parts = parts_folder(folder, key) if folder is not None else None
    if parts is not None and ranks.rank == 0:
        shutil.rmtree(parts, ignore_errors=True)  # a previous, interrupted run
        parts.mkdir()
    if ranks.world_size > 1:
        dist.barrier()
    sink = ChunkSink(parts, ranks.rank, feature_dtype)
    was_training = vit.training
    vit.eval()
    try:
        result = _extract_rank(vit, source, view, choices, sink, batch_size, num_workers, ranks, desc)
    finally:
        vit.train(was_training)
    merged = _merge(_gather(result, ranks))
    if merged.rows == 0:
        raise VispreError(f"{source.name} holds no samples")
    chunks = None if parts is not None else [c for rank_chunks in _gather(sink.chunks, ranks) for c in rank_chunks]
    if parts is None:
        feats, labels, ok = assemble(chunks, merged.rows, list(choices), merged.dims, chunk_positions(chunks))
        return ExtractedSplit(feats, labels, ok, merged.bad, merged.bad_names)
    path = entry_path(folder, key)  # type: ignore[arg-type]
    if ranks.rank == 0:
        files = chunk_files(parts)
        feats, labels, ok = assemble((load_chunk(f) for f in files), merged.rows, list(choices), merged.dims,
                                     chunk_positions(None, files))
        write_entry(path, ExtractedSplit(feats, labels, ok, merged.bad, merged.bad_names), feature_dtype)
        shutil.rmtree(parts, ignore_errors=True)
    if ranks.world_size > 1:
        dist.barrier()
    split = read_entry(path)
    if split is None:
        raise VispreError(f"feature cache entry {path} was not written (is {folder} shared by every rank?)")
    return split


def keep_read(split: ExtractedSplit, what: str, skip_bad_images: bool) -> ExtractedSplit:
    """Refuse a split with unread images, or (``skip_bad_images``) drop their rows.

    Raises:
        VispreError: counting and naming the first unread images, unless ``skip_bad_images``.
    """
    if not split.bad:
        return split
    if not skip_bad_images:
        raise VispreError(f"{what}: {split.bad} image(s) could not be read, so no numbers are reported; first: "
                          f"{'; '.join(split.bad_names)}. Fix or remove them, or set `skip_bad_images: true` "
                          "in the task to evaluate without them")
    keep = split.ok
    return ExtractedSplit({k: v[keep] for k, v in split.features.items()}, split.labels[keep], split.ok[keep],
                          split.bad, split.bad_names)


class TaskFeatures(NamedTuple):
    """What :func:`load_task_features` gives the suite.

    Attributes:
        train, test: ExtractedSplit (unread images dropped when the task skips them).
        num_classes: C. class_names: list[str] (folder names, Fashion-MNIST's names, classes.json) or None.
        class_counts: {"train": {name: count}, "test": {name: count}} (names: class_names, else the index).
        unread: {"train": count, "test": count} of images that could not be read (skipped).
    """

    train: ExtractedSplit
    test: ExtractedSplit
    num_classes: int
    class_names: list[str] | None
    class_counts: dict[str, dict[str, int]]
    unread: dict[str, int]


def class_counts(labels: Tensor, num_classes: int, names: Sequence[str] | None) -> dict[str, int]:
    """{class name (or index): number of images} of every class, zeros included."""
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    return {(names[i] if names else str(i)): int(n) for i, n in enumerate(counts)}


def load_task_features(vit: VisionTransformer, task: Any, cache_dir: str | Path | None = None) -> TaskFeatures:
    """Open a task's data (vispre.eval.datasets.open_task) and extract (or read cached) train / test features.

    Args:
        vit: the frozen backbone (its patch_embed gives the image size and channels).
        task: an EvalTask (dataset, root, train_urls, test_urls, mean, std, limit_train, limit_test, features,
            batch_size, num_workers, feature_dtype, skip_bad_images, name).
        cache_dir: feature cache folder, or None.

    Returns:
        TaskFeatures; warns (UserWarning) naming the classes that have no test (or no train) image.

    Raises:
        VispreError: as :func:`extract_split` and :func:`keep_read`; labels outside the class names.
    """
    import warnings

    img_size, in_chans = int(vit.patch_embed.img_size[0]), int(vit.patch_embed.proj.in_channels)
    sources = open_task(task.dataset, img_size, in_chans, task.root, task.train_urls, task.test_urls, task.mean,
                        task.std, task.limit_train, task.limit_test)
    view = EvalView(img_size, mean=sources.mean, std=sources.std)
    weights = weights_digest(vit)
    workers = task.num_workers if task.num_workers is not None else (0 if task.dataset == "fashion_mnist" else 2)
    splits = {}
    for split, source in (("train", sources.train), ("test", sources.test)):
        extracted = extract_split(vit, source, view, task.features, cache_dir=cache_dir, key_parts=(split,),
                                  weights=weights, batch_size=task.batch_size, num_workers=workers,
                                  feature_dtype=task.feature_dtype, desc=f"{task.name} {split} features")
        splits[split] = keep_read(extracted, f"task {task.name!r} {split} ({source.name})", task.skip_bad_images)
    names = sources.class_names
    top = int(max(splits["train"].labels.max(), splits["test"].labels.max())) + 1
    if names is not None and top > len(names):
        raise VispreError(f"task {task.name!r}: label {top - 1} found but only {len(names)} class names are known "
                          f"({names[:5]}...)")
    num_classes = len(names) if names is not None else top
    counts = {s: class_counts(splits[s].labels, num_classes, names) for s in ("train", "test")}
    for split, other in (("test", "train"), ("train", "test")):
        missing = [c for c, n in counts[split].items() if n == 0 and counts[other][c] > 0]
        if missing:
            warnings.warn(f"task {task.name!r}: classes {missing} have {other} images but no {split} image; "
                          f"per-class counts are in the report (class_counts)", stacklevel=2)
    return TaskFeatures(splits["train"], splits["test"], num_classes, names, counts,
                        {s: splits[s].bad for s in ("train", "test")})


def extract_with_fabric(vit: VisionTransformer, source: SplitSource, view: ViewTransform,
                        choices: Sequence[str] = FEATURE_CHOICES, *, devices: int = 2, accelerator: str = "auto",
                        strategy: str = "ddp_spawn", **kwargs: Any) -> ExtractedSplit:
    """:func:`extract_split` in ``devices`` processes launched by Lightning Fabric (CPU uses gloo, GPUs NCCL, one
    device per process); returns rank 0's assembled split.

    Args:
        devices, accelerator: Fabric's. strategy: "ddp_spawn" (fresh processes; works after CUDA was used) or
            "ddp_fork" (forked: starts in seconds instead of re-importing; CPU, or before CUDA is initialised).
        kwargs: :func:`extract_split`'s keyword arguments (cache_dir: a folder every process can write; without
            it the features travel over the process group).
    """
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator=accelerator, devices=devices, strategy=strategy)
    arrays = fabric.launch(_fabric_worker, vit, source, view, tuple(choices), kwargs)
    feats = {k: torch.from_numpy(v) for k, v in arrays["features"].items()}
    return ExtractedSplit(feats, torch.from_numpy(arrays["labels"]), torch.from_numpy(arrays["ok"]), arrays["bad"],
                          arrays["bad_names"])


def _fabric_worker(fabric: Any, vit: VisionTransformer, source: SplitSource, view: ViewTransform,
                   choices: tuple[str, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """One rank's extraction; rank 0's split comes back as numpy arrays (pickled by value: a tensor would be
    sent as a shared-memory handle that dies with the process)."""
    split = extract_split(vit.to(fabric.device), source, view, choices, **kwargs)
    return {"features": {k: v.numpy() for k, v in split.features.items()}, "labels": split.labels.numpy(),
            "ok": split.ok.numpy(), "bad": split.bad, "bad_names": split.bad_names}


__all__ = ["RankInfo", "TaskFeatures", "class_counts", "extract_split", "extract_with_fabric", "keep_read",
           "load_task_features", "rank_info"]
