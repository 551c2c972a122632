"""SimCLR pretraining (Chen, Kornblith, Norouzi, Hinton, ICML 2020, arXiv 2002.05709) on a timm ViT."""

from __future__ import annotations

from torch import Tensor

from vispre.backbones.vit import MaskedViT
from vispre.heads.projection import ProjectionMLP
from vispre.losses.info_nce import nt_xent_loss
from vispre.objectives.base import Batch, PretrainObjective
from vispre.objectives.optim import AdamWRecipe


def two_views(batch: Batch, objective: str) -> tuple[Tensor, Tensor]:
    """The first two views of a batch, or one clear error when there are fewer."""
    views = batch["views"]
    if len(views) < 2:
        raise ValueError(f"{objective} needs batches with at least 2 views (e.g. view: SimCLRViews), "
                         f"got {len(views)}")
    return views[0], views[1]


class SimCLR(PretrainObjective):
    """NT-Xent between projections of two augmented views; negatives over the global batch under DDP.

    Args:
        backbone: shared encoder (its pooled feature, cls by default, feeds the projector).
        proj_hidden_dim, proj_dim, proj_layers: projection MLP (paper 2048 -> 128, 2 layers).
        temperature: NT-Xent T (0.1-0.5).
        gather: negatives from every rank under DDP.
        optimizer: AdamW recipe.
    """

    def __init__(self, backbone: MaskedViT, proj_hidden_dim: int = 2048, proj_dim: int = 128,
                 proj_layers: int = 2, temperature: float = 0.1, gather: bool = True,
                 optimizer: AdamWRecipe | None = None) -> None:
        super().__init__(backbone, optimizer)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.gather = temperature, gather
        self.projector = ProjectionMLP(backbone.embed_dim, proj_hidden_dim, proj_dim, proj_layers)

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        v1, v2 = two_views(batch, type(self).__name__)
        z1, z2 = self.projector(self.backbone(v1)), self.projector(self.backbone(v2))
        loss = nt_xent_loss(z1, z2, self.temperature, self.gather)
        return {"loss": loss, "nt_xent": loss}


__all__ = ["SimCLR", "two_views"]
