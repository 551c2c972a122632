"""Read side of a shard set: the ``index.json`` format and the resolution of shard URL patterns.

A folder written by ``vispre shards`` holds ``PREFIX-NNNNNN.tar`` shards and, written last, ``index.json``
(format ``vispre-shards/1``: samples and bytes per shard plus the source settings), so a folder with a valid
index is a complete shard set. Shard format: https://github.com/webdataset/webdataset.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any, NamedTuple

from braceexpand import braceexpand

from vispre.errors import VispreError

INDEX_NAME = "index.json"
INDEX_FORMAT = "vispre-shards/1"


class ShardList(NamedTuple):
    """Resolved shard URLs and, when every shard is listed in an ``index.json`` beside it, their sample
    counts (else None)."""

    urls: list[str]
    counts: list[int] | None


def read_index(out_dir: str | Path) -> dict[str, Any] | None:
    """The index of a complete shard set in ``out_dir``.

    Returns:
        The parsed ``index.json``, or None when it is missing, from another tool, or any listed shard is
        missing or has another size than recorded.
    """
    path = Path(out_dir) / INDEX_NAME
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        return None
    for shard in index.get("shards", []):
        file = Path(out_dir) / shard["name"]
        if not file.is_file() or file.stat().st_size != shard["bytes"]:
            return None
    return index


def is_remote(url: str) -> bool:
    """True for ``pipe:`` commands and URLs with a scheme other than ``file://`` (read through gopen)."""
    return url.startswith("pipe:") or ("://" in url and not url.startswith("file://"))


def _expand_local(pattern: str) -> list[Path]:
    path = Path(pattern.removeprefix("file://"))
    if path.is_dir():
        index = read_index(path)
        return [path / s["name"] for s in index["shards"]] if index else sorted(path.glob("*.tar"))
    found: list[Path] = []
    for name in braceexpand(str(path)):
        if any(c in name for c in "*?["):
            found += sorted(Path(p) for p in glob.glob(name))
        elif Path(name).is_file():
            found.append(Path(name))
    return found


def resolve_shards(urls: str | list[str]) -> ShardList:
    """Expand shard URL patterns: brace patterns (``shard-{000000..000099}.tar``), globs, a folder of
    shards, ``pipe:`` commands and remote URLs (passed through; their existence is checked when read).

    Args:
        urls: one pattern or a list of them.

    Returns:
        ShardList(urls, counts): counts from the index files beside local shards, None when any shard
        has no recorded count (remote, or a folder without index).

    Raises:
        FileNotFoundError: naming a local pattern that matches no file.
        VispreError: when no pattern is given.
    """
    patterns = [urls] if isinstance(urls, str) else list(urls)
    if not patterns:
        raise VispreError("no shard URLs given (expected a pattern such as data/shards/shard-{000000..000009}.tar)")
    resolved: list[str] = []
    counts: list[int] | None = []
    indexes: dict[Path, dict[str, int]] = {}
    for pattern in patterns:
        if is_remote(pattern):
            resolved += list(braceexpand(pattern))
            counts = None
            continue
        files = _expand_local(pattern)
        if not files:
            raise FileNotFoundError(f"shard pattern {pattern!r} matches no file")
        resolved += [str(f) for f in files]
        for file in files:
            if file.parent not in indexes:
                index = read_index(file.parent) or {"shards": []}
                indexes[file.parent] = {s["name"]: s["samples"] for s in index["shards"]}
            if counts is not None and file.name in indexes[file.parent]:
                counts.append(indexes[file.parent][file.name])
            else:
                counts = None
    return ShardList(resolved, counts)


def shard_hint(shards: list[str]) -> str:
    """A short description of a shard list for messages: the one URL, or ``first ... last``."""
    return shards[0] if len(shards) == 1 else f"{shards[0]} ... {shards[-1]}"


__all__ = ["INDEX_FORMAT", "INDEX_NAME", "ShardList", "is_remote", "read_index", "resolve_shards", "shard_hint"]
