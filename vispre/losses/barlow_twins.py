"""Barlow Twins loss (Zbontar, Jing, Misra, LeCun, Deny, "Barlow Twins: Self-Supervised Learning via
Redundancy Reduction", ICML 2021, arXiv 2103.03230, Eq. 1 and Alg. 1).

The cross-correlation is computed over the global batch under DDP (embeddings gathered with gradients),
as the paper's all-reduced cross-correlation does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vispre.errors import VispreError
from vispre.losses.gather import gather_with_grad
from vispre.losses.precision import at_least_fp32, autocast_off


def batch_standardize(z: Tensor, eps: float = 1e-5) -> Tensor:
    """BatchNorm1d without affine in training mode: (z - mean) / sqrt(biased var + eps) per feature."""
    mean = z.mean(dim=0, keepdim=True)
    var = z.var(dim=0, unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps)


def cross_correlation(z1: Tensor, z2: Tensor, gather: bool = True) -> Tensor:
    """Cross-correlation of batch-standardised embeddings: [N, D] x [N, D] -> [D, D] (over W*N under DDP)."""
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise VispreError(f"expected two [N, D] embeddings of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    z1, z2 = at_least_fp32(z1), at_least_fp32(z2)  # standardised and correlated in fp32 (vispre.losses.precision)
    if gather:
        z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
    if z1.shape[0] < 2:
        raise VispreError(f"Barlow Twins needs a batch of at least 2 samples to standardise, got {z1.shape[0]}")
    with autocast_off(z1):
        return batch_standardize(z1).T @ batch_standardize(z2) / z1.shape[0]


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambd: float = 5e-3, gather: bool = True) -> Tensor:
    """sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2.

    Args:
        z1, z2: [N, D] projector outputs of two views.
        lambd: off-diagonal weight (paper 5e-3).
        gather: cross-correlation over the global batch under DDP.

    Returns:
        Scalar loss.
    """
    c = cross_correlation(z1, z2, gather)
    diag = torch.diagonal(c)
    on = (1 - diag).pow(2).sum()
    off = c.pow(2).sum() - diag.pow(2).sum()
    return on + lambd * off


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins' loss for an objective: :func:`barlow_twins_loss` with its hyper-parameters.

    Args:
        lambd: off-diagonal weight (paper 5e-3). gather: cross-correlation over the global batch under DDP.

    Call: ``loss(z1, z2)`` with the [N, D] projections of two views -> ``{"loss", "barlow_twins"}``.
    """

    def __init__(self, lambd: float = 5e-3, gather: bool = True) -> None:
        super().__init__()
        self.lambd, self.gather = lambd, gather

    def forward(self, z1: Tensor, z2: Tensor) -> dict[str, Tensor]:
        loss = barlow_twins_loss(z1, z2, self.lambd, self.gather)
        return {"loss": loss, "barlow_twins": loss}


__all__ = ["BarlowTwinsLoss", "barlow_twins_loss", "batch_standardize", "cross_correlation"]
