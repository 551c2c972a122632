"""Optimizer recipes: parameter groups, lr scaling, per-step lr / weight-decay schedules, YAML selection."""

from __future__ import annotations

import copy
import io
import math

import lightning as L
import pytest
import torch
from lightning.pytorch.cli import LightningCLI

from tests.helpers import tiny_mae
from vispre.data.synthetic import SyntheticDataModule
from vispre.errors import VispreError
from vispre.optim import (LARS, AdamWRecipe, LARSRecipe, OptimizerRecipe, SGDRecipe, WarmupCosineScheduler,
                          param_groups, warmup_cosine)

DECAYED = "backbone.vit.blocks.0.attn.qkv.weight"
PLAIN = "backbone.vit.blocks.0.attn.qkv.bias"


def _group(optimizer: torch.optim.Optimizer, name: str) -> dict:
    return next(g for g in optimizer.param_groups if name in g["names"])


def test_no_weight_decay_on_biases_norms_tokens_and_pos_embeds() -> None:
    groups = param_groups(tiny_mae(), weight_decay=0.05)
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    plain = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    assert "backbone.vit.blocks.0.attn.qkv.weight" in decayed
    assert {"backbone.vit.cls_token", "decoder.mask_token", "backbone.vit.blocks.0.norm1.weight",
            "backbone.vit.blocks.0.attn.qkv.bias"} <= plain
    assert "backbone.vit.pos_embed" not in decayed | plain  # frozen, not optimised
    assert all(p.ndim >= 2 for g in groups if g["weight_decay"] > 0 for p in g["params"])


def test_lr_scaling_and_schedule() -> None:
    recipe = AdamWRecipe(base_lr=1.5e-4, warmup_fraction=0.1)
    assert recipe.peak_lr(4096) == pytest.approx(2.4e-3)
    bundle = recipe.build(tiny_mae(), effective_batch_size=512, total_steps=100)
    assert bundle.peak_lr == pytest.approx(3e-4) and bundle.warmup_steps == 10
    lrs = []
    for _ in range(100):
        lrs.append(bundle.optimizer.param_groups[0]["lr"])
        bundle.optimizer.step()
        bundle.scheduler.step()
    assert lrs[0] == pytest.approx(3e-5)  # (step+1)/warmup
    assert lrs[9] == pytest.approx(3e-4)  # peak at the end of warmup
    assert lrs[-1] < 1e-6 and all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5)
    assert bundle.optimizer.defaults["betas"] == (0.9, 0.95)


def test_adamw_defaults_are_the_mae_recipe() -> None:
    recipe = AdamWRecipe()
    assert (recipe.base_lr, recipe.weight_decay, recipe.betas, recipe.warmup_fraction, recipe.min_lr_ratio,
            recipe.weight_decay_end, recipe.eps, recipe.fused) == (1.5e-4, 0.05, (0.9, 0.95), 0.05, 0.0, None,
                                                                  1e-8, True)
    opt = recipe.build(tiny_mae(), effective_batch_size=256, total_steps=10).optimizer
    assert type(opt) is torch.optim.AdamW and opt.defaults["fused"] is False  # CPU parameters: not fused
    assert (_group(opt, DECAYED)["weight_decay"], _group(opt, PLAIN)["weight_decay"]) == (0.05, 0.0)
    with pytest.raises(TypeError):
        OptimizerRecipe()  # abstract: YAML must name a concrete recipe


@pytest.mark.parametrize("recipe_cls, kwargs, message", [
    (AdamWRecipe, dict(warmup_fraction=1.5), "AdamWRecipe.warmup_fraction must lie in [0, 1), got 1.5"),
    (AdamWRecipe, dict(base_lr=0.0), "AdamWRecipe.base_lr must be > 0, got 0.0"),
    (AdamWRecipe, dict(betas=(0.9, 1.0)), "AdamWRecipe.betas must be two numbers in [0, 1), got (0.9, 1.0)"),
    (AdamWRecipe, dict(eps=0.0), "AdamWRecipe.eps must be > 0, got 0.0"),
    (SGDRecipe, dict(weight_decay=-1.0), "SGDRecipe.weight_decay must be >= 0, got -1.0"),
    (SGDRecipe, dict(weight_decay_end=-0.1), "SGDRecipe.weight_decay_end must be None or >= 0, got -0.1"),
    (SGDRecipe, dict(momentum=0.0, nesterov=True), "SGDRecipe.nesterov must be False when momentum is 0, got True"),
    (LARSRecipe, dict(weight_decay_end=0.4), "LARSRecipe.weight_decay must be > 0 when weight_decay_end is set, "
                                             "got 0.0"),
    (LARSRecipe, dict(min_lr_ratio=2.0), "LARSRecipe.min_lr_ratio must lie in [0, 1], got 2.0"),
    (LARSRecipe, dict(momentum=1.0), "LARSRecipe.momentum must lie in [0, 1), got 1.0"),
    (LARSRecipe, dict(trust_coefficient=0.0), "LARSRecipe.trust_coefficient must be > 0, got 0.0"),
])
def test_bad_optimizer_recipe_is_rejected(recipe_cls: type, kwargs: dict, message: str) -> None:
    with pytest.raises(VispreError) as err:
        recipe_cls(**kwargs)
    assert str(err.value) == message


def _lr_closed_form(step: int, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))))


def _wd_closed_form(step: int, start: float, end: float, total: int) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


@pytest.mark.parametrize("recipe", [
    AdamWRecipe(base_lr=1e-3, weight_decay=0.04, weight_decay_end=0.4, warmup_fraction=0.1, min_lr_ratio=0.1),
    LARSRecipe(base_lr=0.1, weight_decay=0.04, weight_decay_end=0.4, warmup_fraction=0.1, min_lr_ratio=0.1),
    SGDRecipe(base_lr=0.03, weight_decay=0.04, weight_decay_end=0.4, warmup_fraction=0.1, min_lr_ratio=0.1),
], ids=["adamw", "lars", "sgd"])
def test_lr_and_weight_decay_schedules_match_closed_form(recipe: OptimizerRecipe) -> None:
    bundle = recipe.build(tiny_mae(), effective_batch_size=512, total_steps=100)
    assert isinstance(bundle.scheduler, WarmupCosineScheduler)
    peak = recipe.base_lr * 2
    seen = {}
    for step in range(121):  # past the end: both schedules hold their final value
        if step in (0, 9, 55, 100, 120):
            seen[step] = (_group(bundle.optimizer, DECAYED)["lr"], _group(bundle.optimizer, DECAYED)["weight_decay"],
                          _group(bundle.optimizer, PLAIN)["lr"], _group(bundle.optimizer, PLAIN)["weight_decay"])
        bundle.optimizer.step()
        bundle.scheduler.step()
    for step, (lr, wd, plain_lr, plain_wd) in seen.items():
        expected_lr = _lr_closed_form(min(step, 100), peak, 10, 100, 0.1)
        assert lr == pytest.approx(expected_lr, rel=1e-12) and plain_lr == pytest.approx(expected_lr, rel=1e-12)
        assert wd == pytest.approx(_wd_closed_form(step, 0.04, 0.4, 100), rel=1e-12)
        assert plain_wd == 0.0  # biases / norms never decay, whatever the schedule
    assert seen[0][1] == pytest.approx(0.04) and seen[55][1] == pytest.approx(0.22 + 0.18 * math.sin(math.pi * 0.05))
    assert seen[100][1] == pytest.approx(0.4) and seen[100][0] == pytest.approx(0.1 * peak)


def test_constant_weight_decay_without_schedule() -> None:
    bundle = AdamWRecipe(weight_decay=0.05, fused=False).build(tiny_mae(), 256, 20)
    for _ in range(20):
        bundle.optimizer.step()
        bundle.scheduler.step()
    assert _group(bundle.optimizer, DECAYED)["weight_decay"] == 0.05


def test_step_offset_and_rewarm_continue_the_global_schedules() -> None:
    recipe = SGDRecipe(weight_decay=0.04, weight_decay_end=0.4, warmup_fraction=0.1)
    bundle = recipe.build(tiny_mae(), 256, 100, step_offset=50, rewarm_steps=5)
    group = _group(bundle.optimizer, DECAYED)
    assert group["lr"] == pytest.approx(_lr_closed_form(50, recipe.base_lr, 10, 100, 0.0) / 5)
    assert group["weight_decay"] == pytest.approx(_wd_closed_form(50, 0.04, 0.4, 100))
    for _ in range(10):
        bundle.optimizer.step()
        bundle.scheduler.step()
    assert group["lr"] == pytest.approx(_lr_closed_form(60, recipe.base_lr, 10, 100, 0.0))


def test_scheduler_state_round_trips_through_a_weights_only_checkpoint() -> None:
    recipe = AdamWRecipe(weight_decay=0.04, weight_decay_end=0.4, warmup_fraction=0.1, fused=False)
    model = tiny_mae()
    bundle = recipe.build(model, 256, 50)
    for _ in range(17):
        bundle.optimizer.step()
        bundle.scheduler.step()
    buffer = io.BytesIO()
    torch.save({"opt": bundle.optimizer.state_dict(), "sched": bundle.scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # plain numbers only: no pickled callables
    resumed = recipe.build(copy.deepcopy(model), 256, 50)
    resumed.optimizer.load_state_dict(saved["opt"])
    resumed.scheduler.load_state_dict(saved["sched"])
    for _ in range(5):
        for b in (bundle, resumed):
            b.optimizer.step()
            b.scheduler.step()
    assert [(g["lr"], g["weight_decay"]) for g in resumed.optimizer.param_groups] == \
        [(g["lr"], g["weight_decay"]) for g in bundle.optimizer.param_groups]
    assert _group(resumed.optimizer, DECAYED)["weight_decay"] == pytest.approx(_wd_closed_form(22, 0.04, 0.4, 50))


@pytest.mark.parametrize("recipe", [SGDRecipe(), LARSRecipe()], ids=["sgd", "lars"])
def test_exact_growth_scales_need_adamw(recipe: OptimizerRecipe) -> None:
    with pytest.raises(VispreError, match=f"{type(recipe).__name__} has no exact-mode growth scaling"):
        recipe.build(tiny_mae(), 256, 10, scales={DECAYED: (2.0, 2.0)})
    assert len(recipe.build(tiny_mae(), 256, 10, scales={DECAYED: (1.0, 1.0)}).optimizer.param_groups) == 2


def tiny_objective(optimizer: OptimizerRecipe | None = None) -> L.LightningModule:
    """A tiny MAE whose only configurable argument is typed like every objective's ``optimizer``."""
    return tiny_mae(optimizer=optimizer)


@pytest.mark.parametrize("class_path, init_args, optimizer_type", [
    ("vispre.optim.AdamWRecipe", "{base_lr: 1.0e-3, betas: [0.9, 0.999], fused: false}", torch.optim.AdamW),
    ("vispre.optim.LARSRecipe", "{base_lr: 0.2, weight_decay: 0.04, weight_decay_end: 0.4}", LARS),
    ("vispre.optim.SGDRecipe", "{base_lr: 0.05, momentum: 0.8, nesterov: true}", torch.optim.SGD),
], ids=["adamw", "lars", "sgd"])
def test_each_recipe_is_selectable_from_yaml_and_steps(tmp_path, class_path: str, init_args: str,
                                                      optimizer_type: type) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(f"""
model:
  optimizer:
    class_path: {class_path}
    init_args: {init_args}
data: {{batch_size: 4, num_samples: 8}}
trainer: {{accelerator: cpu, devices: 1, max_steps: 2, logger: false, enable_checkpointing: false,
          enable_progress_bar: false, enable_model_summary: false}}
""")
    cli = LightningCLI(tiny_objective, SyntheticDataModule, run=False, args=["--config", str(config)],
                       save_config_callback=None)
    recipe = cli.model.optimizer_recipe
    assert type(recipe).__name__ == class_path.rsplit(".", 1)[1] and isinstance(recipe, OptimizerRecipe)
    before = {n: p.detach().clone() for n, p in cli.model.named_parameters() if p.requires_grad}
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    opt = cli.trainer.optimizers[0]
    assert cli.trainer.global_step == 2 and type(opt) is optimizer_type
    assert any(not torch.equal(before[n], p) for n, p in cli.model.named_parameters() if n in before)
    # Lightning stepped the scheduler per step: after the last of total_steps=2, lr = min_lr = 0 and the
    # decay reached its end value
    assert _group(opt, DECAYED)["lr"] == pytest.approx(0.0, abs=1e-12)
    end = recipe.weight_decay if recipe.weight_decay_end is None else recipe.weight_decay_end
    assert _group(opt, DECAYED)["weight_decay"] == pytest.approx(end)
