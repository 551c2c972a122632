"""Shared LightningModule base: optimizer + schedule from an AdamWRecipe, logging, checkpoint metadata.

A subclass sets ``self.backbone`` (a MaskedViT) and implements :meth:`loss_terms`; everything the
Trainer owns (devices, precision, DDP) stays in the Trainer.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from vispre.backbones.vit import MaskedViT, describe_vit
from vispre.objectives.optim import AdamWRecipe

Batch = dict[str, Any]
"""A batch: ``{"views": list of [B, C, H, W] tensors, "label": optional [B] int64}``."""


class PretrainObjective(L.LightningModule):
    """Base of all pretraining objectives.

    Args:
        backbone: the shared encoder.
        optimizer: AdamW recipe (lr scaling, warmup, cosine).
    """

    def __init__(self, backbone: MaskedViT, optimizer: AdamWRecipe | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.optimizer_recipe = optimizer or AdamWRecipe()

    # -- what subclasses implement -------------------------------------------------------------------
    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        """Return a dict of scalar tensors with the total under ``"loss"``; every entry is logged."""
        raise NotImplementedError

    # -- training --------------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        terms = self.loss_terms(batch)
        batch_size = batch["views"][0].shape[0]
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, prog_bar=False,
                      batch_size=batch_size)
        self.log("loss", terms["loss"].detach(), prog_bar=True, logger=False, batch_size=batch_size)
        return terms["loss"]

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=1)

    def effective_batch_size(self) -> int:
        """Samples per optimizer step over all devices: batch_size x world_size x accumulate_grad_batches."""
        datamodule = getattr(self.trainer, "datamodule", None)
        batch_size = getattr(datamodule, "batch_size", None)
        if not isinstance(batch_size, int):
            raise ValueError("the data module must expose an integer `batch_size` to scale the learning rate")
        return batch_size * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def configure_optimizers(self) -> dict:
        total = int(self.trainer.estimated_stepping_batches)
        bundle = self.optimizer_recipe.build(self, self.effective_batch_size(), total)
        return {"optimizer": bundle.optimizer,
                "lr_scheduler": {"scheduler": bundle.scheduler, "interval": "step"}}

    # -- checkpoint metadata ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the backbone architecture (also after growth) so a checkpoint can be loaded alone."""
        checkpoint["vispre"] = {"objective": type(self).__name__, "backbone": describe_vit(self.backbone.vit)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another backbone architecture with one clear message (before the
        state dict is loaded and fails with a long list of size mismatches)."""
        saved = (checkpoint.get("vispre") or {}).get("backbone")
        if saved is not None:
            check_same_architecture(saved, describe_vit(self.backbone.vit))

    @torch.no_grad()
    def extract_features(self, images: Tensor) -> Tensor:
        """Frozen pooled backbone features: [B, C, H, W] -> [B, D]."""
        return self.backbone(images)


def check_same_architecture(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise ValueError naming every architecture argument that differs (timm model name excluded)."""
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs model {current.get(k)!r}"
             for k in sorted(set(saved) | set(current)) if k != "model_name" and saved.get(k) != current.get(k)]
    if diffs:
        raise ValueError("checkpoint was saved from a different backbone architecture (" + "; ".join(diffs) + ")")
