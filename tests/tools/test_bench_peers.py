"""tools/bench_peers.py's DINO mode: vispre's ``dino`` and the peer built from lightly's blocks do the same work
(same loss on the same logits, same student size, same crops) and the side-by-side run writes its rows."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from tests.helpers import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tools"))

import bench_peers  # noqa: E402
from vispre.losses.dino import dino_loss, dino_teacher_probs  # noqa: E402

pytest.importorskip("lightly")


def test_lightly_dino_loss_is_vispre_dino_loss() -> None:
    """Same logits in (2 global + 4 local crops, K 32), same loss out: the two steps optimise one objective."""
    from lightly.loss import DINOLoss

    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 5, 32, generator=gen), torch.randn(2, 5, 32, generator=gen)
    ours = dino_loss(student, dino_teacher_probs(teacher, torch.zeros(1, 32), 0.04), student_temp=0.1)
    theirs = DINOLoss(output_dim=32, student_temp=0.1)(list(teacher), list(student), teacher_temp=0.04)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_dino_mode_tiny_side_by_side(tmp_path) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "dino.json"
    result = bench_peers.run_dino(batch_size=4, rounds=1, steps=1, out=out)
    assert json.loads(out.read_text()) == result
    assert result["crops"] == " + ".join(["(1, 28, 28)"] * 2 + ["(1, 14, 14)"] * 4)
    assert result["prototypes"] == 1024  # the shipped config's K, used by both
    rows = {r["name"].split(" (")[0] if r["name"].startswith("vispre") else r["name"]: r for r in result["rows"]}
    vispre = rows.pop("vispre dino objective step")
    assert len(rows) == 2 and all(r["samples"] == 1 and r["step_ms"] > 0 for r in result["rows"])
    for row in rows.values():  # lightly's backbone wrapper adds its (unused here) 192-d mask token
        assert row["student_params"] - vispre["student_params"] == 192
    per_view = next(r for n, r in rows.items() if "per-view" in n)
    assert per_view["lightly_over_this"] == 1.0
    assert vispre["lightly_over_this"] == pytest.approx(per_view["step_ms"] / vispre["step_ms"], rel=1e-2)
    table = bench_peers.dino_table(result).splitlines()
    assert table[2] == "| implementation | step ms | images/s | student params | lightly (per-view) / this |"
    assert table[4].startswith(f"| vispre dino objective step | {vispre['step_ms']} |")
