"""NT-Xent (SimCLR) and InfoNCE (MoCo v3) with negatives over the global batch.

SimCLR: Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020 (arXiv 2002.05709), Eq. 1. MoCo v3: Chen, Xie, He, "An Empirical Study of
Training Self-Supervised Vision Transformers", ICCV 2021 (arXiv 2104.02057), Alg. 1.

Both are a cross-entropy over cosine similarities between local anchors (queries) and a set of keys that,
under DDP, is gathered from every rank with :func:`gather_with_grad`. :class:`ContrastivePairs` says which
key is each anchor's positive and which key (the anchor itself, SimCLR) is excluded; AMCL reuses it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vispre.errors import VispreError
from vispre.losses.gather import gather_with_grad, world_rank
from vispre.losses.precision import at_least_fp32, autocast_off


class ContrastivePairs(NamedTuple):
    """Anchors, keys and the index of each anchor's positive (and excluded self) among the keys.

    Attributes:
        query: [N, D] L2-normalised anchors (local).
        keys: [M, D] L2-normalised keys (global under DDP).
        positive_index: [N] int64 column of the positive key.
        exclude_index: [N] int64 column to drop from the softmax (the anchor itself), or None.
    """

    query: Tensor
    keys: Tensor
    positive_index: Tensor
    exclude_index: Tensor | None


def _check_views(a: Tensor, b: Tensor) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise VispreError(f"expected two [N, D] embeddings of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def simclr_pairs(z1: Tensor, z2: Tensor, gather: bool = True) -> ContrastivePairs:
    """The 2N anchors of NT-Xent: every view against all 2N (2WN under DDP) views except itself.

    Args:
        z1, z2: [N, D] embeddings of the two views (row i of each from the same image).
        gather: gather keys across ranks when a process group is initialised.

    Returns:
        ContrastivePairs with query [2N, D], keys [2WN, D] ordered (all z1, then all z2).
    """
    _check_views(z1, z2)
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    world, rank = world_rank() if gather else (1, 0)
    n = z1.shape[0]
    g1, g2 = (gather_with_grad(z1), gather_with_grad(z2)) if gather else (z1, z2)
    own = torch.arange(n, device=z1.device) + rank * n  # global row of each local sample
    self_index = torch.cat([own, own + world * n])
    positive_index = torch.cat([own + world * n, own])
    return ContrastivePairs(torch.cat([z1, z2]), torch.cat([g1, g2]), positive_index, self_index)


def moco_pairs(q: Tensor, k: Tensor, gather: bool = True) -> ContrastivePairs:
    """MoCo v3 pairs: each local query against the (global) keys; the positive is its own image's key.

    Args:
        q: [N, D] query-branch outputs (predictor). k: [N, D] momentum-branch outputs of the other view.
        gather: gather keys across ranks when a process group is initialised.
    """
    _check_views(q, k)
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    _, rank = world_rank() if gather else (1, 0)
    keys = gather_with_grad(k) if gather else k
    positive_index = torch.arange(q.shape[0], device=q.device) + rank * q.shape[0]
    return ContrastivePairs(q, keys, positive_index, None)


def pair_logits(pairs: ContrastivePairs, temperature: float | Tensor) -> Tensor:
    """Cosine similarity over temperature with excluded entries at -inf: [N, M].

    ``temperature`` is a float or an [N, M] tensor of per-pair temperatures (AMCL).
    """
    logits = pairs.query @ pairs.keys.T / temperature
    if pairs.exclude_index is not None:
        logits = logits.scatter(1, pairs.exclude_index.unsqueeze(1), float("-inf"))
    return logits


def contrastive_loss(pairs: ContrastivePairs, temperature: float) -> Tensor:
    """Mean over anchors of -log softmax(sim / T)[positive] (excluded keys left out)."""
    if temperature <= 0:
        raise VispreError(f"temperature must be > 0, got {temperature}")
    return F.cross_entropy(pair_logits(pairs, temperature), pairs.positive_index)


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1, gather: bool = True) -> Tensor:
    """SimCLR's NT-Xent over the 2N views (2WN under DDP).

    Args:
        z1, z2: [N, D] projections of two views of the same N images (normalised here).
        temperature: T (SimCLR 0.1-0.5).
        gather: negatives from every rank under DDP.

    Returns:
        Scalar: mean over the 2N local anchors of -log(exp(s_ij/T) / sum_{k != i} exp(s_ik/T)).
    """
    with autocast_off(z1):  # normalised, gathered and compared in fp32 (vispre.losses.precision)
        return contrastive_loss(simclr_pairs(at_least_fp32(z1), at_least_fp32(z2), gather), temperature)


def info_nce_loss(q: Tensor, k: Tensor, temperature: float = 0.2, gather: bool = True) -> Tensor:
    """InfoNCE of MoCo v3 (one direction, without the 2T scale): queries vs keys, positives on the diagonal.

    Args:
        q: [N, D] queries. k: [N, D] keys (normally from the momentum encoder, no gradient).
        temperature: T (MoCo v3: 0.2).
    """
    with autocast_off(q):  # normalised, gathered and compared in fp32 (vispre.losses.precision)
        return contrastive_loss(moco_pairs(at_least_fp32(q), at_least_fp32(k), gather), temperature)


def _check_temperature(owner: str, temperature: float) -> None:
    if temperature <= 0:
        raise VispreError(f"{owner}.temperature must be > 0, got {temperature}")


class NTXentLoss(nn.Module):
    """SimCLR's loss for an objective: :func:`nt_xent_loss` with its hyper-parameters.

    Args:
        temperature: T (SimCLR 0.1-0.5). gather: negatives from every rank under DDP.

    Call: ``loss(z1, z2)`` with the [N, D] projections of two views -> ``{"loss", "nt_xent"}`` (the same
    scalar under both keys; every entry is logged).
    """

    def __init__(self, temperature: float = 0.1, gather: bool = True) -> None:
        super().__init__()
        _check_temperature("NTXentLoss", temperature)
        self.temperature, self.gather = temperature, gather

    def forward(self, z1: Tensor, z2: Tensor) -> dict[str, Tensor]:
        loss = nt_xent_loss(z1, z2, self.temperature, self.gather)
        return {"loss": loss, "nt_xent": loss}


class InfoNCELoss(nn.Module):
    """MoCo v3's symmetrised loss (Alg. 1): ctr(q1, k2) + ctr(q2, k1), each :func:`info_nce_loss` x 2T.

    Args:
        temperature: T (MoCo v3 0.2). gather: keys from every rank under DDP.

    Call: ``loss(q1, q2, k1, k2)`` with the [N, D] queries (predictor outputs) and keys (momentum branch) of
    views 1 and 2 -> ``{"loss", "info_nce"}``.
    """

    def __init__(self, temperature: float = 0.2, gather: bool = True) -> None:
        super().__init__()
        _check_temperature("InfoNCELoss", temperature)
        self.temperature, self.gather = temperature, gather

    def direction(self, q: Tensor, k: Tensor) -> Tensor:
        """One direction: InfoNCE of queries ``q`` against keys ``k``, scaled by 2T."""
        return info_nce_loss(q, k, self.temperature, self.gather) * (2 * self.temperature)

    def forward(self, q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor) -> dict[str, Tensor]:
        loss = self.direction(q1, k2) + self.direction(q2, k1)
        return {"loss": loss, "info_nce": loss}


__all__ = ["ContrastivePairs", "InfoNCELoss", "NTXentLoss", "contrastive_loss", "info_nce_loss", "moco_pairs",
           "nt_xent_loss", "pair_logits", "simclr_pairs"]
