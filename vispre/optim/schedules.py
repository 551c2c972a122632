"""Per-step schedules of every optimizer recipe: lr warmup + cosine and a cosine weight-decay schedule.

lr (MAE, He et al., arXiv 2111.06377, Appendix A.1): linear warmup from 0 over ``warmup_steps``, then a
half-cycle cosine down to ``min_lr_ratio`` x peak at ``total_steps``. Weight decay (DINO, Caron et al.,
arXiv 2104.14294, Sec. 4 / code ``utils.cosine_scheduler``: 0.04 -> 0.4): a cosine from ``weight_decay`` at
step 0 to ``weight_decay_end`` at ``total_steps``, applied to the groups that decay (each group keeps its
ratio to the recipe's weight decay, so non-decayed groups stay at 0).

:class:`WarmupCosineScheduler` is a ``torch.optim.lr_scheduler.LRScheduler``: Lightning steps it with
``interval: "step"`` and saves / restores it with the checkpoint (its state holds plain numbers only).
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr at ``step``: linear warmup from 0, then half-cycle cosine to min_lr_ratio.

    Args:
        step: optimizer step (0-based).
        warmup_steps: steps of linear warmup; step ``s < warmup_steps`` gives ``(s + 1) / warmup_steps``.
        total_steps: step at which the cosine reaches ``min_lr_ratio`` (and stays).
        min_lr_ratio: final multiplier.

    Returns:
        The multiplier in [0, 1].
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_multiplier(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0,
                  step_offset: int = 0, rewarm_steps: int = 0) -> float:
    """:func:`warmup_cosine` at global step ``step + step_offset``, times a linear re-warmup
    ``min(1, (step + 1) / rewarm_steps)`` when ``rewarm_steps > 0`` (growth's ``reset`` mode restarts an
    optimizer mid-run and warms it back onto the global schedule)."""
    factor = warmup_cosine(step + step_offset, warmup_steps, total_steps, min_lr_ratio)
    if rewarm_steps > 0:
        factor *= min(1.0, (step + 1) / rewarm_steps)
    return factor


def cosine_value(step: int, start: float, end: float, total_steps: int) -> float:
    """Half-cycle cosine from ``start`` at step 0 to ``end`` at ``total_steps`` (constant afterwards)."""
    progress = min(1.0, step / max(1, total_steps))
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineScheduler(LRScheduler):
    """Per-step lr warmup + cosine for every param group, and optionally a cosine weight-decay schedule.

    Each group's lr is its initial lr (``initial_lr``, e.g. peak / a in growth's exact mode) times
    :func:`lr_multiplier`. With ``weight_decay_end`` set, each group's weight decay is its initial value
    times ``cosine_value(step, weight_decay, weight_decay_end) / weight_decay``.

    Args:
        optimizer: any torch optimizer whose groups hold ``lr`` (and ``weight_decay`` for the decay schedule).
        warmup_steps, total_steps, min_lr_ratio: the lr schedule (see :func:`warmup_cosine`).
        weight_decay: the recipe's weight decay at step 0 (> 0 when ``weight_decay_end`` is set).
        weight_decay_end: the weight decay at ``total_steps``; None keeps the decay constant.
        step_offset: global step of this scheduler's step 0 (an optimizer rebuilt mid-run).
        rewarm_steps: linear re-warmup length after a rebuild (0: none).
        last_epoch: as in ``LRScheduler`` (-1: fresh).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int,
                 min_lr_ratio: float = 0.0, weight_decay: float | None = None,
                 weight_decay_end: float | None = None, step_offset: int = 0, rewarm_steps: int = 0,
                 last_epoch: int = -1) -> None:
        if weight_decay_end is not None and not (weight_decay or 0.0) > 0:
            raise ValueError(f"a weight-decay schedule needs weight_decay > 0, got {weight_decay}")
        self.warmup_steps, self.total_steps, self.min_lr_ratio = warmup_steps, total_steps, min_lr_ratio
        self.weight_decay, self.weight_decay_end = weight_decay, weight_decay_end
        self.step_offset, self.rewarm_steps = step_offset, rewarm_steps
        self.base_weight_decays = [float(g.get("weight_decay", 0.0)) for g in optimizer.param_groups]
        super().__init__(optimizer, last_epoch)

    def lr_factor(self, step: int) -> float:
        """Multiplier of each group's initial lr at this scheduler's ``step``."""
        return lr_multiplier(step, warmup_steps=self.warmup_steps, total_steps=self.total_steps,
                             min_lr_ratio=self.min_lr_ratio, step_offset=self.step_offset,
                             rewarm_steps=self.rewarm_steps)

    def weight_decay_factor(self, step: int) -> float:
        """Multiplier of each group's initial weight decay at this scheduler's ``step`` (1 without a schedule)."""
        if self.weight_decay_end is None:
            return 1.0
        value = cosine_value(step + self.step_offset, self.weight_decay, self.weight_decay_end, self.total_steps)
        return value / self.weight_decay

    def get_lr(self) -> list[float]:
        """lr of every group at ``last_epoch`` (called by ``LRScheduler.step``)."""
        factor = self.lr_factor(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

    def step(self, epoch: int | None = None) -> None:
        """Advance one optimizer step: set every group's lr and, with a schedule, its weight decay."""
        super().step(epoch)
        if self.weight_decay_end is not None:
            factor = self.weight_decay_factor(self.last_epoch)
            for group, base in zip(self.optimizer.param_groups, self.base_weight_decays):
                group["weight_decay"] = base * factor


__all__ = ["WarmupCosineScheduler", "cosine_value", "lr_multiplier", "warmup_cosine"]
