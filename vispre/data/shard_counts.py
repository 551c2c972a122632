"""Sample counts of shards written by other tools (no vispre ``index.json``): what an epoch's length needs.

For each shard, in order: its vispre ``index.json`` entry; img2dataset's ``<shard>_stats.json`` beside it (the
``successes`` field: samples written to that tar); else, for a local shard, a count from its tar headers
(:func:`vispre.data.tar_members.iter_tar_headers` seeks over the payloads), grouping member names into samples
exactly as the stream does (the stream's key function, :func:`vispre.data.stages.split_member_name`, which is
webdataset's naming rule; a new sample whenever the key changes within a shard). Header counts are cached as
small JSON files keyed by the shard's absolute path, size and mtime, in
``$VISPRE_CACHE/shard_counts`` (default ``~/.cache/vispre/shard_counts``), so a set is scanned once. A
remote shard (``pipe:``, ``s3://``, ``https://``) without a count cannot be counted before training: the
epoch length then has to be given as ``epoch_samples``.

A shard that is cut short or corrupt is counted up to the break (the samples the stream will read from it;
the one being read at the break is dropped, as the stream drops it) and logged as a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

from vispre.data.shard_list import ShardList, index_entries, is_remote, shard_hint
from vispre.data.stages import split_member_name
from vispre.data.tar_members import iter_tar_headers
from vispre.errors import VispreError
from vispre.io import atomic_write_text

log = logging.getLogger("vispre.data.shard_counts")
CACHE_FORMAT = "vispre-shard-count/1"


class ShardCount(NamedTuple):
    """A shard's sample count, where it came from ("index", "stats", "headers", "cache") and, when the
    shard is cut short or corrupt, the error that ended the count (else None)."""

    samples: int
    source: str
    error: str | None = None


def default_cache_dir() -> Path:
    """``$VISPRE_CACHE/shard_counts`` when ``VISPRE_CACHE`` is set, else ``~/.cache/vispre/shard_counts``."""
    root = os.environ.get("VISPRE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "vispre") / "shard_counts"


def count_tar_samples(path: str | Path) -> ShardCount:
    """Count the samples of a local (possibly compressed) tar shard from its headers.

    Members are grouped as the stream's ``group_by_keys`` stage groups them: the key is
    ``split_member_name(name)[0]`` (names without one are ignored) and a new sample starts whenever it changes.

    Args:
        path: the shard file.

    Returns:
        ShardCount(samples, "headers", error): ``error`` names the break of a cut or corrupt shard, whose
        last (possibly incomplete) sample is then not counted.
    """
    samples, key, error = 0, None, None
    try:
        with open(path, "rb") as stream:
            for header in iter_tar_headers(stream):
                prefix = split_member_name(header.name)[0]
                if prefix is not None and prefix != key:
                    samples, key = samples + 1, prefix
    except Exception as err:  # noqa: BLE001 - any break ends the count; the stream skips the same way
        error = f"{type(err).__name__}: {err}"
        samples = max(0, samples - 1) if key is not None else samples
    return ShardCount(samples, "headers", error)


def stats_count(path: Path) -> int | None:
    """img2dataset's count for ``NAME.tar``: ``successes`` in ``NAME_stats.json`` beside it, or None."""
    stats = path.with_name(path.name.removesuffix(".tar") + "_stats.json")
    try:
        value = json.loads(stats.read_text()).get("successes")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value >= 0 else None


def _cache_file(cache_dir: Path, path: Path) -> tuple[Path, dict[str, Any]]:
    stat = path.stat()
    identity = {"path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir / f"{key}.json", identity


def cached_count(path: Path, cache_dir: Path) -> ShardCount:
    """:func:`count_tar_samples`, read from / written to the cache (an unwritable cache is only logged)."""
    file, identity = _cache_file(cache_dir, path)
    try:
        entry = json.loads(file.read_text())
        if entry.get("format") == CACHE_FORMAT and all(entry.get(k) == v for k, v in identity.items()):
            return ShardCount(int(entry["samples"]), "cache", entry.get("error"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    count = count_tar_samples(path)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(file, json.dumps({"format": CACHE_FORMAT, **identity, "samples": count.samples,
                                            "error": count.error}) + "\n")
    except OSError as err:
        log.warning("cannot cache the sample count of %s in %s (%s); it is counted again next time", path,
                    cache_dir, err.strerror or err)
    return count


def shard_sample_counts(urls: list[str], cache_dir: str | Path | None = None) -> list[ShardCount]:
    """The sample count of every shard (index, img2dataset stats, or tar headers; see the module docstring).

    Args:
        urls: resolved shard URLs (:func:`vispre.data.shard_list.resolve_shards`).
        cache_dir: where header counts are cached (default :func:`default_cache_dir`).

    Returns:
        One ShardCount per URL, in order. Cut or corrupt shards are logged as warnings.

    Raises:
        VispreError: some shards are remote and have no count (naming how many, and ``epoch_samples``).
    """
    remote = [u for u in urls if is_remote(u)]
    if remote:
        raise VispreError(f"the shards {shard_hint(remote)} ({len(remote)} remote) have no index.json with sample "
                          "counts: set epoch_samples (samples per epoch over all ranks); local shards are "
                          "counted from their tar headers")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    files = [Path(u.removeprefix("file://")) for u in urls]
    counts: list[ShardCount] = []
    for file, entry in zip(files, index_entries(files)):
        if entry is not None and isinstance(entry.get("samples"), int):
            counts.append(ShardCount(entry["samples"], "index"))
            continue
        stats = stats_count(file)
        counts.append(ShardCount(stats, "stats") if stats is not None else cached_count(file, cache))
    broken = [(f, c) for f, c in zip(files, counts) if c.error]
    if broken:
        log.warning("%d shard(s) are cut short or corrupt; their samples up to the break are counted and the "
                    "stream skips the rest as bad: first %s (%s)", len(broken), broken[0][0], broken[0][1].error)
    return counts


def with_sample_counts(shards: ShardList, cache_dir: str | Path | None = None) -> ShardList:
    """``shards`` with a count for every shard (its own when it already has them).

    Raises:
        VispreError: as :func:`shard_sample_counts` (remote shards without counts).
    """
    if shards.counts is not None:
        return shards
    return ShardList(shards.urls, [c.samples for c in shard_sample_counts(shards.urls, cache_dir)])


__all__ = ["CACHE_FORMAT", "ShardCount", "cached_count", "count_tar_samples", "default_cache_dir",
           "shard_sample_counts", "stats_count", "with_sample_counts"]
