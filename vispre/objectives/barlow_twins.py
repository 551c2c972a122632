"""Barlow Twins pretraining (Zbontar et al., ICML 2021, arXiv 2103.03230) on a timm ViT."""

from __future__ import annotations

from torch import Tensor

from vispre.backbones.vit import MaskedViT
from vispre.heads.projection import ProjectionMLP
from vispre.losses.barlow_twins import barlow_twins_loss
from vispre.objectives.base import Batch, PretrainObjective
from vispre.objectives.optim import AdamWRecipe
from vispre.objectives.simclr import two_views


class BarlowTwins(PretrainObjective):
    """Cross-correlation of batch-standardised projections driven to the identity.

    Args:
        backbone: shared encoder.
        proj_hidden_dim, proj_dim, proj_layers: projector (paper 8192-8192-8192, 3 layers).
        lambd: off-diagonal weight (paper 5e-3).
        gather: cross-correlation over the global batch under DDP.
        optimizer: AdamW recipe.
    """

    def __init__(self, backbone: MaskedViT, proj_hidden_dim: int = 8192, proj_dim: int = 8192,
                 proj_layers: int = 3, lambd: float = 5e-3, gather: bool = True,
                 optimizer: AdamWRecipe | None = None) -> None:
        super().__init__(backbone, optimizer)
        self.lambd, self.gather = lambd, gather
        self.projector = ProjectionMLP(backbone.embed_dim, proj_hidden_dim, proj_dim, proj_layers)

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        v1, v2 = two_views(batch, type(self).__name__)
        z1, z2 = self.projector(self.backbone(v1)), self.projector(self.backbone(v2))
        loss = barlow_twins_loss(z1, z2, self.lambd, self.gather)
        return {"loss": loss, "barlow_twins": loss}


__all__ = ["BarlowTwins"]
