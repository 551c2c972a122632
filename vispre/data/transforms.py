"""View transforms: plain callables mapping one image to a list of normalised view tensors.

Every transform takes a uint8 tensor [C, H, W] or a PIL image and returns ``list[Tensor]`` of float
[C, img_size, img_size] views; datasets put that list under ``"views"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from vispre.errors import VispreError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _to_float(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


class ViewTransform:
    """Base class of view transforms (a type for configs: any subclass can be named by class_path)."""

    num_views: int = 1

    def __call__(self, image: Tensor | Image.Image) -> list[Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        """Deterministic description (feature caches are keyed by it)."""
        inner = getattr(self, "transform", None)
        return f"{type(self).__name__}({inner!r})" if inner is not None else type(self).__name__


class MAEView(ViewTransform):
    """One view: RandomResizedCrop(img_size, scale) + horizontal flip + normalise (MAE recipe, He et al. 2021,
    arXiv 2111.06377).

    ``self.transform`` is the equivalent torchvision v2 pipeline; ``__call__`` runs the same kernels in the
    same random order (bit-identical output for the same torch seed, tested) without v2's per-op input
    flattening, which costs about as much as the kernels on small images (timing in docs/data.md).

    Args:
        img_size: output side. scale: crop area range (MAE 0.2-1.0). hflip: flip probability.
        mean, std: per-channel normalisation (length C).

    Returns (call): ``[view]``, float [C, img_size, img_size].
    """

    def __init__(self, img_size: int = 224, scale: tuple[float, float] = (0.2, 1.0), hflip: float = 0.5,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.crop = v2.RandomResizedCrop(img_size, scale=tuple(scale), interpolation=v2.InterpolationMode.BICUBIC,
                                         antialias=True)
        self.hflip, self.mean, self.std = hflip, [float(m) for m in mean], [float(s) for s in std]
        self.transform = v2.Compose([v2.ToImage(), self.crop, v2.RandomHorizontalFlip(hflip),
                                     *_to_float(mean, std)[1:]])

    def __call__(self, image: Tensor | Image.Image) -> list[Tensor]:
        x = image.as_subclass(Tensor) if isinstance(image, Tensor) else F.pil_to_tensor(image)
        x = F.resized_crop_image(x, **self.crop.make_params([x]), size=list(self.crop.size),
                                 interpolation=self.crop.interpolation, antialias=True)
        if torch.rand(1) < self.hflip:  # v2.RandomHorizontalFlip's draw
            x = F.horizontal_flip_image(x)
        return [F.normalize_image(F.to_dtype_image(x, torch.float32, scale=True), self.mean, self.std, inplace=True)]


def resize_center_crop(img_size: int) -> list[v2.Transform]:
    """Ops taking a uint8 [C, H, W] tensor or PIL image to uint8 [C, S, S]: shorter side to S (bicubic),
    centre crop (the deterministic evaluation geometry)."""
    return [v2.ToImage(), v2.Resize(img_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(img_size)]


class EvalView(ViewTransform):
    """Deterministic view for feature extraction: resize (if needed) + normalise."""

    def __init__(self, img_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        self.transform = v2.Compose([*resize_center_crop(img_size), *_to_float(mean, std)[1:]])

    def __call__(self, image: Tensor | Image.Image) -> list[Tensor]:
        return [self.transform(image)]


def blur_kernel_size(img_size: int) -> int:
    """The Gaussian blur kernel side of a view: odd, ~10 % of the view's side (SimCLR), at least 3."""
    return max(3, int(0.1 * img_size) // 2 * 2 + 1)


def _photometric(jitter: tuple[float, float, float, float], jitter_prob: float, grey_prob: float,
                 blur_prob: float, blur_sigma: Sequence[float], solarize_prob: float,
                 img_size: int) -> list[v2.Transform]:
    """Colour jitter, grey, blur, solarise (SimCLR / BYOL); each is a no-op-safe op on 1-channel images
    (torchvision skips saturation/hue and grey conversion for a single channel)."""
    kernel = blur_kernel_size(img_size)
    ops: list[v2.Transform] = []
    if jitter_prob > 0 and any(jitter):
        ops.append(v2.RandomApply([v2.ColorJitter(*jitter)], p=jitter_prob))
    if grey_prob > 0:
        ops.append(v2.RandomGrayscale(grey_prob))
    if blur_prob > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel, tuple(blur_sigma))], p=blur_prob))
    if solarize_prob > 0:
        ops.append(v2.RandomSolarize(128, p=solarize_prob))
    return ops


class _Photometric(NamedTuple):
    """Photometric settings shared by all views of a multi-view transform."""

    jitter: tuple[float, float, float, float]  # brightness, contrast, saturation, hue
    jitter_prob: float
    grey_prob: float
    blur_sigma: Sequence[float]
    mean: Sequence[float]
    std: Sequence[float]


class ViewRecipe(NamedTuple):
    """One random view of a multi-view transform: output side, crop area range, blur and solarise probability."""

    size: int
    scale: tuple[float, float]
    blur_prob: float
    solarize_prob: float


def _augmented_view(recipe: ViewRecipe, hflip: float, photo: _Photometric) -> v2.Compose:
    """Crop + flip + photometric ops + normalise: uint8/PIL image -> float [C, recipe.size, recipe.size]."""
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(recipe.size, scale=tuple(recipe.scale), interpolation=v2.InterpolationMode.BICUBIC,
                             antialias=True),
        v2.RandomHorizontalFlip(hflip),
        *_photometric(photo.jitter, photo.jitter_prob, photo.grey_prob, recipe.blur_prob, photo.blur_sigma,
                      recipe.solarize_prob, recipe.size),
        *_to_float(photo.mean, photo.std)[1:],
    ])


class AugmentedViews(ViewTransform):
    """Views made by one recipe each (crop, flip, photometric ops, normalise), the shared core of
    :class:`SimCLRViews` and :class:`MultiCropViews`; the batched versions (vispre.data.batch_views) read
    ``recipes``, ``hflip`` and ``photo`` to make the same views on a whole batch.

    Returns (call): one float [C, recipe.size, recipe.size] per recipe.
    """

    def __init__(self, recipes: Sequence[ViewRecipe], hflip: float, photo: _Photometric) -> None:
        self.recipes, self.hflip, self.photo = list(recipes), hflip, photo
        self.num_views = len(self.recipes)
        self.transform = [_augmented_view(recipe, hflip, photo) for recipe in self.recipes]

    def __call__(self, image: Tensor | Image.Image) -> list[Tensor]:
        return [view(image) for view in self.transform]


def _per_view(value: float | Sequence[float], count: int, name: str) -> list[float]:
    values = [float(value)] * count if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != count:
        raise VispreError(f"{name} must be one number or {count} numbers (one per view), got {value!r}")
    return values


class SimCLRViews(AugmentedViews):
    """Two augmented views of one image (SimCLR, Chen et al. 2020, arXiv 2002.05709; BYOL's asymmetric
    blur/solarise through per-view probabilities). Grey-scale safe: on [1, H, W] images saturation, hue
    and grey conversion are no-ops and the output keeps one channel.

    Args:
        img_size: output side. scale: RandomResizedCrop area range. hflip: flip probability.
        brightness, contrast, saturation, hue: ColorJitter strengths; jitter_prob: its probability.
        grey_prob: RandomGrayscale probability. blur_prob: per view (one number or one per view);
        blur_sigma: Gaussian sigma range. solarize_prob: per view. mean, std: normalisation (length C).

    Returns (call): ``[view1, view2]``, each float [C, img_size, img_size].
    """

    def __init__(self, img_size: int = 224, scale: tuple[float, float] = (0.08, 1.0), hflip: float = 0.5,
                 brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.2, hue: float = 0.1,
                 jitter_prob: float = 0.8, grey_prob: float = 0.2,
                 blur_prob: float | tuple[float, float] = 0.5, blur_sigma: tuple[float, float] = (0.1, 2.0),
                 solarize_prob: float | tuple[float, float] = 0.0,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        blurs, solarizes = _per_view(blur_prob, 2, "blur_prob"), _per_view(solarize_prob, 2, "solarize_prob")
        photo = _Photometric((brightness, contrast, saturation, hue), jitter_prob, grey_prob, blur_sigma, mean, std)
        recipes = [ViewRecipe(img_size, tuple(scale), blur, solarize) for blur, solarize in zip(blurs, solarizes)]
        super().__init__(recipes, hflip, photo)


class MultiCropViews(AugmentedViews):
    """Multi-crop (SwAV, Caron et al. 2020, arXiv 2006.09882; DINO recipe): 2 global views at
    ``global_size`` and ``num_local`` local views at ``local_size``, with the SimCLR photometric ops
    (global blur 1.0 / 0.1 and solarise 0 / 0.2 as in DINO, local blur 0.5). Grey-scale safe.

    Args:
        global_size, local_size: output sides. global_scale, local_scale: crop area ranges.
        num_local: number of local crops (>= 0). Other args as in :class:`SimCLRViews`.

    Returns (call): ``[global1, global2, local1, ..., localN]``: globals float [C, global_size,
    global_size], locals float [C, local_size, local_size].
    """

    def __init__(self, global_size: int = 224, local_size: int = 96, num_local: int = 6,
                 global_scale: tuple[float, float] = (0.4, 1.0), local_scale: tuple[float, float] = (0.05, 0.4),
                 hflip: float = 0.5, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.2,
                 hue: float = 0.1, jitter_prob: float = 0.8, grey_prob: float = 0.2,
                 global_blur_prob: tuple[float, float] = (1.0, 0.1), local_blur_prob: float = 0.5,
                 global_solarize_prob: tuple[float, float] = (0.0, 0.2),
                 blur_sigma: tuple[float, float] = (0.1, 2.0),
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        if num_local < 0:
            raise VispreError(f"num_local must be >= 0, got {num_local}")
        blurs = _per_view(global_blur_prob, 2, "global_blur_prob")
        solarizes = _per_view(global_solarize_prob, 2, "global_solarize_prob")
        photo = _Photometric((brightness, contrast, saturation, hue), jitter_prob, grey_prob, blur_sigma, mean, std)
        globals_ = [ViewRecipe(global_size, tuple(global_scale), blur, solarize)
                    for blur, solarize in zip(blurs, solarizes)]
        local = ViewRecipe(local_size, tuple(local_scale), local_blur_prob, 0.0)
        super().__init__([*globals_, *([local] * num_local)], hflip, photo)
