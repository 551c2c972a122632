"""Optimizer-state modes across growth: exact mode retraces the small model (docs/growth.md)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tests.helpers import tiny_mae
from vispre.errors import VispreError
from vispre.growth import GrowthSpec, grow_objective
from vispre.growth.optim_state import (GrowthSchedule, build_grown_optimizer, load_named_state, map_adam_state,
                                       map_scales, named_adam_state)
from vispre.objectives.mae import MAE
from vispre.optim import AdamWRecipe, SGDRecipe, cosine_value

RECIPE = AdamWRecipe(base_lr=2e-2, weight_decay=0.05, warmup_fraction=0.1, fused=False)


def _step(mae: MAE, bundle, x: torch.Tensor, noise: torch.Tensor) -> float:
    bundle.optimizer.zero_grad()
    loss = mae.forward_loss(x, noise)[0]
    loss.backward()
    bundle.optimizer.step()
    bundle.scheduler.step()
    return loss.item()


def _grown_run(mode: str, steps: int = 20) -> tuple[list[float], list[float]]:
    mae = tiny_mae().double()
    data = [(torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.rand(4, 16, dtype=torch.float64))
            for _ in range(5 + steps)]
    schedule = GrowthSchedule(0, 3, 5 + steps)
    bundle = build_grown_optimizer(mae, RECIPE, 256, schedule)
    for x, noise in data[:5]:
        _step(mae, bundle, x, noise)
    big = copy.deepcopy(mae)
    state, scales = named_adam_state(bundle.optimizer, mae), {}
    assert len(state) == sum(p.requires_grad for p in mae.parameters())
    for maps in grow_objective(big, GrowthSpec(embed_dim=64)):
        state = map_adam_state(state, maps, {n: p.shape for n, p in big.named_parameters()}, mode)
        scales = map_scales(scales, maps) if mode == "exact" else scales
    big_bundle = build_grown_optimizer(big, RECIPE, 256, GrowthSchedule(5, 3, 5 + steps), scales or None)
    load_named_state(big_bundle.optimizer, big, state)
    small_losses = [_step(mae, bundle, x, n) for x, n in data[5:]]
    big_losses = [_step(big, big_bundle, x, n) for x, n in data[5:]]
    return small_losses, big_losses


def test_exact_mode_retraces_small_model_for_20_steps() -> None:
    small, big = _grown_run("exact")
    drift = max(abs(a - b) / abs(a) for a, b in zip(small, big))
    assert drift <= 1e-5
    assert small[0] != small[-1]  # the run actually trained


def test_transfer_and_reset_drift_more_than_exact() -> None:
    small, transfer = _grown_run("transfer", steps=8)
    _, reset = _grown_run("reset", steps=8)
    drift = lambda other: max(abs(a - b) / abs(a) for a, b in zip(small, other))  # noqa: E731
    print(f"loss drift after 8 steps: transfer {drift(transfer):.2e}, reset {drift(reset):.2e}")
    assert drift(transfer) > 1e-4 and drift(reset) > 1e-4


def test_exact_scales_and_groups() -> None:
    mae = tiny_mae()
    maps = grow_objective(mae, GrowthSpec(embed_dim=64))[0]
    scales = map_scales({}, maps)
    assert scales["backbone.vit.blocks.0.attn.qkv.weight"] == (2.0, 2.0)
    assert scales["backbone.vit.norm.weight"] == (1.0, 2.0)
    assert scales["decoder.decoder_embed.weight"] == (2.0, 1.0)
    assert scales["decoder.pred.weight"] == (1.0, 1.0)
    opt = build_grown_optimizer(mae, RECIPE, 256, GrowthSchedule(0, 1, 10), scales).optimizer
    qkv = next(g for g in opt.param_groups if "backbone.vit.blocks.0.attn.qkv.weight" in g["names"])
    assert (qkv["lr"], qkv["eps"], qkv["weight_decay"]) == pytest.approx((RECIPE.peak_lr(256) / 2, 5e-9, 0.1))


def test_reset_schedule_rewarms_onto_global_schedule() -> None:
    sched = GrowthSchedule(offset=50, warmup_steps=10, total_steps=100, rewarm_steps=5)
    glob = GrowthSchedule(offset=0, warmup_steps=10, total_steps=100)
    assert sched(0) == pytest.approx(glob(50) / 5)
    assert sched(10) == pytest.approx(glob(60))


def test_grown_optimizer_continues_the_weight_decay_schedule() -> None:
    recipe = AdamWRecipe(weight_decay=0.04, weight_decay_end=0.4, warmup_fraction=0.1, fused=False)
    schedule = GrowthSchedule(offset=30, warmup_steps=10, total_steps=100)
    bundle = build_grown_optimizer(tiny_mae(), recipe, 256, schedule)
    decayed = next(g for g in bundle.optimizer.param_groups if g["weight_decay"] > 0)
    assert decayed["weight_decay"] == pytest.approx(cosine_value(30, 0.04, 0.4, 100))
    assert bundle.warmup_steps == 10 and bundle.scheduler.step_offset == 30


def test_reset_mode_rebuilds_any_recipe_but_exact_scales_need_adamw() -> None:
    mae = tiny_mae()
    maps = grow_objective(mae, GrowthSpec(embed_dim=64))[0]
    bundle = build_grown_optimizer(mae, SGDRecipe(), 256, GrowthSchedule(5, 0, 10, rewarm_steps=2))
    assert type(bundle.optimizer) is torch.optim.SGD
    cosine, rewarm = 0.5 * (1 + math.cos(math.pi * 5 / 10)), 1 / 2  # global step 5 of 10, re-warm step 1 of 2
    assert bundle.optimizer.param_groups[0]["lr"] == pytest.approx(SGDRecipe().peak_lr(256) * cosine * rewarm)
    with pytest.raises(VispreError, match="SGDRecipe has no exact-mode growth scaling"):
        build_grown_optimizer(mae, SGDRecipe(), 256, GrowthSchedule(5, 0, 10), map_scales({}, maps))
