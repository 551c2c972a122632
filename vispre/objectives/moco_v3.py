"""MoCo v3 pretraining (Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision Transformers",
ICCV 2021, arXiv 2104.02057, Alg. 1) on a timm ViT."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from vispre.backbones.vit import MaskedViT
from vispre.heads.projection import ProjectionMLP
from vispre.losses.info_nce import info_nce_loss
from vispre.objectives.base import Batch, PretrainObjective
from vispre.objectives.optim import AdamWRecipe
from vispre.objectives.simclr import two_views


def cosine_momentum(step: int, total_steps: int, base: float) -> float:
    """EMA momentum rising from ``base`` to 1 on a half cosine: 1 - (1 - base) * (1 + cos(pi t/T)) / 2."""
    progress = min(1.0, step / max(1, total_steps))
    return 1.0 - (1.0 - base) * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * source, parameter by parameter (same structure)."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.lerp_(s.detach().to(t.dtype), 1.0 - momentum)


class MoCoV3(PretrainObjective):
    """Query branch backbone -> projector -> predictor; key branch = EMA copy of backbone + projector;
    symmetric InfoNCE scaled by 2T, no queue.

    Args:
        backbone: shared encoder.
        proj_hidden_dim, proj_dim: projector (paper 4096 -> 256, 3 layers, last BN) and predictor
            (2 layers, hidden proj_hidden_dim).
        temperature: T (paper 0.2).
        base_momentum: EMA momentum at step 0, raised to 1 with a cosine (paper 0.99).
        freeze_patch_embed: freeze the patch projection (paper's ViT stability trick).
        gather: keys from every rank under DDP.
        optimizer: AdamW recipe.
    """

    def __init__(self, backbone: MaskedViT, proj_hidden_dim: int = 4096, proj_dim: int = 256,
                 temperature: float = 0.2, base_momentum: float = 0.99, freeze_patch_embed: bool = False,
                 gather: bool = True, optimizer: AdamWRecipe | None = None) -> None:
        super().__init__(backbone, optimizer)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= base_momentum <= 1.0:
            raise ValueError(f"base_momentum must lie in [0, 1], got {base_momentum}")
        self.temperature, self.base_momentum, self.gather = temperature, base_momentum, gather
        self.momentum = base_momentum
        if freeze_patch_embed:
            backbone.vit.patch_embed.requires_grad_(False)
        self.projector = ProjectionMLP(backbone.embed_dim, proj_hidden_dim, proj_dim, 3, last_batch_norm=True)
        self.predictor = ProjectionMLP(proj_dim, proj_hidden_dim, proj_dim, 2)
        self.reset_momentum_branch()

    def reset_momentum_branch(self) -> None:
        """(Re)create the key branch as frozen copies of the current backbone and projector."""
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

    def query(self, images: Tensor) -> Any:
        """Query branch: predictor(projector(backbone(images))) -> [B, proj_dim]."""
        return self.predictor(self.projector(self.backbone(images)))

    @torch.no_grad()
    def key(self, images: Tensor) -> Any:
        """Key branch (EMA copies, no gradient) -> [B, proj_dim]."""
        return self.momentum_projector(self.momentum_backbone(images))

    def pair_loss(self, q: Any, k: Any) -> dict[str, Tensor]:
        """InfoNCE of one direction (queries of one view, keys of the other), scaled by 2T."""
        loss = info_nce_loss(q, k, self.temperature, self.gather) * (2 * self.temperature)
        return {"loss": loss, "info_nce": loss}

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        v1, v2 = two_views(batch, type(self).__name__)
        a = self.pair_loss(self.query(v1), self.key(v2))
        b = self.pair_loss(self.query(v2), self.key(v1))
        terms = {key: a[key] + b[key] for key in a if not key.startswith("tau")}
        terms.update({key: (a[key] + b[key]) / 2 for key in a if key.startswith("tau")})
        return terms


__all__ = ["MoCoV3", "cosine_momentum", "ema_update"]
