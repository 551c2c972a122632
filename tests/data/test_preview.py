"""Preview images of the data modules: un-augmented, at the requested size, with the views' normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.helpers import fake_fashion_mnist, write_shard_set
from vispre.data import (FASHION_MNIST_MEAN, FASHION_MNIST_STD, FashionMNISTDataModule, MAEView, PreviewImages,
                         SimCLRViews, SyntheticDataModule, WebDatasetDataModule)


def test_streaming_preview_is_the_first_samples_in_shard_order(tmp_path: Path) -> None:
    write_shard_set(tmp_path, 10, per_shard=4)
    written = torch.randint(0, 256, (10, 1, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    dm = WebDatasetDataModule(str(tmp_path), in_chans=1, view=MAEView(6, mean=(0.3,), std=(0.2,)))
    preview = dm.preview_images(5, 6)
    assert torch.equal(preview.images, written[:5]) and (preview.mean, preview.std) == ((0.3,), (0.2,))
    assert dm.preview_images(3, 12).images.shape == (3, 1, 12, 12)  # resized (bicubic), not cropped away


def test_fashion_mnist_preview_is_the_test_split(tmp_path: Path) -> None:
    images, _ = fake_fashion_mnist(tmp_path, "test", 6)
    preview = FashionMNISTDataModule(root=str(tmp_path)).preview_images(4, 28)
    assert np.array_equal(preview.images[:, 0].numpy(), images[:4])
    assert (preview.mean, preview.std) == (FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    custom = FashionMNISTDataModule(root=str(tmp_path), view=SimCLRViews(28, mean=(0.1,), std=(0.9,)))
    assert custom.preview_images(1, 28)[1:] == ((0.1,), (0.9,))  # read from the view's v2.Normalize


def test_normalised_and_back() -> None:
    images = SyntheticDataModule(img_size=8, in_chans=3, num_samples=4).preview_images(4, 8).images
    preview = PreviewImages(images, (0.5, 0.4, 0.3), (0.2, 0.25, 0.5))
    x = preview.normalised()
    torch.testing.assert_close(x[:, 1], (images[:, 1].float() / 255 - 0.4) / 0.25)
    torch.testing.assert_close(preview.to_pixels(x), images.float() / 255)
