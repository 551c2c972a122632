"""In-memory image data: a labelled image tensor dataset with view transforms, and the Fashion-MNIST DataModule."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vispre.data.batch_views import apply_batch_views
from vispre.data.fashion_mnist import MEAN, STD, load_fashion_mnist
from vispre.data.preview import PreviewImages, resize_crop, view_normalisation
from vispre.data.resume import (LoaderPosition, ResumableShuffleSampler, position_from_state, position_state,
                                shuffle_seed, trained_position)
from vispre.data.transforms import MAEView, ViewTransform
from vispre.errors import VispreError


class ViewDataset(Dataset):
    """Map-style dataset over in-memory images yielding ``{"views": [...], "label": int}``.

    Args:
        images: [N, C, H, W] uint8.
        labels: [N] int64 or None.
        transform: view transform applied to each image.
    """

    def __init__(self, images: Tensor, labels: Tensor | None, transform: ViewTransform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        item = {"views": self.transform(self.images[index])}
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item


class FashionMNISTDataModule(L.LightningDataModule):
    """Fashion-MNIST train split for pretraining (label-free by default), read from the local IDX files.

    Args:
        root: the data folder, authoritative when given (None: the default folders; see vispre.data.fashion_mnist).
        batch_size: per-device batch size (the lr is scaled by the global batch).
        num_workers: DataLoader workers.
        view: training view transform; default MAEView at 28 px with Fashion-MNIST statistics.
        with_labels: include labels in training batches (for online probes).
        seed: base seed of the per-epoch shuffles (default: ``seed_everything``'s seed).

    The shuffle order of epoch ``e`` depends only on ``seed`` and ``e`` (:class:`ResumableShuffleSampler`);
    checkpoints record the epoch and the batches trained (``state_dict``), so a resumed run continues the
    same order, also from a checkpoint saved mid-epoch. Limit: random view augmentations draw from the
    process RNG (restored by RNGStateCheckpoint) or, with ``num_workers > 0``, from the workers' RNG, which a
    resume re-seeds; resumes are sample-exact, bit-exact only with deterministic views or ``num_workers=0``
    at an epoch boundary.
    """

    def __init__(self, root: str | None = None, batch_size: int = 256, num_workers: int = 2,
                 view: ViewTransform | None = None, with_labels: bool = False, seed: int | None = None) -> None:
        super().__init__()
        if batch_size < 1:
            raise VispreError(f"batch_size must be >= 1, got {batch_size}")
        self.root, self.batch_size, self.num_workers = root, batch_size, num_workers
        self.view = view or MAEView(28, mean=MEAN, std=STD)
        self.with_labels, self.seed = with_labels, seed
        self.train_set: ViewDataset | None = None
        self.sampler: ResumableShuffleSampler | None = None
        self.resume_position: LoaderPosition | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            data = load_fashion_mnist("train", self.root)
            self.train_set = ViewDataset(data.images, data.labels if self.with_labels else None, self.view)

    def train_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        per_rank = -(-len(self.train_set) // world_size)
        self.sampler = ResumableShuffleSampler(self.train_set, self.batch_size, per_rank // self.batch_size,
                                               seed=shuffle_seed(self.seed), rank=rank, world_size=world_size)
        if self.resume_position is not None:
            self.sampler.resume_at(self.resume_position)
            self.resume_position = None
        # own generator: creating an iterator (a resumed run does it mid-epoch) must not draw from the global RNG
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=self.sampler, drop_last=True,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          generator=torch.Generator().manual_seed(shuffle_seed(self.seed)))

    def state_dict(self) -> dict[str, Any]:
        """The loader position (epoch, batches trained) saved in every checkpoint."""
        return position_state(trained_position(getattr(self, "trainer", None)))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the sample order at the checkpoint's position (applied when the loader is built)."""
        self.resume_position = position_from_state(state_dict)
        if self.sampler is not None and self.resume_position is not None:
            self.sampler.resume_at(self.resume_position)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Views made on the batch (:class:`~vispre.data.BatchSimCLRViews`) are made here, on the training device."""
        return apply_batch_views(self.view, batch)

    def preview_images(self, count: int, img_size: int) -> PreviewImages:
        """The first ``count`` images of the held-out test split, at ``img_size`` (not augmented).

        Returns:
            PreviewImages(uint8 [count, 1, S, S], mean, std of the view).
        """
        images = load_fashion_mnist("test", self.root).images[:count]
        return PreviewImages(resize_crop(images, img_size), *view_normalisation(self.view, (MEAN, STD)))


__all__ = ["FashionMNISTDataModule", "ViewDataset"]
