"""MoCo v3 pretraining (Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision Transformers",
ICCV 2021, arXiv 2104.02057, Alg. 1) on a timm ViT."""

from __future__ import annotations

import copy
import math
from functools import partial
import torch
from torch import Tensor, nn

from vispre.backbones.vit import MaskedViT
from vispre.errors import VispreError
from vispre.heads.projection import HeadFactory, MultiProjectionHead, ProjectionMLP
from vispre.losses.info_nce import InfoNCELoss
from vispre.objectives.base import Batch, LossFactory, PretrainObjective, build_loss, two_views
from vispre.optim import OptimizerRecipe


def cosine_momentum(step: int, total_steps: int, base: float) -> float:
    """EMA momentum rising from ``base`` to 1 on a half cosine: 1 - (1 - base) * (1 + cos(pi t/T)) / 2."""
    progress = min(1.0, step / max(1, total_steps))
    return 1.0 - (1.0 - base) * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * source, parameter by parameter (same structure)."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.lerp_(s.detach().to(t.dtype), 1.0 - momentum)


def default_predictor(projector: nn.Module) -> nn.Module:
    """MoCo v3's predictor for ``projector``: 2 layers, the projector's hidden width, out = in = its out_dim;
    one per head of a MultiProjectionHead (each head's queries through its own predictor)."""
    sizes = dict(hidden_dim=projector.hidden_dim, out_dim=projector.out_dim, num_layers=2)
    if isinstance(projector, MultiProjectionHead):
        return MultiProjectionHead(projector.out_dim, num_heads=projector.num_heads, **sizes)
    return ProjectionMLP(projector.out_dim, **sizes)


class MoCoV3(PretrainObjective):
    """Query branch backbone -> projector -> predictor; key branch = EMA copy of backbone + projector;
    symmetric loss on (queries of one view, keys of the other), no queue.

    Args:
        backbone: shared encoder.
        projector: head factory called with the backbone width; default the paper's ProjectionMLP (4096
            hidden -> 256, 3 layers, last BN). AMCL: a MultiProjectionHead.
        predictor: head factory called with the projector's out_dim; default :func:`default_predictor`.
        loss: ``loss(q1, q2, k1, k2) -> terms``; default InfoNCELoss (T = 0.2, x 2T). AMCL: AMCLInfoNCELoss
            (a factory sized by the predictor).
        base_momentum: EMA momentum at step 0, raised to 1 with a cosine (paper 0.99).
        freeze_patch_embed: freeze the patch projection (paper's ViT stability trick).
        optimizer: optimizer recipe (default AdamW).
    """

    def __init__(self, backbone: MaskedViT, *, projector: HeadFactory | None = None,
                 predictor: HeadFactory | None = None, loss: nn.Module | LossFactory | None = None,
                 base_momentum: float = 0.99, freeze_patch_embed: bool = False,
                 optimizer: OptimizerRecipe | None = None) -> None:
        super().__init__(backbone, optimizer=optimizer)
        if not 0.0 <= base_momentum <= 1.0:
            raise VispreError(f"MoCoV3.base_momentum must lie in [0, 1], got {base_momentum}")
        self.base_momentum = self.momentum = base_momentum
        if freeze_patch_embed:
            backbone.vit.patch_embed.requires_grad_(False)
        default = partial(ProjectionMLP, hidden_dim=4096, out_dim=256, num_layers=3, last_batch_norm=True)
        self.projector = (projector or default)(backbone.embed_dim)
        self.predictor = (predictor(self.projector.out_dim) if predictor is not None
                          else default_predictor(self.projector))
        self.loss = build_loss(loss, self.predictor, default=InfoNCELoss)
        self.momentum_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.momentum_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def update_momentum(self, step: int, total_steps: int) -> None:
        """EMA step of the key branch with the cosine-scheduled momentum at ``step``."""
        self.momentum = cosine_momentum(step, total_steps, self.base_momentum)
        ema_update(self.momentum_backbone, self.backbone, self.momentum)
        ema_update(self.momentum_projector, self.projector, self.momentum)

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        self.update_momentum(self.trainer.global_step, int(self.trainer.estimated_stepping_batches))
        self.log("train/momentum", self.momentum, batch_size=1)

    def query(self, images: Tensor) -> Tensor | list[Tensor]:
        """Query branch: predictor(projector(backbone(images))) -> [B, out_dim] (a list of C for C heads)."""
        return self.predictor(self.projector(self.backbone(images)))

    @torch.no_grad()
    def key(self, images: Tensor) -> Tensor | list[Tensor]:
        """Key branch (EMA copies, no gradient) -> [B, out_dim] (a list of C for C heads)."""
        return self.momentum_projector(self.momentum_backbone(images))

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        v1, v2 = two_views(batch, type(self).__name__)
        q1, k2 = self.query(v1), self.key(v2)
        q2, k1 = self.query(v2), self.key(v1)
        return self.loss(q1, q2, k1, k2)


__all__ = ["MoCoV3", "cosine_momentum", "default_predictor", "ema_update"]
