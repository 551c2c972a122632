"""Pure tensor helpers for masked image modelling: patchify/unpatchify and per-sample random masking.

Reference: He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (arXiv 2111.06377),
official code `models_mae.py` (random_masking, patchify, unpatchify).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from vispre.errors import VispreError


class TokenMask(NamedTuple):
    """Result of :func:`random_token_mask`.

    Attributes:
        ids_keep: [B, L_keep] indices of the kept (visible) tokens, in shuffle order.
        mask: [B, L] float, 1 = masked (removed), 0 = kept, in the original token order.
        ids_restore: [B, L] permutation that undoes the shuffle: ``ids_shuffle.gather(1, ids_restore)``
            is ``arange(L)``.
    """

    ids_keep: Tensor
    mask: Tensor
    ids_restore: Tensor


def num_kept_tokens(num_tokens: int, mask_ratio: float) -> int:
    """Number of visible tokens for a mask ratio: ``int(L * (1 - mask_ratio))``, as in the MAE code."""
    check_mask_ratio(mask_ratio)
    return max(1, int(num_tokens * (1.0 - mask_ratio)))


def check_mask_ratio(mask_ratio: float) -> None:
    """Raise VispreError unless 0 < mask_ratio < 1 (ratio 0 makes the masked loss 0/0, ratio 1 hides all)."""
    if not 0.0 < mask_ratio < 1.0:
        raise VispreError(f"mask_ratio must lie strictly between 0 and 1, got {mask_ratio!r}")


def random_token_mask(batch_size: int, num_tokens: int, mask_ratio: float, noise: Tensor | None = None,
                      device: torch.device | str | None = None) -> TokenMask:
    """Per-sample random masking by argsort of uniform noise (MAE, Sec. 3 "Masking").

    Args:
        batch_size: B.
        num_tokens: L, number of patch tokens (prefix tokens are never masked).
        mask_ratio: fraction of tokens removed, strictly in (0, 1).
        noise: optional [B, L] noise; the L_keep smallest values per row are kept. Pass the same noise
            to reproduce a mask exactly (used by growth tests).
        device: device of the generated noise when ``noise`` is None.

    Returns:
        TokenMask with ids_keep [B, L_keep], mask [B, L], ids_restore [B, L].
    """
    keep = num_kept_tokens(num_tokens, mask_ratio)
    if noise is None:
        noise = torch.rand(batch_size, num_tokens, device=device)
    elif noise.shape != (batch_size, num_tokens):
        raise VispreError(f"noise must have shape {(batch_size, num_tokens)}, got {tuple(noise.shape)}")
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch_size, num_tokens, device=noise.device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # 1 = masked, original order
    return TokenMask(ids_keep=ids_shuffle[:, :keep], mask=mask, ids_restore=ids_restore)


def gather_tokens(tokens: Tensor, ids: Tensor) -> Tensor:
    """Select tokens per sample.

    Args:
        tokens: [B, L, D].
        ids: [B, K] int64 indices into L.

    Returns:
        [B, K, D].
    """
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut images into flattened non-overlapping patches.

    Args:
        images: [B, C, H, W] with H and W divisible by ``patch_size``.
        patch_size: p.

    Returns:
        [B, L, p*p*C] with L = (H/p)*(W/p), patches in row-major order, pixels ordered (p, p, C).
    """
    b, c, h, w = images.shape
    if h % patch_size or w % patch_size:
        raise VispreError(f"image size {h}x{w} is not divisible by patch_size {patch_size}")
    gh, gw = h // patch_size, w // patch_size
    x = images.reshape(b, c, gh, patch_size, gw, patch_size)
    x = torch.einsum("bchpwq->bhwpqc", x)
    return x.reshape(b, gh * gw, patch_size * patch_size * c)


def unpatchify(patches: Tensor, patch_size: int, grid_size: tuple[int, int], in_chans: int) -> Tensor:
    """Inverse of :func:`patchify`.

    Args:
        patches: [B, L, p*p*C] with L = gh*gw.
        patch_size: p.
        grid_size: (gh, gw).
        in_chans: C.

    Returns:
        [B, C, gh*p, gw*p].
    """
    b, num, dim = patches.shape
    gh, gw = grid_size
    if num != gh * gw or dim != patch_size * patch_size * in_chans:
        raise VispreError(f"patches of shape {tuple(patches.shape)} do not fit grid {grid_size}, "
                         f"patch_size {patch_size}, in_chans {in_chans}")
    x = patches.reshape(b, gh, gw, patch_size, patch_size, in_chans)
    x = torch.einsum("bhwpqc->bchpwq", x)
    return x.reshape(b, in_chans, gh * patch_size, gw * patch_size)
