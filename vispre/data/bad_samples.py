"""Bad-sample accounting for the shard stream: a shared counter and the webdataset handler that feeds it.

webdataset's stages take a ``handler(exception) -> bool`` that decides whether a failing sample or shard
stops the stream; its stock handlers either re-raise, or skip silently / with a warning. vispre's handler
(:meth:`BadSampleCounter.handler`) skips the sample and counts it in shared memory, one row per DataLoader
worker, keeping the first message of each worker, so that the loader in the main process can stop the run
once the bad fraction passes its limit (:class:`vispre.data.streaming.StreamingLoader`).
"""

from __future__ import annotations

import logging

import torch

from vispre.errors import VispreError

log = logging.getLogger("vispre.data.streaming")
_MSG_BYTES = 400
_SEEN, _BAD, _EPOCH = 0, 1, 2


class BadSampleLimitError(VispreError):
    """Too many bad samples (or none readable) in the shard stream."""


class BadSample(Exception):
    """A sample or shard that cannot be used; the message names it (key and URL) and the cause."""


def describe(exn: BaseException) -> str:
    """One-line message for a bad-sample exception: vispre's own as they are, others as ``Type: message``
    (webdataset's stages append context such as the URL to ``args``: the trailing string is kept)."""
    if isinstance(exn, BadSample):
        return str(exn)
    args = exn.args
    text = args[0] if args and isinstance(args[0], str) else str(exn)
    where = f" (in {args[-1]})" if len(args) > 1 and isinstance(args[-1], str) and args[-1] not in text else ""
    return f"{type(exn).__name__}: {text}{where}"


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
        """Zero the counts and messages and record ``epoch`` (read by the workers to seed their order)."""
        self.counts[:, :2] = 0
        self.counts[:, _EPOCH] = epoch
        self.first.zero_()

    def epoch(self, row: int) -> int:
        """The epoch recorded by the last :meth:`reset`."""
        return int(self.counts[row, _EPOCH])

    def add(self, row: int, seen: int = 0, bad: int = 0, message: str | None = None) -> None:
        """Add to worker ``row``'s counts; keep (and log) ``message`` when it is the row's first."""
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
        """The first message of the lowest worker row that has one, or "none"."""
        for row in self.first:
            if int(row[0]):
                return bytes(row[row > 0].tolist()).decode(errors="replace")
        return "none"

    def handler(self, row: int) -> CountingHandler:
        """The webdataset handler for worker ``row``: count the exception as one bad sample, continue."""
        return CountingHandler(self, row)


class CountingHandler:
    """webdataset handler (``handler(exn) -> True``: skip and continue) that counts into a
    :class:`BadSampleCounter` row. Built inside the worker by :meth:`BadSampleCounter.handler`."""

    def __init__(self, counter: BadSampleCounter, row: int) -> None:
        self.counter, self.row = counter, row

    def __call__(self, exn: Exception) -> bool:
        self.counter.add(self.row, seen=1, bad=1, message=describe(exn))
        return True


__all__ = ["BadSample", "BadSampleCounter", "BadSampleLimitError", "CountingHandler", "describe"]
