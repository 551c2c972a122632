"""Batched view augmentation: SimCLR's views and multi-crop of a whole batch at once, on the device it trains on.

A per-image torchvision pipeline costs ~0.4 ms per view on a 28 px image: for a 256-image batch of two views
that is ~0.22 s of a loader worker, which on a 2-core machine competes with the training step for the cores
(docs/data.md, "Views made on the batch"). :class:`BatchSimCLRViews` (and :class:`BatchMultiCropViews` for
multi-crop, both through :class:`BatchAugmentedViews`) makes the same augmentations on the
stacked uint8 batch in a handful of tensor ops with per-sample random parameters: the loader only decodes,
and the data module's ``on_after_batch_transfer`` hook (:func:`apply_batch_views`) makes the views after the
batch reached the training device, the GPU when there is one.

Random parameters are drawn on the CPU from the process RNG (which RNGStateCheckpoint restores on resume),
so a batch gets the same views on any device; only the pixel arithmetic runs on the device.

Differences from the per-image pipeline, by design: the ops run in float without rounding to uint8 between
them; the crop is resampled from the whole image (taps just outside the crop box read the real neighbours,
where torchvision's crop-then-resize repeats the box's edge pixels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as nnf
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from vispre.data.transforms import (AugmentedViews, MultiCropViews, SimCLRViews, ViewRecipe, ViewTransform,
                                    blur_kernel_size, resize_center_crop)
from vispre.errors import VispreError

RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's default aspect-ratio range
CROP_TRIES = 10  # RandomResizedCrop's attempts before its centre-crop fallback


class BatchViewTransform(ViewTransform):
    """A view transform applied to whole batches: ``__call__`` brings one image to the uint8
    ``[C, load_size, load_size]`` a batch can stack (``[image]``); :meth:`batch_views` makes the views of a
    stacked batch. Data modules call it through :func:`apply_batch_views`."""

    load_size: int

    def load(self, image: Tensor | Image.Image) -> Tensor:
        """uint8 [C, H, W] or PIL -> uint8 [C, load_size, load_size] (shorter side to load_size, centre crop)."""
        x = image.as_subclass(Tensor) if isinstance(image, Tensor) else F.pil_to_tensor(image)
        if x.shape[-2:] != (self.load_size, self.load_size):
            for op in resize_center_crop(self.load_size):
                x = op(x)
        return x.as_subclass(Tensor)

    def __call__(self, image: Tensor | Image.Image) -> list[Tensor]:
        return [self.load(image)]

    def batch_views(self, images: Tensor) -> list[Tensor]:
        """uint8 [B, C, load_size, load_size] -> the views, each float [B, C, S, S]."""
        raise NotImplementedError


def apply_batch_views(view: ViewTransform, batch: Any) -> Any:
    """A data module's ``on_after_batch_transfer``: replace ``batch["views"]`` (the one stacked uint8 image
    batch a :class:`BatchViewTransform` loads) by its views; any other view or batch passes unchanged."""
    if isinstance(view, BatchViewTransform) and isinstance(batch, dict) and "views" in batch:
        (images,) = batch["views"]
        batch["views"] = view.batch_views(images)
    return batch


def resized_crop_boxes(count: int, height: int, width: int, scale: Sequence[float],
                       ratio: Sequence[float] = RATIO) -> Tensor:
    """RandomResizedCrop's box sampling (torchvision ``RandomResizedCrop.get_params``) for ``count`` images at once.

    Each image tries up to 10 (area fraction ~ U(scale), log aspect ~ U(log ratio)) boxes and keeps the first
    that fits; none fitting, it takes the centred box of the whole image clamped to the ratio range.

    Returns:
        float [count, 4]: top, left, box height, box width (whole pixels).
    """
    area = height * width
    log_ratio = torch.tensor(ratio, dtype=torch.float64).log()
    target = area * torch.empty(count, CROP_TRIES, dtype=torch.float64).uniform_(scale[0], scale[1])
    aspect = torch.empty(count, CROP_TRIES, dtype=torch.float64).uniform_(float(log_ratio[0]),
                                                                          float(log_ratio[1])).exp()
    w, h = (target * aspect).sqrt().round(), (target / aspect).sqrt().round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)  # the first box that fits (0 when none does)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    top = (torch.rand(count, dtype=torch.float64) * (height - h + 1)).floor()
    left = (torch.rand(count, dtype=torch.float64) * (width - w + 1)).floor()
    in_ratio = width / height
    if in_ratio < min(ratio):
        fallback_w, fallback_h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fallback_w, fallback_h = round(height * max(ratio)), height
    else:
        fallback_w, fallback_h = width, height
    fallback = torch.tensor([(height - fallback_h) // 2, (width - fallback_w) // 2, fallback_h, fallback_w],
                            dtype=torch.float64)
    boxes = torch.stack([top, left, h, w], dim=1)
    return torch.where(fits.any(dim=1, keepdim=True), boxes, fallback).float()


def crop_resize(images: Tensor, boxes: Tensor, size: int, flip: Tensor, mode: str = "bicubic") -> Tensor:
    """Resample each image's box to ``size`` x ``size`` (optionally mirrored) in one ``grid_sample``.

    Output pixel (i, j) of image b reads the input at ``(top + (i + 0.5) h / S - 0.5, left + (j + 0.5) w / S -
    0.5)``: torchvision's resize of the cropped box (half-pixel centres), clamped at the image border.

    Args:
        images: float [B, C, H, W]. boxes: [B, 4] top, left, height, width (pixels). size: output side S.
        flip: bool [B], mirror left-right. mode: "bilinear" or "bicubic" (grid_sample's, a = -0.75 as torch's).

    Returns:
        float [B, C, S, S].
    """
    b, c, height, width = images.shape
    boxes = boxes.to(images.device, images.dtype)
    top, left, h, w = boxes.unbind(dim=1)
    theta = torch.zeros(b, 2, 3, device=images.device, dtype=images.dtype)
    sign = 1.0 - 2.0 * flip.to(images.device, images.dtype)
    theta[:, 0, 0] = sign * w / width
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = nnf.affine_grid(theta, [b, c, size, size], align_corners=False)
    return nnf.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=False)


def rgb_to_hsv(images: Tensor) -> Tensor:
    """float RGB [B, 3, H, W] in [0, 1] -> HSV [B, 3, H, W], hue in [0, 1) (0 for grey pixels)."""
    r, g, b = images.unbind(dim=1)
    value, low = images.amax(dim=1), images.amin(dim=1)
    chroma = value - low
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(value == r, ((g - b) / safe) % 6, torch.where(value == g, (b - r) / safe + 2,
                                                                     (r - g) / safe + 4))
    hue = torch.where(chroma > 0, hue / 6, torch.zeros_like(hue))
    saturation = torch.where(value > 0, chroma / torch.where(value > 0, value, torch.ones_like(value)),
                             torch.zeros_like(value))
    return torch.stack([hue, saturation, value], dim=1)


def hsv_to_rgb(images: Tensor) -> Tensor:
    """HSV [B, 3, H, W] (hue in [0, 1)) -> RGB [B, 3, H, W]: channel n is ``v - v s clamp(min(k, 4 - k), 0, 1)``,
    ``k = (n + 6 h) mod 6`` with n = 5, 3, 1 for R, G, B."""
    hue, saturation, value = images.unbind(dim=1)
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = (n + 6 * hue) % 6
        channels.append(value - value * saturation * torch.minimum(k, 4 - k).clamp(0, 1))
    return torch.stack(channels, dim=1)


def grey(images: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, 1, H, W] luma (ITU-R 601, torchvision's weights) for RGB; C = 1 passes."""
    if images.shape[1] == 1:
        return images
    r, g, b = images.unbind(dim=1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    return (factor * images + (1 - factor) * other).clamp(0, 1)


def adjust_brightness(images: Tensor, factor: Tensor) -> Tensor:
    """``factor`` [B] x image, clipped to [0, 1] (torchvision's adjust_brightness per sample)."""
    return _blend(images, torch.zeros_like(images), factor.view(-1, 1, 1, 1))


def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    """Blend with the image's mean luma by ``factor`` [B] (torchvision's adjust_contrast per sample)."""
    return _blend(images, grey(images).mean(dim=(1, 2, 3), keepdim=True), factor.view(-1, 1, 1, 1))


def adjust_saturation(images: Tensor, factor: Tensor) -> Tensor:
    """Blend with the grey image by ``factor`` [B] (torchvision's adjust_saturation per sample; C = 1 passes)."""
    if images.shape[1] == 1:
        return images
    return _blend(images, grey(images), factor.view(-1, 1, 1, 1))


def adjust_hue(images: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue by ``shift`` [B] turns in [-0.5, 0.5] (torchvision's adjust_hue per sample; C = 1 passes)."""
    if images.shape[1] == 1:
        return images
    hsv = rgb_to_hsv(images)
    hue = (hsv[:, 0] + shift.view(-1, 1, 1)) % 1.0
    return hsv_to_rgb(torch.stack([hue, hsv[:, 1], hsv[:, 2]], dim=1))


def gaussian_blur(images: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur with a per-sample ``sigma`` [B], reflect padding (torchvision's gaussian_blur).

    Args:
        images: float [B, C, H, W]. sigma: [B] > 0. kernel_size: odd tap count.
    """
    b, c, height, width = images.shape
    offsets = torch.arange(kernel_size, device=images.device, dtype=images.dtype) - (kernel_size - 1) / 2
    taps = torch.exp(-0.5 * (offsets / sigma.to(images.device, images.dtype).view(-1, 1)) ** 2)
    taps = (taps / taps.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [B*C, K]
    pad = kernel_size // 2
    x = nnf.pad(images.reshape(1, b * c, height, width), [pad, pad, pad, pad], mode="reflect")
    x = nnf.conv2d(x, taps.view(b * c, 1, 1, kernel_size), groups=b * c)
    x = nnf.conv2d(x, taps.view(b * c, 1, kernel_size, 1), groups=b * c)
    return x.view(b, c, height, width)


def apply_to(chosen: Tensor, op: Callable[..., Tensor], images: Tensor, *per_sample: Tensor) -> Tensor:
    """``images`` with ``op(images[chosen], *(p[chosen] for p in per_sample))`` written over the chosen samples.

    Args:
        chosen: bool [B] on the CPU. op: a batch op. images: float [B, ...] on any device. per_sample: [B] each.
    """
    index = chosen.nonzero().squeeze(1)
    if index.numel() == 0:
        return images
    on_device = index.to(images.device)
    changed = op(images.index_select(0, on_device), *(p[index].to(images.device) for p in per_sample))
    return images.index_copy(0, on_device, changed)


def solarize(images: Tensor) -> Tensor:
    """Invert the pixels at or above 128 / 255 (RandomSolarize(128) on the uint8 scale)."""
    return torch.where(images >= 128 / 255, 1 - images, images)


class BatchAugmentedViews(BatchViewTransform, AugmentedViews):
    """The views of an :class:`~vispre.data.transforms.AugmentedViews` (one recipe per view) made on the whole
    batch, with the same distributions. Per view and per sample: RandomResizedCrop box (bicubic) and flip; with
    ``jitter_prob`` the four ColorJitter ops in a random order with random factors; grey with ``grey_prob``;
    Gaussian blur and solarise with the view's probability; normalise. On 1-channel images saturation, hue and
    grey are no-ops, as in torchvision. Subclasses set ``load_size`` through :meth:`set_load_size`.

    Returns (:meth:`batch_views`): one float [B, C, recipe.size, recipe.size] per recipe.
    """

    def set_load_size(self, load_size: int | None) -> None:
        """``load_size``, or by default the largest view's side (SimCLR's ``img_size``, multi-crop's
        ``global_size``)."""
        self.load_size = int(max(recipe.size for recipe in self.recipes) if load_size is None else load_size)
        if self.load_size < 1:
            raise VispreError(f"load_size must be >= 1, got {load_size}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(load_size={self.load_size}, {self.transform!r})"

    def batch_views(self, images: Tensor) -> list[Tensor]:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise VispreError(f"{type(self).__name__} takes the uint8 [B, C, H, W] batch it loaded, got "
                              f"{images.dtype} {tuple(images.shape)}")
        x = images.float() / 255.0
        return [self.one_view(x, recipe) for recipe in self.recipes]

    def one_view(self, images: Tensor, recipe: ViewRecipe) -> Tensor:
        """float [B, C, H, W] in [0, 1] -> one normalised view float [B, C, recipe.size, recipe.size]."""
        count, chans, height, width = images.shape
        boxes = resized_crop_boxes(count, height, width, recipe.scale)
        flip = torch.rand(count) < self.hflip
        x = crop_resize(images, boxes, recipe.size, flip).clamp(0, 1)
        x = self.jitter(x)
        if self.photo.grey_prob > 0 and chans == 3:
            x = apply_to(torch.rand(count) < self.photo.grey_prob, lambda part: grey(part).expand_as(part), x)
        if recipe.blur_prob > 0:
            sigma = torch.empty(count).uniform_(*self.photo.blur_sigma)
            blur = partial(gaussian_blur, kernel_size=blur_kernel_size(recipe.size))
            x = apply_to(torch.rand(count) < recipe.blur_prob, blur, x, sigma)
        if recipe.solarize_prob > 0:
            x = apply_to(torch.rand(count) < recipe.solarize_prob, solarize, x)
        mean = torch.tensor([float(m) for m in self.photo.mean], device=x.device).view(1, -1, 1, 1)
        std = torch.tensor([float(s) for s in self.photo.std], device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def jitter(self, images: Tensor) -> Tensor:
        """ColorJitter per sample: with ``jitter_prob``, brightness, contrast, saturation, hue factors
        (U[max(0, 1 - s), 1 + s], hue U[-h, h]) applied in a random order per sample."""
        strengths = self.photo.jitter
        if self.photo.jitter_prob <= 0 or not any(strengths):
            return images
        count = images.shape[0]
        applied = torch.rand(count) < self.photo.jitter_prob
        factors = [torch.empty(count).uniform_(max(0.0, 1 - s), 1 + s) for s in strengths[:3]]
        factors.append(torch.empty(count).uniform_(-strengths[3], strengths[3]))
        order = torch.rand(count, 4).argsort(dim=1)  # a random permutation of the four ops per sample
        ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
        x = images
        for position in range(4):
            for index, op in enumerate(ops):
                if strengths[index] > 0:
                    x = apply_to(applied & (order[:, position] == index), op, x, factors[index])
        return x


class BatchSimCLRViews(BatchAugmentedViews, SimCLRViews):
    """:class:`~vispre.data.SimCLRViews` made on the whole batch (same arguments, same distributions; the ops
    of :class:`BatchAugmentedViews`).

    Args:
        load_size: the side images are stacked at before augmenting (shorter side resized, centre crop;
            default ``img_size``): crops are taken from this image, so for photos use more than ``img_size``
            (e.g. 256 for 224 views). Other args: :class:`~vispre.data.SimCLRViews`.

    Returns (:meth:`batch_views`): ``[view1, view2]``, each float [B, C, img_size, img_size].
    """

    def __init__(self, load_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.set_load_size(load_size)


class BatchMultiCropViews(BatchAugmentedViews, MultiCropViews):
    """:class:`~vispre.data.MultiCropViews` (DINO / iBOT / DINOv2 / POA multi-crop) made on the whole batch
    (same arguments, same distributions; the ops of :class:`BatchAugmentedViews`).

    Args:
        load_size: the side images are stacked at (default ``global_size``). Other args:
            :class:`~vispre.data.MultiCropViews`.

    Returns (:meth:`batch_views`): ``[global1, global2, local1, ..., localN]``: globals float
    [B, C, global_size, global_size], locals float [B, C, local_size, local_size].
    """

    def __init__(self, load_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.set_load_size(load_size)


__all__ = ["BatchAugmentedViews", "BatchMultiCropViews", "BatchSimCLRViews", "BatchViewTransform", "adjust_brightness",
           "adjust_contrast", "adjust_hue", "adjust_saturation", "apply_batch_views", "apply_to", "crop_resize",
           "gaussian_blur", "grey", "hsv_to_rgb", "resized_crop_boxes", "rgb_to_hsv", "solarize"]
