"""Evaluation tests run their tiny tensors on one intra-op thread (see tests.helpers.one_thread)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import one_thread


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    with one_thread():
        yield
