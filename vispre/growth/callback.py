"""GrowthCallback: grow the model being trained mid-run inside a normal ``vispre fit`` run.

YAML (``trainer.callbacks``)::

    - class_path: vispre.growth.GrowthCallback
      init_args: {at_fraction: 0.3, depth: 12, depth_mode: zero, optimizer_mode: transfer}

At the first training batch with ``global_step >= at_step`` (or ``at_fraction`` of the estimated optimizer
steps) the objective is grown in place (:func:`vispre.growth.modules.grow_objective`). The objective's
``optimizer_recipe`` is then wrapped in a :class:`GrownRecipe` (the same recipe, continuing the global
schedule from the growth step, with the exact-mode scales) and Lightning rebuilds the optimizer through its
public ``trainer.strategy.setup_optimizers(trainer)``, which calls the objective's ``configure_optimizers``;
the mapped optimizer moments (reset / transfer / exact, :mod:`vispre.growth.optim_state`) are loaded into the
new optimizer. The global step, loggers and checkpointing continue.

Checkpoints then hold the grown architecture (``checkpoint["vispre"]["backbone"]``), the growth record
(``checkpoint["vispre"]["growth"]``, written here) and this callback's state. On resume (``ckpt_path``)
``PretrainObjective.on_load_checkpoint`` regrows the fresh module to the recorded architecture before the
weights load, and this callback's ``on_load_checkpoint`` installs the GrownRecipe before Lightning configures
the optimizer and loads its state. Single device only (DDP would need re-wrapping the grown module).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch import nn

from vispre.backbones.vit import describe_vit
from vispre.errors import VispreError
from vispre.growth.depth import DEPTH_MODES, DepthMode
from vispre.growth.modules import GrowthSpec, grow_objective
from vispre.growth.optim_state import (OPTIMIZER_MODES, GrowthSchedule, OptimizerMode, Scales,
                                       build_grown_optimizer, load_named_state, map_adam_state, map_scales,
                                       named_adam_state)
from vispre.optim import OptimizerBundle, OptimizerRecipe


@dataclass(frozen=True)
class GrownRecipe:
    """An objective's optimizer recipe after a growth: same optimizer and hyper-parameters, schedule continued.

    ``PretrainObjective.configure_optimizers`` calls ``optimizer_recipe.build(module, batch, total)``; this
    recipe answers with :func:`vispre.growth.optim_state.build_grown_optimizer` (scheduler step 0 = global step
    ``schedule.offset``, exact-mode (a, b) param groups).

    Attributes:
        base: the objective's own recipe (AdamW, LARS, SGD).
        schedule: growth step, warmup / total steps, min lr ratio and re-warmup.
        scales: exact-mode (a, b) per parameter name (empty in reset / transfer mode).
    """

    base: OptimizerRecipe
    schedule: GrowthSchedule
    scales: Scales = field(default_factory=dict)

    def build(self, module: nn.Module, effective_batch_size: int, total_steps: int, **_: Any) -> OptimizerBundle:
        """The grown module's optimizer and scheduler (``total_steps`` is the schedule's, recorded at growth)."""
        return build_grown_optimizer(module, self.base, effective_batch_size, self.schedule, self.scales or None)

    def peak_lr(self, effective_batch_size: int) -> float:
        """The base recipe's peak lr."""
        return self.base.peak_lr(effective_batch_size)


def base_recipe(recipe: OptimizerRecipe | GrownRecipe) -> OptimizerRecipe:
    """The objective's own recipe under any number of growths."""
    return recipe.base if isinstance(recipe, GrownRecipe) else recipe


class GrowthCallback(L.Callback):
    """Grow the objective's backbone (and the heads reading it) once, at a step or a fraction of the run.

    Args:
        at_step: global optimizer step of the growth; or
        at_fraction: fraction of ``trainer.estimated_stepping_batches`` (exactly one of the two).
        depth, embed_dim, mlp_ratio: target sizes (None = unchanged).
        depth_mode: stack | interleave | zero (see grow_depth).
        optimizer_mode: reset | transfer | exact (see vispre.growth.optim_state).
        noise_std: symmetric width noise (0 = exact tiling; > 0 breaks the copies' symmetry).
        rewarm_fraction: re-warm-up length in reset mode, as a fraction of the remaining steps.
        seed: noise seed.
    """

    def __init__(self, at_step: int | None = None, at_fraction: float | None = None, depth: int | None = None,
                 embed_dim: int | None = None, mlp_ratio: float | None = None, depth_mode: DepthMode = "zero",
                 optimizer_mode: OptimizerMode = "transfer", noise_std: float = 0.0,
                 rewarm_fraction: float = 0.02, seed: int = 0) -> None:
        if (at_step is None) == (at_fraction is None):
            raise VispreError("GrowthCallback: give exactly one of at_step or at_fraction")
        if at_fraction is not None and not 0.0 < at_fraction < 1.0:
            raise VispreError(f"GrowthCallback: at_fraction must lie in (0, 1), got {at_fraction}")
        if depth_mode not in DEPTH_MODES:
            raise VispreError(f"GrowthCallback: depth_mode must be one of {DEPTH_MODES}, got {depth_mode!r}")
        if optimizer_mode not in OPTIMIZER_MODES:
            raise VispreError(f"GrowthCallback: optimizer_mode must be one of {OPTIMIZER_MODES}, "
                              f"got {optimizer_mode!r}")
        if depth is None and embed_dim is None and mlp_ratio is None:
            raise VispreError("GrowthCallback: nothing to grow; set depth, embed_dim or mlp_ratio")
        self.at_step, self.at_fraction = at_step, at_fraction
        self.spec = GrowthSpec(depth, embed_dim, mlp_ratio, depth_mode, noise_std, seed)
        self.optimizer_mode, self.rewarm_fraction = optimizer_mode, rewarm_fraction
        self.grown_at: int | None = None  # global step of the growth, once done
        self.grown_from: dict[str, Any] | None = None  # describe_vit of the backbone before the growth
        self.scales: Scales = {}
        self.schedule: dict[str, Any] = {}

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"grown_at": self.grown_at, "grown_from": self.grown_from,
                "scales": {k: list(v) for k, v in self.scales.items()},
                "schedule": dict(self.schedule), "spec": list(self.spec)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.grown_at = state_dict["grown_at"]
        self.grown_from = state_dict.get("grown_from")
        self.scales = {k: (float(a), float(b)) for k, (a, b) in state_dict["scales"].items()}
        self.schedule = dict(state_dict["schedule"])

    def trigger_step(self, trainer: L.Trainer) -> int:
        """The global step at which the growth happens."""
        if self.at_step is not None:
            return self.at_step
        return int(self.at_fraction * trainer.estimated_stepping_batches)

    # -- checkpoints ---------------------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        """Record the growth in ``checkpoint["vispre"]["growth"]`` (read by PretrainObjective on resume)."""
        if self.grown_at is not None:
            record = checkpoint.setdefault("vispre", {}).setdefault("growth", [])
            record.append({"step": self.grown_at, "from": self.grown_from})
            record.sort(key=lambda event: event["step"])

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        """Resuming after this growth: install the GrownRecipe, so that Lightning's optimizer setup (which
        follows) builds the grown run's parameter groups and schedule before it loads the optimizer state.
        The module itself was regrown by ``PretrainObjective.on_load_checkpoint``."""
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if state is None or state["grown_at"] is None:
            return
        self.load_state_dict(state)
        pl_module.optimizer_recipe = GrownRecipe(base_recipe(pl_module.optimizer_recipe),
                                                 GrowthSchedule(**self.schedule), dict(self.scales))

    # -- growth --------------------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.grown_at is not None or trainer.global_step < self.trigger_step(trainer):
            return
        if trainer.world_size > 1:
            raise VispreError("GrowthCallback supports single-device training only")
        step, recipe = trainer.global_step, pl_module.optimizer_recipe
        exact = self.optimizer_mode == "exact"  # exact mode multiplies the scales of earlier growths
        scales = dict(recipe.scales) if exact and isinstance(recipe, GrownRecipe) else {}
        self.grown_from = describe_vit(pl_module.backbone.vit)
        state = named_adam_state(trainer.optimizers[0], pl_module)
        for maps in grow_objective(pl_module, self.spec):
            state = map_adam_state(state, maps, _shapes(pl_module), self.optimizer_mode)
            if exact:
                scales = map_scales(scales, maps)
        total, base = int(trainer.estimated_stepping_batches), base_recipe(recipe)
        rewarm = max(int(self.rewarm_fraction * (total - step)), 1) if self.optimizer_mode == "reset" else 0
        schedule = GrowthSchedule(step, base.warmup_steps(total), total, base.min_lr_ratio, rewarm)
        self.grown_at, self.schedule, self.scales = step, vars(schedule).copy(), scales
        pl_module.optimizer_recipe = GrownRecipe(base, schedule, dict(scales))
        trainer.strategy.setup_optimizers(trainer)  # calls pl_module.configure_optimizers()
        load_named_state(trainer.optimizers[0], pl_module, state)
        pl_module.log("growth/embed_dim", float(pl_module.backbone.embed_dim), batch_size=1)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(spec=tuple(self.spec), at_step=self.at_step, at_fraction=self.at_fraction)


def _shapes(module: torch.nn.Module) -> dict[str, torch.Size]:
    return {n: p.shape for n, p in module.named_parameters()}


__all__ = ["GrownRecipe", "GrowthCallback", "base_recipe"]
