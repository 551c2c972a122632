"""Pretraining objectives (LightningModules composing a backbone, heads, a loss and an optimizer recipe)
and their explicit registry."""

from collections.abc import Callable

from vispre.backbones.crops import encode_crop
from vispre.objectives.amcl import amcl_barlow_twins, amcl_moco_v3, amcl_simclr
from vispre.objectives.barlow_twins import BarlowTwins
from vispre.objectives.base import Batch, LossFactory, PretrainObjective, build_loss, two_views
from vispre.objectives.joint_embedding import JointEmbedding
from vispre.objectives.mae import MAE, MAEOutput, Reconstruction
from vispre.objectives.moco_v3 import MoCoV3, cosine_momentum, default_predictor, ema_update
from vispre.objectives.multi_objective import MultiObjective, ObjectiveFactory, default_names
from vispre.objectives.simclr import SimCLR
from vispre.objectives.dino import DINO, SelfDistillation
from vispre.objectives.dinov2 import DINOv2
from vispre.objectives.ibot import IBOT
from vispre.objectives.poa import POA
from vispre.objectives.teacher import DistillSchedule, EMATeacher

OBJECTIVES: dict[str, Callable[..., PretrainObjective]] = {
    "mae": MAE,
    "simclr": SimCLR,
    "moco_v3": MoCoV3,
    "barlow_twins": BarlowTwins,
    "amcl_simclr": amcl_simclr,
    "amcl_moco_v3": amcl_moco_v3,
    "amcl_barlow_twins": amcl_barlow_twins,
    "multi": MultiObjective,
    "dino": DINO,
    "ibot": IBOT,
    "dinov2": DINOv2,
    "poa": POA,
}
"""Explicit registry: short name -> objective class, or a factory ``(backbone, **kwargs)`` giving a base
objective with a variant's heads and loss (AMCL). Each entry is built as ``OBJECTIVES[name](backbone, ...)``."""

__all__ = ["MAE", "OBJECTIVES", "BarlowTwins", "Batch", "JointEmbedding", "LossFactory", "MAEOutput", "MoCoV3",
           "MultiObjective", "ObjectiveFactory", "PretrainObjective", "Reconstruction", "SimCLR", "amcl_barlow_twins",
           "amcl_moco_v3", "amcl_simclr", "build_loss", "cosine_momentum", "default_names", "default_predictor",
           "ema_update", "two_views"]
__all__ += ["DINO", "DINOv2", "DistillSchedule", "EMATeacher", "IBOT", "SelfDistillation", "encode_crop"]
__all__ += ["POA"]
