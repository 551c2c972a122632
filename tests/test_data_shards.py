"""Shard writer: byte-exact round trip, shard splitting, atomic writes, idempotent Fashion-MNIST shards,
the ``vispre shards`` CLI and shard URL resolution."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_data_fashion_mnist import fake_split
from vispre import cli
from vispre.data import shards as sh


def images(n: int, side: int = 8, chans: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, chans, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def test_round_trip_bytes_pixels_labels_and_index(tmp_path: Path) -> None:
    imgs, labels = images(25), torch.arange(25) % 7
    summary = sh.write_shards(list(zip(imgs, labels)), tmp_path, samples_per_shard=10, progress=False)
    assert summary.shards == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"] and summary.samples == 25
    index = json.loads((tmp_path / "index.json").read_text())
    assert [s["samples"] for s in index["shards"]] == [10, 10, 5] and index["samples"] == 25
    assert summary.bytes == sum((tmp_path / n).stat().st_size for n in summary.shards)
    members: dict[str, bytes] = {}
    for name in summary.shards:
        members.update(tar_members(tmp_path / name))
    assert len(members) == 50
    for i in range(25):
        png = members[f"{i:08d}.png"]
        assert png == sh.encode_image(imgs[i], "png")
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), imgs[i, 0].numpy())  # lossless
        assert int(members[f"{i:08d}.cls"]) == int(labels[i])
    assert not list(tmp_path.glob(".*tmp"))


def test_rgb_and_max_bytes_split(tmp_path: Path) -> None:
    imgs = images(12, side=16, chans=3)
    size = len(sh.encode_image(imgs[0])) + 1024
    summary = sh.write_shards(imgs, tmp_path, max_bytes=3 * size + 200, progress=False)
    counts = [s["samples"] for s in sh.read_index(tmp_path)["shards"]]
    assert sum(counts) == 12 and max(counts) <= 4 and len(summary.shards) >= 3
    decoded = np.asarray(Image.open(io.BytesIO(tar_members(tmp_path / summary.shards[0])["00000000.png"])))
    assert np.array_equal(decoded, imgs[0].permute(1, 2, 0).numpy())


def test_interrupted_write_leaves_no_index_and_no_half_shard(tmp_path: Path) -> None:
    def broken():
        for i, img in enumerate(images(15)):
            if i == 13:
                raise KeyboardInterrupt
            yield img

    sh.write_shards(images(3), tmp_path, progress=False)
    with pytest.raises(KeyboardInterrupt):
        sh.write_shards(broken(), tmp_path, samples_per_shard=5, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-000000.tar", "shard-000001.tar"]
    assert sh.read_index(tmp_path) is None


def test_index_with_wrong_shard_size_is_incomplete(tmp_path: Path) -> None:
    sh.write_shards(images(4), tmp_path, progress=False)
    assert sh.read_index(tmp_path)["samples"] == 4
    with open(tmp_path / "shard-000000.tar", "ab") as fh:
        fh.write(b"x")
    assert sh.read_index(tmp_path) is None


def test_key_with_dot_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"sample key 'a\.b' contains a '\.'"):
        sh.write_shards([{"image": images(1)[0], "key": "a.b"}], tmp_path, progress=False)


def test_fashion_mnist_shards_are_written_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw, labels = fake_split(tmp_path / "raw", "test", 30)
    out = tmp_path / "wds"
    argv = ["shards", "fashion-mnist", str(out), "--split", "test", "--root", str(tmp_path / "raw"),
            "--samples-per-shard", "8", "--no-progress"]
    assert cli.main(argv) == 0
    assert "wrote 4 shards, 30 samples" in capsys.readouterr().out
    members = tar_members(out / "fmnist-test-000003.tar")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(members["test_000029.png"]))), raw[29])
    assert int(members["test_000029.cls"]) == labels[29]
    mtime = (out / "fmnist-test-000000.tar").stat().st_mtime_ns
    assert cli.main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out and (out / "fmnist-test-000000.tar").stat().st_mtime_ns == mtime
    assert cli.main([*argv, "--format", "jpg"]) == 2
    assert "pass --force to rewrite them" in capsys.readouterr().err


def test_folder_cli_copies_bytes_and_labels_by_class(tmp_path: Path) -> None:
    for cls, n in (("cat", 3), ("dog", 2)):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(images(1, 16, 3)[0].permute(1, 2, 0).numpy()).save(tmp_path / "img" / cls / f"{i}.v1.jpg")
    assert sh.main(["folder", str(tmp_path / "img"), str(tmp_path / "out"), "--labels", "--no-progress"]) == 0
    members = tar_members(tmp_path / "out" / "shard-000000.tar")
    assert members["dog/1_v1.jpg"] == (tmp_path / "img" / "dog" / "1.v1.jpg").read_bytes()
    assert members["cat/0_v1.cls"] == b"0" and members["dog/0_v1.cls"] == b"1"
    assert json.loads((tmp_path / "out" / "index.json").read_text())["classes"] == ["cat", "dog"]


def test_folder_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["shards", "folder", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"vispre shards: error: image folder {tmp_path / 'nope'} does not exist"
    (tmp_path / "flat").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "flat" / "a.png")
    assert cli.main(["shards", "folder", str(tmp_path / "flat"), str(tmp_path / "out"), "--labels"]) == 2
    assert "needs every image of" in capsys.readouterr().err


def test_resolve_shards_patterns(tmp_path: Path) -> None:
    sh.write_shards(images(7), tmp_path, samples_per_shard=3, progress=False)
    by_dir = sh.resolve_shards(str(tmp_path))
    assert [Path(u).name for u in by_dir.urls] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert by_dir.counts == [3, 3, 1]
    braces = sh.resolve_shards(str(tmp_path / "shard-{000001..000002}.tar"))
    assert braces.counts == [3, 1] and len(braces.urls) == 2
    assert sh.resolve_shards(str(tmp_path / "shard-*.tar")).urls == by_dir.urls
    piped = sh.resolve_shards(["pipe:cat /x/a-{0..1}.tar"])
    assert piped == sh.ShardList(["pipe:cat /x/a-0.tar", "pipe:cat /x/a-1.tar"], None)
    pattern = str(tmp_path / "other-{0..3}.tar")
    with pytest.raises(FileNotFoundError) as err:
        sh.resolve_shards([str(tmp_path), pattern])
    assert str(err.value) == f"shard pattern {pattern!r} matches no file"
