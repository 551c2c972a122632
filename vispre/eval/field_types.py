"""Type-check a dataclass's field values against its annotations (YAML gives strings, numbers, lists, null).

Used by :class:`vispre.eval.suite.EvalTask` so that ``epochs: abc`` or ``ks: 5`` in a suite YAML is one clear
error when the YAML is read, before any image is opened. Supported annotations: ``int``, ``float`` (an int is
accepted), ``str``, ``bool``, ``None``, ``X | Y`` unions and ``Sequence[X]`` (a YAML list; a tuple in Python).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any

from vispre.errors import VispreError

_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _is_sequence(hint: Any) -> bool:
    return typing.get_origin(hint) in (Sequence, list, tuple)


def type_name(hint: Any) -> str:
    """A readable name of an annotation: ``int | None`` -> "an integer or null", ``Sequence[float]`` -> "a list of
    numbers"."""
    if _is_union(hint):
        return " or ".join(type_name(a) for a in typing.get_args(hint))
    if _is_sequence(hint):
        inner = type_name(typing.get_args(hint)[0])
        plural = {"an integer": "integers", "a number": "numbers", "a string": "strings"}.get(inner, inner)
        return f"a list of {plural}"
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def matches(value: Any, hint: Any) -> bool:
    """Whether a YAML/Python ``value`` fits the annotation ``hint`` (bool is not an integer or a number)."""
    if _is_union(hint):
        return any(matches(value, a) for a in typing.get_args(hint))
    if _is_sequence(hint):
        inner = typing.get_args(hint)[0]
        return isinstance(value, (list, tuple)) and all(matches(v, inner) for v in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True  # an annotation this checker does not know: left to the constructor


def check_field_types(obj: Any, owner: str) -> None:
    """Raise when a field of the dataclass instance ``obj`` holds a value of the wrong type.

    Args:
        obj: a dataclass instance (its annotations are resolved with :func:`typing.get_type_hints`).
        owner: how the message names the instance, e.g. ``"task 'fashion_mnist'"``.

    Raises:
        VispreError: ``<owner>: <field> must be <type>, got <value> (<its type>)`` for the first wrong field.
    """
    hints = typing.get_type_hints(type(obj))
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        hint = hints[field.name]
        if not matches(value, hint):
            raise VispreError(f"{owner}: {field.name} must be {type_name(hint)}, got {value!r} "
                              f"({type(value).__name__})")


__all__ = ["check_field_types", "matches", "type_name"]
