"""Pretraining objectives (LightningModules) and their explicit registry."""

from vispre.objectives.base import Batch, PretrainObjective
from vispre.objectives.mae import MAE
from vispre.objectives.optim import AdamWRecipe

OBJECTIVES: dict[str, type[PretrainObjective]] = {"mae": MAE}
"""Explicit registry: short name -> class (one entry per objective)."""

__all__ = ["OBJECTIVES", "MAE", "AdamWRecipe", "Batch", "PretrainObjective"]
