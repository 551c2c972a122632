"""`vispre bench`: one JSON row printed and written; --set overrides reach the objective and the batch size;
a shard config benches on synthetic data without its shard files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import CONFIGS, MAE_CONFIG
from vispre.commands import main

TINY = ["--steps", "1", "--warmup", "0", "--set", "model.init_args.backbone.init_args.depth=1"]


def test_writes_the_printed_json_row(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--config", str(MAE_CONFIG), *TINY, "--batch_size", "4", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert rows == [json.loads(capsys.readouterr().out.strip().splitlines()[-1])]
    assert rows[0]["batch_size"] == 4 and rows[0]["precision"] == "32-true" and rows[0]["steps"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name != "bench.json"]  # no temporary file left


def test_set_overrides_the_batch_size_and_shards_need_not_exist(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    args = ["bench", "--config", str(MAE_CONFIG), "--config", str(CONFIGS / "data/fashion_mnist_wds.yaml"),
            *TINY, "--set", f"data.init_args.urls={tmp_path / 'absent'}", "--set", "data.init_args.batch_size=3"]
    assert main(args) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["batch_size"] == 3 and row["name"] == "vit_tiny_fashion_mnist + fashion_mnist_wds"


def test_a_bad_override_is_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "--config", str(MAE_CONFIG), "--set", "model.init_args.mask_ratio=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vispre bench: error: ") and "mask_ratio" in err and len(err.splitlines()) == 1
