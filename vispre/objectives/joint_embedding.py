"""Two-view joint-embedding objectives: both views through the backbone and one projector, a loss on the
two projections (and, with ``multi_crop``, on each local crop against both views). SimCLR and Barlow Twins are
this with their own default head and loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

from vispre.backbones.crops import check_crop, encode_crop
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
        multi_crop: the views after the first two are smaller local crops (e.g. view: BatchMultiCropViews), each
            also compared with both global views: the loss terms are the mean over the pair of global views and
            every (global, local) pair, 1 + 2L pairs for L local crops (SwAV's multi-crop, Caron et al.,
            NeurIPS 2020, arXiv 2006.09882, Sec. 3.2, which applied to SimCLR too). Local crops are encoded
            whole (no token drop), at any size that is a multiple of the patch size (the position table is
            resampled). False (default): views after the first two are ignored.
    """

    default_projector: ClassVar[HeadFactory]
    default_loss: ClassVar[Callable[[], nn.Module]]

    def __init__(self, backbone: MaskedViT, *, projector: HeadFactory | None = None,
                 loss: nn.Module | LossFactory | None = None, optimizer: OptimizerRecipe | None = None,
                 token_drop: float = 0.0, multi_crop: bool = False) -> None:
        super().__init__(backbone, optimizer=optimizer)
        if not 0.0 <= token_drop < 1.0:
            raise VispreError(f"token_drop must be in [0, 1) (the fraction of patch tokens removed), "
                              f"got {token_drop!r}")
        self.token_drop, self.multi_crop = token_drop, bool(multi_crop)
        self.projector = (projector or self.default_projector)(backbone.embed_dim)
        self.loss = build_loss(loss, self.projector, default=self.default_loss)

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        v1, v2 = two_views(batch, type(self).__name__)
        z1, z2 = self.projector(self.encode(v1)), self.projector(self.encode(v2))
        terms = self.loss(z1, z2)
        if not self.multi_crop:
            return terms
        pairs = [terms]
        for z_local in self.project_locals(batch["views"][2:]):
            pairs += [self.loss(z1, z_local), self.loss(z2, z_local)]
        return {key: torch.stack([pair[key] for pair in pairs]).mean() for key in terms}

    def project_locals(self, crops: list[Tensor]) -> list[Tensor]:
        """Projections of the local crops ([B, C, h, w] each, one size), encoded in one batch: L x [B, out]."""
        name = type(self).__name__
        if not crops:
            raise VispreError(f"{name}(multi_crop=True) needs local crops after the two global views (e.g. view: "
                              f"BatchMultiCropViews with num_local >= 1), got 2 views")
        if len({tuple(crop.shape) for crop in crops}) != 1:
            raise VispreError(f"{name}(multi_crop=True): the local crops must share one shape, got "
                              f"{[tuple(crop.shape) for crop in crops]}")
        check_crop(self.backbone, crops[0], f"{name} local crop")
        tokens = encode_crop(self.backbone, torch.cat(crops))
        return list(self.projector(self.backbone.pool(tokens)).chunk(len(crops)))

    def encode(self, view: Tensor) -> Tensor:
        """Pooled backbone feature of one view, [B, C, H, W] -> [B, D]: of a random ``1 - token_drop`` of its
        patch tokens in training, of all tokens otherwise."""
        if self.token_drop > 0 and self.training:
            return self.backbone.pool(self.backbone.forward_masked(view, self.token_drop).tokens)
        return self.backbone(view)


__all__ = ["JointEmbedding"]
