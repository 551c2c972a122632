"""Two-view joint-embedding objectives: both views through the backbone and one projector, a loss on the
two projections. SimCLR and Barlow Twins are this with their own default head and loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from torch import Tensor, nn

from vispre.backbones.vit import MaskedViT
from vispre.errors import VispreError
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
        token_drop: fraction of each view's patch tokens removed before the encoder in training (a fresh
            random subset per image and view, prefix tokens kept; the pooled feature is taken over the kept
            tokens). 0 (default) encodes every token. FLIP (Li et al., "Scaling Language-Image Pre-training via
            Masking", CVPR 2023) drops 50 % to make a step ~2x cheaper; evaluation and the exported model always
            see all tokens.
    """

    default_projector: ClassVar[HeadFactory]
    default_loss: ClassVar[Callable[[], nn.Module]]

    def __init__(self, backbone: MaskedViT, *, projector: HeadFactory | None = None,
                 loss: nn.Module | LossFactory | None = None, optimizer: OptimizerRecipe | None = None,
                 token_drop: float = 0.0) -> None:
        super().__init__(backbone, optimizer=optimizer)
        if not 0.0 <= token_drop < 1.0:
            raise VispreError(f"token_drop must be in [0, 1) (the fraction of patch tokens removed), "
                              f"got {token_drop!r}")
        self.token_drop = token_drop
        self.projector = (projector or self.default_projector)(backbone.embed_dim)
        self.loss = build_loss(loss, self.projector, default=self.default_loss)

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        v1, v2 = two_views(batch, type(self).__name__)
        return self.loss(self.projector(self.encode(v1)), self.projector(self.encode(v2)))

    def encode(self, view: Tensor) -> Tensor:
        """Pooled backbone feature of one view, [B, C, H, W] -> [B, D]: of a random ``1 - token_drop`` of its
        patch tokens in training, of all tokens otherwise."""
        if self.token_drop > 0 and self.training:
            return self.backbone.pool(self.backbone.forward_masked(view, self.token_drop).tokens)
        return self.backbone(view)


__all__ = ["JointEmbedding"]
