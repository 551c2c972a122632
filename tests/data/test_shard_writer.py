"""Shard writer (webdataset ShardWriter + vispre index): byte-exact round trip, shard splitting by count and
size, refused keys, and sets never destroyed silently: an existing set is replaced only with force, and a
rewrite that fails or is killed mid-way leaves the old set and its index untouched."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import REPO_ROOT, random_images, tar_member_bytes
from vispre.data import encode_image, read_index, write_shards
from vispre.data.shard_folder import recover_interrupted
from vispre.errors import VispreError


def test_round_trip_bytes_pixels_labels_and_index(tmp_path: Path) -> None:
    imgs, labels = random_images(25), torch.arange(25) % 7
    summary = write_shards(list(zip(imgs, labels)), tmp_path, samples_per_shard=10, progress=False)
    assert summary.shards == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"] and summary.samples == 25
    index = json.loads((tmp_path / "index.json").read_text())
    assert [s["samples"] for s in index["shards"]] == [10, 10, 5] and index["samples"] == 25
    assert summary.bytes == sum((tmp_path / n).stat().st_size for n in summary.shards)
    members: dict[str, bytes] = {}
    for name in summary.shards:
        members.update(tar_member_bytes(tmp_path / name))
    assert len(members) == 50
    for i in range(25):
        png = members[f"{i:08d}.png"]
        assert png == encode_image(imgs[i], "png")
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), imgs[i, 0].numpy())  # lossless
        assert int(members[f"{i:08d}.cls"]) == int(labels[i])
    assert not list(tmp_path.glob(".*tmp*")) and not list(tmp_path.parent.glob(f".{tmp_path.name}.*"))


def test_rgb_and_max_bytes_split(tmp_path: Path) -> None:
    imgs = random_images(12, side=16, chans=3)
    size = len(encode_image(imgs[0])) + 1024
    summary = write_shards(imgs, tmp_path, max_bytes=3 * size + 200, progress=False)
    counts = [s["samples"] for s in read_index(tmp_path)["shards"]]
    assert sum(counts) == 12 and max(counts) <= 4 and len(summary.shards) >= 3
    decoded = np.asarray(Image.open(io.BytesIO(tar_member_bytes(tmp_path / summary.shards[0])["00000000.png"])))
    assert np.array_equal(decoded, imgs[0].permute(1, 2, 0).numpy())


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def hidden_siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.glob(f".{folder.name}.*"))


def test_existing_set_is_replaced_only_with_force(tmp_path: Path) -> None:
    out = tmp_path / "set"
    write_shards(random_images(3), out, progress=False)
    with pytest.raises(VispreError, match=r"set already holds a shard set \(1 shards, 3 samples \(index\.json\)\); "
                                          r"pass --force to replace it"):
        write_shards(random_images(5), out, progress=False)
    assert read_index(out)["samples"] == 3
    (out / "notes.txt").write_text("mine")
    (out / "extra").mkdir()
    summary = write_shards(random_images(5), out, samples_per_shard=2, progress=False, force=True)
    assert summary.samples == 5 and read_index(out)["samples"] == 5 and summary.index_path == out / "index.json"
    assert sorted(p.name for p in out.iterdir()) == ["extra", "index.json", "notes.txt", "shard-000000.tar",
                                                     "shard-000001.tar", "shard-000002.tar"]
    assert (out / "notes.txt").read_text() == "mine" and hidden_siblings(out) == []
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "00000.tar").write_bytes(b"")
    with pytest.raises(VispreError, match=r"already holds a shard set \(1 \.tar files\)"):
        write_shards(random_images(2), foreign, progress=False)


def test_failed_rewrite_leaves_the_old_set_and_index_untouched(tmp_path: Path) -> None:
    def broken():
        for i, img in enumerate(random_images(15)):
            if i == 13:
                raise KeyboardInterrupt
            yield img

    out = tmp_path / "set"
    write_shards(random_images(12), out, samples_per_shard=4, progress=False)
    before = snapshot(out)
    with pytest.raises(KeyboardInterrupt):
        write_shards(broken(), out, samples_per_shard=5, progress=False, force=True)
    assert snapshot(out) == before and read_index(out)["samples"] == 12
    assert hidden_siblings(out) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["set"]


KILLED_WRITER = """
import os, signal, sys
sys.path.insert(0, {repo!r})
import numpy as np
from vispre.data.shard_writer import write_shards

def items():
    for i in range(40):
        if i == 25:
            os.kill(os.getpid(), signal.SIGKILL)
        yield np.full((8, 8), i, dtype=np.uint8)

write_shards(items(), {out!r}, samples_per_shard=5, progress=False, force=True)
"""


def test_killed_rewrite_leaves_the_old_set_and_the_next_write_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "set"
    write_shards(random_images(12), out, samples_per_shard=4, progress=False)
    before = snapshot(out)
    run = subprocess.run([sys.executable, "-c", KILLED_WRITER.format(repo=str(REPO_ROOT), out=str(out))],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert snapshot(out) == before  # the old set and its index, byte for byte
    stale = hidden_siblings(out)
    assert len(stale) == 1 and stale[0].startswith(".set.tmp-") and not (tmp_path / stale[0] / "index.json").exists()
    assert len(list((tmp_path / stale[0]).glob("*.tar"))) == 5  # the killed write's finished shards
    write_shards(random_images(6), out, samples_per_shard=3, progress=False, force=True)
    assert read_index(out)["samples"] == 6 and hidden_siblings(out) == []


def test_swap_killed_between_renames_is_undone(tmp_path: Path) -> None:
    out = tmp_path / "set"
    write_shards(random_images(4), out, progress=False)
    before = snapshot(out)
    dead = 2 ** 22 + 1  # above the default pid_max: no such process
    os.rename(out, tmp_path / f".set.old-{dead}")  # the state after the first of the two renames
    (tmp_path / f".set.tmp-{dead}").mkdir()
    recover_interrupted(out)
    assert snapshot(out) == before and hidden_siblings(out) == []


def test_index_with_wrong_shard_size_is_incomplete(tmp_path: Path) -> None:
    write_shards(random_images(4), tmp_path, progress=False)
    assert read_index(tmp_path)["samples"] == 4
    with open(tmp_path / "shard-000000.tar", "ab") as fh:
        fh.write(b"x")
    assert read_index(tmp_path) is None


def test_key_with_dot_is_refused(tmp_path: Path) -> None:
    with pytest.raises(VispreError, match=r"sample key 'a\.b' contains a '\.'"):
        write_shards([{"image": random_images(1)[0], "key": "a.b"}], tmp_path, progress=False)
