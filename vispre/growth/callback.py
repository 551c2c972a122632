"""GrowthCallback: grow the model being trained mid-run inside a normal ``vispre fit`` run.

YAML (``trainer.callbacks``)::

    - class_path: vispre.growth.GrowthCallback
      init_args: {at_fraction: 0.3, depth: 12, depth_mode: zero, optimizer_mode: transfer}

At the first training batch with ``global_step >= at_step`` (or ``at_fraction`` of the estimated optimizer
steps) the objective is grown in place (:func:`vispre.growth.modules.grow_objective`), and a new AdamW +
LambdaLR replace the trainer's (reset / transfer / exact, :mod:`vispre.growth.optim_state`); the global
step, loggers and checkpointing continue. Checkpoints then hold the grown architecture
(``checkpoint["vispre"]["backbone"]``) and this callback's state; on resume (``ckpt_path``) the callback
grows the fresh module to the checkpoint's architecture in ``setup`` (before the weights load) and installs
the optimizer structure of the grown run in ``on_fit_start`` (before the optimizer state loads).
Single device only (the module is replaced in place; DDP would need re-wrapping).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.types import LRSchedulerConfig

from vispre.backbones.vit import describe_vit
from vispre.growth.depth import DEPTH_MODES, DepthMode
from vispre.growth.modules import GrowthSpec, grow_objective
from vispre.growth.optim_state import (OPTIMIZER_MODES, GrowthSchedule, OptimizerMode, Scales,
                                       build_grown_optimizer, load_named_state, map_adam_state, map_scales,
                                       named_adam_state)


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
            raise ValueError("GrowthCallback: give exactly one of at_step or at_fraction")
        if at_fraction is not None and not 0.0 < at_fraction < 1.0:
            raise ValueError(f"GrowthCallback: at_fraction must lie in (0, 1), got {at_fraction}")
        if depth_mode not in DEPTH_MODES:
            raise ValueError(f"GrowthCallback: depth_mode must be one of {DEPTH_MODES}, got {depth_mode!r}")
        if optimizer_mode not in OPTIMIZER_MODES:
            raise ValueError(f"GrowthCallback: optimizer_mode must be one of {OPTIMIZER_MODES}, "
                             f"got {optimizer_mode!r}")
        if depth is None and embed_dim is None and mlp_ratio is None:
            raise ValueError("GrowthCallback: nothing to grow; set depth, embed_dim or mlp_ratio")
        self.at_step, self.at_fraction = at_step, at_fraction
        self.spec = GrowthSpec(depth, embed_dim, mlp_ratio, depth_mode, noise_std, seed)
        self.optimizer_mode, self.rewarm_fraction = optimizer_mode, rewarm_fraction
        self.grown_at: int | None = None  # global step of the growth, once done
        self.scales: Scales = {}
        self.schedule: dict[str, Any] = {}

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"grown_at": self.grown_at, "scales": {k: list(v) for k, v in self.scales.items()},
                "schedule": dict(self.schedule), "spec": list(self.spec)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.grown_at = state_dict["grown_at"]
        self.scales = {k: (float(a), float(b)) for k, (a, b) in state_dict["scales"].items()}
        self.schedule = dict(state_dict["schedule"])

    def trigger_step(self, trainer: L.Trainer) -> int:
        """The global step at which the growth happens."""
        if self.at_step is not None:
            return self.at_step
        return int(self.at_fraction * trainer.estimated_stepping_batches)

    # -- resume --------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Chain :meth:`regrow` in front of the module's ``on_load_checkpoint`` (Lightning calls it before the
        state dict loads; ``trainer.ckpt_path`` is not known yet at setup). See docs/growth.md: a
        ``PretrainObjective.on_load_checkpoint`` hook calling :meth:`regrow` would replace this wrapper."""
        if stage != "fit" or getattr(pl_module, "_vispre_growth_hooked", False):
            return
        original = pl_module.on_load_checkpoint

        def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
            self.regrow(pl_module, checkpoint)
            original(checkpoint)

        pl_module.on_load_checkpoint = on_load_checkpoint
        pl_module._vispre_growth_hooked = True

    def regrow(self, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Grow a fresh module to a post-growth checkpoint's architecture (weights are loaded afterwards)."""
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if state is None or state["grown_at"] is None or self.grown_at is not None:
            return
        self.load_state_dict(state)
        grow_objective(pl_module, self.spec)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.grown_at is not None and self.schedule:  # resumed after growth: grown optimizer structure
            self._install(trainer, pl_module, GrowthSchedule(**self.schedule), {})

    # -- growth --------------------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.grown_at is not None or trainer.global_step < self.trigger_step(trainer):
            return
        if trainer.world_size > 1:
            raise RuntimeError("GrowthCallback supports single-device training only")
        step = trainer.global_step
        state = named_adam_state(trainer.optimizers[0], pl_module)
        for maps in grow_objective(pl_module, self.spec):
            state = map_adam_state(state, maps, _shapes(pl_module), self.optimizer_mode)
            if self.optimizer_mode == "exact":
                self.scales = map_scales(self.scales, maps)
        total = int(trainer.estimated_stepping_batches)
        recipe = pl_module.optimizer_recipe
        rewarm = int(self.rewarm_fraction * (total - step)) if self.optimizer_mode == "reset" else 0
        schedule = GrowthSchedule(step, int(recipe.warmup_fraction * total), total, recipe.min_lr_ratio,
                                  max(rewarm, 1) if self.optimizer_mode == "reset" else 0)
        self.grown_at, self.schedule = step, vars(schedule).copy()
        self._install(trainer, pl_module, schedule, state)
        pl_module.log("growth/embed_dim", float(pl_module.backbone.embed_dim), batch_size=1)

    def _install(self, trainer: L.Trainer, pl_module: L.LightningModule, schedule: GrowthSchedule,
                 state: dict) -> None:
        bundle = build_grown_optimizer(pl_module, pl_module.optimizer_recipe, pl_module.effective_batch_size(),
                                       schedule, self.scales or None)
        load_named_state(bundle.optimizer, pl_module, state)
        trainer.strategy.optimizers = [bundle.optimizer]
        trainer.strategy.lr_scheduler_configs = [LRSchedulerConfig(bundle.scheduler, interval="step")]

    @property
    def state_key(self) -> str:
        return self._generate_state_key(spec=tuple(self.spec), at_step=self.at_step, at_fraction=self.at_fraction)


def _shapes(module: torch.nn.Module) -> dict[str, torch.Size]:
    return {n: p.shape for n, p in module.named_parameters()}


__all__ = ["GrowthCallback"]
