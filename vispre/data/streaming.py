"""Stream webdataset shards (``KEY.jpg|png`` + optional ``KEY.cls``) into ``{"views", "label"}`` batches.

Shards are split across ranks (``shards[rank::world_size]``) and then across DataLoader workers, so in
the default (non-resampled) mode every sample is read exactly once per epoch; the order of shards in
each worker and a per-worker sample shuffle buffer change every epoch. In resampled mode every worker
draws shards with replacement forever and each rank stops after ``epoch_samples / (world_size x
batch_size)`` batches, so all ranks run the same number of steps (what DDP needs).

Bad input never stops a run on its own: a corrupt image, a sample without an image, a bad label or an
unreadable/truncated shard is skipped and counted (``bad_counts``); the first one is logged with its
key and URL. The run stops with one error when more than ``max_bad_fraction`` of the samples read were
bad, or when an epoch read no sample at all.
"""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.io import ImageReadMode, decode_image
from webdataset.gopen import gopen

from vispre.data.shards import ShardList, resolve_shards
from vispre.data.tar_members import iter_tar_members
from vispre.data.transforms import MAEView, ViewTransform

log = logging.getLogger(__name__)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")
_MSG_BYTES = 400
_SEEN, _BAD, _EPOCH = 0, 1, 2


class BadSampleLimitError(RuntimeError):
    """Too many bad samples (or none readable) in the shard stream."""


class BadSampleCounter:
    """Counts of samples read and skipped, in shared memory (one row per DataLoader worker), plus the
    first error message of each worker. Safe across fork/spawn workers: each worker writes its own row.

    Args:
        num_workers: DataLoader workers (0: the main process reads, one row).
    """

    def __init__(self, num_workers: int) -> None:
        rows = max(1, num_workers)
        self.counts = torch.zeros(rows, 3, dtype=torch.int64).share_memory_()  # seen, bad, epoch
        self.first = torch.zeros(rows, _MSG_BYTES, dtype=torch.uint8).share_memory_()

    def reset(self, epoch: int) -> None:
        self.counts[:, :2] = 0
        self.counts[:, _EPOCH] = epoch
        self.first.zero_()

    def epoch(self, row: int) -> int:
        return int(self.counts[row, _EPOCH])

    def add(self, row: int, seen: int = 0, bad: int = 0, message: str | None = None) -> None:
        if seen:
            self.counts[row, _SEEN] += seen
        if bad:
            self.counts[row, _BAD] += bad
        if message is not None and int(self.first[row, 0]) == 0:
            data = message.encode()[:_MSG_BYTES]
            self.first[row, : len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            log.warning("skipping bad sample (further ones counted, not logged): %s", message)

    def totals(self) -> tuple[int, int]:
        """(samples read including bad ones, bad ones) over all workers."""
        seen, bad = self.counts[:, :2].sum(0).tolist()
        return int(seen), int(bad)

    def first_error(self) -> str:
        for row in self.first:
            if int(row[0]):
                return bytes(row[row > 0].tolist()).decode(errors="replace")
        return "none"


class ShardStream(IterableDataset):
    """Iterable over decoded, transformed samples of one rank (worker splitting happens inside).

    Args:
        shards: resolved shard URLs. view: view transform. in_chans: decode to 1 (grey) or 3 (RGB).
        with_labels: read ``.cls`` labels (a sample without one is bad). shuffle_shards: reorder shards per
        epoch. shuffle_buffer: per-worker sample buffer (0/1: no shuffle). resampled: draw shards with
        replacement forever. seed: base seed. rank, world_size: this process's share.
        counter: shared bad-sample counter.

    Yields:
        ``{"views": list of float [C, H, W], "label": int64 scalar (when with_labels)}``.
    """

    def __init__(self, shards: list[str], view: ViewTransform, in_chans: int = 3, with_labels: bool = False,
                 shuffle_shards: bool = True, shuffle_buffer: int = 1000, resampled: bool = False, seed: int = 0,
                 rank: int = 0, world_size: int = 1, counter: BadSampleCounter | None = None) -> None:
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        self.shards, self.view, self.with_labels = list(shards), view, with_labels
        self.mode = ImageReadMode.GRAY if in_chans == 1 else ImageReadMode.RGB
        self.shuffle_shards, self.shuffle_buffer, self.resampled = shuffle_shards, shuffle_buffer, resampled
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.counter = counter or BadSampleCounter(0)

    def worker_shards(self, worker: int, num_workers: int) -> list[str]:
        """Fixed share of (rank, worker): ``shards[rank::world][worker::num_workers]``."""
        return self.shards[self.rank::self.world_size][worker::num_workers]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        row = worker if info else 0
        epoch = self.counter.epoch(row)
        rng = random.Random(hash((self.seed, epoch, self.rank, worker)))
        samples = self._raw_samples(self._shard_order(rng, worker, num_workers), row)
        good = 0  # good samples are counted in groups: a shared-tensor update per sample costs ~10 us
        try:
            for raw in _buffer_shuffle(samples, self.shuffle_buffer, rng):
                item = self._decode(raw, row)
                if item is not None:
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

    def _shard_order(self, rng: random.Random, worker: int, num_workers: int) -> Iterator[str]:
        if self.resampled:
            while True:
                yield rng.choice(self.shards)
        mine = self.worker_shards(worker, num_workers)
        if self.shuffle_shards:
            rng.shuffle(mine)
        yield from mine

    def _raw_samples(self, urls: Iterator[str], row: int) -> Iterator[dict[str, Any]]:
        empty_in_a_row = 0
        for url in urls:
            empty = True
            for sample in self._read_shard(url, row):
                empty = False
                yield sample
            empty_in_a_row = empty_in_a_row + 1 if empty else 0
            if self.resampled and empty_in_a_row >= max(20, 2 * len(self.shards)):
                return  # resampling only unreadable shards would spin forever; the loader reports it

    def _read_shard(self, url: str, row: int) -> Iterator[dict[str, Any]]:
        """Group tar members by key; a read error ends the shard and counts once."""
        current: dict[str, Any] | None = None
        try:
            with gopen(url, "rb") as stream:
                for name, data in iter_tar_members(stream):
                    if "." not in name.rsplit("/", 1)[-1]:
                        continue
                    key, ext = _split_name(name)
                    if current is None or key != current["__key__"]:
                        if current is not None:
                            yield current
                        current = {"__key__": key, "__url__": url}
                    current[ext.lower()] = data
        except Exception as err:  # noqa: BLE001 - any unreadable/truncated shard is skipped and counted
            self.counter.add(row, seen=1, bad=1, message=f"shard {url}: {type(err).__name__}: {err}")
            current = None  # the sample being read when the shard broke may be incomplete
        if current is not None:
            yield current

    def _decode(self, raw: dict[str, Any], row: int) -> dict[str, Any] | None:
        key, url = raw["__key__"], raw["__url__"]
        try:
            data = next((raw[e] for e in IMAGE_EXTS if e in raw), None)
            if data is None:
                raise ValueError(f"no image ({'/'.join(IMAGE_EXTS)}) among {sorted(k for k in raw if k[:2] != '__')}")
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=self.mode)
            item: dict[str, Any] = {"views": self.view(image)}
            if self.with_labels:
                if "cls" not in raw:
                    raise ValueError("no .cls label")
                item["label"] = torch.tensor(int(raw["cls"].decode().strip()), dtype=torch.int64)
        except Exception as err:  # noqa: BLE001 - a bad sample is skipped and counted
            self.counter.add(row, seen=1, bad=1, message=f"sample {key!r} in {url}: {type(err).__name__}: {err}")
            return None
        return item


def _split_name(name: str) -> tuple[str, str]:
    """webdataset naming: ``dir/key.ext1.ext2`` -> (``dir/key``, ``ext1.ext2``)."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def _buffer_shuffle(samples: Iterator[dict[str, Any]], size: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """Shuffle a stream with a buffer of ``size`` samples (webdataset's shuffle)."""
    if size <= 1:
        yield from samples
        return
    buffer: list[dict[str, Any]] = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) >= size:
            i = rng.randrange(len(buffer))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


class StreamingLoader:
    """A DataLoader over a :class:`ShardStream` with a fixed length and bad-sample checks per epoch.

    Args:
        stream: the rank's stream (its counter is checked). batch_size, num_workers: DataLoader args.
        num_batches: batches per epoch (the loader stops there; resampled mode) or the expected count.
        stop_at_length: stop after ``num_batches`` (resampled mode). max_bad_fraction: error threshold.
        drop_last: drop each worker's last partial batch.
    """

    def __init__(self, stream: ShardStream, batch_size: int, num_workers: int, num_batches: int,
                 stop_at_length: bool, max_bad_fraction: float = 0.01, drop_last: bool = True) -> None:
        self.stream, self.num_batches, self.stop_at_length = stream, num_batches, stop_at_length
        self.max_bad_fraction, self.epoch = max_bad_fraction, 0
        self.loader = DataLoader(stream, batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
                                 persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available())

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        counter = self.stream.counter
        counter.reset(self.epoch)
        self.epoch += 1
        count = 0
        for count, batch in enumerate(self.loader, start=1):
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
        if final and batches == 0 and seen - bad <= 0:
            raise BadSampleLimitError(
                f"no readable sample in {len(self.stream.shards)} shard(s) ({_shard_hint(self.stream.shards)}); "
                f"first error: {self.stream.counter.first_error()}")
        if (final or seen >= 1000) and bad > self.max_bad_fraction * seen:
            raise BadSampleLimitError(
                f"{bad} of {seen} samples read were bad ({100 * bad / seen:.2f}% > max_bad_fraction "
                f"{100 * self.max_bad_fraction:.2f}%); first: {self.stream.counter.first_error()}")


def _shard_hint(shards: list[str]) -> str:
    return shards[0] if len(shards) == 1 else f"{shards[0]} ... {shards[-1]}"


def batches_per_epoch(counts: list[int], rank: int, world_size: int, num_workers: int, batch_size: int,
                      drop_last: bool) -> int:
    """Exact batches one rank yields in non-resampled mode: each worker batches its own shards' samples."""
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
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        if resampled and not epoch_samples:
            raise ValueError("resampled=True needs epoch_samples (samples per epoch over all ranks)")
        self.urls, self.batch_size, self.num_workers = urls, batch_size, num_workers
        grey = ((0.5,), (0.5,))
        self.view = view or (MAEView(224) if in_chans == 3 else MAEView(224, mean=grey[0], std=grey[1]))
        self.in_chans, self.with_labels, self.seed = in_chans, with_labels, seed
        self.shuffle_shards, self.shuffle_buffer, self.resampled = shuffle_shards, shuffle_buffer, resampled
        self.epoch_samples, self.max_bad_fraction, self.drop_last = epoch_samples, max_bad_fraction, drop_last
        self.shards = resolve_shards(urls)  # fails at start-up on a pattern matching nothing
        self.loader: StreamingLoader | None = None

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def setup(self, stage: str | None = None) -> None:
        if self.loader is not None:
            return
        rank, world_size = self._rank()
        if self.resampled or self.shards.counts is None:
            if not self.epoch_samples:
                raise ValueError(f"the shards {_shard_hint(self.shards.urls)} have no index.json with sample "
                                 "counts: set epoch_samples (samples per epoch over all ranks)")
            num_batches = self.epoch_samples // (world_size * self.batch_size)
        else:
            num_batches = batches_per_epoch(self.shards.counts, rank, world_size, self.num_workers,
                                            self.batch_size, self.drop_last)
        if num_batches < 1:
            raise ValueError(f"an epoch has no full batch of {self.batch_size} on rank {rank} of {world_size} "
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
        return self.loader


__all__ = ["BadSampleCounter", "BadSampleLimitError", "ShardList", "ShardStream", "StreamingLoader",
           "WebDatasetDataModule", "batches_per_epoch", "resolve_shards"]
