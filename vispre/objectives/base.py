"""Shared LightningModule base: optimizer + schedule from an OptimizerRecipe, logging, checkpoint metadata.

An objective composes injected parts: the backbone (stored here), its heads (built from a
:data:`vispre.heads.HeadFactory` with the width they read), its loss (:func:`build_loss`) and the optimizer
recipe. A subclass builds its heads and loss in ``__init__`` and implements :meth:`loss_terms`; everything
the Trainer owns (devices, precision, DDP) stays in the Trainer. How to add one: docs/objectives.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
from torch import Tensor, nn

from vispre.backbones.vit import MaskedViT, describe_vit
from vispre.errors import VispreError
from vispre.growth.modules import regrow_objective
from vispre.heads.projection import num_outputs
from vispre.optim import AdamWRecipe, OptimizerRecipe

Batch = dict[str, Any]
"""A batch: ``{"views": list of [B, C, H, W] tensors, "label": optional [B] int64}``."""

LossFactory = Callable[[int, int], nn.Module]
"""Builds a loss sized by the head it reads: ``factory(num_heads, dim)`` (losses with learned temperatures)."""


class PretrainObjective(L.LightningModule):
    """Base of all pretraining objectives.

    Args:
        backbone: the shared encoder.
        optimizer: the optimizer recipe (lr scaling, warmup, cosine); default :class:`vispre.optim.AdamWRecipe`.
    """

    def __init__(self, backbone: MaskedViT, *, optimizer: OptimizerRecipe | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.optimizer_recipe = optimizer or AdamWRecipe()

    # -- what subclasses implement -------------------------------------------------------------------
    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        """Return a dict of scalar tensors with the total under ``"loss"``; every entry is logged."""
        raise NotImplementedError

    # -- training --------------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """The loss terms of a batch (:meth:`loss_terms`). ``training_step`` calls the module, so the public
        ``module.compile()`` (what the speed switchboard's ``compile`` does) compiles exactly this step."""
        return self.loss_terms(batch)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        terms = self(batch)
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
            raise VispreError("the data module must expose an integer `batch_size` to scale the learning rate")
        return batch_size * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def configure_optimizers(self) -> dict:
        total = int(self.trainer.estimated_stepping_batches)
        bundle = self.optimizer_recipe.build(self, self.effective_batch_size(), total)
        return {"optimizer": bundle.optimizer,
                "lr_scheduler": {"scheduler": bundle.scheduler, "interval": "step"}}

    # -- checkpoint metadata ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the backbone architecture (also after growth) so a checkpoint can be loaded alone.

        ``checkpoint["vispre"]`` = ``{"objective": class name, "objective_class": module.class path, "backbone":
        describe_vit(...)}``, merged with what callbacks wrote there before (the GrowthCallback's ``"growth"``
        record, see docs/growth.md).
        """
        cls = type(self)
        checkpoint.setdefault("vispre", {}).update(objective=cls.__name__,
                                                   objective_class=f"{cls.__module__}.{cls.__qualname__}",
                                                   backbone=describe_vit(self.backbone.vit))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Fit the module to the checkpoint's backbone before Lightning loads its state dict.

        A checkpoint written after a mid-run growth (``checkpoint["vispre"]["growth"]``, whose first entry
        holds the run's original architecture) regrows this freshly built module to the recorded
        architecture (:func:`vispre.growth.regrow_objective`), heads included. Any other difference is
        refused with one clear message, instead of a long list of size mismatches.
        """
        meta = checkpoint.get("vispre") or {}
        saved = meta.get("backbone")
        if saved is None:
            return
        growth = meta.get("growth") or []
        if growth and growth[0].get("from") is not None:
            check_same_architecture(growth[0]["from"], describe_vit(self.backbone.vit))
            regrow_objective(self, saved)
        check_same_architecture(saved, describe_vit(self.backbone.vit))


def two_views(batch: Batch, objective: str) -> tuple[Tensor, Tensor]:
    """The first two views of a batch ([B, C, H, W] each), or one clear error when there are fewer."""
    views = batch["views"]
    if len(views) < 2:
        raise VispreError(f"{objective} needs batches with at least 2 views (e.g. view: SimCLRViews), "
                          f"got {len(views)}")
    return views[0], views[1]


def build_loss(loss: nn.Module | LossFactory | None, head: nn.Module, default: Callable[[], nn.Module]) -> nn.Module:
    """An objective's loss module.

    Args:
        loss: a loss module (used as is), a :data:`LossFactory` called with the number of embeddings ``head``
            returns and their size (``head.out_dim``), or None for ``default()``.
        head: the head whose outputs the loss compares (projector or predictor).
        default: the objective's paper loss.

    Returns:
        The loss module (its ``forward`` returns the log terms, total under ``"loss"``).
    """
    if loss is None:
        return default()
    if isinstance(loss, nn.Module):
        return loss
    return loss(num_outputs(head), head.out_dim)


def check_same_architecture(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise VispreError naming every architecture argument that differs (timm model name excluded)."""
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs model {current.get(k)!r}"
             for k in sorted(set(saved) | set(current)) if k != "model_name" and saved.get(k) != current.get(k)]
    if diffs:
        raise VispreError("checkpoint was saved from a different backbone architecture (" + "; ".join(diffs) + ")")
