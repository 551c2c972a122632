"""A MaskedViT on crops of any size that is a multiple of its patch size: the multi-crop views of DINO, iBOT,
DINOv2, POA and the joint-embedding objectives' local crops.

- :func:`check_crop`: the patch grid of a crop, or one clear error when it does not fit the backbone.
- :func:`encode_crop`: all tokens of the crop, the position table bicubically resampled to the crop's grid (DINO's
  ``interpolate_pos_encoding``, Caron et al. 2021, arXiv 2104.14294), optionally with iBOT's mask token in place
  of masked patches (arXiv 2111.07832).
"""

from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor

from vispre.backbones.vit import MaskedViT
from vispre.errors import VispreError


def check_crop(backbone: MaskedViT, images: Tensor, what: str) -> tuple[int, int]:
    """The patch grid (h, w) of ``images`` [B, C, H, W]; VispreError unless H, W are positive multiples of the
    patch size and C is the backbone's channel count."""
    p = backbone.patch_size
    if images.ndim != 4 or images.shape[1] != backbone.in_chans:
        raise VispreError(f"{what}: expected crops [B, {backbone.in_chans}, H, W], got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h < p or w < p or h % p or w % p:
        raise VispreError(f"{what}: crop size {h}x{w} does not fit the backbone: each side must be a positive "
                          f"multiple of the patch size {p}")
    return h // p, w // p


def encode_crop(backbone: MaskedViT, images: Tensor, mask: Tensor | None = None,
                mask_token: Tensor | None = None) -> Tensor:
    """All tokens of ``backbone`` on crops of any size fitting its patch size, optionally masked (iBOT).

    The backbone's own path (bit-identical to timm) at its image size without a mask; otherwise the patch
    embedding, mask token, prefix tokens and position table (resampled to the crop grid) assembled here.

    Args:
        backbone: the encoder.
        images: [B, C, H, W], H and W multiples of the patch size.
        mask: optional [B, N] bool over the crop's N = (H/p)(W/p) patches, True = replaced by ``mask_token``.
        mask_token: [1, 1, D] learned token (required with ``mask``).

    Returns:
        [B, P + N, D] tokens after the final norm, P prefix tokens first.
    """
    grid = check_crop(backbone, images, "encode_crop")
    if mask is None and grid == backbone.grid_size:
        return backbone.forward_features(images)
    vit = backbone.vit
    x = vit.patch_embed.norm(vit.patch_embed.proj(images).flatten(2).transpose(1, 2))  # [B, N, D]
    if mask is not None:
        if mask_token is None or mask.shape != x.shape[:2]:
            raise VispreError(f"encode_crop: mask must be [B, N] = {tuple(x.shape[:2])} with a mask_token, got "
                              f"{tuple(mask.shape)}")
        x = torch.where(mask.unsqueeze(-1), mask_token.to(x.dtype), x)
    prefix = [t.expand(x.shape[0], -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
    if vit.pos_embed is not None:
        skip = 0 if vit.no_embed_class else backbone.num_prefix_tokens
        pos = vit.pos_embed if grid == backbone.grid_size else resample_abs_pos_embed(
            vit.pos_embed, new_size=list(grid), old_size=list(backbone.grid_size), num_prefix_tokens=skip)
        if vit.no_embed_class:
            x = torch.cat([*prefix, x + pos], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + pos
    else:
        x = torch.cat([*prefix, x], dim=1)
    return backbone.run_blocks(vit.pos_drop(x))


__all__ = ["check_crop", "encode_crop"]
