"""``vispre shards``: idempotent Fashion-MNIST shards, folder shards with class labels, one-line errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import fake_fashion_mnist as fake_split
from tests.helpers import random_images, tar_member_bytes
from vispre.commands import main as vispre_main
from vispre.commands.shards import main as shards_main


def test_fashion_mnist_shards_are_written_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw, labels = fake_split(tmp_path / "raw", "test", 30)
    out = tmp_path / "wds"
    argv = ["shards", "fashion-mnist", str(out), "--split", "test", "--root", str(tmp_path / "raw"),
            "--samples-per-shard", "8", "--no-progress"]
    assert vispre_main(argv) == 0
    assert "wrote 4 shards, 30 samples" in capsys.readouterr().out
    members = tar_member_bytes(out / "fmnist-test-000003.tar")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(members["test_000029.png"]))), raw[29])
    assert int(members["test_000029.cls"]) == labels[29]
    mtime = (out / "fmnist-test-000000.tar").stat().st_mtime_ns
    assert vispre_main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out and (out / "fmnist-test-000000.tar").stat().st_mtime_ns == mtime
    assert vispre_main([*argv, "--format", "jpg"]) == 2
    assert "pass --force to rewrite them" in capsys.readouterr().err


def test_folder_cli_copies_bytes_and_labels_by_class(tmp_path: Path) -> None:
    for cls, n in (("cat", 3), ("dog", 2)):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(random_images(1, 16, 3)[0].permute(1, 2, 0).numpy()).save(tmp_path / "img" / cls / f"{i}.v1.jpg")
    assert shards_main(["folder", str(tmp_path / "img"), str(tmp_path / "out"), "--labels", "--no-progress"]) == 0
    members = tar_member_bytes(tmp_path / "out" / "shard-000000.tar")
    assert members["dog/1_v1.jpg"] == (tmp_path / "img" / "dog" / "1.v1.jpg").read_bytes()
    assert members["cat/0_v1.cls"] == b"0" and members["dog/0_v1.cls"] == b"1"
    assert json.loads((tmp_path / "out" / "index.json").read_text())["classes"] == ["cat", "dog"]


def test_folder_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert vispre_main(["shards", "folder", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"vispre shards: error: image folder {tmp_path / 'nope'} does not exist"
    (tmp_path / "flat").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "flat" / "a.png")
    assert vispre_main(["shards", "folder", str(tmp_path / "flat"), str(tmp_path / "out"), "--labels"]) == 2
    assert "needs every image of" in capsys.readouterr().err


def image_folder(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(random_images(1, 8)[0, 0].numpy()).save(folder / f"{i}.png")
    return folder


def test_folder_refuses_an_existing_set_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert vispre_main(["shards", "folder", str(image_folder(tmp_path / "a", 6)), str(out), "--no-progress"]) == 0
    capsys.readouterr()
    small = str(image_folder(tmp_path / "b", 2))
    assert vispre_main(["shards", "folder", small, str(out), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"vispre shards: error: {out} already holds a shard set (1 shards, 6 samples (index.json)); pass --force "
        "to replace it (the new set is written beside it and swapped in when complete)")
    assert json.loads((out / "index.json").read_text())["samples"] == 6
    assert vispre_main(["shards", "folder", small, str(out), "--no-progress", "--force"]) == 0
    assert "wrote 1 shards, 2 samples" in capsys.readouterr().out
    assert json.loads((out / "index.json").read_text())["samples"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out"]  # no temp or old folder left
