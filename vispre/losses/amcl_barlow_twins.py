"""AMCL on Barlow Twins (arXiv 2310.05615, Table 2 Eq. 2.3), paper and stable forms, per head on the
cross-correlation C [D, D] of the batch-standardised projections (:func:`vispre.losses.cross_correlation`).

Data-dependent per-feature-pair temperatures: feature l of view 1 is described by its correlation profile
C[l, :] (with every view-2 feature), feature m of view 2 by C[:, m]; the shared :class:`PairTemperature` gives
tau_lm = tau(C[l, :], C[:, m]) (ours: the authors' v2 network for this form reads the batch columns, whose
length is the batch size; the profiles have a fixed size D and their entries are those columns' correlations).

- ``"paper"``: ``sum_l (1 - C_ll/tau_ll)^2 + lambda sum_{l!=m} C_lm^2/tau_lm + beta sum_l Omega(tau_ll)
  - beta sum_{l!=m} Omega(tau_lm)``, kappa = D/2, beta 1e-6 (the authors').
- ``"stable"`` (ours): one temperature per feature, tau_l = tau_ll, weighting its whole row:
  ``sum_l [(1 - C_ll)^2 + lambda sum_{m!=l} C_lm^2] / tau_l + beta (1/tau_l + kappa ln tau_l)``, kappa = 1/T_base,
  T_base = 1 (Barlow Twins itself). Per feature the optimum is tau_l* = (D_l + beta)/(beta kappa) with D_l its
  row's Barlow Twins loss; at a fixed tau = 1 with beta = 0 it is exactly Barlow Twins. Why not C_lm/tau_l
  inside the squares: docs/amcl.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vispre.errors import VispreError
from vispre.losses.amcl_temperature import (AMCLForm, AMCLHead, PairTemperature, as_heads, check_form,
                                            fixed_temperature, fp32_loss, head_terms, omega)
from vispre.losses.barlow_twins import cross_correlation

PAPER_BETA_BT = 1e-6
STABLE_BETA_BT = 1.0


def _off_diagonal(c: Tensor) -> Tensor:
    return ~torch.eye(c.shape[0], dtype=torch.bool, device=c.device)


def paper_barlow_twins_loss(c: Tensor, temperature: PairTemperature | float, *, lambd: float = 5e-3,
                            beta: float = PAPER_BETA_BT, kappa: float | None = None) -> AMCLHead:
    """One head's paper-form loss on its cross-correlation.

    Args:
        c: [D, D] cross-correlation. temperature: the shared network (tau_lm from the profiles) or a fixed T.
        lambd: off-diagonal weight (5e-3). beta: regulariser weight (authors 1e-6). kappa: None: D/2.

    Returns:
        AMCLHead (loss = sum over features; per_item = each row's share; tau = all D^2 temperatures).
    """
    kappa = c.shape[0] / 2 if kappa is None else kappa
    tau = temperature.matrix(c, c.T) if isinstance(temperature, nn.Module) else fixed_temperature(c, temperature, c.shape)
    off = _off_diagonal(c)
    diag, tau_diag = torch.diagonal(c), torch.diagonal(tau)
    on = (1 - diag / tau_diag).pow(2) + beta * omega(tau_diag, kappa)
    off_terms = torch.where(off, lambd * c.pow(2) / tau - beta * omega(tau, kappa), torch.zeros_like(c)).sum(1)
    per = on + off_terms
    tau = tau.detach()
    return AMCLHead(per.sum(), per, tau.reshape(-1), tau_diag.detach().mean(), tau[off].mean())


def stable_barlow_twins_loss(c: Tensor, temperature: PairTemperature | float, *, lambd: float = 5e-3,
                             beta: float = STABLE_BETA_BT, kappa: float = 1.0) -> AMCLHead:
    """One head's stable-form loss: feature l's Barlow Twins row over tau_l = tau(C[l, :], C[:, l]), plus Omega.

    Args:
        c: [D, D] cross-correlation. temperature: the shared network or a fixed T (T = 1, beta = 0: exactly
            :func:`vispre.losses.barlow_twins_loss`). lambd: off-diagonal weight. beta: regulariser weight.
        kappa: Omega's ln weight (1/T_base).

    Returns:
        AMCLHead (loss = sum over features; per_item [D]; tau = the D feature temperatures).
    """
    tau = temperature.pairs(c, c.T) if isinstance(temperature, nn.Module) else fixed_temperature(c, temperature, c.shape[:1])
    diag = torch.diagonal(c)
    rows = (1 - diag).pow(2) + lambd * (c.pow(2).sum(1) - diag.pow(2))
    per = rows / tau + beta * omega(tau, kappa)
    return AMCLHead(per.sum(), per, tau.detach())


class AMCLBarlowTwinsLoss(nn.Module):
    """AMCL on Barlow Twins: one cross-correlation and loss per head, summed; one shared temperature network.

    Args:
        num_heads: C (given by the objective). dim: D, each head's output (given).
        form: ``"stable"`` (ours, default) or ``"paper"``.
        lambd: off-diagonal weight (paper 5e-3).
        temperature: the fixed T when ``adaptive_temperature`` is off, and the stable form's T_base (network
            init, kappa = 1/T); default 1.0 (Barlow Twins itself).
        adaptive_temperature: learn the temperatures (off: every tau = T).
        beta: regulariser weight; None: 1e-6 (paper) / 1.0 (stable). kappa: None: D/2 (paper) / 1/T (stable).
        tau_min, tau_max: bounds (1e-5, 2). tau_hidden_dim: phi's width (128).
        gather: cross-correlation over the global batch under DDP.

    Call: ``loss(z1s, z2s)`` with the C [N, D] projections of each view -> head_terms.

    Raises:
        VispreError: unknown form, T <= 0, bad bounds, stable T outside (tau_min, tau_max).
    """

    def __init__(self, num_heads: int, dim: int, *, form: AMCLForm = "stable", lambd: float = 5e-3,
                 temperature: float = 1.0, adaptive_temperature: bool = True, beta: float | None = None,
                 kappa: float | None = None, tau_min: float = 1e-5, tau_max: float = 2.0, tau_hidden_dim: int = 128,
                 gather: bool = True) -> None:
        super().__init__()
        check_form("AMCLBarlowTwinsLoss", form)
        if temperature <= 0:
            raise VispreError(f"AMCLBarlowTwinsLoss.temperature must be > 0, got {temperature}")
        self.form, self.lambd, self.temperature, self.gather, self.num_heads = form, lambd, temperature, gather, num_heads
        self.beta = (PAPER_BETA_BT if form == "paper" else STABLE_BETA_BT) if beta is None else beta
        self.kappa = kappa if kappa is not None or form == "paper" else 1.0 / temperature
        self.tau_min, self.tau_max = tau_min, tau_max
        init = temperature if form == "stable" else None
        self.temperature_net = (PairTemperature(dim, tau_hidden_dim, tau_min, tau_max, init=init)
                                if adaptive_temperature else None)

    def head_loss(self, c: Tensor) -> AMCLHead:
        """One head's loss on its [D, D] cross-correlation, in this module's form."""
        temperature = self.temperature if self.temperature_net is None else self.temperature_net
        if self.form == "paper":
            return paper_barlow_twins_loss(c, temperature, lambd=self.lambd, beta=self.beta, kappa=self.kappa)
        return stable_barlow_twins_loss(c, temperature, lambd=self.lambd, beta=self.beta, kappa=self.kappa)

    def forward(self, z1s: Tensor | Sequence[Tensor], z2s: Tensor | Sequence[Tensor]) -> dict[str, Tensor]:
        a, b = as_heads(z1s), as_heads(z2s)
        with fp32_loss(a[0]):
            heads = [self.head_loss(cross_correlation(z1, z2, self.gather)) for z1, z2 in zip(a, b, strict=True)]
        return head_terms(heads, self.tau_min, self.tau_max)


__all__ = ["AMCLBarlowTwinsLoss", "PAPER_BETA_BT", "STABLE_BETA_BT", "paper_barlow_twins_loss",
           "stable_barlow_twins_loss"]
