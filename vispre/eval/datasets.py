"""Labelled image sets of the evaluation suite, streamed (never held whole) at the backbone's size.

    fashion_mnist   the IDX files (vispre.data.fashion_mnist), 28x28 grey; class names: the ten Fashion-MNIST names
    image_folder    ``ROOT/train/CLASS/*.png|jpg...`` and ``ROOT/test/CLASS/...`` (or ``ROOT/val/``), read with PIL;
                    class names: the folder names
    shards          webdataset shards of ``KEY.png|jpg`` + ``KEY.cls`` (vispre shards), any pattern
                    vispre.data.resolve_shards accepts (brace pattern, glob, folder, ``pipe:``, remote URL);
                    class names: ``classes.json`` beside the (local) shards when present (vispre.eval.shard_source)

Each split is a :class:`SplitSource`: a cheap identity for the feature-cache key (file list with sizes and mtimes,
never the pixels), the class names, and :meth:`SplitSource.batches`, a DataLoader (workers, pinned memory on CUDA)
yielding ``{"image": uint8 [B, C, S, S], "label", "position", "ok": [B], "problem": [B] str}``. Images are
resized (shorter side, bicubic), centre-cropped and converted to the backbone's channels inside the workers, so
the deterministic EvalView only normalises. An image that cannot be decoded comes as a zero image with
``ok=False`` and its path and reason in ``problem`` (the suite counts and names them). 16-bit grey images
(PIL mode ``I;16``) are scaled to 8 bit as ``value >> 8`` (= floor(value / 256), 65535 -> 255).

A batch is a fixed block of sample positions whatever the process / worker layout, so features are the same
bit for bit in one process or many (vispre.eval.extraction).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from vispre.data.fashion_mnist import CLASSES as FMNIST_CLASSES
from vispre.data.fashion_mnist import MEAN as FMNIST_MEAN
from vispre.data.fashion_mnist import STD as FMNIST_STD
from vispre.data.fashion_mnist import LabelledImages, find_split_files, load_fashion_mnist, read_idx
from vispre.data.shard_writer import folder_samples
from vispre.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ViewTransform, resize_center_crop
from vispre.errors import VispreError

DATASETS = ("fashion_mnist", "image_folder", "shards")
TEST_SPLIT_NAMES = ("test", "val")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class TaskData(NamedTuple):
    """The images of one task held in memory (small sets, tests and tools): train/test LabelledImages (images
    [N, C, S, S] uint8, labels [N] int64), the class count and the per-channel normalisation (length C)."""

    train: LabelledImages
    test: LabelledImages
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


class ResizeCropView(ViewTransform):
    """uint8 [C, H, W] or PIL image -> ``[uint8 [C, S, S]]``: shorter side to S (bicubic), centre crop."""

    def __init__(self, img_size: int) -> None:
        self.transform = v2.Compose(resize_center_crop(img_size))

    def __call__(self, image: Tensor | Image.Image) -> list[Tensor]:
        return [self.transform(image)]


def to_eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit grey PIL image (mode I;16*) as mode L with ``value >> 8``; other images unchanged.

    PIL's own ``convert("L")`` clips I;16 values at 255 (a 16-bit gradient becomes ~2 grey levels)."""
    if image.mode in SIXTEEN_BIT_MODES:
        return Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8), mode="L")
    return image


def decode_image_file(path: Path, mode: str) -> Image.Image:
    """Open an image file as PIL mode ``mode`` ("L" or "RGB"), 16-bit grey scaled to 8 bit (:func:`to_eight_bit`)."""
    with Image.open(path) as img:
        img.load()
        return to_eight_bit(img).convert(mode)


def _blank(in_chans: int, img_size: int) -> Tensor:
    return torch.zeros(in_chans, img_size, img_size, dtype=torch.uint8)


def _batch(images: Tensor, labels: Tensor, positions: Sequence[int], problems: Sequence[str]) -> dict[str, Any]:
    return {"image": images, "label": labels, "position": torch.tensor(list(positions), dtype=torch.int64),
            "ok": torch.tensor([not p for p in problems], dtype=torch.bool), "problem": list(problems)}


class FolderImages(Dataset):
    """Map-style, one batch per call: ``dataset[indices]`` = those files decoded with PIL, resized / cropped to S
    (a zero image with its path and reason in ``problem`` for a file that cannot be decoded)."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int], img_size: int, in_chans: int) -> None:
        self.files, self.labels = [str(f) for f in files], torch.tensor(list(labels), dtype=torch.int64)
        self.img_size, self.in_chans, self.mode = img_size, in_chans, "L" if in_chans == 1 else "RGB"
        self.view = ResizeCropView(img_size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, indices: Sequence[int]) -> dict[str, Any]:
        images, problems = [], []
        for i in indices:
            try:
                images.append(self.view(decode_image_file(Path(self.files[i]), self.mode))[0].as_subclass(Tensor))
                problems.append("")
            except Exception as err:  # noqa: BLE001 - any undecodable file is counted and named, not fatal here
                images.append(_blank(self.in_chans, self.img_size))
                problems.append(f"{self.files[i]}: {type(err).__name__}: {err}")
        return _batch(torch.stack(images), self.labels[list(indices)], indices, problems)


class TensorImages(Dataset):
    """Map-style over uint8 [N, C, H, W] images in memory, one batch per call (``dataset[indices]``; resized /
    cropped to S when ``img_size`` is given)."""

    def __init__(self, images: Tensor, labels: Tensor | None = None, img_size: int | None = None) -> None:
        self.images, self.img_size = images, img_size
        self.labels = labels if labels is not None else torch.full((images.shape[0],), -1, dtype=torch.int64)
        self.view = ResizeCropView(img_size) if img_size is not None and img_size != images.shape[-1] else None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, indices: Sequence[int]) -> dict[str, Any]:
        images = self.images[list(indices)]
        if self.view is not None:
            images = torch.stack([self.view(img)[0].as_subclass(Tensor) for img in images])
        return _batch(images, self.labels[list(indices)], indices, [""] * len(indices))


class FashionMNISTImages(TensorImages):
    """A Fashion-MNIST split whose images (the IDX file) are read on first access, in the process that reads
    them (a cache hit reads only the labels file)."""

    def __init__(self, split: str, root: str | None, labels: Tensor, img_size: int) -> None:
        super().__init__(torch.zeros(0, 1, 28, 28, dtype=torch.uint8), labels, img_size)
        self.split, self.root, self.loaded = split, root, False
        self.view = ResizeCropView(img_size) if img_size != 28 else None

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, indices: Sequence[int]) -> dict[str, Any]:
        if not self.loaded:
            self.images, self.loaded = load_fashion_mnist(self.split, self.root).images, True
        return super().__getitem__(indices)


class SplitSource:
    """One split of an evaluation task, read in batches (the interface extraction uses).

    Attributes:
        name: for messages ("ROOT/train", the shard pattern...). class_names: list[str] or None.
    """

    name: str = "split"
    class_names: list[str] | None = None

    def identity(self) -> dict[str, Any]:
        """A JSON descriptor of the data, cheap to compute (no image is read): the cache key's data part."""
        raise NotImplementedError

    def batches(self, batch_size: int, num_workers: int = 0, rank: int = 0, world_size: int = 1,
                pin_memory: bool = False) -> Iterator[dict[str, Any]]:
        """Rank ``rank``'s share of the batches (all ranks together: every selected sample once)."""
        raise NotImplementedError

    def num_batches(self, batch_size: int, rank: int = 0, world_size: int = 1) -> int | None:
        """How many batches :meth:`batches` yields on ``rank`` (None when unknown)."""
        return None

    def stream_errors(self) -> tuple[int, str]:
        """(reads that failed outside any one image in the last pass, e.g. a truncated shard; first message)."""
        return 0, ""


class IndexedSource(SplitSource):
    """A map-style dataset and the selected sample indices (sorted); batch k = indices[k B : (k + 1) B], and rank
    r of W takes a contiguous block of ceil(batches / W) batches (no padding, no sample twice)."""

    def __init__(self, dataset: Dataset, identity: dict[str, Any], name: str, class_names: list[str] | None,
                 indices: Tensor | None = None) -> None:
        self.dataset, self._identity, self.name, self.class_names = dataset, identity, name, class_names
        self.indices = indices if indices is not None else torch.arange(len(dataset))  # type: ignore[arg-type]

    def identity(self) -> dict[str, Any]:
        return {**self._identity, "selected": _indices_digest(self.indices, len(self.dataset))}  # type: ignore[arg-type]

    def select(self, limit: int | None, seed: int = 0) -> IndexedSource:
        """A seeded random subset of ``limit`` samples (original order kept; see :func:`subset_indices`)."""
        keep = subset_indices(len(self.indices), limit, seed)
        return IndexedSource(self.dataset, self._identity, self.name, self.class_names, self.indices[keep])

    def _rank_batches(self, batch_size: int, rank: int, world_size: int) -> list[list[int]]:
        blocks = [self.indices[s: s + batch_size].tolist() for s in range(0, len(self.indices), batch_size)]
        per_rank = math.ceil(len(blocks) / world_size)
        return blocks[rank * per_rank: (rank + 1) * per_rank]

    def num_batches(self, batch_size: int, rank: int = 0, world_size: int = 1) -> int:
        return len(self._rank_batches(batch_size, rank, world_size))

    def batches(self, batch_size: int, num_workers: int = 0, rank: int = 0, world_size: int = 1,
                pin_memory: bool = False) -> Iterator[dict[str, Any]]:
        blocks = self._rank_batches(batch_size, rank, world_size)
        if not blocks:
            return iter(())
        # batch_size=None: the dataset is indexed with a whole block and returns the batch (no per-item collate)
        return iter(DataLoader(self.dataset, sampler=blocks, batch_size=None, num_workers=num_workers,
                               pin_memory=pin_memory))


def subset_indices(n: int, limit: int | None, seed: int = 0) -> Tensor:
    """Positions of a seeded random subset of ``limit`` of ``n`` samples, sorted; all when None or larger."""
    if limit is None or limit >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values


def _indices_digest(indices: Tensor, total: int) -> str:
    if indices.shape[0] == total:
        return "all"
    return hashlib.sha256(indices.numpy().astype(np.int64).tobytes()).hexdigest()[:16]


def default_normalisation(dataset: str, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Fashion-MNIST's own statistics; ImageNet's otherwise (averaged over RGB for 1-channel backbones)."""
    if dataset == "fashion_mnist":
        return tuple(FMNIST_MEAN), tuple(FMNIST_STD)
    if in_chans == 1:
        return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
    return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)


def subset(data: LabelledImages, limit: int | None, seed: int = 0) -> LabelledImages:
    """A seeded random subset of ``limit`` samples (kept in their original order); all when None or larger."""
    keep = subset_indices(data.labels.shape[0], limit, seed)
    return LabelledImages(data.images[keep], data.labels[keep])


def folder_source(folder: Path, img_size: int, in_chans: int, classes: Sequence[str] | None = None,
                  split: str = "train") -> IndexedSource:
    """``folder/CLASS/IMAGE`` as a source; ``classes`` fixes the label order (the train split's).

    Raises:
        VispreError: a class folder outside ``classes`` (named, with the train classes).
    """
    files, found = folder_samples(folder, labels=True)
    names = list(classes) if classes is not None else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise VispreError(f"{folder}: class folders {unknown} are not among the train classes {names} (every "
                          f"{split} class needs a train folder of the same name)")
    index = {c: i for i, c in enumerate(names)}
    labels = [index[f.relative_to(folder).parts[0]] for f in files]
    digest = hashlib.sha256()
    for f in files:
        stat = f.stat()
        digest.update(f"{f.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    identity = {"kind": "image_folder", "folder": str(folder.resolve()), "files": len(files),
                "stat_digest": digest.hexdigest(), "classes": names, "img_size": img_size, "in_chans": in_chans}
    return IndexedSource(FolderImages(files, labels, img_size, in_chans), identity, str(folder), names)


def fashion_mnist_source(split: str, root: str | None, img_size: int, in_chans: int) -> IndexedSource:
    """A Fashion-MNIST split as a source (identity: its IDX files' paths, sizes and mtimes).

    Raises:
        VispreError: a backbone that does not take 1-channel images. FileNotFoundError: no IDX files.
    """
    if in_chans != 1:
        raise VispreError(f"fashion_mnist images have 1 channel(s) but the backbone expects in_chans={in_chans}")
    files = find_split_files(split, root)
    labels = torch.from_numpy(read_idx(files[1]).astype(np.int64))
    identity = {"kind": "fashion_mnist", "split": split, "files": [_stat(f) for f in files], "img_size": img_size}
    return IndexedSource(FashionMNISTImages(split, root, labels, img_size), identity, f"Fashion-MNIST {split}",
                         list(FMNIST_CLASSES))


def tensor_source(images: Tensor, labels: Tensor | None = None) -> IndexedSource:
    """uint8 [N, C, H, W] images in memory as a source (identity: their content; the only one they have)."""
    digest = hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()
    identity = {"kind": "tensor", "shape": list(images.shape), "digest": digest}
    return IndexedSource(TensorImages(images, labels), identity, f"{images.shape[0]} images in memory", None)


def _stat(path: Path) -> list[Any]:
    stat = Path(path).stat()
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def check_source(dataset: str, root: str | None, train_urls: object, test_urls: object) -> None:
    """Raise VispreError when ``dataset`` is unknown or lacks what it reads from (root / shard patterns)."""
    if dataset not in DATASETS:
        raise VispreError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    if dataset == "image_folder" and root is None:
        raise VispreError("dataset image_folder needs `root` (a folder with train/ and test/ class folders)")
    if dataset == "shards" and (train_urls is None or test_urls is None):
        raise VispreError("dataset shards needs `train_urls` and `test_urls` (shard patterns or folders)")


class TaskSources(NamedTuple):
    """The two splits of a task, its class names (None: unknown, e.g. shards without classes.json) and the
    per-channel normalisation (length C)."""

    train: SplitSource
    test: SplitSource
    class_names: list[str] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]


def image_folder_splits(root: str | Path) -> tuple[Path, Path]:
    """(``root/train``, ``root/test`` or ``root/val``). Raises FileNotFoundError naming what is needed."""
    root = Path(root)
    test_dir = next((root / name for name in TEST_SPLIT_NAMES if (root / name).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise FileNotFoundError(f"image folder task: {root} needs train/ and test/ (or val/) sub-folders, each "
                                f"with one folder of images per class")
    return root / "train", test_dir


def open_task(dataset: str, img_size: int, in_chans: int, root: str | None = None,
              train_urls: str | Sequence[str] | None = None, test_urls: str | Sequence[str] | None = None,
              mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
              limit_train: int | None = None, limit_test: int | None = None) -> TaskSources:
    """The train and test sources of a task at the backbone's ``img_size`` and ``in_chans`` (no image read).

    Raises:
        VispreError / FileNotFoundError: unknown dataset, missing data, a test class folder absent from train,
        a backbone whose channels the data cannot give.
    """
    from vispre.eval.shard_source import shard_source  # shards pull in webdataset: only when used

    check_source(dataset, root, train_urls, test_urls)
    if dataset == "fashion_mnist":
        train, test = fashion_mnist_source("train", root, img_size, in_chans), \
            fashion_mnist_source("test", root, img_size, in_chans)
    elif dataset == "image_folder":
        train_dir, test_dir = image_folder_splits(root)  # type: ignore[arg-type]
        train = folder_source(train_dir, img_size, in_chans)
        test = folder_source(test_dir, img_size, in_chans, train.class_names, split=test_dir.name)
    else:
        train = shard_source(train_urls, img_size, in_chans)  # type: ignore[arg-type]
        test = shard_source(test_urls, img_size, in_chans)  # type: ignore[arg-type]
    default_mean, default_std = default_normalisation(dataset, in_chans)
    return TaskSources(train.select(limit_train), test.select(limit_test), train.class_names or test.class_names,
                       tuple(mean or default_mean), tuple(std or default_std))


def read_all(source: SplitSource, batch_size: int = 256) -> LabelledImages:
    """Every selected image of ``source`` in memory (small sets only: tests, tools).

    Raises:
        VispreError: naming the first image that could not be read, or an empty set.
    """
    images, labels = [], []
    for batch in source.batches(batch_size):
        bad = [p for p in batch["problem"] if p]
        if bad:
            raise VispreError(f"cannot read image {bad[0]}")
        images.append(batch["image"])
        labels.append(batch["label"])
    if not images:
        raise VispreError(f"{source.name} holds no samples")
    return LabelledImages(torch.cat(images), torch.cat(labels))


def read_image_folder(folder: Path, img_size: int, in_chans: int,
                      classes: Sequence[str] | None = None) -> tuple[LabelledImages, list[str]]:
    """``folder/CLASS/IMAGE`` in memory -> (LabelledImages, class names); see :func:`folder_source`."""
    source = folder_source(Path(folder), img_size, in_chans, classes)
    return read_all(source), list(source.class_names or [])


def read_shards(urls: str | Sequence[str], img_size: int, in_chans: int) -> LabelledImages:
    """Every sample of the shards in memory, in shard order (small sets only). Raises VispreError naming the
    first bad sample (an evaluation set must be read completely)."""
    from vispre.eval.shard_source import shard_source

    return read_all(shard_source(urls, img_size, in_chans))


def load_task_data(dataset: str, img_size: int, in_chans: int, root: str | None = None,
                   train_urls: str | Sequence[str] | None = None, test_urls: str | Sequence[str] | None = None,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> TaskData:
    """A task's train and test images in memory (small sets: tests and tools; the suite streams instead).

    Raises:
        VispreError / FileNotFoundError: as :func:`open_task`, and for unreadable images.
    """
    task = open_task(dataset, img_size, in_chans, root, train_urls, test_urls, mean, std)
    train, test = read_all(task.train), read_all(task.test)
    num_classes = len(task.class_names) if task.class_names else int(max(train.labels.max(), test.labels.max())) + 1
    return TaskData(train, test, num_classes, task.mean, task.std)
