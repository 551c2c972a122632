"""Optimizer recipes: one :class:`OptimizerRecipe` interface (AdamW, SGD here; LARS in ``lars.py``).

Every recipe shares the parameter groups (decay on weight matrices only), the linear lr scaling
peak = base_lr x effective batch / 256 (Goyal et al., arXiv 1706.02677) and the per-step schedules of
:mod:`vispre.optim.schedules` (lr warmup + cosine, optional cosine weight-decay schedule); a subclass only
says which torch optimizer it makes. MAE recipe (He et al., arXiv 2111.06377, Appendix A.1): AdamW betas
(0.9, 0.95), wd 0.05 not applied to biases, norms, tokens and position embeddings, per-iteration warmup then
half-cycle cosine.

In YAML a recipe is chosen by class path (the base is abstract, so jsonargparse accepts its subclasses)::

    optimizer:
      class_path: vispre.optim.LARSRecipe
      init_args: {base_lr: 0.1, warmup_fraction: 0.1}
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from vispre.errors import VispreError
from vispre.optim.schedules import WarmupCosineScheduler, warmup_cosine

NO_DECAY_NAMES = ("cls_token", "reg_token", "pos_embed", "mask_token")

Scales = Mapping[str, tuple[float, float]]
"""Parameter name -> (a, b) of growth's exact mode: the group gets lr / a, weight_decay x a (and AdamW eps / b)."""


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


class OptimizerBundle(NamedTuple):
    """What :meth:`OptimizerRecipe.build` returns."""

    optimizer: torch.optim.Optimizer
    scheduler: WarmupCosineScheduler
    peak_lr: float
    warmup_steps: int


def check_field(recipe: object, name: str, ok: bool, allowed: str) -> None:
    """Raise VispreError "<Recipe>.<name> must <allowed>, got <value>" unless ``ok``."""
    if not ok:
        raise VispreError(f"{type(recipe).__name__}.{name} must {allowed}, got {getattr(recipe, name)!r}")


@dataclass(kw_only=True)
class OptimizerRecipe(ABC):
    """What every recipe shares: lr scaling, the decayed / non-decayed groups and the per-step schedules.

    Attributes:
        base_lr: lr per 256 samples; peak lr = base_lr * effective_batch / 256.
        weight_decay: decay on weight matrices only (biases, norms, tokens and pos-embeds get none).
        weight_decay_end: None keeps the decay constant; else cosine from weight_decay to this per step.
        warmup_fraction: fraction of the total optimizer steps spent in linear lr warmup.
        min_lr_ratio: final lr as a fraction of the peak.
    """

    base_lr: float = 1e-3
    weight_decay: float = 0.0
    weight_decay_end: float | None = None
    warmup_fraction: float = 0.0
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise VispreError naming the first field outside its allowed range."""
        check_field(self, "base_lr", self.base_lr > 0, "be > 0")
        check_field(self, "weight_decay", self.weight_decay >= 0, "be >= 0")
        check_field(self, "weight_decay_end", self.weight_decay_end is None or self.weight_decay_end >= 0,
                    "be None or >= 0")
        if self.weight_decay_end is not None:
            check_field(self, "weight_decay", self.weight_decay > 0, "be > 0 when weight_decay_end is set")
        check_field(self, "warmup_fraction", 0.0 <= self.warmup_fraction < 1.0, "lie in [0, 1)")
        check_field(self, "min_lr_ratio", 0.0 <= self.min_lr_ratio <= 1.0, "lie in [0, 1]")

    @abstractmethod
    def make_optimizer(self, groups: list[dict], lr: float, on_gpu: bool) -> torch.optim.Optimizer:
        """The torch optimizer over ``groups`` (each with its own ``lr`` and ``weight_decay``)."""

    def scaled_options(self, a: float, b: float) -> dict:
        """Extra options of a group width-tiled with growth's exact-mode factors (a, b); only (1, 1) here."""
        if (a, b) != (1.0, 1.0):
            raise VispreError(f"{type(self).__name__} has no exact-mode growth scaling; use "
                              "vispre.optim.AdamWRecipe or optimizer_mode 'reset' / 'transfer'")
        return {}

    def peak_lr(self, effective_batch_size: int) -> float:
        """base_lr * effective_batch / 256 (linear scaling rule)."""
        return self.base_lr * effective_batch_size / 256

    def warmup_steps(self, total_steps: int) -> int:
        """Optimizer steps of linear lr warmup: int(warmup_fraction * total_steps)."""
        return int(self.warmup_fraction * total_steps)

    def groups(self, module: nn.Module, lr: float, scales: Scales | None = None) -> list[dict]:
        """:func:`param_groups` of ``module``, each split by exact-mode (a, b): lr / a, weight_decay * a."""
        out = []
        for group in param_groups(module, self.weight_decay):
            split: dict[tuple[float, float], dict] = {}
            for param, name in zip(group["params"], group["names"]):
                a, b = (scales or {}).get(name, (1.0, 1.0))
                g = split.setdefault((a, b), dict(params=[], names=[], lr=lr / a,
                                                  weight_decay=group["weight_decay"] * a,
                                                  **self.scaled_options(a, b)))
                g["params"].append(param)
                g["names"].append(name)
            out.extend(split.values())
        return out

    def build(self, module: nn.Module, effective_batch_size: int, total_steps: int, *,
              warmup_steps: int | None = None, step_offset: int = 0, rewarm_steps: int = 0,
              scales: Scales | None = None) -> OptimizerBundle:
        """Create the optimizer over ``module``'s trainable parameters and its per-step scheduler.

        Args:
            module: the module to optimise.
            effective_batch_size: samples per optimizer step over all devices (scales the lr).
            total_steps: optimizer steps of the whole run (the schedules' length).
            warmup_steps: lr warmup steps; None: :meth:`warmup_steps` of ``total_steps`` (a rebuild mid-run
                passes the count it recorded when the run started).
            step_offset: global step at which this optimizer starts (rebuilt mid-run, e.g. after growth).
            rewarm_steps: linear lr re-warmup over this many steps after a rebuild (0: none).
            scales: growth exact-mode (a, b) per parameter name (see :data:`Scales`).

        Returns:
            OptimizerBundle(optimizer, scheduler, peak_lr, warmup_steps); step the scheduler every step.
        """
        if effective_batch_size < 1:
            raise VispreError(f"effective batch size must be >= 1, got {effective_batch_size}")
        if total_steps < 1:
            raise VispreError(f"the run must have >= 1 optimizer step to schedule, got {total_steps}")
        lr = self.peak_lr(effective_batch_size)
        groups = self.groups(module, lr, scales)
        on_gpu = all(p.is_cuda for g in groups for p in g["params"])
        optimizer = self.make_optimizer(groups, lr, on_gpu)
        warmup = self.warmup_steps(total_steps) if warmup_steps is None else warmup_steps
        scheduler = WarmupCosineScheduler(
            optimizer, warmup_steps=warmup, total_steps=total_steps, min_lr_ratio=self.min_lr_ratio,
            weight_decay=self.weight_decay, weight_decay_end=self.weight_decay_end, step_offset=step_offset,
            rewarm_steps=rewarm_steps)
        return OptimizerBundle(optimizer, scheduler, lr, warmup)


@dataclass(kw_only=True)
class AdamWRecipe(OptimizerRecipe):
    """AdamW (the MAE recipe); the default of every objective.

    Attributes:
        base_lr, weight_decay, weight_decay_end, warmup_fraction, min_lr_ratio: see :class:`OptimizerRecipe`.
        betas: AdamW betas, each in [0, 1).
        eps: AdamW epsilon (> 0).
        fused: use the fused AdamW kernel when all parameters are on a GPU.
    """

    base_lr: float = 1.5e-4
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    fused: bool = True

    def validate(self) -> None:
        """See :meth:`OptimizerRecipe.validate`; also betas and eps."""
        super().validate()
        self.betas = tuple(self.betas)  # YAML gives a list
        check_field(self, "betas", len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas),
               "be two numbers in [0, 1)")
        check_field(self, "eps", self.eps > 0, "be > 0")

    def make_optimizer(self, groups: list[dict], lr: float, on_gpu: bool) -> torch.optim.Optimizer:
        """torch.optim.AdamW (fused on GPU when ``fused``)."""
        return torch.optim.AdamW(groups, lr=lr, betas=self.betas, eps=self.eps, fused=self.fused and on_gpu)

    def scaled_options(self, a: float, b: float) -> dict:
        """Exact mode: eps / b (moments were divided by b and b^2, so the update is unchanged)."""
        return {"eps": self.eps / b}


@dataclass(kw_only=True)
class SGDRecipe(OptimizerRecipe):
    """SGD with momentum; defaults of MoCo v2 (Chen et al., arXiv 2003.04297: lr 0.03 per 256, wd 1e-4,
    momentum 0.9, cosine, no warmup). Decay applies to weight matrices only, like every recipe.

    Attributes:
        base_lr, weight_decay, weight_decay_end, warmup_fraction, min_lr_ratio: see :class:`OptimizerRecipe`.
        momentum: heavy-ball momentum in [0, 1).
        nesterov: Nesterov momentum (needs momentum > 0).
    """

    base_lr: float = 0.03
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False

    def validate(self) -> None:
        """See :meth:`OptimizerRecipe.validate`; also momentum and nesterov."""
        super().validate()
        check_field(self, "momentum", 0.0 <= self.momentum < 1.0, "lie in [0, 1)")
        check_field(self, "nesterov", not self.nesterov or self.momentum > 0, "be False when momentum is 0")

    def make_optimizer(self, groups: list[dict], lr: float, on_gpu: bool) -> torch.optim.Optimizer:
        """torch.optim.SGD with momentum."""
        return torch.optim.SGD(groups, lr=lr, momentum=self.momentum, nesterov=self.nesterov)


__all__ = ["AdamWRecipe", "NO_DECAY_NAMES", "OptimizerBundle", "OptimizerRecipe", "SGDRecipe", "Scales",
           "param_groups", "warmup_cosine"]
