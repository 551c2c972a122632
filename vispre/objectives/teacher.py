"""Teacher / student machinery of the self-distillation objectives (DINO, iBOT, DINOv2).

- :class:`EMATeacher`: frozen copies of the student's modules, updated as an exponential moving average
  (``torch._foreach_lerp_``), without stochastic depth or dropout (DINO builds its teacher without drop-path),
  never receiving gradients.
- :class:`DistillSchedule`: the per-step schedules (EMA momentum cosine 0.996 -> 1, teacher temperature linear
  warm-up 0.04 -> 0.07, last-layer freeze), in epochs as the papers give them (DINO, Caron et al. 2021, arXiv
  2104.14294, Sec. 3.1 and App.; iBOT, arXiv 2111.07832; DINOv2, arXiv 2304.07193).

Crops of any size are encoded with :func:`vispre.backbones.crops.encode_crop`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import NamedTuple

import lightning as L
import torch
from timm.layers import DropPath
from torch import nn

from vispre.errors import VispreError
from vispre.optim.schedules import cosine_value


class EMATeacher(nn.Module):
    """Deep copies of the student modules ``{name: module}``, updated by EMA; no gradients, no randomness.

    The copies' drop-path and dropout probabilities are set to 0 (DINO's teacher is built without stochastic
    depth); otherwise they follow the train / eval mode like any submodule (a BatchNorm in a head then uses
    batch statistics in training, as DINO's teacher).

    Args:
        student: the modules to copy (e.g. ``{"backbone": ..., "head": ...}``); the same names must be passed
            to :meth:`update`. Access a copy as ``teacher["backbone"]``.
    """

    def __init__(self, student: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleDict({k: copy.deepcopy(m).requires_grad_(False) for k, m in student.items()})
        for module in self.branches.modules():
            if isinstance(module, DropPath):
                module.drop_prob = 0.0
            elif isinstance(module, nn.Dropout):
                module.p = 0.0

    def __getitem__(self, name: str) -> nn.Module:
        return self.branches[name]

    @torch.no_grad()
    def update(self, student: Mapping[str, nn.Module], momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student, for every parameter (same structure).

        Args:
            student: the modules the teacher was built from, by the same names.
            momentum: EMA momentum in [0, 1] (1 keeps the teacher).
        """
        if set(student) != set(self.branches):
            raise VispreError(f"EMATeacher.update: expected modules {sorted(self.branches)}, got {sorted(student)}")
        teacher_params, student_params = [], []
        for name, branch in self.branches.items():
            pairs = zip(branch.parameters(), student[name].parameters(), strict=True)
            for t, s in pairs:
                teacher_params.append(t)
                student_params.append(s.detach().to(t.dtype))
        if teacher_params and momentum < 1.0:
            torch._foreach_lerp_(teacher_params, student_params, 1.0 - momentum)


class ScheduleValues(NamedTuple):
    """The schedules' values at one optimizer step."""

    momentum: float
    teacher_temp: float
    last_layer_frozen: bool


class DistillSchedule(NamedTuple):
    """Per-step schedules of self-distillation; lengths in epochs (fractions allowed), as the papers give them.

    Attributes:
        base_momentum, final_momentum: EMA momentum cosine from base (DINO 0.996, DINOv2 0.994) to final (1).
        warmup_teacher_temp, teacher_temp: teacher temperature, linear from the first to the second over
            ``warmup_teacher_temp_epochs`` (DINO 0.04 -> 0.07 over 30 epochs), constant afterwards.
        freeze_last_layer_epochs: the heads' prototype layers stay fixed this long (DINO 1 epoch).
    """

    base_momentum: float = 0.996
    final_momentum: float = 1.0
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: float = 30.0
    freeze_last_layer_epochs: float = 1.0

    def check(self, owner: str) -> None:
        """Raise VispreError naming the first field outside its allowed range."""
        rules = [("base_momentum", 0.0 <= self.base_momentum <= 1.0, "lie in [0, 1]"),
                 ("final_momentum", self.base_momentum <= self.final_momentum <= 1.0, "lie in [base_momentum, 1]"),
                 ("warmup_teacher_temp", self.warmup_teacher_temp > 0, "be > 0"),
                 ("teacher_temp", self.teacher_temp > 0, "be > 0"),
                 ("warmup_teacher_temp_epochs", self.warmup_teacher_temp_epochs >= 0, "be >= 0"),
                 ("freeze_last_layer_epochs", self.freeze_last_layer_epochs >= 0, "be >= 0")]
        for name, ok, allowed in rules:
            if not ok:
                raise VispreError(f"{owner}.{name} must {allowed}, got {getattr(self, name)!r}")

    def at(self, step: int, total_steps: int, steps_per_epoch: int) -> ScheduleValues:
        """The values at optimizer ``step`` of a run of ``total_steps`` with ``steps_per_epoch`` steps an epoch."""
        momentum = cosine_value(step, self.base_momentum, self.final_momentum, total_steps)
        warmup = self.warmup_teacher_temp_epochs * steps_per_epoch
        progress = min(1.0, step / warmup) if warmup > 0 else 1.0
        temp = self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * progress
        frozen = step < self.freeze_last_layer_epochs * steps_per_epoch
        return ScheduleValues(momentum, temp, frozen)


def steps_per_epoch(trainer: L.Trainer) -> int:
    """Optimizer steps per epoch: ceil(batches per epoch / accumulate_grad_batches); from max_epochs when the
    loader has no length."""
    batches = trainer.num_training_batches
    if math.isfinite(batches) and batches > 0:
        return max(1, math.ceil(batches / trainer.accumulate_grad_batches))
    epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
    return max(1, int(trainer.estimated_stepping_batches) // epochs)


__all__ = ["DistillSchedule", "EMATeacher", "ScheduleValues", "steps_per_epoch"]
