"""tools/gpu_check.py: the CPU smoke run (``--device cpu --tiny``, every section, in a subprocess) writes the JSON
with every correctness check passed; the batch-size search and the tolerance comparison on their own."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

TOOL = REPO_ROOT / "tools" / "gpu_check.py"


def load_tool():  # tools/ is not a package: load the script by path
    spec = importlib.util.spec_from_file_location("gpu_check", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_tiny_cpu_run_writes_every_section_and_passes_every_check(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, str(TOOL), "--device", "cpu", "--tiny", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    sections = data["sections"]
    assert {k: v["status"] for k, v in sections.items()} == {"correctness": "done", "distributed": "done",
                                                            "throughput": "done"}
    tool = load_tool()
    correctness = sections["correctness"]
    assert correctness["tolerances"] == tool.TOLERANCES
    from vispre.objectives import OBJECTIVES

    assert set(correctness["objectives"]) == set(OBJECTIVES)
    for name, row in correctness["objectives"].items():
        assert row["bf16"]["status"] == "passed", (name, row["bf16"])
        assert row["fused_adamw"]["status"] == "passed" and row["fused_adamw"]["recipe_fused"], (name, row)
        assert row["compile"]["status"] == ("passed" if name == "mae" else "skipped: --compile_on mae"), (name, row)
        assert 0 < row["bf16"]["metrics"]["loss_rel"] < 5e-2  # bf16 really ran (not a copy of the fp32 pass)
    assert correctness["objectives"]["mae"]["compile"]["backend"] == "aot_eager"
    assert correctness["sdpa"]["status"] == "passed" and correctness["sdpa"]["model_step_uses"]
    assert sections["distributed"]["ddp"]["status"] == "passed"
    assert sections["distributed"]["ddp"]["strategy"] == "DDPStrategy"
    assert sections["distributed"]["fsdp"]["status"] == "skipped: FSDP needs a GPU here"
    rows = sections["throughput"]["rows"]
    assert list(rows) == ["mae_vit_b16", "mae_vit_l16", "moco_v3_vit_b16", "dino_vit_s16"]
    for row in rows.values():
        assert row["status"] == "measured" and row["bench"]["images_per_s"] > 0 and row["bench"]["flops_per_step"] > 0
        assert row["largest_batch"]["largest"] == 16  # the CPU never runs out of memory: the --tiny cap
    assert data["summary"]["failed"] == [] and data["summary"]["passed"] == 2 * len(OBJECTIVES) + 1 + 1 + 1
    assert "| throughput | mae_vit_b16 |" in proc.stdout


def test_largest_batch_bisects_to_the_exact_limit_and_respects_caps() -> None:
    tool = load_tool()
    calls: list[int] = []

    def fits(b: int) -> bool:
        calls.append(b)
        return b <= 300

    found = tool.largest_batch(fits, start=64, cap=4096, deadline=float("inf"), granularity=1)
    assert (found.largest, found.first_failure, found.stopped) == (300, 301, "resolved")
    assert calls[:4] == [64, 128, 256, 512] and [b for b, _ in found.tries] == calls
    assert tool.largest_batch(lambda b: True, 64, 200, float("inf")).largest == 200  # doubling stops at the cap
    assert tool.largest_batch(lambda b: False, 64, 4096, float("inf"), granularity=1).largest is None
    ticks = iter(range(100))  # a fake clock: each try costs one tick, the deadline allows three
    timed = tool.largest_batch(fits, 64, 4096, deadline=3, granularity=1, clock=lambda: next(ticks))
    assert (timed.largest, timed.stopped, len(timed.tries)) == (256, "time cap", 3)


def test_tolerance_comparison_names_each_violation() -> None:
    tool = load_tool()
    tol = tool.TOLERANCES["bf16_vs_fp32"]
    assert tool.check_within({"loss_rel": 1e-3, "grad_norm_rel": 1e-2, "grad_cos": 0.999}, tol) == []
    bad = tool.check_within({"loss_rel": 0.2, "grad_norm_rel": 1e-2, "grad_cos": 0.5}, tol)
    assert bad == ["loss_rel 0.2 > 0.05", "grad_cos 0.5 < 0.9"]
    assert tool.check_within({"loss_rel": float("nan"), "grad_norm_rel": 0.0}, tol) == [
        "loss_rel nan > 0.05", "grad_cos nan < 0.9"]


@pytest.mark.gpu
def test_gpu_run_cuda_smoke(tmp_path: Path) -> None:
    """On a GPU: the tiny run on CUDA (correctness + distributed, inductor) passes."""
    out = tmp_path / "gpu_check.json"
    assert load_tool().main(["--device", "cuda", "--tiny", "--sections", "correctness,distributed",
                             "--compile_backend", "inductor", "--out", str(out)]) == 0
