"""Masked pixel-reconstruction loss of MAE (He et al., arXiv 2111.06377, Sec. 3 "Reconstruction target")."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from vispre.errors import VispreError


class PatchStats(NamedTuple):
    """Per-patch mean and std of the pixels, each [B, L, 1]."""

    mean: Tensor
    std: Tensor


def patch_stats(target: Tensor, eps: float = 1e-6) -> PatchStats:
    """Mean and sqrt(unbiased variance + eps) of each patch's own pixels (the ``norm_pix_loss`` statistics).

    Args:
        target: [B, L, K] patch pixels.
        eps: added to the variance.

    Returns:
        PatchStats(mean [B, L, 1], std [B, L, 1]).
    """
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return PatchStats(mean, (var + eps) ** 0.5)


def normalize_patches(target: Tensor, eps: float = 1e-6) -> Tensor:
    """Standardise each [B, L, K] patch by its own :func:`patch_stats`: (target - mean) / sqrt(var + eps), as
    ``norm_pix_loss`` in the MAE code."""
    stats = patch_stats(target, eps)
    return (target - stats.mean) / stats.std


def denormalize_patches(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """Inverse of :func:`normalize_patches` with the statistics of the true patches (MAE visualisation).

    Args:
        pred: [B, L, K] predictions in normalised units. target: [B, L, K] true patch pixels.
        eps: as in :func:`normalize_patches`.

    Returns:
        [B, L, K] pred * std + mean of each true patch.
    """
    stats = patch_stats(target, eps)
    return pred * stats.std + stats.mean


def masked_mse_loss(pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool = True) -> Tensor:
    """Mean squared error per patch, averaged over masked patches only.

    Args:
        pred: [B, L, K] predicted pixels.
        target: [B, L, K] true pixels (patchified images).
        mask: [B, L], 1 = masked (counted), 0 = visible (ignored).
        norm_pix: standardise each target patch first (norm_pix_loss).

    Returns:
        Scalar loss.
    """
    if pred.shape != target.shape:
        raise VispreError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if norm_pix:
        target = normalize_patches(target)
    per_patch = (pred - target).pow(2).mean(dim=-1)
    mask = mask.to(per_patch.dtype)
    # Callers guarantee at least one masked patch (mask_ratio is validated to lie in (0, 1)); no host
    # sync here to check it, this runs every step.
    return (per_patch * mask).sum() / mask.sum()


__all__ = ["PatchStats", "denormalize_patches", "masked_mse_loss", "normalize_patches", "patch_stats"]
