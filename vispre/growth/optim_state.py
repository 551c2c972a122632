"""AdamW state and schedule across growth: ``reset``, ``transfer`` and ``exact`` (docs/growth.md, "Optimizer
state").

- reset: fresh AdamW, lr re-warmed from ~0 over ``rewarm_steps`` back onto the global schedule (G_stack code).
- transfer: old moments copied into the old coordinates (leading slice; extra depth copies get zeros),
  step kept, global schedule continues (MSG, arXiv 2305.02869).
- exact: m' = tile(m)/b, v' = tile(v)/b^2, eps' = eps/b, lr' = lr/a, wd' = a*wd, step kept: a noise-free
  width-tiled model retraces the small model's AdamW trajectory (per-parameter a, b from the ParamMaps,
  multiplied over successive growths, realised as extra param groups).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from vispre.errors import VispreError
from vispre.growth.maps import ParamMap, pad_into, tile
from vispre.optim import OptimizerBundle, OptimizerRecipe, lr_multiplier

OptimizerMode = Literal["reset", "transfer", "exact"]
OPTIMIZER_MODES = ("reset", "transfer", "exact")
Scales = dict[str, tuple[float, float]]
"""Parameter name -> exact-mode (a, b), multiplied over successive growths."""


def named_adam_state(optimizer: torch.optim.Optimizer, module: nn.Module) -> dict[str, dict[str, Tensor]]:
    """AdamW state keyed by ``module``'s parameter names (parameters without state are left out)."""
    names = {id(p): n for n, p in module.named_parameters()}
    return {names[id(p)]: dict(s) for p, s in optimizer.state.items() if id(p) in names and s}


def map_adam_state(state: dict[str, dict[str, Tensor]], maps: dict[str, ParamMap], shapes: dict[str, torch.Size],
                   mode: OptimizerMode) -> dict[str, dict[str, Tensor]]:
    """Carry AdamW moments through one growth step.

    Args:
        state: name -> {"step", "exp_avg", "exp_avg_sq"} of the source module.
        maps: the step's ParamMaps (new name -> map).
        shapes: new name -> parameter shape.
        mode: ``reset`` (empty state), ``transfer`` or ``exact``.

    Returns:
        New name -> state. Parameters without a source state get zero moments and the common step.
    """
    if mode not in OPTIMIZER_MODES:
        raise VispreError(f"optimizer_mode must be one of {OPTIMIZER_MODES}, got {mode!r}")
    if mode == "reset" or not state:
        return {}
    first = next(iter(state.values()))
    step, ref = first["step"], first["exp_avg"]
    out = {}
    for name, pm in maps.items():
        src = state.get(pm.source) if pm.source is not None and pm.primary else None
        if src is None:
            m, v = ref.new_zeros(shapes[name]), ref.new_zeros(shapes[name])
        elif mode == "transfer" or pm.pad:
            m = pad_into(src["exp_avg"], src["exp_avg"].new_zeros(shapes[name]))
            v = pad_into(src["exp_avg_sq"], src["exp_avg_sq"].new_zeros(shapes[name]))
        else:
            reps = pm.repeats or (1,) * src["exp_avg"].ndim
            m = tile(src["exp_avg"], reps, pm.chunks) / pm.b
            v = tile(src["exp_avg_sq"], reps, pm.chunks) / pm.b**2
        out[name] = {"step": step.clone(), "exp_avg": m, "exp_avg_sq": v}
    return out


def map_scales(scales: Scales, maps: dict[str, ParamMap]) -> Scales:
    """Per-parameter (a, b) of the exact mode after one more growth step (products over growths)."""
    out = {}
    for name, pm in maps.items():
        a0, b0 = scales.get(pm.source, (1.0, 1.0)) if pm.source is not None else (1.0, 1.0)
        out[name] = (a0 * pm.a, b0 * pm.b)
    return out


@dataclass
class GrowthSchedule:
    """lr multiplier after a growth at global step ``offset``: the global warmup + cosine, optionally
    re-warmed linearly over ``rewarm_steps``. Called with the scheduler's step count since the growth.
    A plain record of numbers, saved with the growth callback's state and handed to the recipe's
    :meth:`~vispre.optim.OptimizerRecipe.build` as its step offset and re-warmup."""

    offset: int
    warmup_steps: int
    total_steps: int
    min_lr_ratio: float = 0.0
    rewarm_steps: int = 0

    def __call__(self, step: int) -> float:
        return lr_multiplier(step, warmup_steps=self.warmup_steps, total_steps=self.total_steps,
                             min_lr_ratio=self.min_lr_ratio, step_offset=self.offset,
                             rewarm_steps=self.rewarm_steps)


def build_grown_optimizer(module: nn.Module, recipe: OptimizerRecipe, effective_batch_size: int,
                          schedule: GrowthSchedule, scales: Scales | None = None) -> OptimizerBundle:
    """The recipe's optimizer and per-step scheduler for a grown module, continuing the global schedule.

    Args:
        module: the grown module.
        recipe: the objective's optimizer recipe (exact-mode ``scales`` need an AdamWRecipe).
        effective_batch_size: samples per optimizer step (scales the lr as at the start of the run).
        schedule: where the run stands: growth step, warmup and total steps, min lr, re-warmup.
        scales: exact-mode (a, b) per parameter name: the group gets lr = peak / a, eps = eps / b,
            weight_decay = a * wd (wd only in the decayed group).

    Returns:
        OptimizerBundle whose scheduler's step 0 is global step ``schedule.offset``.
    """
    if recipe.min_lr_ratio != schedule.min_lr_ratio:  # the schedule recorded at growth time wins on resume
        recipe = dataclasses.replace(recipe, min_lr_ratio=schedule.min_lr_ratio)
    return recipe.build(module, effective_batch_size, schedule.total_steps, warmup_steps=schedule.warmup_steps,
                        step_offset=schedule.offset, rewarm_steps=schedule.rewarm_steps, scales=scales)


def load_named_state(optimizer: torch.optim.Optimizer, module: nn.Module, state: dict[str, dict[str, Tensor]]) -> None:
    """Install name-keyed AdamW state into ``optimizer`` (moments moved to each parameter's device/dtype)."""
    for name, param in module.named_parameters():
        if name in state and param.requires_grad:
            s = state[name]
            optimizer.state[param] = {"step": s["step"].clone(),
                                      "exp_avg": s["exp_avg"].to(param).contiguous(),
                                      "exp_avg_sq": s["exp_avg_sq"].to(param).contiguous()}
