"""vispre.bench: FLOP counting against a hand count, the number of timed and untimed steps, and the row's
fields (no speed is asserted)."""

from __future__ import annotations

import time
from contextlib import nullcontext

import pytest
import torch

from tests.helpers import tiny_mae
from vispre.bench import bench_objective, count_flops, synthetic_batch, time_steps
from vispre.errors import VispreError


def test_flops_match_hand_count_of_the_patch_embedding_and_scale_with_batch() -> None:
    model = tiny_mae()
    one = count_flops(model, synthetic_batch(model, 2, 1, torch.device("cpu")), nullcontext)
    # patch_embed conv forward 2 * B * L * (C*p*p) * D, plus its weight gradient (same count) in backward
    patch_embed = 2 * 2 * 16 * (3 * 8 * 8) * 32
    assert one > 2 * patch_embed
    two = count_flops(model, synthetic_batch(model, 4, 1, torch.device("cpu")), nullcontext)
    assert two == pytest.approx(2 * one)


def test_time_steps_runs_warmup_untimed_then_times_each_step() -> None:
    calls: list[float] = []

    def step() -> torch.Tensor:
        calls.append(time.perf_counter())
        time.sleep(0.02)
        return torch.zeros(())

    times = time_steps(step, steps=3, warmup=2, device=torch.device("cpu"))
    assert len(calls) == 5 and len(times) == 3
    assert all(0.02 <= t < 1.0 for t in times)  # each timed call includes its 20 ms sleep


def test_bench_runs_one_flop_count_plus_warmup_plus_timed_steps() -> None:
    model = tiny_mae()
    batch = synthetic_batch(model, 4, 2, torch.device("cpu"))
    expected_flops = count_flops(model, batch, nullcontext)
    calls = []  # one patch embedding per MAE loss evaluation (MAE encodes the first view only)
    model.backbone.vit.patch_embed.register_forward_hook(lambda *_: calls.append(1))
    row = bench_objective(model, "tiny", batch_size=4, steps=2, warmup=1)
    assert len(calls) == 1 + 1 + 2  # FLOP count, warm-up, timed steps
    assert row.steps == 2 and row.batch_size == 4 and row.name == "tiny" and row.precision == "32-true"
    assert row.flops_per_step == expected_flops  # the same fixed batch: the same count
    assert row.mfu is None and row.peak_memory_kind == "cpu_peak_rss" and row.peak_memory_mb > 0


def test_bad_precision_is_refused() -> None:
    with pytest.raises(VispreError) as err:
        bench_objective(tiny_mae(), "tiny", batch_size=2, precision="fp16")
    assert str(err.value) == "precision must be '32-true' or 'bf16-mixed', got 'fp16'"
