"""Optimizer recipe shared by every objective: AdamW param groups, lr scaling, warmup + cosine.

MAE recipe (He et al., arXiv 2111.06377, Appendix A.1): AdamW betas (0.9, 0.95), wd 0.05 not applied to
biases, norms, tokens and position embeddings; lr = base_lr x effective_batch / 256; per-iteration linear
warmup then half-cycle cosine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

NO_DECAY_NAMES = ("cls_token", "reg_token", "pos_embed", "mask_token")


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into decayed (matrices) and non-decayed (1-D, tokens, pos-embeds).

    Args:
        module: any module.
        weight_decay: decay of the first group.

    Returns:
        Two param-group dicts (empty groups dropped), each with a ``names`` list for inspection.
    """
    decay, no_decay = ([], []), ([], [])
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim <= 1 or name.split(".")[-1] in NO_DECAY_NAMES
        bucket = no_decay if skip else decay
        bucket[0].append(param)
        bucket[1].append(name)
    groups = [dict(params=decay[0], names=decay[1], weight_decay=weight_decay),
              dict(params=no_decay[0], names=no_decay[1], weight_decay=0.0)]
    return [g for g in groups if g["params"]]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr at ``step``: linear warmup from 0, then half-cycle cosine to min_lr_ratio."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class OptimizerBundle(NamedTuple):
    """What :meth:`AdamWRecipe.build` returns."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    peak_lr: float
    warmup_steps: int


@dataclass
class AdamWRecipe:
    """AdamW with the scaled-lr, warmup + cosine schedule; every objective takes one (``optimizer:`` in YAML).

    Attributes:
        base_lr: lr per 256 samples; peak lr = base_lr * effective_batch / 256.
        weight_decay: decay on weight matrices only.
        betas: AdamW betas.
        warmup_fraction: fraction of the total optimizer steps spent in linear warmup.
        min_lr_ratio: final lr as a fraction of the peak.
        fused: use the fused AdamW kernel when all parameters are on a GPU.
    """

    base_lr: float = 1.5e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.0
    fused: bool = True

    def __post_init__(self) -> None:
        if self.base_lr <= 0:
            raise ValueError(f"optimizer.base_lr must be > 0, got {self.base_lr}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"optimizer.warmup_fraction must lie in [0, 1), got {self.warmup_fraction}")
        self.betas = tuple(self.betas)  # YAML gives a list

    def peak_lr(self, effective_batch_size: int) -> float:
        """base_lr * effective_batch / 256 (linear scaling rule)."""
        return self.base_lr * effective_batch_size / 256

    def build(self, module: nn.Module, effective_batch_size: int, total_steps: int) -> OptimizerBundle:
        """Create the optimizer and its per-step LambdaLR schedule for ``module``'s trainable parameters."""
        lr = self.peak_lr(effective_batch_size)
        groups = param_groups(module, self.weight_decay)
        on_gpu = all(p.is_cuda for g in groups for p in g["params"])
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=self.betas, fused=self.fused and on_gpu)
        warmup = int(self.warmup_fraction * total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup, total_steps, self.min_lr_ratio))
        return OptimizerBundle(optimizer, scheduler, lr, warmup)
