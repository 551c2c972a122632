"""`vispre grow`: grow a real (tiny) run's checkpoint offline; the result records and loads the grown
architecture, exact modes keep the features; bad arguments give one clear error and write nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import MAE_CONFIG as QUICKSTART
from tests.helpers import synthetic_data_args
from vispre.backbones.vit import describe_vit
from vispre.commands import main
from vispre.commands.config import build_from_config
from vispre.commands.grow import grown_config_path, run_config_of
from vispre.hub import load_backbone

TINY = ["--model.backbone.init_args.depth=2", "--model.backbone.init_args.embed_dim=48",
        "--model.backbone.init_args.num_heads=3", "--model.init_args.decoder_dim=32",
        "--model.init_args.decoder_depth=1", "--model.init_args.decoder_num_heads=2"]


@pytest.fixture(scope="module")
def run_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """last.ckpt of a 2-step MAE run (dim 48, depth 2) on synthetic images."""
    runs = tmp_path_factory.mktemp("runs")
    args = ["fit", "--config", str(QUICKSTART), *synthetic_data_args(QUICKSTART), *TINY,
            "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false", f"--runs_dir={runs}", "--run_name=g"]
    assert main(args) == 0
    return runs / "g" / "version_0" / "checkpoints" / "last.ckpt"


def _features(path: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return load_backbone(path)(x)


@pytest.mark.parametrize("grow_args,arch", [
    (["--depth", "4"], {"depth": 4, "embed_dim": 48, "num_heads": 3}),
    (["--embed_dim", "96"], {"depth": 2, "embed_dim": 96, "num_heads": 6}),
    (["--depth", "3", "--embed_dim", "96", "--noise_std", "0.01"], {"depth": 3, "embed_dim": 96, "num_heads": 6}),
])
def test_grow_records_architecture_and_keeps_features(run_ckpt: Path, tmp_path: Path, grow_args: list[str],
                                                      arch: dict) -> None:
    out = tmp_path / "grown.ckpt"
    assert main(["grow", str(run_ckpt), str(out), *grow_args]) == 0
    saved = torch.load(out, map_location="cpu", weights_only=True)
    recorded = saved["vispre"]["backbone"]
    assert {k: recorded[k] for k in arch} == arch and saved["vispre"]["objective"] == "MAE"
    assert saved["state_dict"]["decoder.decoder_embed.weight"].shape[1] == arch["embed_dim"]
    x = torch.randn(4, 1, 28, 28)
    small, grown = _features(run_ckpt, x), _features(out, x)
    copies = grown.reshape(4, -1, 48)  # [B, k, D]: every copy equals the original features (exact growth)
    for c in range(copies.shape[1]):
        assert ((copies[:, c] - small).norm() / small.norm()).item() <= 1e-5
    assert not list(tmp_path.glob("*.tmp*"))


@pytest.mark.parametrize("grow_args,message", [
    ([], "vispre grow: error: nothing to grow: pass at least one of --depth, --embed_dim, --mlp_ratio"),
    (["--embed_dim", "100"], "vispre grow: error: embed_dim: 100 is not an integer multiple (>= 1x) of the current 48"),
    (["--depth", "1"], "vispre grow: error: grow_depth: depth 1 is smaller than the current depth 2; use shrink"),
    (["--embed_dim", "96", "--mlp_ratio", "8"], "vispre grow: error: grow_objective: grow embed_dim"),
])
def test_bad_arguments_give_one_clear_error(run_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                            grow_args: list[str], message: str) -> None:
    out = tmp_path / "grown.ckpt"
    assert main(["grow", str(run_ckpt), str(out), *grow_args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and len(err.splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_without_a_state_dict_is_refused(run_ckpt: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    plain = run_ckpt.parent / "plain_state.pt"  # beside the run's config.yaml: only the file's shape is wrong
    torch.save(load_backbone(run_ckpt).state_dict(), plain)
    try:
        assert main(["grow", str(plain), str(tmp_path / "o.ckpt"), "--depth", "4"]) == 2
    finally:
        plain.unlink()
    err = capsys.readouterr().err.strip()
    assert err == (f"vispre grow: error: checkpoint {plain} has no 'state_dict' (expected a Lightning checkpoint "
                   f"of a vispre run)")
    assert list(tmp_path.iterdir()) == []


def test_missing_and_already_grown_checkpoints_are_refused(run_ckpt: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    assert main(["grow", str(tmp_path / "nope.ckpt"), str(tmp_path / "o.ckpt"), "--depth", "4"]) == 2
    assert "vispre grow: error: checkpoint" in capsys.readouterr().err
    grown = run_ckpt.parent / "grown_once.ckpt"  # beside the run's config.yaml, so the run is found
    assert main(["grow", str(run_ckpt), str(grown), "--depth", "3"]) == 0
    capsys.readouterr()
    try:
        # with its own config (written by grow) a grown checkpoint grows again ...
        assert main(["grow", str(grown), str(tmp_path / "twice.ckpt"), "--depth", "4"]) == 0
        assert torch.load(tmp_path / "twice.ckpt", weights_only=True)["vispre"]["backbone"]["depth"] == 4
        # ... without it, the run's config.yaml describes another architecture: refused
        grown_config_path(grown).unlink()
        assert main(["grow", str(grown), str(tmp_path / "thrice.ckpt"), "--depth", "5"]) == 2
        assert "holds an already grown backbone" in capsys.readouterr().err
    finally:
        grown.unlink()
        grown_config_path(grown).unlink(missing_ok=True)


@pytest.mark.parametrize("spelling", ["same", "relative", "symlink"])
def test_growing_onto_the_input_is_refused_unless_forced(run_ckpt: Path, tmp_path: Path, spelling: str,
                                                         capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16 item 7: `vispre grow CKPT CKPT` replaced the run's checkpoint (optimizer state, global step gone)."""
    run = tmp_path / "run"
    shutil.copytree(run_ckpt.parents[1], run)  # version_0/: config.yaml + checkpoints/
    ckpt = run / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    monkeypatch.chdir(run / "checkpoints")
    out = {"same": ckpt, "relative": Path("../checkpoints/last.ckpt"), "symlink": tmp_path / "link.ckpt"}[spelling]
    if spelling == "symlink":
        out.symlink_to(ckpt)
    assert main(["grow", str(ckpt), str(out), "--depth", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"vispre grow: error: output {out} is the input checkpoint {ckpt}: growing in place would "
                   "replace the run's checkpoint (optimizer state, global step) by one that no longer matches its "
                   "config.yaml; write the grown checkpoint elsewhere, or pass --force")
    assert ckpt.read_bytes() == before and not grown_config_path(ckpt).exists()
    if spelling == "same":  # --force: replaced, and the config beside it now describes what it holds
        assert main(["grow", str(ckpt), str(out), "--depth", "3", "--force"]) == 0
        assert torch.load(ckpt, weights_only=True)["vispre"]["backbone"]["depth"] == 3
        assert run_config_of(ckpt) == grown_config_path(ckpt)


def test_grown_config_describes_and_continues_the_grown_run(run_ckpt: Path, tmp_path: Path) -> None:
    """The config written beside a grown checkpoint builds the grown architecture with its weights, and
    `vispre fit --config` of it trains on (issue 16 item 7)."""
    out = tmp_path / "grown" / "step2.ckpt"
    assert main(["grow", str(run_ckpt), str(out), "--depth", "3", "--embed_dim", "96"]) == 0
    config = grown_config_path(out)
    assert config == tmp_path / "grown" / "step2.config.yaml"
    backbone = yaml.safe_load(config.read_text())["model"]["init_args"]["backbone"]["init_args"]
    assert {k: backbone[k] for k in ("depth", "embed_dim", "num_heads")} == {"depth": 3, "embed_dim": 96,
                                                                             "num_heads": 6}
    assert backbone["init_from"] == str(out.resolve())
    model = build_from_config([config]).model
    saved = torch.load(out, map_location="cpu", weights_only=True)
    assert describe_vit(model.backbone.vit) == saved["vispre"]["backbone"]
    for key, value in model.backbone.vit.state_dict().items():
        assert torch.equal(value, saved["state_dict"][f"backbone.vit.{key}"]), key
    assert main(["fit", "--config", str(config), "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false",
                 f"--runs_dir={tmp_path / 'runs'}", "--run_name=cont"]) == 0
    cont = torch.load(tmp_path / "runs" / "cont" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert cont["vispre"]["backbone"] == saved["vispre"]["backbone"] and cont["global_step"] == 2
