"""Masked pixel-reconstruction loss of MAE (He et al., arXiv 2111.06377, Sec. 3 "Reconstruction target")."""

from __future__ import annotations

from torch import Tensor, nn


def normalize_patches(target: Tensor, eps: float = 1e-6) -> Tensor:
    """Standardise each patch by the mean and (unbiased) variance of its own pixels.

    Args:
        target: [B, L, K] patch pixels.
        eps: added to the variance.

    Returns:
        [B, L, K] (target - mean) / sqrt(var + eps), as ``norm_pix_loss`` in the MAE code.
    """
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


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
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if norm_pix:
        target = normalize_patches(target)
    per_patch = (pred - target).pow(2).mean(dim=-1)
    mask = mask.to(per_patch.dtype)
    # Callers guarantee at least one masked patch (mask_ratio is validated to lie in (0, 1)); no host
    # sync here to check it, this runs every step.
    return (per_patch * mask).sum() / mask.sum()


class MaskedMSELoss(nn.Module):
    """Module wrapper of :func:`masked_mse_loss`."""

    def __init__(self, norm_pix: bool = True) -> None:
        super().__init__()
        self.norm_pix = norm_pix

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        return masked_mse_loss(pred, target, mask, norm_pix=self.norm_pix)
