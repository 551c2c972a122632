"""Fashion-MNIST reader for the IDX ``.gz`` files (Xiao et al. 2017, arXiv 1708.07747). Never downloads.

An explicit ``root`` is authoritative: the files are read from it (or from torchvision's download layout
``root/FashionMNIST/raw``) and nowhere else. Without a root they are looked up, in order, in
``$VISPRE_DATA_DIR`` (and ``$VISPRE_DATA_DIR/fashion-mnist``) and ``/usr/share/datasets/fashion-mnist`` (Debian
package ``dataset-fashion-mnist``), each also with the torchvision layout beneath. A split's two files (images
and labels) always come from one folder: the first that holds both.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from vispre.errors import VispreError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
SPLIT_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
MEAN, STD = (0.2860,), (0.3530,)
HOW_TO_GET = ("install it with `apt-get install dataset-fashion-mnist` (Debian), set VISPRE_DATA_DIR to a "
              "folder holding the four IDX files, or point `root` at torchvision's FashionMNIST download folder")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class LabelledImages(NamedTuple):
    """images: [N, C, H, W] uint8; labels: [N] int64."""

    images: Tensor
    labels: Tensor


def candidate_dirs(root: str | Path | None = None) -> list[Path]:
    """The folders searched, in order (each also with torchvision's ``FashionMNIST/raw`` beneath): only
    ``root`` when one is given, else ``$VISPRE_DATA_DIR`` and the Debian folder."""
    if root is not None and str(root) != "":
        bases = [Path(root)]
    else:
        bases = []
        if os.environ.get("VISPRE_DATA_DIR"):
            env = Path(os.environ["VISPRE_DATA_DIR"])
            bases += [env, env / "fashion-mnist"]
        bases.append(DEBIAN_DIR)
    out: list[Path] = []
    for base in bases:
        out += [base, base / "FashionMNIST" / "raw"]
    return out


def _find_file(stem: str, folder: Path) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def find_split_files(split: str, root: str | Path | None = None) -> tuple[Path, Path]:
    """Paths of (images, labels) for ``split`` in the first searched folder that holds both.

    Args:
        split: "train" or "test". root: the folder to read (authoritative: nothing else is searched).

    Raises:
        VispreError: an unknown split.
        FileNotFoundError: no searched folder holds both files: names the missing files of each folder
            searched and how to get the data.
    """
    if split not in SPLIT_FILES:
        raise VispreError(f"Fashion-MNIST split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
    dirs = candidate_dirs(root)
    missing = []
    for folder in dirs:
        paths = [_find_file(stem, folder) for stem in SPLIT_FILES[split]]
        if paths[0] is not None and paths[1] is not None:
            return paths[0], paths[1]
        absent = [f"{stem}.gz" for stem, path in zip(SPLIT_FILES[split], paths) if path is None]
        state = "does not exist" if not folder.is_dir() else "missing " + " and ".join(absent)
        missing.append(f"{folder} ({state})")
    if root is not None and str(root) != "":
        raise FileNotFoundError(f"Fashion-MNIST {split} files not found in root {root}: {'; '.join(missing)}. "
                                "Put the IDX files there, or leave root unset to use the default folders "
                                "($VISPRE_DATA_DIR, the Debian package's folder)")
    raise FileNotFoundError(f"Fashion-MNIST {split} files not found: {'; '.join(missing)}. {HOW_TO_GET}")


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array of its declared shape.

    Raises:
        VispreError: when the header or the payload size is not a valid IDX file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as err:
        raise VispreError(f"cannot read IDX file {path}: {err}") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise VispreError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset != expected:
        raise VispreError(f"{path}: header says shape {shape} ({expected} bytes) but holds {len(data) - offset}")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)


def load_fashion_mnist(split: str = "train", root: str | Path | None = None) -> LabelledImages:
    """Load a Fashion-MNIST split.

    Args:
        split: "train" (60,000) or "test" (10,000).
        root: the folder to read (authoritative, see the module docstring); None: the default folders.

    Returns:
        LabelledImages(images [N, 1, 28, 28] uint8, labels [N] int64).
    """
    images_path, labels_path = find_split_files(split, root)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise VispreError(f"Fashion-MNIST {split}: images {images.shape} and labels {labels.shape} do not match")
    return LabelledImages(torch.from_numpy(images.copy()).unsqueeze(1),
                          torch.from_numpy(labels.astype(np.int64)))


def main(argv: list[str] | None = None) -> int:
    """``python -m vispre.data.fashion_mnist --check``: print where the data is, exit 1 if missing."""
    import sys

    try:
        for split in SPLIT_FILES:
            print(split, *find_split_files(split))
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
