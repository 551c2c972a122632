"""`vispre` CLI: every config builds and survives a fast_dev_run on CPU; bad input gets one clear error;
runs write their folder; an interrupted run resumes from its checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from vispre.cli import VispreCLI, main
from vispre.objectives.base import PretrainObjective

ROOT = Path(__file__).resolve().parents[1]
# Full run configs (model + data); fragments under data/, speed/ and eval/ are merged into them instead.
FRAGMENT_DIRS = {"data", "speed", "eval", "growth"}
RUN_CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name not in FRAGMENT_DIRS)
QUICKSTART = ROOT / "configs/mae/vit_tiny_fashion_mnist.yaml"
CPU_TRAINER = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.num_nodes=1", "--trainer.strategy=auto",
               "--trainer.precision=32-true", "--trainer.logger=false", "--trainer.enable_progress_bar=false"]


def backbone_args(config: Path) -> dict:
    model = yaml.safe_load(config.read_text())["model"]["init_args"]
    return model["backbone"]["init_args"]


def synthetic_data_args(config: Path) -> list[str]:
    """Swap the config's data for small random images of the backbone's size (no files needed)."""
    bb = backbone_args(config)
    return ["--data=vispre.data.synthetic.SyntheticDataModule", f"--data.img_size={bb.get('img_size', 224)}",
            f"--data.in_chans={bb.get('in_chans', 3)}", "--data.num_views=2", "--data.batch_size=4",
            "--data.num_samples=8"]


def build(args: list[str], tmp_path: Path) -> VispreCLI:
    return VispreCLI(PretrainObjective, subclass_mode_model=True, subclass_mode_data=True, run=False,
                     auto_configure_optimizers=False, save_config_kwargs={"overwrite": True},
                     args=[*args, f"--runs_dir={tmp_path}"])


@pytest.mark.parametrize("config", RUN_CONFIGS, ids=[str(p.relative_to(ROOT / "configs")) for p in RUN_CONFIGS])
def test_every_config_builds_and_runs_one_step(config: Path, tmp_path: Path) -> None:
    cli = build(["--config", str(config), *synthetic_data_args(config), *CPU_TRAINER,
                 "--trainer.fast_dev_run=true"], tmp_path)
    assert isinstance(cli.model, PretrainObjective)
    before = {n: p.detach().clone() for n, p in cli.model.backbone.named_parameters() if p.requires_grad}
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    moved = [n for n, p in cli.model.backbone.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert moved, "one optimizer step must change the backbone"


def test_quickstart_fit_writes_run_folder_and_resumes(tmp_path: Path) -> None:
    args = ["fit", "--config", str(QUICKSTART), *synthetic_data_args(QUICKSTART), "--data.num_samples=16",
            "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1",
            f"--runs_dir={tmp_path}", "--run_name=qs"]
    assert main(args) == 0
    run = tmp_path / "qs" / "version_0"
    assert {"config.yaml", "metrics.csv", "checkpoints"} <= {p.name for p in run.iterdir()}
    assert "class_path: vispre.objectives.MAE" in (run / "config.yaml").read_text()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4 and ckpt["vispre"]["backbone"]["embed_dim"] == 192
    # resume: continue to epoch 2 from the checkpoint; the step counter carries on
    resumed = ["fit", *args[1:-3], "--trainer.max_epochs=2", f"--runs_dir={tmp_path}", "--run_name=qs",
               f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"]
    assert main(resumed) == 0
    ckpt2 = torch.load(tmp_path / "qs" / "version_1" / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=True)
    assert ckpt2["global_step"] == 8 and ckpt2["epoch"] == ckpt["epoch"] + 1


def test_checkpoint_of_another_architecture_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    common = ["--config", str(QUICKSTART), *synthetic_data_args(QUICKSTART), "--trainer.max_epochs=1",
              "--trainer.enable_progress_bar=false", f"--runs_dir={tmp_path}", "--run_name=a"]
    assert main(["fit", *common, "--model.backbone.init_args.depth=2"]) == 0
    ckpt = tmp_path / "a" / "version_0" / "checkpoints" / "last.ckpt"
    code = main(["fit", *common, "--model.backbone.init_args.depth=3", f"--ckpt_path={ckpt}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "checkpoint was saved from a different backbone architecture (depth: checkpoint 2 vs model 3)" in err


def test_unknown_config_key_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    config = yaml.safe_load(QUICKSTART.read_text())
    config["model"]["init_args"]["mask_ratoi"] = 0.5
    bad.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(bad), f"--runs_dir={tmp_path}"])
    assert exit_info.value.code == 2
    assert "mask_ratoi" in capsys.readouterr().err


@pytest.mark.parametrize("override,message", [
    ("--model.init_args.mask_ratio=0", "mask_ratio must lie strictly between 0 and 1, got 0"),
    ("--model.backbone.init_args.img_size=30", "img_size 30 is not divisible by patch_size 7"),
])
def test_bad_values_give_one_line_errors(override: str, message: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    code = main(["fit", "--config", str(QUICKSTART), override, f"--runs_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_subcommand(capsys: pytest.CaptureFixture) -> None:
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_quickstart_streaming_path_trains_from_real_shards(tmp_path: Path) -> None:
    """`make quickstart`'s data path: Fashion-MNIST images -> shards -> the streaming config with its worker."""
    from vispre.data.fashion_mnist import load_fashion_mnist
    from vispre.data.shards import write_shards

    data = load_fashion_mnist("train")
    write_shards(list(zip(data.images[:256], data.labels[:256].tolist())), tmp_path / "wds", samples_per_shard=128,
                 progress=False)
    args = ["fit", "--config", str(QUICKSTART), "--config", str(ROOT / "configs/data/fashion_mnist_wds.yaml"),
            f"--data.init_args.urls={tmp_path / 'wds'}", "--data.init_args.batch_size=32",
            "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false", f"--runs_dir={tmp_path}", "--run_name=qs"]
    assert main(args) == 0
    run = tmp_path / "qs" / "version_0"
    assert "class_path: vispre.data.streaming.WebDatasetDataModule" in (run / "config.yaml").read_text()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 256 // 32  # one worker, 2 shards of 128: every sample once, 8 full batches
