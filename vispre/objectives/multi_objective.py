"""Several objectives training one shared backbone on a weighted sum of their losses (e.g. MAE on one
view + contrastive heads on two views, as in CMAE / "masked + joint-embedding" hybrids).

YAML (each entry is a PretrainObjective class without its backbone, which is injected):

    model:
      class_path: vispre.objectives.MultiObjective
      init_args:
        backbone: {class_path: vispre.backbones.MaskedViT, init_args: {...}}
        objectives:
          - {class_path: vispre.objectives.MAE, init_args: {mask_ratio: 0.75, decoder_dim: 128}}
          - class_path: vispre.objectives.SimCLR
            init_args:
              projector: {class_path: vispre.heads.ProjectionMLP, init_args: {hidden_dim: 512, out_dim: 128}}
              loss: {class_path: vispre.losses.NTXentLoss, init_args: {temperature: 0.2}}
        weights: [1.0, 0.5]
        views: [[0], [0, 1]]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from vispre.backbones.vit import MaskedViT
from vispre.errors import VispreError
from vispre.objectives.base import Batch, PretrainObjective
from vispre.objectives.teacher import steps_per_epoch
from vispre.optim import OptimizerRecipe

ObjectiveFactory = Callable[[MaskedViT], PretrainObjective]


class MultiObjective(PretrainObjective):
    """Weighted sum of sub-objectives sharing ``backbone``; logs ``<name>/<term>`` for each of them.

    Args:
        backbone: the shared encoder, injected into every sub-objective.
        objectives: factories taking the backbone (LightningCLI: class_path + init_args without backbone),
            or already-built objectives (their backbone is replaced by the shared one).
        weights: one weight per objective (default all 1).
        views: per objective, the indices of the batch views it sees (default: all views, in order).
        names: log prefixes (default: lower-case class names, suffixed with the index when repeated).
        optimizer: optimizer recipe of the whole module (sub-objectives' own recipes are ignored).
    """

    def __init__(self, backbone: MaskedViT, *, objectives: Sequence[ObjectiveFactory | PretrainObjective],
                 weights: Sequence[float] | None = None, views: Sequence[Sequence[int]] | None = None,
                 names: Sequence[str] | None = None, optimizer: OptimizerRecipe | None = None) -> None:
        super().__init__(backbone, optimizer=optimizer)
        if not objectives:
            raise VispreError("MultiObjective needs at least one objective")
        subs = [o if isinstance(o, PretrainObjective) else o(backbone) for o in objectives]
        for sub in subs:
            sub.backbone = backbone
        self.objectives = nn.ModuleList(subs)
        self.weights = [1.0] * len(subs) if weights is None else [float(w) for w in weights]
        self.views = None if views is None else [list(v) for v in views]
        self.names = list(names) if names is not None else default_names(subs)
        for label, value in (("weights", self.weights), ("views", self.views), ("names", self.names)):
            if value is not None and len(value) != len(subs):
                raise VispreError(f"MultiObjective.{label} has {len(value)} entries, expected one per objective "
                                 f"({len(subs)})")

    def sub_batch(self, batch: Batch, index: int) -> Batch:
        """The batch as objective ``index`` sees it (its selected views, same labels)."""
        if self.views is None:
            return batch
        available = len(batch["views"])
        picked = self.views[index]
        if any(not 0 <= v < available for v in picked):
            raise VispreError(f"MultiObjective.views[{index}] = {picked} but batches have {available} views")
        return {**batch, "views": [batch["views"][v] for v in picked]}

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        total = []
        for i, (name, weight, sub) in enumerate(zip(self.names, self.weights, self.objectives)):
            sub_terms = sub.loss_terms(self.sub_batch(batch, i))
            terms.update({f"{name}/{k}": v for k, v in sub_terms.items()})
            total.append(weight * sub_terms["loss"])
        terms["loss"] = torch.stack(total).sum()
        return terms

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        total = int(self.trainer.estimated_stepping_batches)
        for sub in self.objectives:
            update = getattr(sub, "update_momentum", None)  # MoCo-style EMA branches
            if update is not None:
                update(self.trainer.global_step, total)
            schedules = getattr(sub, "update_schedules", None)  # self-distillation (DINO, iBOT, DINOv2)
            if schedules is not None:
                schedules(self.trainer.global_step, total, steps_per_epoch(self.trainer))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        for sub in self.objectives:  # e.g. DINO's last-layer freeze
            sub.on_before_optimizer_step(optimizer)


def default_names(objectives: Sequence[nn.Module]) -> list[str]:
    """Lower-case class names, with ``_<index>`` appended when a class appears more than once."""
    base = [type(o).__name__.lower() for o in objectives]
    return [f"{n}_{i}" if base.count(n) > 1 else n for i, n in enumerate(base)]


__all__ = ["MultiObjective", "ObjectiveFactory", "default_names"]
