"""AMCL on each base objective: C projection heads + per-head per-pair adaptive temperatures (Wang,
Koniusz, Gedeon, Zheng, "Adaptive Multi-head Contrastive Learning", ECCV 2024, arXiv 2310.05615).

Each class subclasses its base and only swaps the single projector for a MultiHead and the loss for the
per-head AMCL loss (vispre/losses/amcl.py). With ``num_heads=1``, ``adaptive_temperature=False`` and
``form="logsumexp"`` each one computes exactly its base's loss (tested). Logged: ``loss_head{c}``,
``tau_pos_head{c}``, ``tau_neg_head{c}`` and the means ``tau_pos`` / ``tau_neg``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vispre.backbones.vit import MaskedViT
from vispre.heads.projection import MultiHead
from vispre.losses.amcl import (AMCLForm, AMCLTerms, FeaturePairTemperature, PairTemperature,
                                amcl_barlow_twins_loss, amcl_contrastive_loss)
from vispre.losses.info_nce import moco_pairs, simclr_pairs
from vispre.objectives.barlow_twins import BarlowTwins
from vispre.objectives.base import Batch
from vispre.objectives.moco_v3 import MoCoV3
from vispre.objectives.optim import AdamWRecipe
from vispre.objectives.simclr import SimCLR, two_views


def pair_temperatures(num_heads: int, dim: int, hidden_dim: int, tau_min: float, tau_max: float,
                      adaptive: bool) -> nn.ModuleList | None:
    """One PairTemperature per head, or None when the adaptive temperature is off."""
    if not adaptive:
        return None
    return nn.ModuleList(PairTemperature(dim, hidden_dim, tau_min, tau_max) for _ in range(num_heads))


def head_terms(per_head: Sequence[AMCLTerms], scale: float = 1.0) -> dict[str, Tensor]:
    """Sum of the per-head losses (x scale) under "loss" plus per-head losses and temperatures."""
    terms: dict[str, Tensor] = {"loss": scale * torch.stack([t.loss for t in per_head]).sum()}
    for c, t in enumerate(per_head):
        terms[f"loss_head{c}"] = scale * t.loss
        terms[f"tau_pos_head{c}"], terms[f"tau_neg_head{c}"] = t.tau_pos, t.tau_neg
    terms["tau_pos"] = torch.stack([t.tau_pos for t in per_head]).mean()
    terms["tau_neg"] = torch.stack([t.tau_neg for t in per_head]).mean()
    return terms


def _temperature(temps: nn.ModuleList | None, c: int, fixed: float) -> PairTemperature | float:
    return fixed if temps is None else temps[c]


class AMCLSimCLR(SimCLR):
    """SimCLR with C heads and adaptive temperatures.

    Args (beyond SimCLR's):
        num_heads: C (paper 3). adaptive_temperature: learn per-pair tau (off: fixed ``temperature``).
        form: "hardest" (paper) or "logsumexp" (smoother). beta: regulariser weight (paper 0.1).
        tau_min, tau_max: temperature bounds (paper 1e-5, 2). tau_hidden_dim: phi_c width (paper 128).
    """

    def __init__(self, backbone: MaskedViT, num_heads: int = 3, proj_hidden_dim: int = 2048,
                 proj_dim: int = 128, proj_layers: int = 2, temperature: float = 0.1,
                 adaptive_temperature: bool = True, form: AMCLForm = "hardest", beta: float = 0.1,
                 tau_min: float = 1e-5, tau_max: float = 2.0, tau_hidden_dim: int = 128, gather: bool = True,
                 optimizer: AdamWRecipe | None = None) -> None:
        super().__init__(backbone, proj_hidden_dim, proj_dim, proj_layers, temperature, gather, optimizer)
        self.form, self.beta = form, beta
        self.projector = MultiHead(num_heads, backbone.embed_dim, proj_hidden_dim, proj_dim, proj_layers)
        self.temperatures = pair_temperatures(num_heads, proj_dim, tau_hidden_dim, tau_min, tau_max,
                                              adaptive_temperature)

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        v1, v2 = two_views(batch, type(self).__name__)
        z1s, z2s = self.projector(self.backbone(v1)), self.projector(self.backbone(v2))
        return head_terms([
            amcl_contrastive_loss(simclr_pairs(z1, z2, self.gather),
                                  _temperature(self.temperatures, c, self.temperature), self.form, self.beta)
            for c, (z1, z2) in enumerate(zip(z1s, z2s))])


class AMCLMoCoV3(MoCoV3):
    """MoCo v3 with C projector/predictor heads (each EMA-tracked) and adaptive temperatures.

    Args: MoCoV3's plus num_heads, adaptive_temperature, form, beta, tau_min, tau_max, tau_hidden_dim
    (as in :class:`AMCLSimCLR`). Each head's loss keeps MoCo v3's 2T scale (T = ``temperature``).
    """

    def __init__(self, backbone: MaskedViT, num_heads: int = 3, proj_hidden_dim: int = 4096,
                 proj_dim: int = 256, temperature: float = 0.2, base_momentum: float = 0.99,
                 freeze_patch_embed: bool = False, adaptive_temperature: bool = True,
                 form: AMCLForm = "hardest", beta: float = 0.1, tau_min: float = 1e-5, tau_max: float = 2.0,
                 tau_hidden_dim: int = 128, gather: bool = True, optimizer: AdamWRecipe | None = None) -> None:
        super().__init__(backbone, proj_hidden_dim, proj_dim, temperature, base_momentum, freeze_patch_embed,
                         gather, optimizer)
        self.form, self.beta = form, beta
        self.projector = MultiHead(num_heads, backbone.embed_dim, proj_hidden_dim, proj_dim, 3,
                                   last_batch_norm=True)
        self.predictor = MultiHead(num_heads, proj_dim, proj_hidden_dim, proj_dim, 2)
        self.temperatures = pair_temperatures(num_heads, proj_dim, tau_hidden_dim, tau_min, tau_max,
                                              adaptive_temperature)
        self.reset_momentum_branch()

    def query(self, images: Tensor) -> list[Tensor]:
        zs = self.projector(self.backbone(images))
        return [head(z) for head, z in zip(self.predictor.heads, zs)]

    def pair_loss(self, q: list[Tensor], k: list[Tensor]) -> dict[str, Tensor]:
        return head_terms([
            amcl_contrastive_loss(moco_pairs(qc, kc, self.gather),
                                  _temperature(self.temperatures, c, self.temperature), self.form, self.beta)
            for c, (qc, kc) in enumerate(zip(q, k))], scale=2 * self.temperature)


class AMCLBarlowTwins(BarlowTwins):
    """Barlow Twins with C heads and per-feature-pair adaptive temperatures (our parametrisation, see
    vispre/losses/amcl.py).

    Args: BarlowTwins's plus num_heads, adaptive_temperature, beta, tau_min, tau_max.
    """

    def __init__(self, backbone: MaskedViT, num_heads: int = 3, proj_hidden_dim: int = 8192,
                 proj_dim: int = 8192, proj_layers: int = 3, lambd: float = 5e-3,
                 adaptive_temperature: bool = True, beta: float = 0.1, tau_min: float = 1e-5,
                 tau_max: float = 2.0, gather: bool = True, optimizer: AdamWRecipe | None = None) -> None:
        super().__init__(backbone, proj_hidden_dim, proj_dim, proj_layers, lambd, gather, optimizer)
        self.beta = beta
        self.projector = MultiHead(num_heads, backbone.embed_dim, proj_hidden_dim, proj_dim, proj_layers)
        self.temperatures = (nn.ModuleList(FeaturePairTemperature(proj_dim, tau_min, tau_max)
                                           for _ in range(num_heads)) if adaptive_temperature else None)

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        v1, v2 = two_views(batch, type(self).__name__)
        z1s, z2s = self.projector(self.backbone(v1)), self.projector(self.backbone(v2))
        temps = self.temperatures
        return head_terms([
            amcl_barlow_twins_loss(z1, z2, None if temps is None else temps[c], self.lambd, self.beta, self.gather)
            for c, (z1, z2) in enumerate(zip(z1s, z2s))])


__all__ = ["AMCLBarlowTwins", "AMCLMoCoV3", "AMCLSimCLR", "head_terms", "pair_temperatures"]
