"""Read side of a shard set: the ``index.json`` format and the resolution of shard URL patterns.

A folder written by ``vispre shards`` holds ``PREFIX-NNNNNN.tar`` shards and, written last, ``index.json``
(format ``vispre-shards/1``: samples and bytes per shard plus the source settings), so a folder with a valid
index is a complete shard set. Shard format: https://github.com/webdataset/webdataset.

Resolution checks what it can before training starts: a brace range or explicit list naming shards that do
not exist, and a shard whose size differs from the one its index records (cut short, possibly exactly at a
member boundary, or rewritten), are errors; a glob matches whatever exists. Shards without an index are
counted by :mod:`vispre.data.shard_counts`.
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
_SHOWN = 3  # missing shards named in a message


class ShardList(NamedTuple):
    """Resolved shard URLs and, when every shard is listed in an ``index.json`` beside it, their sample
    counts (else None)."""

    urls: list[str]
    counts: list[int] | None


class _Expanded(NamedTuple):
    found: list[Path]
    missing: list[str]


def load_index(folder: str | Path) -> dict[str, Any] | None:
    """The parsed ``index.json`` of a vispre shard set in ``folder``, whether or not its shards are all there.

    Returns:
        The index, or None when the file is missing, unreadable or from another tool.
    """
    try:
        index = json.loads((Path(folder) / INDEX_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT or not isinstance(index.get("shards"), list):
        return None
    return index


def read_index(out_dir: str | Path) -> dict[str, Any] | None:
    """The index of a complete shard set in ``out_dir``.

    Returns:
        The parsed ``index.json``, or None when it is missing, from another tool, or any listed shard is
        missing or has another size than recorded (an index without sizes is checked for presence only).
    """
    index = load_index(out_dir)
    if index is None:
        return None
    for shard in index["shards"]:
        file = Path(out_dir) / shard["name"]
        if not file.is_file() or ("bytes" in shard and file.stat().st_size != shard["bytes"]):
            return None
    return index


def is_remote(url: str) -> bool:
    """True for ``pipe:`` commands and URLs with a scheme other than ``file://`` (read through gopen)."""
    return url.startswith("pipe:") or ("://" in url and not url.startswith("file://"))


def _expand_local(pattern: str) -> _Expanded:
    """Files a local pattern names: a folder (its index's shards, else its ``*.tar``), brace ranges and
    explicit names (missing ones reported), globs (whatever matches)."""
    path = Path(pattern.removeprefix("file://"))
    if path.is_dir():
        index = load_index(path)
        if index is None:
            return _Expanded(sorted(path.glob("*.tar")), [])
        listed = [path / s["name"] for s in index["shards"]]
        return _Expanded([p for p in listed if p.is_file()], [str(p) for p in listed if not p.is_file()])
    found: list[Path] = []
    missing: list[str] = []
    for name in braceexpand(str(path)):
        if any(c in name for c in "*?["):
            found += sorted(Path(p) for p in glob.glob(name))
        elif Path(name).is_file():
            found.append(Path(name))
        else:
            missing.append(name)
    return _Expanded(found, missing)


def index_entries(files: list[Path]) -> list[dict[str, Any] | None]:
    """The ``index.json`` entry (``name``, ``samples``, ``bytes``) of each local shard, None where the
    shard's folder has no vispre index or the index does not list it (each folder's index read once)."""
    indexes: dict[Path, dict[str, dict[str, Any]]] = {}
    out: list[dict[str, Any] | None] = []
    for file in files:
        if file.parent not in indexes:
            index = load_index(file.parent) or {"shards": []}
            indexes[file.parent] = {s["name"]: s for s in index["shards"] if isinstance(s, dict) and "name" in s}
        out.append(indexes[file.parent].get(file.name))
    return out


def check_sizes(files: list[Path], entries: list[dict[str, Any] | None]) -> None:
    """Raise when a shard's size differs from the size its index records (entries without sizes pass).

    Raises:
        VispreError: naming the first such shard, the recorded and the found size, and how many differ.
    """
    wrong = [(f, e["bytes"], f.stat().st_size) for f, e in zip(files, entries)
             if e is not None and isinstance(e.get("bytes"), int) and f.stat().st_size != e["bytes"]]
    if wrong:
        file, expected, found = wrong[0]
        more = f" (and {len(wrong) - 1} more shard(s) of other sizes)" if len(wrong) > 1 else ""
        raise VispreError(f"shard {file} is {found} bytes but {file.parent / INDEX_NAME} records {expected}{more}: "
                          "it was cut short or rewritten after the index was written; rewrite the set "
                          "(vispre shards ... --force) or restore the shard")


def _missing_message(missed: list[tuple[str, list[str], int]]) -> str:
    parts = []
    for label, missing, named in missed:
        shown = ", ".join(missing[:_SHOWN]) + (", ..." if len(missing) > _SHOWN else "")
        parts.append(f"{len(missing)} of the {named} shards named by {label} are missing ({shown})")
    return ("; ".join(parts) + ": restore them or name only the shards that exist (a glob such as "
            "shard-*.tar reads whatever matches)")


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
        VispreError: when no pattern is given; when some shards a brace range, an explicit list or an
            index names are missing (how many, and the first few); when a shard's size differs from its
            index's record.
    """
    patterns = [urls] if isinstance(urls, str) else list(urls)
    if not patterns:
        raise VispreError("no shard URLs given (expected a pattern such as data/shards/shard-{000000..000009}.tar)")
    resolved: list[str] = []
    local: list[Path] = []
    remote = False
    missed: list[tuple[str, list[str], int]] = []
    listed: list[str] = []  # plain paths of a list: missing ones are counted together
    listed_missing: list[str] = []
    for pattern in patterns:
        if is_remote(pattern):
            resolved += list(braceexpand(pattern))
            remote = True
            continue
        found, missing = _expand_local(pattern)
        plain = not any(c in pattern for c in "*?[{") and not Path(pattern.removeprefix("file://")).is_dir()
        if plain and len(patterns) > 1:
            listed.append(pattern)
            listed_missing += missing
        elif not found:
            raise FileNotFoundError(f"shard pattern {pattern!r} matches no file")
        elif missing:
            label = f"{pattern!r}'s {INDEX_NAME}" if Path(pattern.removeprefix("file://")).is_dir() else repr(pattern)
            missed.append((label, missing, len(missing) + len(found)))
        resolved += [str(f) for f in found]
        local += found
    if not resolved:
        shown = ", ".join(listed_missing[:_SHOWN]) + (", ..." if len(listed_missing) > _SHOWN else "")
        raise FileNotFoundError(f"none of the {len(listed)} listed shards exists ({shown})")
    if listed_missing:
        missed.append((f"the list of {len(listed)} shard paths", listed_missing, len(listed)))
    if missed:
        raise VispreError(_missing_message(missed))
    entries = index_entries(local)
    check_sizes(local, entries)
    known = [e.get("samples") if e is not None else None for e in entries]
    counts = [c for c in known if isinstance(c, int)]
    return ShardList(resolved, None if remote or len(counts) != len(known) else counts)


def shard_hint(shards: list[str]) -> str:
    """A short description of a shard list for messages: the one URL, or ``first ... last``."""
    return shards[0] if len(shards) == 1 else f"{shards[0]} ... {shards[-1]}"


__all__ = ["INDEX_FORMAT", "INDEX_NAME", "ShardList", "check_sizes", "index_entries", "is_remote", "load_index",
           "read_index", "resolve_shards", "shard_hint"]
