"""Fashion-MNIST IDX reader: parsing, look-up order, clear errors for missing or corrupt files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import fake_fashion_mnist as fake_split
from vispre.data import fashion_mnist as fm
from vispre.errors import VispreError


def test_reads_explicit_root_exactly(tmp_path: Path) -> None:
    images, labels = fake_split(tmp_path, "test", 5)
    data = fm.load_fashion_mnist("test", root=tmp_path)
    assert data.images.shape == (5, 1, 28, 28) and data.images.dtype.is_floating_point is False
    assert np.array_equal(data.images[:, 0].numpy(), images) and np.array_equal(data.labels.numpy(), labels)


def test_torchvision_layout_uncompressed(tmp_path: Path) -> None:
    images, _ = fake_split(tmp_path / "FashionMNIST" / "raw", "train", 3, compress=False)
    data = fm.load_fashion_mnist("train", root=tmp_path)
    assert np.array_equal(data.images[:, 0].numpy(), images)


def test_env_var_is_searched_before_debian(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_split(tmp_path, "test", 4)
    monkeypatch.setenv("VISPRE_DATA_DIR", str(tmp_path))
    assert fm.find_split_files("test")[0].parent == tmp_path
    assert fm.candidate_dirs()[-2] == fm.DEBIAN_DIR


def test_missing_file_names_it_and_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VISPRE_DATA_DIR", raising=False)
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte.gz not found .*apt-get install dataset-fashion-mnist"):
        fm.load_fashion_mnist("test", root=tmp_path)


def test_corrupt_files_get_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"\x01\x02\x03\x04rest"))
    with pytest.raises(VispreError, match="is not an IDX file"):
        fm.read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(VispreError, match=r"header says shape \(10,\) \(10 bytes\) but holds 3"):
        fm.read_idx(short)
    truncated = tmp_path / "trunc.gz"
    truncated.write_bytes(gzip.compress(b"\x00" * 100)[:20])
    with pytest.raises(VispreError, match="cannot read IDX file"):
        fm.read_idx(truncated)


def test_unknown_split() -> None:
    with pytest.raises(VispreError, match="split must be one of \\['test', 'train'\\], got 'val'"):
        fm.find_split_files("val")


@pytest.mark.skipif(not (fm.DEBIAN_DIR / "train-images-idx3-ubyte.gz").exists(), reason="Debian data not installed")
def test_real_fashion_mnist_statistics() -> None:
    data = fm.load_fashion_mnist("test")
    assert data.images.shape == (10000, 1, 28, 28)
    assert data.labels.bincount().tolist() == [1000] * 10
    assert abs(data.images.float().mean().item() / 255 - fm.MEAN[0]) < 0.01
