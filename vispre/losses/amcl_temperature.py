"""AMCL's temperature network, regulariser, per-head log terms and the fp32 guard (arXiv 2310.05615).

One network phi is shared by every head and pair (the authors' v2 code): phi = Linear(d, hidden)-ReLU-
Linear(hidden, d) on L2-normalised inputs and

    tau(a, b) = tau_min + (tau_max - tau_min) * sigmoid(offset - phi(a) . phi(b)),

offset = 0 (the authors' form, PyTorch's default init) or, with ``init=T``, chosen together with a zero first
weight (phi constant at step 0) so that tau = T exactly for every pair at step 0 (the ``stable`` form).
tau is symmetric in (a, b). The regulariser is Omega(tau) = 1/tau + kappa * ln tau (kappa = d'/2 in the
paper, 1/T_base in the stable form; its minimiser is tau = 1/kappa). What each form means: docs/amcl.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vispre.errors import VispreError
from vispre.losses.precision import at_least_fp32, autocast_off

AMCLForm = Literal["paper", "stable"]
FORMS = ("paper", "stable")
BOUND_FRACTION = 0.01
"""A temperature counts as "at a bound" within this fraction of (tau_max - tau_min) of tau_min or tau_max."""


def check_form(owner: str, form: str) -> None:
    """Raise VispreError unless ``form`` is one of :data:`FORMS`."""
    if form not in FORMS:
        raise VispreError(f"{owner}.form must be one of {FORMS}, got {form!r}")


def check_bounds(tau_min: float, tau_max: float) -> None:
    """Raise VispreError unless 0 < tau_min < tau_max."""
    if not 0 < tau_min < tau_max:
        raise VispreError(f"temperature bounds must satisfy 0 < tau_min < tau_max, got [{tau_min}, {tau_max}]")


def omega(tau: Tensor, kappa: float) -> Tensor:
    """AMCL's temperature regulariser Omega(tau) = 1/tau + kappa * ln(tau), elementwise.

    Args:
        tau: temperatures (> 0), any shape. kappa: weight of ln tau (paper d'/2; stable form 1/T_base).

    Returns:
        Omega(tau), the shape of ``tau``; its only stationary point is the minimum at tau = 1/kappa.
    """
    return 1.0 / tau + kappa * torch.log(tau)


class PairTemperature(nn.Module):
    """The shared temperature network: tau(a, b) = bound(sigmoid(offset - phi(a) . phi(b))).

    Args:
        dim: size d' of what it reads (a head's output, or a Barlow Twins correlation profile).
        hidden_dim: phi's width (authors 128). tau_min, tau_max: bounds (authors 1e-5, 2).
        init: None: PyTorch's default init and offset 0 (the authors'); a temperature T in (tau_min, tau_max):
            phi's first weight is zero and its first bias positive, so phi(x) = phi0 for every input, and the
            offset (a buffer, saved with the weights) is logit((T - tau_min)/(tau_max - tau_min)) + |phi0|^2:
            every pair starts at exactly T and every parameter still gets a gradient.

    Raises:
        VispreError: bad bounds, or ``init`` outside (tau_min, tau_max).
    """

    offset: Tensor

    def __init__(self, dim: int, hidden_dim: int = 128, tau_min: float = 1e-5, tau_max: float = 2.0,
                 init: float | None = None) -> None:
        super().__init__()
        check_bounds(tau_min, tau_max)
        self.phi = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, dim))
        self.dim, self.tau_min, self.tau_max = dim, tau_min, tau_max
        offset = 0.0
        if init is not None:
            if not tau_min < init < tau_max:
                raise VispreError(f"PairTemperature init must lie strictly inside the bounds ({tau_min}, {tau_max}), "
                                  f"got {init}")
            first = self.phi[0]
            with torch.no_grad():
                nn.init.zeros_(first.weight)
                first.bias.abs_()
                phi0 = self.phi(torch.zeros(1, dim))
            p = (init - tau_min) / (tau_max - tau_min)
            offset = math.log(p / (1.0 - p)) + float(phi0.pow(2).sum())
        self.register_buffer("offset", torch.tensor(offset))

    def embed(self, x: Tensor) -> Tensor:
        """phi on the L2-normalised rows: [..., d'] -> [..., d'] (in the network's dtype)."""
        return self.phi(F.normalize(x.to(self.phi[0].weight.dtype), dim=-1))

    def bound(self, dot: Tensor) -> Tensor:
        """Temperatures from phi(a) . phi(b): tau_min + (tau_max - tau_min) * sigmoid(offset - dot)."""
        return self.tau_min + (self.tau_max - self.tau_min) * torch.sigmoid(self.offset - dot)

    def pairs(self, a: Tensor, b: Tensor) -> Tensor:
        """Temperatures of row-aligned pairs: a, b [K, d'] -> [K]."""
        return self.bound((self.embed(a) * self.embed(b)).sum(-1))

    def matrix(self, a: Tensor, b: Tensor) -> Tensor:
        """Temperatures of all pairs: a [N, d'], b [M, d'] -> [N, M]."""
        return self.bound(self.embed(a) @ self.embed(b).T)


class AMCLHead(NamedTuple):
    """One head's AMCL loss.

    Attributes:
        loss: scalar (mean over anchors, or sum over features for Barlow Twins).
        per_item: [N] per-anchor (or [D] per-feature) losses whose mean (sum) is ``loss``.
        tau: detached 1-D tensor of every temperature the loss used (for the log statistics).
        tau_pos: detached mean temperature of the positives (paper form), else None.
        tau_neg: detached mean temperature of the negatives / off-diagonal entries (paper form), else None.
    """

    loss: Tensor
    per_item: Tensor
    tau: Tensor
    tau_pos: Tensor | None = None
    tau_neg: Tensor | None = None


def fixed_temperature(like: Tensor, temperature: float, shape: Sequence[int]) -> Tensor:
    """A tensor of ``shape`` filled with the fixed temperature (dtype and device of ``like``)."""
    return torch.full(tuple(shape), float(temperature), dtype=like.dtype, device=like.device)


@torch.no_grad()
def temperature_stats(tau: Tensor, tau_min: float, tau_max: float) -> dict[str, Tensor]:
    """Mean, 5th / 95th percentile and fraction at a bound of some temperatures.

    Args:
        tau: temperatures, any shape (flattened). tau_min, tau_max: the bounds.

    Returns:
        ``{"tau_mean", "tau_p05", "tau_p95", "tau_at_bound"}`` (detached scalars); at a bound = within
        :data:`BOUND_FRACTION` of (tau_max - tau_min) of either bound.
    """
    flat = tau.detach().reshape(-1).float()
    margin = BOUND_FRACTION * (tau_max - tau_min)
    at_bound = (flat <= tau_min + margin) | (flat >= tau_max - margin)
    return {"tau_mean": flat.mean(), "tau_p05": percentile(flat, 5), "tau_p95": percentile(flat, 95),
            "tau_at_bound": at_bound.float().mean()}


def percentile(flat: Tensor, q: float) -> Tensor:
    """Nearest-rank q-th percentile of a 1-D tensor: its ceil(q/100 * n)-th smallest value (any size; torch.quantile
    refuses more than 2^24 elements, which a Barlow Twins head's D^2 temperatures exceed at D = 8192)."""
    rank = min(flat.numel(), max(1, math.ceil(q * flat.numel() / 100 - 1e-9)))
    return flat.kthvalue(rank).values


def head_terms(per_head: Sequence[AMCLHead], tau_min: float, tau_max: float, scale: float = 1.0) -> dict[str, Tensor]:
    """Log terms of C heads: the total and, per head, its loss and temperature statistics.

    Args:
        per_head: one AMCLHead per head. tau_min, tau_max: the bounds (for ``tau_at_bound``).
        scale: factor on every loss (MoCo v3's 2T in the stable form).

    Returns:
        ``loss`` (scale x sum over heads), and per head c: ``loss_head{c}``, ``tau_mean_head{c}``,
        ``tau_p05_head{c}``, ``tau_p95_head{c}``, ``tau_at_bound_head{c}`` (and ``tau_pos_head{c}``,
        ``tau_neg_head{c}`` in the paper form); ``tau_mean`` / ``tau_at_bound`` over all heads.
    """
    terms: dict[str, Tensor] = {"loss": scale * torch.stack([h.loss for h in per_head]).sum()}
    for c, head in enumerate(per_head):
        terms[f"loss_head{c}"] = scale * head.loss.detach()
        for key, value in temperature_stats(head.tau, tau_min, tau_max).items():
            terms[f"{key}_head{c}"] = value
        if head.tau_pos is not None and head.tau_neg is not None:
            terms[f"tau_pos_head{c}"], terms[f"tau_neg_head{c}"] = head.tau_pos, head.tau_neg
    overall = temperature_stats(torch.cat([h.tau.reshape(-1) for h in per_head]), tau_min, tau_max)
    terms["tau_mean"], terms["tau_at_bound"] = overall["tau_mean"], overall["tau_at_bound"]
    return terms


def join_directions(a: AMCLHead, b: AMCLHead, weight: float) -> AMCLHead:
    """One head's two view directions (MoCo v3): losses weight * (a + b), temperatures pooled."""
    means = [None if x is None or y is None else (x + y) / 2 for x, y in ((a.tau_pos, b.tau_pos), (a.tau_neg, b.tau_neg))]
    return AMCLHead(weight * (a.loss + b.loss), weight * torch.cat([a.per_item, b.per_item]),
                    torch.cat([a.tau.reshape(-1), b.tau.reshape(-1)]), *means)


fp32_loss = autocast_off
"""Autocast off on a tensor's device: the AMCL losses run in fp32 (1/tau reaches 1e5), as the authors'."""


def as_heads(z: Tensor | Sequence[Tensor]) -> list[Tensor]:
    """A multi-head output as a list of fp32 tensors (a single-head projector's tensor is one head)."""
    return [at_least_fp32(z)] if isinstance(z, Tensor) else [at_least_fp32(t) for t in z]


__all__ = ["AMCLForm", "AMCLHead", "BOUND_FRACTION", "FORMS", "PairTemperature", "as_heads", "check_bounds",
           "check_form", "fixed_temperature", "fp32_loss", "head_terms", "join_directions", "omega",
           "percentile", "temperature_stats", "at_least_fp32"]
