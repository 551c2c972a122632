"""Shard writer (webdataset ShardWriter + vispre index): byte-exact round trip, shard splitting by count and
size, atomic writes, refused keys."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import random_images, tar_member_bytes
from vispre.data import encode_image, read_index, write_shards
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
    assert not list(tmp_path.glob(".*tmp"))


def test_rgb_and_max_bytes_split(tmp_path: Path) -> None:
    imgs = random_images(12, side=16, chans=3)
    size = len(encode_image(imgs[0])) + 1024
    summary = write_shards(imgs, tmp_path, max_bytes=3 * size + 200, progress=False)
    counts = [s["samples"] for s in read_index(tmp_path)["shards"]]
    assert sum(counts) == 12 and max(counts) <= 4 and len(summary.shards) >= 3
    decoded = np.asarray(Image.open(io.BytesIO(tar_member_bytes(tmp_path / summary.shards[0])["00000000.png"])))
    assert np.array_equal(decoded, imgs[0].permute(1, 2, 0).numpy())


def test_interrupted_write_leaves_no_index_and_no_half_shard(tmp_path: Path) -> None:
    def broken():
        for i, img in enumerate(random_images(15)):
            if i == 13:
                raise KeyboardInterrupt
            yield img

    write_shards(random_images(3), tmp_path, progress=False)
    with pytest.raises(KeyboardInterrupt):
        write_shards(broken(), tmp_path, samples_per_shard=5, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-000000.tar", "shard-000001.tar"]
    assert read_index(tmp_path) is None


def test_index_with_wrong_shard_size_is_incomplete(tmp_path: Path) -> None:
    write_shards(random_images(4), tmp_path, progress=False)
    assert read_index(tmp_path)["samples"] == 4
    with open(tmp_path / "shard-000000.tar", "ab") as fh:
        fh.write(b"x")
    assert read_index(tmp_path) is None


def test_key_with_dot_is_refused(tmp_path: Path) -> None:
    with pytest.raises(VispreError, match=r"sample key 'a\.b' contains a '\.'"):
        write_shards([{"image": random_images(1)[0], "key": "a.b"}], tmp_path, progress=False)
