"""Fashion-MNIST IDX reader: parsing, look-up order (an explicit root is authoritative; a split's two files
come from one folder), clear errors for missing or corrupt files."""

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
    with pytest.raises(FileNotFoundError, match=r"Fashion-MNIST test files not found: .*nowhere \(does not exist\).*"
                                                r"apt-get install dataset-fashion-mnist"):
        fm.load_fashion_mnist("test")


@pytest.fixture
def system_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A complete test split where the defaults look (the Debian folder stands in for the system copy)."""
    monkeypatch.delenv("VISPRE_DATA_DIR", raising=False)
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "system")
    fake_split(tmp_path / "system", "test", 6)
    return tmp_path / "system"


@pytest.mark.parametrize("make", ["empty", "missing"])
def test_explicit_root_is_authoritative(tmp_path: Path, system_copy: Path, make: str) -> None:
    root = tmp_path / "mine"
    if make == "empty":
        root.mkdir()
    assert fm.load_fashion_mnist("test").labels.shape == (6,)  # the system copy is there and readable
    state = ("missing t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz" if make == "empty"
             else "does not exist")
    with pytest.raises(FileNotFoundError) as err:
        fm.load_fashion_mnist("test", root=root)
    assert str(err.value).startswith(f"Fashion-MNIST test files not found in root {root}: {root} ({state}); "
                                     f"{root / 'FashionMNIST' / 'raw'} (does not exist). Put the IDX files there")
    assert str(system_copy) not in str(err.value)


def test_split_files_come_from_one_folder(tmp_path: Path, system_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, _ = fake_split(tmp_path / "half", "test", 4)
    (tmp_path / "half" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"in root .*half: .*half \(missing t10k-labels-idx1-ubyte\.gz\)"):
        fm.load_fashion_mnist("test", root=tmp_path / "half")
    monkeypatch.setenv("VISPRE_DATA_DIR", str(tmp_path / "half"))  # a default folder with the images only
    assert fm.find_split_files("test") == (system_copy / "t10k-images-idx3-ubyte.gz",
                                           system_copy / "t10k-labels-idx1-ubyte.gz")
    assert fm.load_fashion_mnist("test").labels.shape == (6,)


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
