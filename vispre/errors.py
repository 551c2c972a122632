"""The one error type for bad user input (a config value, a data file, a checkpoint, an argument).

Library code raises :class:`VispreError` where it detects input it cannot use, with a message naming the
thing and what was expected. The ``vispre`` command prints exactly these (and a missing file) as one line,
``vispre <command>: error: ...``; every other exception is a bug or a resource failure and keeps its
traceback. It subclasses ValueError so callers that catch ValueError keep working.
"""

from __future__ import annotations


class VispreError(ValueError):
    """Bad user input: the message names what was wrong and what was expected."""


__all__ = ["VispreError"]
