"""Shard URL resolution: folders (with index counts), brace patterns, globs, pipe: URLs, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import random_images
from vispre.data import ShardList, resolve_shards, write_shards
from vispre.errors import VispreError


def test_resolve_shards_patterns(tmp_path: Path) -> None:
    write_shards(random_images(7), tmp_path, samples_per_shard=3, progress=False)
    by_dir = resolve_shards(str(tmp_path))
    assert [Path(u).name for u in by_dir.urls] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert by_dir.counts == [3, 3, 1]
    braces = resolve_shards(str(tmp_path / "shard-{000001..000002}.tar"))
    assert braces.counts == [3, 1] and len(braces.urls) == 2
    assert resolve_shards(str(tmp_path / "shard-*.tar")).urls == by_dir.urls
    piped = resolve_shards(["pipe:cat /x/a-{0..1}.tar"])
    assert piped == ShardList(["pipe:cat /x/a-0.tar", "pipe:cat /x/a-1.tar"], None)
    pattern = str(tmp_path / "other-{0..3}.tar")
    with pytest.raises(FileNotFoundError) as err:
        resolve_shards([str(tmp_path), pattern])
    assert str(err.value) == f"shard pattern {pattern!r} matches no file"


def test_no_pattern_is_an_error() -> None:
    with pytest.raises(VispreError, match="no shard URLs given"):
        resolve_shards([])
