"""Safe (re)writing of a shard folder: refuse to replace a set unless asked, build the new set beside the old
one, swap it in only when complete.

Every shard writer goes through :func:`staged_shard_folder`:

1. an interrupted earlier write of the same folder is cleaned up (its temp folder removed; a swap killed
   between its two renames is undone, so the old set comes back);
2. :func:`check_out_dir`: a folder that holds a shard set (an ``index.json`` or ``*.tar`` files) is replaced
   only with ``force``;
3. the new set is written to ``.NAME.tmp-PID`` in the same parent (hidden, so never mistaken for a set);
4. when it is complete: ``NAME`` -> ``.NAME.old-PID``, ``.NAME.tmp-PID`` -> ``NAME`` (two renames on one
   filesystem), the old folder's other files (anything that is not a shard, the index or a writer's temp
   file) are moved into the new one, and the old set is deleted.

A kill at any point leaves either the complete old set or the complete new one under ``NAME`` (or, between
the two renames, the old one under ``.NAME.old-PID``, put back by the next write).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vispre.data.shard_list import INDEX_NAME, load_index
from vispre.errors import VispreError


def is_set_entry(path: Path) -> bool:
    """True for the files that make up a shard set: ``*.tar``, ``index.json`` and writers' hidden temp files."""
    name = path.name
    return path.is_file() and (name.endswith(".tar") or name == INDEX_NAME or (name.startswith(".") and ".tmp" in name))


def describe_shard_set(folder: Path) -> str | None:
    """What shard set ``folder`` holds ("3 shards, 240 samples (index.json)" / "5 .tar files"), or None."""
    if not folder.is_dir():
        return None
    index = load_index(folder)
    if index is not None:
        return f"{len(index['shards'])} shards, {index.get('samples', '?')} samples ({INDEX_NAME})"
    tars = list(folder.glob("*.tar"))
    if tars or (folder / INDEX_NAME).exists():
        unreadable = f" and an unreadable {INDEX_NAME}" if (folder / INDEX_NAME).exists() else ""
        return f"{len(tars)} .tar files{unreadable}"
    return None


def check_out_dir(out: Path, force: bool) -> None:
    """The one rule of every shard writer: an output folder holding a shard set is replaced only with force.

    Raises:
        VispreError: ``out`` is a file, or holds a shard set and ``force`` is False.
    """
    if out.exists() and not out.is_dir():
        raise VispreError(f"shard output {out} is a file, expected a folder")
    held = describe_shard_set(out)
    if held is not None and not force:
        raise VispreError(f"{out} already holds a shard set ({held}); pass --force to replace it (the new set "
                          "is written beside it and swapped in when complete)")


def _pid_of(path: Path) -> int | None:
    tail = path.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _alive(pid: int | None) -> bool:
    if pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _carry_over(old: Path, new: Path) -> None:
    """Move ``old``'s entries that are not part of its shard set into ``new`` (where absent there)."""
    for entry in old.iterdir():
        if not is_set_entry(entry) and not (new / entry.name).exists():
            os.rename(entry, new / entry.name)


def recover_interrupted(out: Path) -> None:
    """Finish or undo an earlier write of ``out`` that was killed: restore or merge ``.NAME.old-PID`` and
    remove stale ``.NAME.tmp-PID`` folders (those of a process still running are left alone)."""
    if not out.parent.is_dir():
        return
    for old in sorted(out.parent.glob(f".{_escaped(out.name)}.old-*")):
        if _alive(_pid_of(old)):
            continue
        if not out.exists():
            os.rename(old, out)  # killed between the two renames: the old set comes back
            continue
        _carry_over(old, out)
        shutil.rmtree(old, ignore_errors=True)
    for tmp in out.parent.glob(f".{_escaped(out.name)}.tmp-*"):
        if not _alive(_pid_of(tmp)):
            shutil.rmtree(tmp, ignore_errors=True)


def _escaped(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def swap_in(staged: Path, out: Path) -> None:
    """Make the complete folder ``staged`` the folder ``out`` (see the module docstring, step 4)."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        os.replace(staged, out)  # replaces an empty folder atomically
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.rename(out, old)
    os.rename(staged, out)
    _carry_over(old, out)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_shard_folder(out_dir: str | Path, force: bool = False) -> Iterator[Path]:
    """Write a shard set into a hidden folder beside ``out_dir``; it replaces ``out_dir`` when the block
    finishes, and is removed when the block raises (the old set stays untouched).

    Args:
        out_dir: the shard set's folder (created with its parents). force: replace a set already there.

    Yields:
        The temp folder to write the complete set (shards, then ``index.json``) into.

    Raises:
        VispreError: from :func:`check_out_dir`.
    """
    out = Path(out_dir).resolve()
    recover_interrupted(out)
    check_out_dir(Path(out_dir), force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    try:
        yield staged
        swap_in(staged, out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


__all__ = ["check_out_dir", "describe_shard_set", "is_set_entry", "recover_interrupted", "staged_shard_folder",
           "swap_in"]
