"""Stream webdataset shards (``KEY.jpg|png`` + optional ``KEY.cls``) into ``{"views", "label"}`` batches.

The stream is a ``wds.DataPipeline`` of webdataset's stages with vispre's fast tar reader as one of them:

    SimpleShardList | split_by_node | split_by_worker | shuffle (shard order)     (or ResampledShards)
    | tar_member_expander (gopen + vispre's tar reader) | group_by_keys | shuffle (samples) | decode_samples

so in the default (non-resampled) mode every sample is read exactly once per epoch (rank ``r`` of ``W``
reads ``shards[r::W]``, its worker ``w`` of ``N`` reads ``[w::N]`` of those); the shard order of each worker
and its sample shuffle buffer change every epoch (seeded by seed, epoch, rank, worker). In resampled mode
every worker draws shards with replacement (``ResampledShards``) and each rank stops after ``epoch_samples /
(world_size x batch_size)`` batches, so all ranks run the same number of steps (what DDP needs).

Bad input never stops a run on its own: every stage reports failures to the :class:`BadSampleCounter`'s
handler (a corrupt image, a sample without an image, a bad label, a duplicate member, an unreadable or
truncated shard), which skips and counts them; the first one is logged with its key and URL. The loader stops
the run with one error when more than ``max_bad_fraction`` of the samples read were bad, or when an epoch
read no sample at all.
"""

from __future__ import annotations

import itertools
import random
import sys
from collections.abc import Iterator
from functools import partial
from typing import Any

import lightning as L
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.io import ImageReadMode, decode_image
from webdataset.tariterators import group_by_keys

from vispre.data.bad_samples import BadSampleCounter, BadSampleLimitError, log
from vispre.data.batch_views import apply_batch_views
from vispre.data.preview import PreviewImages, view_normalisation
from vispre.data.resume import LoaderPosition, position_from_state, position_state, trained_position
from vispre.data.shard_counts import with_sample_counts
from vispre.data.shard_list import resolve_shards, shard_hint
from vispre.data.stages import decode_samples, split_member_name, tar_member_expander
from vispre.data.transforms import IMAGENET_MEAN, IMAGENET_STD, MAEView, ViewTransform, resize_center_crop
from vispre.errors import VispreError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")
GREY = ((0.5,), (0.5,))


class ShardStream(IterableDataset):
    """Iterable over decoded, transformed samples of one rank (worker splitting happens inside).

    Args:
        shards: resolved shard URLs. view: view transform. in_chans: decode to 1 (grey) or 3 (RGB).
        with_labels: read ``.cls`` labels (a sample without one is bad). shuffle_shards: reorder shards per
        epoch. shuffle_buffer: per-worker sample buffer (0/1: no shuffle). resampled: draw shards with
        replacement forever. seed: base seed. rank, world_size: this process's share (with world_size > 1
        webdataset's ``split_by_node`` splits the shards and must see the same rank: it reads
        torch.distributed, or the RANK / WORLD_SIZE environment variables). counter: bad-sample counter.

    Yields:
        ``{"views": list of float [C, H, W], "label": int64 scalar (when with_labels)}``.
    """

    def __init__(self, shards: list[str], view: ViewTransform, in_chans: int = 3, with_labels: bool = False,
                 shuffle_shards: bool = True, shuffle_buffer: int = 1000, resampled: bool = False, seed: int = 0,
                 rank: int = 0, world_size: int = 1, counter: BadSampleCounter | None = None) -> None:
        if in_chans not in (1, 3):
            raise VispreError(f"in_chans must be 1 or 3, got {in_chans}")
        self.shards, self.view, self.with_labels = list(shards), view, with_labels
        self.mode = ImageReadMode.GRAY if in_chans == 1 else ImageReadMode.RGB
        self.shuffle_shards, self.shuffle_buffer, self.resampled = shuffle_shards, shuffle_buffer, resampled
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.counter = counter or BadSampleCounter(0)

    def pipeline(self, epoch: int, worker: int, row: int) -> wds.DataPipeline:
        """The webdataset pipeline of one epoch in one worker (see the module docstring)."""
        handler = self.counter.handler(row)
        rng = random.Random(hash((self.seed, epoch, self.rank, worker)))
        if self.resampled:
            shard_stages: list[Any] = [wds.ResampledShards(self.shards, seed=hash((self.seed, epoch)),
                                                           worker_seed=partial(_worker_seed, self.rank, worker),
                                                           deterministic=True)]
            give_up = max(20, 2 * len(self.shards))  # resampling only unreadable shards would spin forever
        else:
            shard_stages = [wds.SimpleShardList(self.shards)]
            if self.world_size > 1:
                shard_stages.append(partial(_split_by_node_checked, rank=self.rank, world_size=self.world_size))
            shard_stages.append(wds.split_by_worker)
            if self.shuffle_shards:
                shard_stages.append(wds.shuffle(len(self.shards), initial=len(self.shards), rng=rng))
            give_up = None
        sample_stages: list[Any] = [partial(tar_member_expander, handler=handler, give_up_after=give_up),
                                    partial(group_by_keys, keys=split_member_name, handler=handler)]
        if self.shuffle_buffer > 1:
            sample_stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng))
        sample_stages.append(partial(decode_samples, decode=self._decode, handler=handler))
        return wds.DataPipeline(*shard_stages, *sample_stages)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, row = (info.id, info.id) if info else (0, 0)
        good = 0  # good samples are counted in groups: a shared-tensor update per sample costs ~10 us
        try:
            for item in self.pipeline(self.counter.epoch(row), worker, row):
                good += 1
                if good == 64:
                    self.counter.add(row, seen=good)
                    good = 0
                yield item
        finally:
            # An iterator left suspended until interpreter exit (e.g. num_workers=0 in resampled mode) is closed
            # during finalisation, when touching a torch tensor aborts the process (torch 2.14): skip the count.
            if not sys.is_finalizing():
                self.counter.add(row, seen=good)

    def _decode(self, raw: dict[str, Any]) -> dict[str, Any]:
        data = next((raw[e] for e in IMAGE_EXTS if e in raw), None)
        if data is None:
            raise ValueError(f"no image ({'/'.join(IMAGE_EXTS)}) among {sorted(k for k in raw if k[:2] != '__')}")
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=self.mode)
        item: dict[str, Any] = {"views": self.view(image)}
        if self.with_labels:
            if "cls" not in raw:
                raise ValueError("no .cls label")
            item["label"] = torch.tensor(int(raw["cls"].decode().strip()), dtype=torch.int64)
        return item


def _worker_seed(rank: int, worker: int) -> int:
    """ResampledShards' per-worker seed (webdataset's ``pytorch_worker_seed`` formula, with the stream's rank)."""
    return rank * 1000 + worker


def _split_by_node_checked(src: Iterator[dict[str, Any]], rank: int, world_size: int) -> Iterator[dict[str, Any]]:
    """webdataset's ``split_by_node``, after checking that it sees the rank the epoch length was computed for."""
    seen_rank, seen_world, _, _ = wds.utils.pytorch_worker_info()
    if (seen_rank, seen_world) != (rank, world_size):
        raise RuntimeError(f"the shard stream was set up for rank {rank} of {world_size}, but webdataset's "
                           f"split_by_node sees rank {seen_rank} of {seen_world} (torch.distributed is not "
                           "initialised in this process and RANK/WORLD_SIZE are not set)")
    return wds.split_by_node(src)


class _ResizeCropUint8(ViewTransform):
    """uint8 image -> ``[uint8 [C, S, S]]`` (shorter side to S, centre crop): the preview geometry."""

    def __init__(self, img_size: int) -> None:
        self.ops = resize_center_crop(img_size)

    def __call__(self, image: torch.Tensor) -> list[torch.Tensor]:
        for op in self.ops:
            image = op(image)
        return [image.as_subclass(torch.Tensor)]


class StreamingLoader:
    """A DataLoader over a :class:`ShardStream` with a fixed length and bad-sample checks per epoch.

    Args:
        stream: the rank's stream (its counter is checked). batch_size, num_workers: DataLoader args.
        num_batches: batches per epoch (the loader stops there; resampled mode) or the expected count.
        stop_at_length: stop after ``num_batches`` (resampled mode). max_bad_fraction: error threshold.
        drop_last: drop each worker's last partial batch.

    ``epoch`` is the number of the next epoch (its shuffle seed); :meth:`resume_at` makes the next epoch
    continue a checkpoint's position: the trained batches of a part-done epoch are read again and discarded
    (same shards, same buffer order, so the batches after them are the uninterrupted run's).
    """

    def __init__(self, stream: ShardStream, batch_size: int, num_workers: int, num_batches: int,
                 stop_at_length: bool, max_bad_fraction: float = 0.01, drop_last: bool = True) -> None:
        self.stream, self.num_batches, self.stop_at_length = stream, num_batches, stop_at_length
        self.max_bad_fraction, self.epoch, self.skip = max_bad_fraction, 0, 0
        # own generator: creating an iterator (a resumed run does it mid-epoch) must not draw from the global RNG
        self.loader = DataLoader(stream, batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
                                 persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available(),
                                 generator=torch.Generator().manual_seed(stream.seed))

    def __len__(self) -> int:
        return self.num_batches

    def resume_at(self, position: LoaderPosition) -> None:
        """Make the next epoch start at ``position`` (see :meth:`LoaderPosition.next_start`)."""
        self.epoch, self.skip = position.next_start(self.num_batches)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        counter = self.stream.counter
        counter.reset(self.epoch)
        self.epoch += 1
        skip, self.skip = self.skip, 0
        count = 0
        for count, batch in enumerate(self.loader, start=1):
            if count > skip:
                yield batch
            if count % 50 == 0:
                self.check(final=False)
            if self.stop_at_length and count >= self.num_batches:
                break
        self.check(final=True, batches=count)

    def check(self, final: bool, batches: int = 0) -> None:
        """Raise BadSampleLimitError when the bad fraction passes the limit (mid-epoch: only once 1,000
        samples were read) or, at the end of an epoch, when no sample was readable."""
        seen, bad = self.stream.counter.totals()
        if final and bad:
            log.warning("epoch %d: skipped %d bad of %d samples read; first: %s", self.epoch - 1, bad, seen,
                        self.stream.counter.first_error())
        if final and not self.stop_at_length and (batches > self.num_batches or (batches < self.num_batches
                                                                                  and not bad)):
            log.warning("epoch %d: read %d batches where the shards' sample counts (index.json or tar headers) "
                        "give %d: the shards differ from their recorded counts", self.epoch - 1, batches,
                        self.num_batches)
        if final and batches == 0 and seen - bad <= 0:
            raise BadSampleLimitError(
                f"no readable sample in {len(self.stream.shards)} shard(s) ({shard_hint(self.stream.shards)}); "
                f"first error: {self.stream.counter.first_error()}")
        if (final or seen >= 1000) and bad > self.max_bad_fraction * seen:
            raise BadSampleLimitError(
                f"{bad} of {seen} samples read were bad ({100 * bad / seen:.2f}% > max_bad_fraction "
                f"{100 * self.max_bad_fraction:.2f}%); first: {self.stream.counter.first_error()}")


def batches_per_epoch(counts: list[int], rank: int, world_size: int, num_workers: int, batch_size: int,
                      drop_last: bool) -> int:
    """Exact batches one rank yields in non-resampled mode: each worker batches its own shards' samples.

    Args:
        counts: samples per shard (index order). rank, world_size: the rank's share ``[rank::world_size]``.
        num_workers: DataLoader workers (share ``[worker::num_workers]``). batch_size, drop_last: batching.

    Returns:
        The number of batches of one epoch on ``rank``.
    """
    total = 0
    for worker in range(max(1, num_workers)):
        n = sum(counts[rank::world_size][worker::max(1, num_workers)])
        total += n // batch_size if drop_last else -(-n // batch_size)
    return total


class WebDatasetDataModule(L.LightningDataModule):
    """Pretraining data streamed from webdataset shards (see the module docstring).

    Args:
        urls: shard pattern(s): brace patterns, globs, a folder written by ``vispre shards``, ``pipe:``
            commands or remote URLs. batch_size: per-device batch (the lr is scaled by the global batch).
        num_workers: DataLoader workers. view: view transform (default MAEView(224)).
        in_chans: decode images to 1 (grey) or 3 (RGB) channels. with_labels: add ``"label"`` from ``.cls``.
        shuffle_shards, shuffle_buffer: shard-order and sample shuffling. resampled: draw shards with
            replacement; needs ``epoch_samples`` (samples per epoch over all ranks).
        epoch_samples: also needed in non-resampled mode when the shards have no index.json (remote).
        max_bad_fraction: stop when more than this fraction of the samples read is bad.
        drop_last: drop each worker's last partial batch. seed: shuffling seed.
    """

    def __init__(self, urls: str | list[str], batch_size: int = 256, num_workers: int = 2,
                 view: ViewTransform | None = None, in_chans: int = 3, with_labels: bool = False,
                 shuffle_shards: bool = True, shuffle_buffer: int = 1000, resampled: bool = False,
                 epoch_samples: int | None = None, max_bad_fraction: float = 0.01, drop_last: bool = True,
                 seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise VispreError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise VispreError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        if resampled and not epoch_samples:
            raise VispreError("resampled=True needs epoch_samples (samples per epoch over all ranks)")
        self.urls, self.batch_size, self.num_workers = urls, batch_size, num_workers
        self.default_normalisation = (IMAGENET_MEAN, IMAGENET_STD) if in_chans == 3 else GREY
        self.view = view or MAEView(224, mean=self.default_normalisation[0], std=self.default_normalisation[1])
        self.in_chans, self.with_labels, self.seed = in_chans, with_labels, seed
        self.shuffle_shards, self.shuffle_buffer, self.resampled = shuffle_shards, shuffle_buffer, resampled
        self.epoch_samples, self.max_bad_fraction, self.drop_last = epoch_samples, max_bad_fraction, drop_last
        self.shards = resolve_shards(urls)  # fails at start-up on a pattern matching nothing
        self.loader: StreamingLoader | None = None
        self.resume_position: LoaderPosition | None = None

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def setup(self, stage: str | None = None) -> None:
        if self.loader is not None:
            return
        rank, world_size = self._rank()
        if not self.resampled and self.shards.counts is None and not self.epoch_samples:
            self.shards = with_sample_counts(self.shards)  # no index: img2dataset stats or tar headers (cached)
        if self.resampled or self.shards.counts is None:
            if not self.epoch_samples:
                raise VispreError(f"the shards {shard_hint(self.shards.urls)} have no index.json with sample "
                                  "counts: set epoch_samples (samples per epoch over all ranks)")
            num_batches = self.epoch_samples // (world_size * self.batch_size)
        else:
            num_batches = batches_per_epoch(self.shards.counts, rank, world_size, self.num_workers,
                                            self.batch_size, self.drop_last)
        if num_batches < 1:
            raise VispreError(f"an epoch has no full batch of {self.batch_size} on rank {rank} of {world_size} "
                              f"({len(self.shards.urls)} shards, {self.num_workers} workers): use fewer workers, "
                              "a smaller batch or more shards")
        stream = ShardStream(self.shards.urls, self.view, self.in_chans, self.with_labels, self.shuffle_shards,
                             self.shuffle_buffer, self.resampled, self.seed, rank, world_size,
                             BadSampleCounter(self.num_workers))
        self.loader = StreamingLoader(stream, self.batch_size, self.num_workers, num_batches,
                                      stop_at_length=self.resampled or self.shards.counts is None,
                                      max_bad_fraction=self.max_bad_fraction, drop_last=self.drop_last)

    def train_dataloader(self) -> StreamingLoader:
        self.setup("fit")
        assert self.loader is not None
        if self.resume_position is not None:
            self.loader.resume_at(self.resume_position)
            self.resume_position = None
        return self.loader

    def state_dict(self) -> dict[str, Any]:
        """The loader position (epoch, batches trained) saved in every checkpoint: a resumed run continues the
        epoch's shard / sample order (its shuffle seed) instead of replaying epoch 0."""
        return position_state(trained_position(getattr(self, "trainer", None)))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the stream at the checkpoint's position (applied when the loader is handed to the Trainer)."""
        self.resume_position = position_from_state(state_dict)
        if self.loader is not None and self.resume_position is not None:
            self.loader.resume_at(self.resume_position)
            self.resume_position = None

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Views made on the batch (:class:`~vispre.data.BatchSimCLRViews`) are made here, on the training device."""
        return apply_batch_views(self.view, batch)

    def preview_images(self, count: int, img_size: int) -> PreviewImages:
        """The first ``count`` readable samples in shard order, resized and centre-cropped (not augmented).

        Args:
            count: number of images. img_size: output side S.

        Returns:
            PreviewImages(uint8 [count, C, S, S], mean, std of the view).
        """
        stream = ShardStream(self.shards.urls, _ResizeCropUint8(img_size), in_chans=self.in_chans,
                             shuffle_shards=False, shuffle_buffer=0)
        items = iter(stream)
        images = [item["views"][0] for item in itertools.islice(items, count)]
        items.close()
        if not images:
            raise VispreError(f"no readable sample in {shard_hint(self.shards.urls)} to preview")
        return PreviewImages(torch.stack(images), *view_normalisation(self.view, self.default_normalisation))


__all__ = ["IMAGE_EXTS", "ShardStream", "StreamingLoader", "WebDatasetDataModule", "batches_per_epoch"]
