"""Optimizer recipes: one :class:`OptimizerRecipe` interface (AdamW, LARS, SGD), parameter groups,
lr = base_lr x effective batch / 256, per-step lr warmup + cosine and weight-decay schedules.

Used by the objectives (pretraining), growth (rebuilding an optimizer after the model changed) and eval
(the linear probe shares :func:`trust_ratio`). In YAML: ``optimizer: {class_path: vispre.optim.AdamWRecipe,
init_args: {...}}``.
"""

from vispre.optim.lars import LARS, LARSRecipe, trust_ratio
from vispre.optim.recipes import (AdamWRecipe, OptimizerBundle, OptimizerRecipe, Scales, SGDRecipe, param_groups,
                                  warmup_cosine)
from vispre.optim.schedules import WarmupCosineScheduler, cosine_value, lr_multiplier

__all__ = ["LARS", "AdamWRecipe", "LARSRecipe", "OptimizerBundle", "OptimizerRecipe", "SGDRecipe", "Scales",
           "WarmupCosineScheduler", "cosine_value", "lr_multiplier", "param_groups", "trust_ratio", "warmup_cosine"]
