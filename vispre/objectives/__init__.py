"""Pretraining objectives (LightningModules) and their explicit registry."""

from vispre.objectives.amcl import AMCLBarlowTwins, AMCLMoCoV3, AMCLSimCLR
from vispre.objectives.barlow_twins import BarlowTwins
from vispre.objectives.base import Batch, PretrainObjective
from vispre.objectives.mae import MAE
from vispre.objectives.moco_v3 import MoCoV3
from vispre.objectives.multi_objective import MultiObjective
from vispre.objectives.optim import AdamWRecipe
from vispre.objectives.simclr import SimCLR

OBJECTIVES: dict[str, type[PretrainObjective]] = {
    "mae": MAE,
    "simclr": SimCLR,
    "moco_v3": MoCoV3,
    "barlow_twins": BarlowTwins,
    "amcl_simclr": AMCLSimCLR,
    "amcl_moco_v3": AMCLMoCoV3,
    "amcl_barlow_twins": AMCLBarlowTwins,
    "multi": MultiObjective,
}
"""Explicit registry: short name -> class (one entry per objective)."""

__all__ = ["OBJECTIVES", "MAE", "AMCLBarlowTwins", "AMCLMoCoV3", "AMCLSimCLR", "AdamWRecipe", "BarlowTwins",
           "Batch", "MoCoV3", "MultiObjective", "PretrainObjective", "SimCLR"]
