"""Labelled image sets of the evaluation suite, read whole into memory as fixed-size uint8 tensors.

    fashion_mnist   the IDX files (vispre.data.fashion_mnist), 28x28 grey
    image_folder    ``ROOT/train/CLASS/*.png|jpg...`` and ``ROOT/test/CLASS/...`` (or ``ROOT/val/``), read with PIL
    shards          webdataset shards of ``KEY.png|jpg`` + ``KEY.cls`` (vispre shards), any pattern
                    vispre.data.resolve_shards accepts (brace pattern, glob, folder, remote URL)

Folder and shard images are resized (shorter side, bicubic) and centre-cropped to the backbone's image size
and converted to its channel count once, at load time, so the deterministic EvalView only normalises.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2

from vispre.data.fashion_mnist import MEAN as FMNIST_MEAN
from vispre.data.fashion_mnist import STD as FMNIST_STD
from vispre.data.fashion_mnist import LabelledImages, load_fashion_mnist
from vispre.data.shard_list import resolve_shards
from vispre.data.shard_writer import folder_samples
from vispre.data.bad_samples import BadSampleCounter
from vispre.data.streaming import ShardStream
from vispre.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ViewTransform, resize_center_crop
from vispre.errors import VispreError

DATASETS = ("fashion_mnist", "image_folder", "shards")
TEST_SPLIT_NAMES = ("test", "val")


class TaskData(NamedTuple):
    """The images of one task: train/test LabelledImages (images [N, C, S, S] uint8, labels [N] int64), the
    class count and the per-channel normalisation (length C)."""

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


def default_normalisation(dataset: str, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Fashion-MNIST's own statistics; ImageNet's otherwise (averaged over RGB for 1-channel backbones)."""
    if dataset == "fashion_mnist":
        return tuple(FMNIST_MEAN), tuple(FMNIST_STD)
    if in_chans == 1:
        return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
    return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)


def subset(data: LabelledImages, limit: int | None, seed: int = 0) -> LabelledImages:
    """A seeded random subset of ``limit`` samples (kept in their original order); all when None or larger."""
    n = data.labels.shape[0]
    if limit is None or limit >= n:
        return data
    keep = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return LabelledImages(data.images[keep], data.labels[keep])


def read_image_folder(folder: Path, img_size: int, in_chans: int,
                      classes: Sequence[str] | None = None) -> tuple[LabelledImages, list[str]]:
    """``folder/CLASS/IMAGE`` -> (LabelledImages, class names). ``classes`` fixes the label order (the train
    split's); a class folder outside it is an error."""
    files, found = folder_samples(folder, labels=True)
    classes = list(classes) if classes is not None else found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise VispreError(f"{folder}: class folders {unknown} are not among the train classes {classes}")
    index = {c: i for i, c in enumerate(classes)}
    view, mode = ResizeCropView(img_size), "L" if in_chans == 1 else "RGB"
    images, labels = [], []
    for file in files:
        try:
            with Image.open(file) as img:
                images.append(view(img.convert(mode))[0])
        except OSError as err:
            raise VispreError(f"cannot read image {file}: {err}") from err
        labels.append(index[file.relative_to(folder).parts[0]])
    return LabelledImages(torch.stack(images), torch.tensor(labels, dtype=torch.int64)), classes


def load_image_folder(root: str | Path, img_size: int, in_chans: int) -> tuple[LabelledImages, LabelledImages, int]:
    """``root/train`` and ``root/test`` (or ``root/val``) class folders -> (train, test, number of classes)."""
    root = Path(root)
    test_dir = next((root / name for name in TEST_SPLIT_NAMES if (root / name).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise FileNotFoundError(f"image folder task: {root} needs train/ and test/ (or val/) sub-folders, each "
                                f"with one folder of images per class")
    train, classes = read_image_folder(root / "train", img_size, in_chans)
    test, _ = read_image_folder(test_dir, img_size, in_chans, classes)
    return train, test, len(classes)


def read_shards(urls: str | Sequence[str], img_size: int, in_chans: int) -> LabelledImages:
    """Every sample of the shards, in shard order. Raises VispreError naming the first bad sample (an
    evaluation set must be read completely)."""
    shards = resolve_shards(urls if isinstance(urls, str) else list(urls)).urls
    counter = BadSampleCounter(0)
    stream = ShardStream(shards, ResizeCropView(img_size), in_chans=in_chans, with_labels=True,
                         shuffle_shards=False, shuffle_buffer=0, counter=counter)
    samples = list(stream)
    seen, bad = counter.totals()
    if bad:
        raise VispreError(f"shards {urls!r}: {bad} of {seen} samples unreadable; first: {counter.first_error()}")
    if not samples:
        raise VispreError(f"shards {urls!r} hold no samples")
    return LabelledImages(torch.stack([s["views"][0] for s in samples]), torch.stack([s["label"] for s in samples]))


def check_source(dataset: str, root: str | None, train_urls: object, test_urls: object) -> None:
    """Raise VispreError when ``dataset`` is unknown or lacks what it reads from (root / shard patterns)."""
    if dataset not in DATASETS:
        raise VispreError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    if dataset == "image_folder" and root is None:
        raise VispreError("dataset image_folder needs `root` (a folder with train/ and test/ class folders)")
    if dataset == "shards" and (train_urls is None or test_urls is None):
        raise VispreError("dataset shards needs `train_urls` and `test_urls` (shard patterns or folders)")


def load_task_data(dataset: str, img_size: int, in_chans: int, root: str | None = None,
                   train_urls: str | Sequence[str] | None = None, test_urls: str | Sequence[str] | None = None,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> TaskData:
    """Read a task's train and test images at the backbone's ``img_size`` and ``in_chans``.

    Raises:
        VispreError / FileNotFoundError: unknown dataset, missing data, or images whose channel count does not
        match the backbone.
    """
    check_source(dataset, root, train_urls, test_urls)
    if dataset == "fashion_mnist":
        train, test = load_fashion_mnist("train", root), load_fashion_mnist("test", root)
        num_classes = 10
    elif dataset == "image_folder":
        train, test, num_classes = load_image_folder(root, img_size, in_chans)  # type: ignore[arg-type]
    else:  # shards
        train, test = read_shards(train_urls, img_size, in_chans), read_shards(test_urls, img_size, in_chans)
        num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    if train.images.shape[1] != in_chans:
        raise VispreError(f"{dataset} images have {train.images.shape[1]} channel(s) but the backbone expects "
                         f"in_chans={in_chans}")
    default_mean, default_std = default_normalisation(dataset, in_chans)
    return TaskData(train, test, num_classes, tuple(mean or default_mean), tuple(std or default_std))
