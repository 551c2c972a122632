"""`vispre export`: the timm / Hugging Face folder from the command line (then `vispre eval` reads that folder), the
.safetensors + JSON pair, and one-line errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
import yaml

from tests.helpers import lightning_checkpoint, one_thread, perturbed, tiny_mae, tiny_vit
from vispre.commands import main


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture
def grey_run(tmp_path: Path) -> Path:
    """A run folder of a tiny 28 px grey MAE (no config.yaml: the normalisation is given on the command line)."""
    lightning_checkpoint(tiny_mae(perturbed(tiny_vit(img_size=28, patch_size=7, in_chans=1))),
                         tmp_path / "run" / "checkpoints" / "last.ckpt")
    return tmp_path / "run"


def test_export_folder_then_timm_and_vispre_eval_read_it(grey_run: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "hub" / "tiny-mae"
    assert main(["export", str(grey_run), str(out), "--mean", "0.286", "--std", "0.353"]) == 0
    assert f'timm.create_model("local-dir:{out}", pretrained=True)' in capsys.readouterr().out
    plain = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert plain.pretrained_cfg["mean"] == [0.286] and plain.pretrained_cfg["input_size"] == (1, 28, 28)
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"tasks": [{"name": "fm", "limit_train": 300, "limit_test": 100,
                                                 "features": ["cls"], "ks": [5], "report_k": 5, "lrs": [0.1],
                                                 "weight_decays": [0.0], "epochs": 2, "few_shot_shots": []}]}))
    assert main(["eval", str(out), "--config", str(config), "--out", str(tmp_path / "ev"), "--no-plots"]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())["tasks"]["fm"]
    assert 0.0 <= report["pooled"]["knn_top1"] <= 1.0 and report["pooled"]["global_pool"] == "token"


def test_export_file_pair_still_works(grey_run: Path, tmp_path: Path) -> None:
    assert main(["export", str(grey_run), str(tmp_path / "b.safetensors")]) == 0
    args = json.loads((tmp_path / "b.json").read_text())
    plain = timm.create_model(args.pop("model_name"), pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "b.safetensors")), **args)
    assert plain(torch.zeros(1, 1, 28, 28)).shape == (1, 32)


def test_export_errors_are_one_line(grey_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["export", str(grey_run), str(tmp_path / "full")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"vispre export: error: export folder {tmp_path / 'full'} exists and is not empty: choose another "
                   f"folder or pass --force (force=True) to replace it")
    assert main(["export", str(grey_run), str(tmp_path / "o"), "--mean", "0.5"]) == 2
    assert "give both mean and std" in capsys.readouterr().err
