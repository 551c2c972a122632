"""Adaptive Multi-head Contrastive Learning on SimCLR / MoCo pairs (Wang, Koniusz, Gedeon, Zheng, ECCV 2024,
arXiv 2310.05615, Table 2 Eq. 2.1), in two forms (s = cosine similarity, tau from the shared
:class:`PairTemperature`, Omega(tau) = 1/tau + kappa ln tau):

- ``"paper"`` (the authors'), per anchor i: ``-s_i+/tau_i+ + beta*Omega(tau_i+) + mean over its k hardest
  negatives n of [s_in/tau_in - beta*Omega(tau_in)]`` (k = 1: Eq. 2.1 exactly), kappa = d'/2, beta 1e-4. It has
  no interior optimum in tau for most pairs and drifts to the bounds (:func:`paper_positive_term`,
  :func:`paper_negative_term`; docs/amcl.md).
- ``"stable"`` (ours): ``-log softmax_j(s_ij/tau_i)[i+] + beta*(1/tau_i + kappa ln tau_i)``, tau_i = tau(z_i, z_i+)
  for the anchor's whole row, kappa = 1/T_base, the network starting at T_base. Bounded below, interior
  optimum, and NT-Xent / InfoNCE exactly at a fixed temperature with beta = 0.

Every head uses the same temperature network; losses add over heads; the loss runs in fp32 (autocast off).
The Barlow Twins forms live in :mod:`vispre.losses.amcl_barlow_twins`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vispre.errors import VispreError
from vispre.losses.amcl_barlow_twins import AMCLBarlowTwinsLoss, paper_barlow_twins_loss, stable_barlow_twins_loss
from vispre.losses.amcl_temperature import (FORMS, AMCLForm, AMCLHead, PairTemperature, as_heads, check_form,
                                            fixed_temperature, fp32_loss, head_terms, join_directions, omega)
from vispre.losses.info_nce import ContrastivePairs, moco_pairs, pair_logits, simclr_pairs

PAPER_BETA = 1e-4
STABLE_BETA = 0.1


def paper_positive_term(s: Tensor, tau: Tensor, beta: float, kappa: float) -> Tensor:
    """The paper's positive-pair term -s/tau + beta*Omega(tau) = (beta - s)/tau + beta*kappa*ln tau.

    Its minimum over tau is interior, at tau* = (beta - s)/(beta*kappa), only when s < beta; for s >= beta it
    decreases toward tau -> 0, so a learned tau sits at tau_min.
    """
    return -s / tau + beta * omega(tau, kappa)


def paper_negative_term(s: Tensor, tau: Tensor, beta: float, kappa: float) -> Tensor:
    """The paper's negative-pair term s/tau - beta*Omega(tau) = (s - beta)/tau - beta*kappa*ln tau.

    Its only stationary point (s < beta, at tau = (beta - s)/(beta*kappa)) is a maximum: tau drifts to tau_min
    when s < beta (the term -> -inf) and to tau_max when s > beta.
    """
    return s / tau - beta * omega(tau, kappa)


def hardest_negatives(pairs: ContrastivePairs, k: int) -> Tensor:
    """Columns of each anchor's k most similar keys that are neither its positive nor excluded: [N, k'].

    k' = min(k, negatives per anchor) (SimCLR: 2B - 2 per anchor, MoCo: B - 1).

    Raises:
        VispreError: k < 1, or an anchor without negatives (batch of one).
    """
    if k < 1:
        raise VispreError(f"AMCL negatives must be >= 1 (1: the hardest negative, the paper), got {k}")
    sim = pairs.query @ pairs.keys.T
    drop = torch.zeros_like(sim, dtype=torch.bool).scatter_(1, pairs.positive_index.unsqueeze(1), True)
    if pairs.exclude_index is not None:
        drop.scatter_(1, pairs.exclude_index.unsqueeze(1), True)
    available = sim.shape[1] - int(drop[0].sum())
    if available < 1:
        raise VispreError("the AMCL paper form needs at least one negative per anchor (batch too small)")
    return sim.masked_fill(drop, float("-inf")).topk(min(k, available), dim=1).indices


def paper_contrastive_loss(pairs: ContrastivePairs, temperature: PairTemperature | float, *, beta: float = PAPER_BETA,
                           kappa: float | None = None, negatives: int = 1) -> AMCLHead:
    """One head's paper-form loss on SimCLR or MoCo pairs.

    Args:
        pairs: from :func:`simclr_pairs` / :func:`moco_pairs` (normalised [N, d'] queries, [M, d'] keys).
        temperature: the shared :class:`PairTemperature`, or a fixed T (every tau = T).
        beta: regulariser weight (authors 1e-4). kappa: Omega's ln weight; None: d'/2 (the authors').
        negatives: k hardest negatives per anchor (1: Eq. 2.1; authors' v2 code: 100), averaged.

    Returns:
        AMCLHead (loss = mean over anchors; tau = the positive and negative temperatures).
    """
    q, keys, pos = pairs.query, pairs.keys, pairs.positive_index
    kappa = q.shape[1] / 2 if kappa is None else kappa
    neg = hardest_negatives(pairs, negatives)
    s_pos, s_neg = (q * keys[pos]).sum(-1), (q.unsqueeze(1) * keys[neg]).sum(-1)
    if isinstance(temperature, nn.Module):
        eq, ek = temperature.embed(q), temperature.embed(keys)
        tau_pos = temperature.bound((eq * ek[pos]).sum(-1))
        tau_neg = temperature.bound((eq.unsqueeze(1) * ek[neg]).sum(-1))
    else:
        tau_pos, tau_neg = fixed_temperature(q, temperature, s_pos.shape), fixed_temperature(q, temperature, s_neg.shape)
    per = paper_positive_term(s_pos, tau_pos, beta, kappa) + paper_negative_term(s_neg, tau_neg, beta, kappa).mean(1)
    tau_pos, tau_neg = tau_pos.detach(), tau_neg.detach()
    return AMCLHead(per.mean(), per, torch.cat([tau_pos, tau_neg.reshape(-1)]), tau_pos.mean(), tau_neg.mean())


def stable_contrastive_loss(pairs: ContrastivePairs, temperature: PairTemperature | float, *, beta: float = STABLE_BETA,
                            kappa: float) -> AMCLHead:
    """One head's stable-form loss: each anchor's softmax over its keys at its positive pair's temperature.

    Args:
        pairs: from :func:`simclr_pairs` / :func:`moco_pairs`.
        temperature: the shared :class:`PairTemperature`, or a fixed T (then with beta = 0 this is exactly
            :func:`vispre.losses.contrastive_loss`).
        beta: regulariser weight. kappa: Omega's ln weight (1/T_base puts its minimum at T_base).

    Returns:
        AMCLHead (loss = mean over anchors of CE + beta*Omega(tau_i); tau = the N anchor temperatures).
    """
    q, keys, pos = pairs.query, pairs.keys, pairs.positive_index
    tau = (temperature.pairs(q, keys[pos]) if isinstance(temperature, nn.Module)
           else fixed_temperature(q, temperature, pos.shape))
    per = F.cross_entropy(pair_logits(pairs, tau.unsqueeze(1)), pos, reduction="none") + beta * omega(tau, kappa)
    return AMCLHead(per.mean(), per, tau.detach())


class AMCLContrastiveLoss(nn.Module):
    """What the AMCL contrastive losses share: the form, its hyper-parameters and ONE temperature network.

    Args:
        num_heads: C, the projector's heads (given by the objective). dim: d', each head's output (given).
        form: ``"stable"`` (ours, default) or ``"paper"`` (the authors').
        temperature: T: the fixed temperature when ``adaptive_temperature`` is off, the stable form's T_base
            (network init, kappa = 1/T) and MoCo v3's 2T scale in the stable form; None: the base loss's
            (0.1 :class:`AMCLNTXentLoss`, 0.2 :class:`AMCLInfoNCELoss`).
        adaptive_temperature: learn tau with :class:`PairTemperature` (off: every tau = T).
        beta: regulariser weight; None: 1e-4 (paper) / 0.1 (stable).
        kappa: Omega's ln weight; None: d'/2 (paper) / 1/T (stable).
        negatives: paper form: k hardest negatives per anchor (1, Eq. 2.1; the authors' v2 code 100).
        tau_min, tau_max: bounds (authors 1e-5, 2). tau_hidden_dim: phi's width (authors 128).
        gather: keys from every rank under DDP.

    Raises:
        VispreError: unknown form, T <= 0, bad bounds, stable T outside (tau_min, tau_max), negatives < 1.
    """

    default_temperature = 0.1

    def __init__(self, num_heads: int, dim: int, *, form: AMCLForm = "stable", temperature: float | None = None,
                 adaptive_temperature: bool = True, beta: float | None = None, kappa: float | None = None,
                 negatives: int = 1, tau_min: float = 1e-5, tau_max: float = 2.0, tau_hidden_dim: int = 128,
                 gather: bool = True) -> None:
        super().__init__()
        name = type(self).__name__
        check_form(name, form)
        self.temperature = self.default_temperature if temperature is None else temperature
        if self.temperature <= 0:
            raise VispreError(f"{name}.temperature must be > 0, got {self.temperature}")
        if negatives < 1:
            raise VispreError(f"{name}.negatives must be >= 1 (1: the hardest negative), got {negatives}")
        self.form, self.negatives, self.gather, self.num_heads = form, negatives, gather, num_heads
        self.beta = (PAPER_BETA if form == "paper" else STABLE_BETA) if beta is None else beta
        self.kappa = kappa if kappa is not None or form == "paper" else 1.0 / self.temperature
        self.tau_min, self.tau_max = tau_min, tau_max
        init = self.temperature if form == "stable" else None
        self.temperature_net = (PairTemperature(dim, tau_hidden_dim, tau_min, tau_max, init=init)
                                if adaptive_temperature else None)

    def head_loss(self, pairs: ContrastivePairs) -> AMCLHead:
        """One head's loss on its pairs, in this module's form."""
        temperature = self.temperature if self.temperature_net is None else self.temperature_net
        if self.form == "paper":
            return paper_contrastive_loss(pairs, temperature, beta=self.beta, kappa=self.kappa, negatives=self.negatives)
        return stable_contrastive_loss(pairs, temperature, beta=self.beta, kappa=self.kappa)


class AMCLNTXentLoss(AMCLContrastiveLoss):
    """AMCL on SimCLR's pairs (2N anchors, each against the other 2N - 1 views), one loss per head, summed.

    Args: those of :class:`AMCLContrastiveLoss` (T defaults to 0.1, NT-Xent's).

    Call: ``loss(z1s, z2s)`` with the C [N, d'] projections of each view (or one tensor: one head) ->
    :func:`vispre.losses.amcl_temperature.head_terms`.
    """

    def forward(self, z1s: Tensor | Sequence[Tensor], z2s: Tensor | Sequence[Tensor]) -> dict[str, Tensor]:
        a, b = as_heads(z1s), as_heads(z2s)
        with fp32_loss(a[0]):
            heads = [self.head_loss(simclr_pairs(z1, z2, self.gather)) for z1, z2 in zip(a, b, strict=True)]
        return head_terms(heads, self.tau_min, self.tau_max)


class AMCLInfoNCELoss(AMCLContrastiveLoss):
    """AMCL on MoCo v3's pairs, both directions (queries of one view against the keys of the other) per head.

    The stable form keeps :class:`vispre.losses.InfoNCELoss`'s scale (each direction x 2T, summed); the paper
    form averages the two directions, as the authors' code does.

    Args: those of :class:`AMCLContrastiveLoss` (T defaults to 0.2, MoCo v3's).

    Call: ``loss(q1s, q2s, k1s, k2s)``: C [N, d'] queries and keys of views 1 and 2 -> head_terms.
    """

    default_temperature = 0.2

    def forward(self, q1s: Tensor | Sequence[Tensor], q2s: Tensor | Sequence[Tensor], k1s: Tensor | Sequence[Tensor],
                k2s: Tensor | Sequence[Tensor]) -> dict[str, Tensor]:
        q1, q2, k1, k2 = as_heads(q1s), as_heads(q2s), as_heads(k1s), as_heads(k2s)
        weight = 2 * self.temperature if self.form == "stable" else 0.5
        with fp32_loss(q1[0]):
            heads = [join_directions(self.head_loss(moco_pairs(a, kb, self.gather)),
                                     self.head_loss(moco_pairs(b, ka, self.gather)), weight)
                     for a, b, ka, kb in zip(q1, q2, k1, k2, strict=True)]
        return head_terms(heads, self.tau_min, self.tau_max)


__all__ = ["FORMS", "PAPER_BETA", "STABLE_BETA", "AMCLBarlowTwinsLoss", "AMCLContrastiveLoss", "AMCLForm", "AMCLHead",
           "AMCLInfoNCELoss", "AMCLNTXentLoss", "PairTemperature", "hardest_negatives", "omega",
           "paper_barlow_twins_loss", "paper_contrastive_loss", "paper_negative_term", "paper_positive_term",
           "stable_barlow_twins_loss", "stable_contrastive_loss"]
