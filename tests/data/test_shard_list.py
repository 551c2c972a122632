"""Shard URL resolution: folders (with index counts), brace patterns, globs, pipe: URLs, clear errors for
missing shards and for shards whose size differs from their index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import random_images
from vispre.data import ShardList, read_index, resolve_shards, write_shards
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


def shard_set(folder: Path, shards: int, per_shard: int = 2, prefix: str = "bad") -> list[Path]:
    write_shards(random_images(shards * per_shard), folder, samples_per_shard=per_shard, prefix=prefix, progress=False)
    return sorted(folder.glob(f"{prefix}-*.tar"))


def test_brace_range_with_missing_shards_is_an_error_a_glob_is_not(tmp_path: Path) -> None:
    files = shard_set(tmp_path, 6)
    for file in files[2:]:
        file.unlink()  # 4 of 6 absent
    pattern = str(tmp_path / "bad-{000000..000005}.tar")
    with pytest.raises(VispreError) as err:
        resolve_shards(pattern)
    shown = ", ".join(str(f) for f in files[2:5])
    assert str(err.value).startswith(f"4 of the 6 shards named by {pattern!r} are missing ({shown}, ...): ")
    assert "a glob such as shard-*.tar reads whatever matches" in str(err.value)
    assert resolve_shards(str(tmp_path / "bad-*.tar")).urls == [str(f) for f in files[:2]]
    with pytest.raises(FileNotFoundError, match=r"shard pattern '.*bad-\{000002\.\.000005\}\.tar' matches no file"):
        resolve_shards(str(tmp_path / "bad-{000002..000005}.tar"))


def test_explicit_list_and_index_with_missing_shards_are_errors(tmp_path: Path) -> None:
    files = shard_set(tmp_path, 3)
    files[1].unlink()
    with pytest.raises(VispreError, match=r"^1 of the 3 shards named by the list of 3 shard paths are missing \("
                                          + str(files[1]) + r"\)"):
        resolve_shards([str(f) for f in files])
    with pytest.raises(VispreError, match=r"^1 of the 3 shards named by '.*'s index\.json are missing"):
        resolve_shards(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"none of the 2 listed shards exists"):
        resolve_shards([str(tmp_path / "x.tar"), str(tmp_path / "y.tar")])


def test_shard_cut_at_a_member_boundary_fails_at_start_up(tmp_path: Path) -> None:
    files = shard_set(tmp_path, 2, per_shard=5)
    data = files[0].read_bytes()
    end = data.index(b"00000003.png")  # inside the (pax) header block of sample 3's first member
    end -= end % 512  # cut where that block begins: samples 0-2 stay whole
    files[0].write_bytes(data[:end])
    recorded = len(data)
    with pytest.raises(VispreError) as err:
        resolve_shards(str(tmp_path))
    index = tmp_path / "index.json"
    assert str(err.value).startswith(f"shard {files[0]} is {end} bytes but {index} records {recorded}")
    with pytest.raises(VispreError, match="is 1024 bytes but"):
        files[0].write_bytes(data[:1024])
        resolve_shards(str(tmp_path / "bad-000000.tar"))


def test_index_without_sizes_keeps_working(tmp_path: Path) -> None:
    shard_set(tmp_path, 2, per_shard=3)
    index = json.loads((tmp_path / "index.json").read_text())
    for shard in index["shards"]:
        del shard["bytes"]
    (tmp_path / "index.json").write_text(json.dumps(index))
    assert resolve_shards(str(tmp_path)).counts == [3, 3]
    assert read_index(tmp_path) is not None
