"""Synthetic random images for tests and smoke runs (no files, deterministic)."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from vispre.data.in_memory import ViewDataset
from vispre.data.preview import PreviewImages, resize_crop, view_normalisation
from vispre.data.transforms import ViewTransform


class RepeatViews(ViewTransform):
    """Returns ``num_views`` copies of an already-float image (no augmentation)."""

    def __init__(self, num_views: int = 1) -> None:
        self.num_views = num_views

    def __call__(self, image: torch.Tensor) -> list[torch.Tensor]:
        return [image.float() / 255.0 for _ in range(self.num_views)]


class SyntheticDataModule(L.LightningDataModule):
    """Random uint8 images with random labels.

    Args:
        img_size, in_chans: image shape. num_samples: dataset length. num_classes: label range.
        batch_size: per-device batch. view: view transform (default: ``num_views`` plain copies).
        num_views: used when ``view`` is None. with_labels: include labels.
    """

    def __init__(self, img_size: int = 32, in_chans: int = 3, num_samples: int = 64, num_classes: int = 10,
                 batch_size: int = 8, view: ViewTransform | None = None, num_views: int = 1,
                 with_labels: bool = True, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        images = torch.randint(0, 256, (num_samples, in_chans, img_size, img_size), generator=gen,
                               dtype=torch.uint8)
        labels = torch.randint(0, num_classes, (num_samples,), generator=gen) if with_labels else None
        self.batch_size, self.in_chans = batch_size, in_chans
        self.dataset = ViewDataset(images, labels, view or RepeatViews(num_views))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def preview_images(self, count: int, img_size: int) -> PreviewImages:
        """The first ``count`` images at ``img_size``, with the view's normalisation (RepeatViews: none)."""
        identity = ((0.0,) * self.in_chans, (1.0,) * self.in_chans)
        images = resize_crop(self.dataset.images[:count], img_size)
        return PreviewImages(images, *view_normalisation(self.dataset.transform, identity))


__all__ = ["RepeatViews", "SyntheticDataModule"]
