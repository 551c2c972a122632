"""AdamW state and schedule across growth: ``reset``, ``transfer`` and ``exact`` (shared/reference/growth.md).

- reset: fresh AdamW, lr re-warmed from ~0 over ``rewarm_steps`` back onto the global schedule (G_stack code).
- transfer: old moments copied into the old coordinates (leading slice; extra depth copies get zeros),
  step kept, global schedule continues (MSG, arXiv 2305.02869).
- exact: m' = tile(m)/b, v' = tile(v)/b^2, eps' = eps/b, lr' = lr/a, wd' = a*wd, step kept: a noise-free
  width-tiled model retraces the small model's AdamW trajectory (per-parameter a, b from the ParamMaps,
  multiplied over successive growths, realised as extra param groups).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from vispre.growth.maps import ParamMap, pad_into, tile
from vispre.objectives.optim import AdamWRecipe, OptimizerBundle, param_groups, warmup_cosine

OptimizerMode = Literal["reset", "transfer", "exact"]
OPTIMIZER_MODES = ("reset", "transfer", "exact")
Scales = dict[str, tuple[float, float]]


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
        raise ValueError(f"optimizer_mode must be one of {OPTIMIZER_MODES}, got {mode!r}")
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
    A plain object (not a lambda) so LambdaLR saves and restores its fields with the checkpoint."""

    offset: int
    warmup_steps: int
    total_steps: int
    min_lr_ratio: float = 0.0
    rewarm_steps: int = 0

    def __call__(self, step: int) -> float:
        factor = warmup_cosine(step + self.offset, self.warmup_steps, self.total_steps, self.min_lr_ratio)
        if self.rewarm_steps > 0:
            factor *= min(1.0, (step + 1) / self.rewarm_steps)
        return factor


def build_grown_optimizer(module: nn.Module, recipe: AdamWRecipe, effective_batch_size: int,
                          schedule: GrowthSchedule, scales: Scales | None = None,
                          eps: float = 1e-8) -> OptimizerBundle:
    """AdamW + LambdaLR for a grown module: the recipe's groups, split by exact-mode (a, b) scales.

    Each group gets lr = peak / a, eps = eps / b, weight_decay = a * wd (wd only in the decayed group).
    """
    peak = recipe.peak_lr(effective_batch_size)
    groups = []
    for group in param_groups(module, recipe.weight_decay):
        split: dict[tuple[float, float], dict] = {}
        for param, name in zip(group["params"], group["names"]):
            a, b = (scales or {}).get(name, (1.0, 1.0))
            g = split.setdefault((a, b), dict(params=[], names=[], lr=peak / a, eps=eps / b,
                                              weight_decay=group["weight_decay"] * a))
            g["params"].append(param)
            g["names"].append(name)
        groups.extend(split.values())
    on_gpu = all(p.is_cuda for g in groups for p in g["params"])
    optimizer = torch.optim.AdamW(groups, lr=peak, betas=recipe.betas, fused=recipe.fused and on_gpu)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return OptimizerBundle(optimizer, scheduler, peak, schedule.warmup_steps)


def load_named_state(optimizer: torch.optim.Optimizer, module: nn.Module, state: dict[str, dict[str, Tensor]]) -> None:
    """Install name-keyed AdamW state into ``optimizer`` (moments moved to each parameter's device/dtype)."""
    for name, param in module.named_parameters():
        if name in state and param.requires_grad:
            s = state[name]
            optimizer.state[param] = {"step": s["step"].clone(),
                                      "exp_avg": s["exp_avg"].to(param).contiguous(),
                                      "exp_avg_sq": s["exp_avg_sq"].to(param).contiguous()}
