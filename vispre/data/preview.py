"""A few un-augmented images of a data module, for figures (e.g. MAE reconstructions).

Data modules expose ``preview_images(count, img_size) -> PreviewImages``: ``count`` images at the model's
input size, resized (shorter side, bicubic) and centre-cropped but not augmented or normalised, with the
normalisation the module's view applies, so a figure can feed the model exactly what training feeds it
and show the result in pixel space.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.transforms import v2

from vispre.data.transforms import ViewTransform, resize_center_crop


class PreviewImages(NamedTuple):
    """images: uint8 [N, C, S, S]; mean, std: per-channel normalisation (length C) of the module's views."""

    images: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def normalised(self) -> Tensor:
        """float [N, C, S, S]: ``(images / 255 - mean) / std``, what the model sees."""
        return (self.images.float() / 255.0 - self._stat(self.mean)) / self._stat(self.std)

    def to_pixels(self, normalised: Tensor) -> Tensor:
        """Undo :meth:`normalised` on a float [N, C, S, S] tensor (values around [0, 1])."""
        return normalised.float().cpu() * self._stat(self.std) + self._stat(self.mean)

    @staticmethod
    def _stat(values: Sequence[float]) -> Tensor:
        return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


def resize_crop(images: Tensor, img_size: int) -> Tensor:
    """uint8 [N, C, H, W] -> uint8 [N, C, S, S]: shorter side to S (bicubic), centre crop (no-op at size S)."""
    if images.shape[-2:] == (img_size, img_size):
        return images
    ops = v2.Compose(resize_center_crop(img_size))
    return torch.stack([ops(image).as_subclass(Tensor) for image in images])


def view_normalisation(view: ViewTransform, default: tuple[Sequence[float], Sequence[float]]
                       ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) a view normalises with: its ``mean``/``std`` attributes, else the first
    ``v2.Normalize`` among its ops, else ``default``."""
    if hasattr(view, "mean") and hasattr(view, "std"):
        return tuple(view.mean), tuple(view.std)
    inner = getattr(view, "transform", None)
    pipelines = inner if isinstance(inner, list) else [inner]
    for pipeline in pipelines:
        for op in getattr(pipeline, "transforms", []):
            if isinstance(op, v2.Normalize):
                return tuple(op.mean), tuple(op.std)
    return tuple(default[0]), tuple(default[1])


__all__ = ["PreviewImages", "resize_crop", "view_normalisation"]
