"""Frozen-feature choices computed in one backbone pass per batch (the extraction loop, streaming and cache:
vispre.eval.extraction; in-memory wrappers here: extract_features, cached_features).

Feature choices, all from a frozen timm ViT (``forward_intermediates`` with the final norm applied):
    pooled      what the exported timm model returns as its embedding: ``forward_head(forward_features(x),
                pre_logits=True)`` with the model's own ``global_pool`` (and ``fc_norm``), computed from the same
                pass (the last layer's normed tokens are ``forward_features``' output)
    cls         the class token of the last block (mean patch token when the model has no class token)
    mean        the mean patch token of the last block
    max         the per-channel max over the patch tokens of the last block (timm ``global_pool='max'`` with
                ``fc_norm=False``: the quickstart MAE's exported embedding)
    cls_mean    [cls ; mean]  (DINOv2's linear-probe feature)
    last4       [cls ; mean] of each of the last 4 blocks
    grid2       [cls ; 2x2 average-pooled patch tokens] of the last block (keeps coarse spatial layout)
    patches     [cls ; every patch token] of the last block, D = (1 + N) x dim: the full spatial map, the learned
                analogue of raw-pixel kNN; meant for small grids (28 px / patch 7: 17 x 192 = 3264 dims)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from vispre.data.transforms import EvalView, ViewTransform
from vispre.errors import VispreError

FEATURE_CHOICES = ("pooled", "cls", "mean", "max", "cls_mean", "last4", "grid2", "patches")


def token_features(vit: VisionTransformer, images: Tensor, choices: Sequence[str]) -> dict[str, Tensor]:
    """[B, C, H, W] images (normalised) -> {choice: [B, D_choice]} for one batch (see the module docstring)."""
    depth = len(vit.blocks)
    n = min(4, depth)
    has_prefix = vit.num_prefix_tokens > 0  # timm returns bare patch tokens when there are no prefix tokens
    layers = vit.forward_intermediates(images, indices=n, return_prefix_tokens=has_prefix, norm=True,
                                       output_fmt="NLC", intermediates_only=True)
    if not has_prefix:
        layers = [(patches, patches[:, :0]) for patches in layers]
    summaries = []
    for patches, prefix in layers:
        cls = prefix[:, 0] if vit.cls_token is not None else patches.mean(1)
        summaries.append((cls, patches.mean(1)))
    cls, mean = summaries[-1]
    out: dict[str, Tensor] = {}
    for choice in choices:
        if choice == "pooled":
            patches, prefix = layers[-1]
            out[choice] = vit.forward_head(torch.cat([prefix, patches], dim=1), pre_logits=True)
        elif choice == "cls":
            out[choice] = cls
        elif choice == "mean":
            out[choice] = mean
        elif choice == "max":
            out[choice] = layers[-1][0].amax(dim=1)
        elif choice == "cls_mean":
            out[choice] = torch.cat([cls, mean], dim=1)
        elif choice == "last4":
            out[choice] = torch.cat([t for pair in summaries for t in pair], dim=1)
        elif choice == "grid2":
            patches = layers[-1][0]
            gh, gw = vit.patch_embed.grid_size
            grid = patches.transpose(1, 2).reshape(patches.shape[0], -1, gh, gw)
            out[choice] = torch.cat([cls, F.adaptive_avg_pool2d(grid, 2).flatten(1)], dim=1)
        elif choice == "patches":
            out[choice] = torch.cat([cls, layers[-1][0].flatten(1)], dim=1)
        else:
            raise VispreError(f"unknown feature choice {choice!r}; expected one of {FEATURE_CHOICES}")
    return out


def apply_view(view: ViewTransform, images: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, C', h, w]; EvalView (deterministic, per-image ops) runs on the whole batch at once."""
    if isinstance(view, EvalView):
        return view(images)[0]
    return torch.stack([view(img)[0] for img in images])


def extract_features(vit: VisionTransformer, images: Tensor, view: ViewTransform,
                     choices: Sequence[str] = FEATURE_CHOICES, batch_size: int = 512,
                     desc: str = "features") -> dict[str, Tensor]:
    """Run the frozen backbone once over in-memory ``images`` and return every feature choice (no cache).

    Args:
        vit: timm VisionTransformer (put in eval mode for the pass, mode restored after).
        images: [N, C, H, W] uint8 images.
        view: deterministic view transform (e.g. EvalView) applied per batch.
        choices: subset of FEATURE_CHOICES.
        batch_size: images per forward pass.

    Returns:
        {choice: [N, D_choice] float32}.
    """
    return cached_features(vit, images, view, None, (), choices, desc=desc, batch_size=batch_size)


def cached_features(vit: VisionTransformer, images: Tensor, view: ViewTransform, cache_dir: str | Path | None,
                    key_parts: Sequence[object], choices: Sequence[str] = FEATURE_CHOICES,
                    desc: str = "features", batch_size: int = 512) -> dict[str, Tensor]:
    """:func:`extract_features` for images already in memory, reusing ``<cache_dir>/<key>.safetensors``.

    The key covers the weights, the images' content (an in-memory tensor has no other identity; the suite's
    datasets are keyed by their files instead, see vispre.eval.extraction), the view, the choices and
    ``key_parts``.
    """
    from vispre.eval.datasets import tensor_source  # the streamed extractor builds on this module
    from vispre.eval.extraction import extract_split

    split = extract_split(vit, tensor_source(images), view, choices, cache_dir=cache_dir,
                          key_parts=[repr(p) for p in key_parts], batch_size=batch_size, desc=desc)
    return split.features
