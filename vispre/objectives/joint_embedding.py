"""Two-view joint-embedding objectives: both views through the backbone and one projector, a loss on the
two projections. SimCLR and Barlow Twins are this with their own default head and loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from torch import Tensor, nn

from vispre.backbones.vit import MaskedViT
from vispre.heads.projection import HeadFactory
from vispre.objectives.base import Batch, LossFactory, PretrainObjective, build_loss, two_views
from vispre.optim import OptimizerRecipe


class JointEmbedding(PretrainObjective):
    """``loss(projector(backbone(view1)), projector(backbone(view2)))``.

    A subclass sets the paper defaults :attr:`default_projector` and :attr:`default_loss`.

    Args:
        backbone: shared encoder (its pooled feature, cls by default, feeds the projector).
        projector: head factory called with the backbone width (YAML: class_path + init_args without
            in_dim); None: :attr:`default_projector`.
        loss: a loss module ``loss(z1, z2) -> terms``, or a factory ``(num_heads, dim) -> loss`` sized by the
            projector (AMCL's losses); None: :attr:`default_loss`.
        optimizer: optimizer recipe (default AdamW).
    """

    default_projector: ClassVar[HeadFactory]
    default_loss: ClassVar[Callable[[], nn.Module]]

    def __init__(self, backbone: MaskedViT, *, projector: HeadFactory | None = None,
                 loss: nn.Module | LossFactory | None = None, optimizer: OptimizerRecipe | None = None) -> None:
        super().__init__(backbone, optimizer=optimizer)
        self.projector = (projector or self.default_projector)(backbone.embed_dim)
        self.loss = build_loss(loss, self.projector, default=self.default_loss)

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        v1, v2 = two_views(batch, type(self).__name__)
        return self.loss(self.projector(self.backbone(v1)), self.projector(self.backbone(v2)))


__all__ = ["JointEmbedding"]
