"""Where a training epoch's data stream stands, so a resumed run continues the same sample order.

A data module's ``state_dict()`` (Lightning stores it in every checkpoint) records a :class:`LoaderPosition`:
the epoch and how many of its batches were trained. On resume its ``load_state_dict`` hands the position to
the loader, whose next epoch is that epoch from the next batch on (or the following epoch when the position
is an epoch's end). :class:`ResumableShuffleSampler` does this for map-style (in-memory) datasets; the
streaming loader (:class:`vispre.data.streaming.StreamingLoader`) replays and discards the trained batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import lightning as L
from torch.utils.data import Dataset, DistributedSampler


class LoaderPosition(NamedTuple):
    """An epoch and the number of its batches already trained (``batches == len(loader)``: the epoch is done)."""

    epoch: int
    batches: int

    def next_start(self, batches_per_epoch: int) -> LoaderPosition:
        """Where the loader starts after this position: the same epoch at batch ``batches``, or batch 0 of the
        next epoch when this epoch is complete."""
        if self.batches >= batches_per_epoch:
            return LoaderPosition(self.epoch + 1, 0)
        return self


def trained_position(trainer: L.Trainer | None) -> LoaderPosition:
    """The position of a fit that is saving a checkpoint now (at a batch end or an epoch end).

    Args:
        trainer: the data module's trainer (None: nothing trained yet).

    Returns:
        ``LoaderPosition(trainer.current_epoch, batch_idx + 1)``: at the end of batch ``batch_idx`` (the last
        batch started, ``trainer.fit_loop.epoch_loop.batch_idx``) that many batches of the epoch are trained.
    """
    if trainer is None:
        return LoaderPosition(0, 0)
    return LoaderPosition(int(trainer.current_epoch), int(trainer.fit_loop.epoch_loop.batch_idx) + 1)


def position_state(position: LoaderPosition) -> dict[str, int]:
    """A :class:`LoaderPosition` as the plain dict a checkpoint stores (``weights_only``-loadable)."""
    return {"epoch": position.epoch, "batches": position.batches}


def position_from_state(state: dict[str, Any]) -> LoaderPosition | None:
    """The position stored by :func:`position_state` (None for a checkpoint written before positions were)."""
    if not state or "epoch" not in state:
        return None
    return LoaderPosition(int(state["epoch"]), int(state["batches"]))


def shuffle_seed(seed: int | None) -> int:
    """``seed``, or the seed of ``lightning.seed_everything`` (``PL_GLOBAL_SEED``, 0 when unset): the base seed
    of the per-epoch shuffles (Lightning's own DistributedSampler default)."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0)) if seed is None else int(seed)


class ResumableShuffleSampler(DistributedSampler):
    """A DistributedSampler (per-epoch permutation seeded by ``seed + epoch``, rank ``r`` of ``W`` takes every
    W-th index) that can start an epoch part-way: after :meth:`resume_at`, its next ``__iter__`` yields the
    position's epoch from batch ``position.batches`` on.

    The permutation does not draw from the global RNG, so the order of an epoch is the same in a run and in
    its resumed continuation. Lightning calls :meth:`set_epoch` before each epoch (and keeps this sampler under
    DDP: it is a DistributedSampler).

    Args:
        dataset: the map-style dataset. batch_size: the loader's batch size (a position counts batches).
        num_batches: batches per epoch of one rank (``len(loader)``). seed: base seed. rank, world_size: the
        process's share.
    """

    def __init__(self, dataset: Dataset, batch_size: int, num_batches: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.batch_size, self.num_batches = batch_size, num_batches
        self.pending: LoaderPosition | None = None

    def resume_at(self, position: LoaderPosition) -> None:
        """Make the next epoch start at ``position`` (see :meth:`LoaderPosition.next_start`)."""
        self.pending = position.next_start(self.num_batches)

    def __iter__(self) -> Iterator[int]:
        skip = 0
        if self.pending is not None:
            self.epoch, skip = self.pending.epoch, self.pending.batches * self.batch_size
            self.pending = None
        indices = list(super().__iter__())
        return iter(indices[skip:])


__all__ = ["LoaderPosition", "ResumableShuffleSampler", "position_from_state", "position_state", "shuffle_seed",
           "trained_position"]
