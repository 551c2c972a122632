"""Atomic file writes: a temp file beside the target, fsynced, then ``os.replace``-d onto it.

A reader (or a run killed mid-write) sees the old file or the new one, never half of one. The temp file is
``.NAME.tmp-PID`` in the target's folder (same filesystem, so the rename is atomic) and is removed when the
write fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from vispre.errors import VispreError


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """An open binary file whose content replaces ``path`` atomically when the block ends without error
    (temp file ``.NAME.tmp-PID`` beside it, flushed and fsynced, then ``os.replace``; removed on error).

    Args:
        path: the target file (its folder must exist).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_writer`).

    Args:
        path: the target file (its folder must exist). data: the bytes.

    Returns:
        The target path.
    """
    with atomic_writer(path) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML file holding a mapping (a run config, an evaluation suite), naming the file on any problem.

    Args:
        path: the YAML file.

    Returns:
        The top-level mapping.

    Raises:
        FileNotFoundError: no such file. VispreError: ``PATH:LINE:COLUMN: YAML syntax error: ...``, an empty
            file, or a top level that is not a mapping of keys to values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
        if context and context_mark is not None and mark is not None and context_mark.line != mark.line:
            problem += f" ({context} started at line {context_mark.line + 1})"
        raise VispreError(f"{where}: YAML syntax error: {problem}") from None
    except UnicodeDecodeError:
        raise VispreError(f"{path} is not a YAML text file (it is not UTF-8 text)") from None
    if data is None:
        raise VispreError(f"config {path} is empty (expected a YAML mapping of keys to values)")
    if not isinstance(data, dict):
        raise VispreError(f"config {path} holds a YAML {type(data).__name__}, expected a mapping of keys to values")
    return data


__all__ = ["atomic_write_bytes", "atomic_write_text", "read_yaml"]
