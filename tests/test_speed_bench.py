"""vispre bench: JSON rows, FLOP counting, consistent derived numbers (no speed is asserted)."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_vit
from vispre.bench import bench_objective, count_flops, main, synthetic_batch
from vispre.objectives.mae import MAE

ROOT = Path(__file__).resolve().parents[1]


def tiny_mae() -> MAE:
    return MAE(tiny_vit(), decoder_dim=16, decoder_depth=1, decoder_num_heads=2)


def test_flops_match_hand_count_of_the_patch_embedding_and_scale_with_batch() -> None:
    model = tiny_mae()
    one = count_flops(model, synthetic_batch(model, 2, 1, torch.device("cpu")), nullcontext)
    # patch_embed conv forward 2 * B * L * (C*p*p) * D, plus its weight gradient (same count) in backward
    patch_embed = 2 * 2 * 16 * (3 * 8 * 8) * 32
    assert one > 2 * patch_embed
    two = count_flops(model, synthetic_batch(model, 4, 1, torch.device("cpu")), nullcontext)
    assert two == pytest.approx(2 * one)


def test_bench_row_is_self_consistent() -> None:
    row = bench_objective(tiny_mae(), "tiny", batch_size=4, steps=2, warmup=1)
    assert row.images_per_s == pytest.approx(4 / (row.step_ms_median / 1e3))
    assert row.step_ms_min <= row.step_ms_median and row.mfu is None and row.peak_memory_kind == "cpu_peak_rss"
    assert row.flops_per_step > 0 and row.peak_memory_mb > 0


def test_bad_precision_is_refused() -> None:
    with pytest.raises(ValueError) as err:
        bench_objective(tiny_mae(), "tiny", batch_size=2, precision="fp16")
    assert str(err.value) == "precision must be '32-true' or 'bf16-mixed', got 'fp16'"


def test_cli_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench.json"
    code = main(["--config", str(ROOT / "configs/mae/vit_tiny_fashion_mnist.yaml"), "--steps", "1", "--warmup", "0",
                 "--batch_size", "4", "--set", "model.init_args.backbone.init_args.depth=1", "--out", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())
    assert rows == [json.loads(capsys.readouterr().out.strip().splitlines()[-1])]
    assert rows[0]["batch_size"] == 4 and rows[0]["precision"] == "32-true"
