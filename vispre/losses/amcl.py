"""Adaptive Multi-head Contrastive Learning losses (Wang, Koniusz, Gedeon, Zheng, ECCV 2024, arXiv 2310.05615).

Per projection head c, every pair gets its own temperature tau = tau_min + (tau_max - tau_min) *
sigmoid(phi_c([z_i ; z_j])) and a regulariser Omega(tau) = 1/tau + (d/2) log tau (from a Gaussian
likelihood; what the authors define and why this form drifts to its bounds: docs/amcl.md) keeps it off
degenerate values. Two contrastive forms:

- ``"hardest"`` (the paper's): -s_pos/tau_pos + s_n*/tau_neg + beta*Omega(tau_pos) - beta*Omega(tau_neg),
  n* the most similar negative; tau is evaluated only on those two pairs.
- ``"logsumexp"`` (smoother): -log softmax over all keys of s/tau (per-pair tau) + beta*Omega(tau_pos).

With a fixed float temperature (adaptive off) the ``"logsumexp"`` form IS the base NT-Xent/InfoNCE loss and
:func:`amcl_barlow_twins_loss` IS the Barlow Twins loss (same code path; tested).

Barlow Twins form: (1 - C_ll/tau_l)^2 + lambda * C_lm^2/tau_lm + beta*Omega(tau_l) - beta*Omega(tau_lm) with
d = 1 (a scalar per entry), summed. The authors' temperature network for this form was not available to us:
here tau_l = bound(sigmoid(a_l)) and tau_lm = bound(sigmoid(b_l + b_m)) are learned per feature pair
(:class:`FeaturePairTemperature`), our own parametrisation.

The loss modules (:class:`AMCLNTXentLoss`, :class:`AMCLInfoNCELoss`, :class:`AMCLBarlowTwinsLoss`) take the
place of NTXentLoss / InfoNCELoss / BarlowTwinsLoss in an objective whose projector is a
``MultiProjectionHead``. They own the per-head temperature networks, so their first two arguments
``(num_heads, dim)`` are sizes of that head: the objective passes them (in YAML give class_path + init_args
without them). Each returns its own log terms: ``loss`` (sum over heads), ``loss_head{c}``,
``tau_pos_head{c}``, ``tau_neg_head{c}`` and the means ``tau_pos`` / ``tau_neg``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from vispre.errors import VispreError
from vispre.losses.barlow_twins import barlow_twins_loss, cross_correlation
from vispre.losses.info_nce import ContrastivePairs, contrastive_loss, moco_pairs, pair_logits, simclr_pairs

AMCLForm = Literal["hardest", "logsumexp"]
FORMS = ("hardest", "logsumexp")


class AMCLTerms(NamedTuple):
    """One head's loss and the mean temperatures it used (detached; NaN-free, equal to T when fixed)."""

    loss: Tensor
    tau_pos: Tensor
    tau_neg: Tensor


def omega(tau: Tensor, dim: int) -> Tensor:
    """Temperature regulariser Omega(tau) = 1/tau + (dim/2) * log(tau) (elementwise)."""
    return 1.0 / tau + 0.5 * dim * torch.log(tau)


def _check_bounds(tau_min: float, tau_max: float) -> None:
    if not 0 < tau_min < tau_max:
        raise VispreError(f"temperature bounds must satisfy 0 < tau_min < tau_max, got [{tau_min}, {tau_max}]")


class PairTemperature(nn.Module):
    """phi_c: tau(z_i, z_j) = tau_min + (tau_max - tau_min) * sigmoid(MLP([z_i ; z_j])).

    The first Linear on the concatenation is split as W_a z_i + W_b z_j so all N x M pairs cost one
    broadcast add ([N, M, hidden] memory) instead of N*M concatenations.

    Args:
        dim: embedding size d of one head. hidden_dim: MLP width (paper 128). tau_min, tau_max: bounds
            (paper 1e-5, 2).
    """

    def __init__(self, dim: int, hidden_dim: int = 128, tau_min: float = 1e-5, tau_max: float = 2.0) -> None:
        super().__init__()
        _check_bounds(tau_min, tau_max)
        self.first = nn.Linear(2 * dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, 1)
        self.dim, self.tau_min, self.tau_max = dim, tau_min, tau_max

    def _bound(self, raw: Tensor) -> Tensor:
        return self.tau_min + (self.tau_max - self.tau_min) * torch.sigmoid(raw)

    def _halves(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        w_a, w_b = self.first.weight[:, : self.dim], self.first.weight[:, self.dim:]
        return a @ w_a.T + self.first.bias, b @ w_b.T

    def pairs(self, a: Tensor, b: Tensor) -> Tensor:
        """Temperatures of row-aligned pairs: a, b [K, d] -> [K]."""
        ha, hb = self._halves(a, b)
        return self._bound(self.out(torch.relu(ha + hb)).squeeze(-1))

    def matrix(self, a: Tensor, b: Tensor) -> Tensor:
        """Temperatures of all pairs: a [N, d], b [M, d] -> [N, M]."""
        ha, hb = self._halves(a, b)
        return self._bound(self.out(torch.relu(ha.unsqueeze(1) + hb.unsqueeze(0))).squeeze(-1))


class FeaturePairTemperature(nn.Module):
    """Per-feature-pair temperatures for the Barlow Twins form: diagonal [D] and off-diagonal [D, D]."""

    def __init__(self, dim: int, tau_min: float = 1e-5, tau_max: float = 2.0) -> None:
        super().__init__()
        _check_bounds(tau_min, tau_max)
        self.diag_logit = nn.Parameter(torch.zeros(dim))
        self.off_logit = nn.Parameter(torch.zeros(dim))
        self.tau_min, self.tau_max = tau_min, tau_max

    def forward(self) -> tuple[Tensor, Tensor]:
        span = self.tau_max - self.tau_min
        diag = self.tau_min + span * torch.sigmoid(self.diag_logit)
        off = self.tau_min + span * torch.sigmoid(self.off_logit.unsqueeze(0) + self.off_logit.unsqueeze(1))
        return diag, off


def _hardest_negative(pairs: ContrastivePairs) -> Tensor:
    """Column of the most similar key that is neither the positive nor excluded: [N]."""
    sim = pairs.query @ pairs.keys.T
    drop = torch.zeros_like(sim, dtype=torch.bool)
    drop.scatter_(1, pairs.positive_index.unsqueeze(1), True)
    if pairs.exclude_index is not None:
        drop.scatter_(1, pairs.exclude_index.unsqueeze(1), True)
    if bool(drop.all(dim=1).any()):
        raise VispreError("the hardest-negative form needs at least one negative per anchor (batch too small)")
    return sim.masked_fill(drop, float("-inf")).argmax(dim=1)


def amcl_contrastive_loss(pairs: ContrastivePairs, temperature: PairTemperature | float,
                          form: AMCLForm = "hardest", beta: float = 0.1) -> AMCLTerms:
    """One head's AMCL loss on SimCLR or MoCo pairs.

    Args:
        pairs: from :func:`simclr_pairs` / :func:`moco_pairs` (normalised [N, d] queries, [M, d] keys).
        temperature: a PairTemperature (adaptive) or a fixed float T (adaptive off, no regulariser).
        form: "hardest" or "logsumexp" (see module docstring).
        beta: regulariser weight (paper 0.1).

    Returns:
        AMCLTerms(loss scalar (mean over anchors), mean tau_pos, mean tau_neg).
    """
    if form not in FORMS:
        raise VispreError(f"AMCL form must be one of {FORMS}, got {form!r}")
    q, k, pos = pairs.query, pairs.keys, pairs.positive_index
    fixed = not isinstance(temperature, nn.Module)
    if fixed and form == "logsumexp":
        t = torch.tensor(float(temperature), device=q.device)
        return AMCLTerms(contrastive_loss(pairs, float(temperature)), t, t)
    s_pos = (q * k[pos]).sum(-1)
    if form == "hardest":
        neg = _hardest_negative(pairs)
        s_neg = (q * k[neg]).sum(-1)
        if fixed:
            t = torch.full_like(s_pos, float(temperature))
            return AMCLTerms((-s_pos / t + s_neg / t).mean(), t.mean(), t.mean())
        tau_pos, tau_neg = temperature.pairs(q, k[pos]), temperature.pairs(q, k[neg])
        d = q.shape[1]
        loss = -s_pos / tau_pos + s_neg / tau_neg + beta * (omega(tau_pos, d) - omega(tau_neg, d))
        return AMCLTerms(loss.mean(), tau_pos.detach().mean(), tau_neg.detach().mean())
    tau = temperature.matrix(q, k)
    logits = pair_logits(pairs, tau)
    tau_pos = tau.gather(1, pos.unsqueeze(1)).squeeze(1)
    ce = torch.logsumexp(logits, dim=1) - logits.gather(1, pos.unsqueeze(1)).squeeze(1)
    loss = ce + beta * omega(tau_pos, q.shape[1])
    negative = torch.isfinite(logits).scatter(1, pos.unsqueeze(1), False)
    return AMCLTerms(loss.mean(), tau_pos.detach().mean(), tau.detach()[negative].mean())


def amcl_barlow_twins_loss(z1: Tensor, z2: Tensor, temperature: FeaturePairTemperature | None,
                           lambd: float = 5e-3, beta: float = 0.1, gather: bool = True) -> AMCLTerms:
    """One head's AMCL Barlow Twins loss; ``temperature=None`` is exactly :func:`barlow_twins_loss`.

    Args:
        z1, z2: [N, D] projector outputs of two views. temperature: per-feature-pair temperatures or None.
        lambd: off-diagonal weight. beta: regulariser weight. gather: global batch under DDP.

    Returns:
        AMCLTerms(loss, mean diagonal tau (tau_pos), mean off-diagonal tau (tau_neg)).
    """
    if temperature is None:
        one = torch.ones((), device=z1.device)
        return AMCLTerms(barlow_twins_loss(z1, z2, lambd, gather), one, one)
    c = cross_correlation(z1, z2, gather)
    tau_diag, tau_off = temperature()
    off_mask = ~torch.eye(c.shape[0], dtype=torch.bool, device=c.device)
    diag = torch.diagonal(c)
    on = (1 - diag / tau_diag).pow(2).sum() + beta * omega(tau_diag, 1).sum()
    off = lambd * (c.pow(2) / tau_off)[off_mask].sum() - beta * omega(tau_off[off_mask], 1).sum()
    return AMCLTerms(on + off, tau_diag.detach().mean(), tau_off.detach()[off_mask].mean())


def head_terms(per_head: Sequence[AMCLTerms], scale: float = 1.0) -> dict[str, Tensor]:
    """Log terms of C heads: the sum of their losses (x scale) under "loss", per-head losses and temperatures.

    Args:
        per_head: one AMCLTerms per head. scale: factor on every loss (MoCo v3's 2T).

    Returns:
        ``loss``, ``loss_head{c}``, ``tau_pos_head{c}``, ``tau_neg_head{c}``, ``tau_pos``, ``tau_neg`` (means).
    """
    terms: dict[str, Tensor] = {"loss": scale * torch.stack([t.loss for t in per_head]).sum()}
    for c, t in enumerate(per_head):
        terms[f"loss_head{c}"] = scale * t.loss
        terms[f"tau_pos_head{c}"], terms[f"tau_neg_head{c}"] = t.tau_pos, t.tau_neg
    terms["tau_pos"] = torch.stack([t.tau_pos for t in per_head]).mean()
    terms["tau_neg"] = torch.stack([t.tau_neg for t in per_head]).mean()
    return terms


def _heads(z: Tensor | Sequence[Tensor]) -> Sequence[Tensor]:
    """A multi-head output as a list (a single-head projector's tensor is one head)."""
    return [z] if isinstance(z, Tensor) else z


class AMCLContrastiveLoss(nn.Module):
    """Shared part of the AMCL contrastive losses: per-head temperature networks and the form.

    Args:
        num_heads: C, the projector's heads (given by the objective). dim: d, each head's output size (given).
        temperature: fixed T used when ``adaptive_temperature`` is off, and MoCo v3's 2T scale; None: the base
            loss's (0.1 for :class:`AMCLNTXentLoss`, 0.2 for :class:`AMCLInfoNCELoss`).
        adaptive_temperature: learn per-pair tau (one :class:`PairTemperature` per head).
        form: "hardest" (paper) or "logsumexp" (smoother). beta: regulariser weight (paper 0.1).
        tau_min, tau_max: temperature bounds (paper 1e-5, 2). tau_hidden_dim: phi_c width (paper 128).
        gather: keys from every rank under DDP.
    """

    default_temperature = 0.1

    def __init__(self, num_heads: int, dim: int, *, temperature: float | None = None,
                 adaptive_temperature: bool = True, form: AMCLForm = "hardest", beta: float = 0.1,
                 tau_min: float = 1e-5, tau_max: float = 2.0, tau_hidden_dim: int = 128, gather: bool = True) -> None:
        super().__init__()
        name = type(self).__name__
        self.temperature = self.default_temperature if temperature is None else temperature
        if self.temperature <= 0:
            raise VispreError(f"{name}.temperature must be > 0, got {self.temperature}")
        if form not in FORMS:
            raise VispreError(f"{name}.form must be one of {FORMS}, got {form!r}")
        self.form, self.beta, self.gather = form, beta, gather
        self.temperatures = (nn.ModuleList(PairTemperature(dim, tau_hidden_dim, tau_min, tau_max)
                                           for _ in range(num_heads)) if adaptive_temperature else None)

    def head_temperature(self, c: int) -> PairTemperature | float:
        """Head c's temperature network, or the fixed T when the adaptive temperature is off."""
        return self.temperature if self.temperatures is None else self.temperatures[c]


class AMCLNTXentLoss(AMCLContrastiveLoss):
    """AMCL on SimCLR's pairs: :func:`amcl_contrastive_loss` on :func:`simclr_pairs` per head, summed.

    Args: those of :class:`AMCLContrastiveLoss` (T defaults to 0.1).

    Call: ``loss(z1s, z2s)`` with the C [N, d] projections of each view -> :func:`head_terms`.
    """

    def forward(self, z1s: Sequence[Tensor], z2s: Sequence[Tensor]) -> dict[str, Tensor]:
        return head_terms([
            amcl_contrastive_loss(simclr_pairs(z1, z2, self.gather), self.head_temperature(c), self.form, self.beta)
            for c, (z1, z2) in enumerate(zip(_heads(z1s), _heads(z2s)))])


class AMCLInfoNCELoss(AMCLContrastiveLoss):
    """AMCL on MoCo v3's pairs, symmetrised as :class:`vispre.losses.InfoNCELoss`: each head's loss keeps the
    2T scale (T = ``temperature``); losses add over the two directions, temperatures are averaged.

    Args: those of :class:`AMCLContrastiveLoss` (T defaults to 0.2).

    Call: ``loss(q1s, q2s, k1s, k2s)``: C [N, d] queries and keys of views 1 and 2 -> :func:`head_terms`.
    """

    default_temperature = 0.2

    def direction(self, qs: Sequence[Tensor], ks: Sequence[Tensor]) -> dict[str, Tensor]:
        """Log terms of one direction: queries of one view against the keys of the other."""
        return head_terms([
            amcl_contrastive_loss(moco_pairs(q, k, self.gather), self.head_temperature(c), self.form, self.beta)
            for c, (q, k) in enumerate(zip(_heads(qs), _heads(ks)))], scale=2 * self.temperature)

    def forward(self, q1s: Sequence[Tensor], q2s: Sequence[Tensor], k1s: Sequence[Tensor],
                k2s: Sequence[Tensor]) -> dict[str, Tensor]:
        a, b = self.direction(q1s, k2s), self.direction(q2s, k1s)
        return {key: (a[key] + b[key]) / 2 if key.startswith("tau") else a[key] + b[key] for key in a}


class AMCLBarlowTwinsLoss(nn.Module):
    """AMCL on Barlow Twins: :func:`amcl_barlow_twins_loss` per head, summed.

    Args:
        num_heads: C, the projector's heads (given by the objective). dim: D, each head's output (given).
        lambd: off-diagonal weight (paper 5e-3). adaptive_temperature: learn per-feature-pair tau (one
            :class:`FeaturePairTemperature` per head; off: exactly Barlow Twins per head). beta: regulariser
            weight. tau_min, tau_max: bounds. gather: cross-correlation over the global batch under DDP.

    Call: ``loss(z1s, z2s)`` with the C [N, D] projections of each view -> :func:`head_terms`.
    """

    def __init__(self, num_heads: int, dim: int, *, lambd: float = 5e-3, adaptive_temperature: bool = True,
                 beta: float = 0.1, tau_min: float = 1e-5, tau_max: float = 2.0, gather: bool = True) -> None:
        super().__init__()
        self.lambd, self.beta, self.gather = lambd, beta, gather
        self.temperatures = (nn.ModuleList(FeaturePairTemperature(dim, tau_min, tau_max) for _ in range(num_heads))
                             if adaptive_temperature else None)

    def forward(self, z1s: Sequence[Tensor], z2s: Sequence[Tensor]) -> dict[str, Tensor]:
        temps = self.temperatures
        return head_terms([
            amcl_barlow_twins_loss(z1, z2, None if temps is None else temps[c], self.lambd, self.beta, self.gather)
            for c, (z1, z2) in enumerate(zip(_heads(z1s), _heads(z2s)))])


__all__ = ["AMCLBarlowTwinsLoss", "AMCLContrastiveLoss", "AMCLForm", "AMCLInfoNCELoss", "AMCLNTXentLoss", "AMCLTerms",
           "FeaturePairTemperature", "PairTemperature", "amcl_barlow_twins_loss", "amcl_contrastive_loss",
           "head_terms", "omega"]
