"""`vispre eval`: end to end from a run folder / checkpoint to report.json (the foundation's format),
report.md and plots, reusing the feature cache; a bad suite YAML is one line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import lightning_checkpoint, one_thread, tiny_mae, tiny_vit
from vispre.commands import main

FAST = dict(ks=(5, 20), report_k=20, lrs=(0.1, 1.0), weight_decays=(0.0,), epochs=3)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def fmnist_vit() -> torch.nn.Module:
    """A tiny ViT for 28x28 grey images (patch 7, dim 32, depth 2, heads 2)."""
    return tiny_vit(img_size=28, patch_size=7, in_chans=1)


def test_vispre_eval_end_to_end_writes_the_report(tmp_path: Path) -> None:
    backbone = fmnist_vit()
    ckpt = lightning_checkpoint(tiny_mae(backbone), tmp_path / "run" / "checkpoints" / "last.ckpt")
    config = tmp_path / "eval.yaml"
    task = {"name": "fashion_mnist", "dataset": "fashion_mnist", "limit_train": 600, "limit_test": 200,
            "features": ["cls", "grid2"], **{k: list(v) if isinstance(v, tuple) else v for k, v in FAST.items()}}
    config.write_text(yaml.safe_dump({"cache_dir": str(tmp_path / "cache"), "tasks": [task]}))
    assert main(["eval", str(tmp_path / "run"), "--config", str(config)]) == 0
    out = tmp_path / "run"
    report = json.loads((out / "report.json").read_text())
    assert report["backbone"] == str(tmp_path / "run")
    entry = report["tasks"]["fashion_mnist"]
    assert isinstance(entry["knn_top1"], float) and isinstance(entry["linear_top1"], float)
    assert 0.1 < entry["knn_top1"] <= 1 and 0.1 < entry["linear_top1"] <= 1
    assert "test never used for selection" in entry["selected_on"]
    assert (out / "report.md").read_text().startswith(f"Backbone: `{tmp_path / 'run'}`")
    for plot in ("fashion_mnist_probe_lr.png", "fashion_mnist_embedding.png", "fashion_mnist_confusion.png"):
        assert (out / plot).stat().st_size > 1000
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2  # train and test features
    assert ckpt.exists()
    # --out elsewhere, from the checkpoint file, reusing the cache: same numbers
    assert main(["eval", str(ckpt), "--config", str(config), "--out", str(tmp_path / "o"), "--no-plots"]) == 0
    again = json.loads((tmp_path / "o" / "report.json").read_text())["tasks"]["fashion_mnist"]
    assert again["knn_top1"] == entry["knn_top1"] and again["linear_top1"] == entry["linear_top1"]


def test_vispre_eval_bad_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"tasks": [{"name": "x", "dataset": "fashion_mnist", "report_k": 7}]}))
    lightning_checkpoint(tiny_mae(fmnist_vit()), tmp_path / "a.ckpt")
    assert main(["eval", str(tmp_path / "a.ckpt"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "vispre eval: error: task 'x': report_k 7 is not among ks [10, 20, 100, 200]" in err
    assert "Traceback" not in err


def test_vispre_eval_yaml_syntax_error_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Before: a 67-line traceback ending in `in "<unicode string>", line 4, column 11`."""
    config = tmp_path / "eval.yaml"
    config.write_text("tasks:\n  - name: a\n    ks: [1, 2\n    epochs: 3\n")
    lightning_checkpoint(tiny_mae(fmnist_vit()), tmp_path / "a.ckpt")
    assert main(["eval", str(tmp_path / "a.ckpt"), "--config", str(config)]) == 2
    assert capsys.readouterr().err.strip() == (f"vispre eval: error: {config}:4:11: YAML syntax error: expected ',' "
                                               "or ']', but got ':' (while parsing a flow sequence started at line 3)")


def test_vispre_eval_on_a_text_file_names_what_was_expected(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Before: `KeyError: 101` from torch's unpickler, with a 34-line traceback."""
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"tasks": [{"name": "x", "dataset": "fashion_mnist", **FAST}]}))
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    assert main(["eval", str(notes), "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vispre eval: error: {notes} is not a checkpoint (a file starting with b'hell', not a "
                          "torch.save file): expected a Lightning checkpoint (.ckpt)") and len(err.splitlines()) == 1
