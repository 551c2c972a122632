"""`vispre fit`: runs write their folder and resume from their checkpoint; bad input gets one clear line;
the quickstart's streaming path trains from real shards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import CONFIGS, MAE_CONFIG, synthetic_data_args
from vispre.commands import main



def test_quickstart_fit_writes_run_folder_and_resumes(tmp_path: Path) -> None:
    args = ["fit", "--config", str(MAE_CONFIG), *synthetic_data_args(MAE_CONFIG), "--data.num_samples=16",
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
    common = ["--config", str(MAE_CONFIG), *synthetic_data_args(MAE_CONFIG), "--trainer.max_epochs=1",
              "--trainer.enable_progress_bar=false", f"--runs_dir={tmp_path}", "--run_name=a"]
    assert main(["fit", *common, "--model.backbone.init_args.depth=2"]) == 0
    ckpt = tmp_path / "a" / "version_0" / "checkpoints" / "last.ckpt"
    code = main(["fit", *common, "--model.backbone.init_args.depth=3", f"--ckpt_path={ckpt}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "checkpoint was saved from a different backbone architecture (depth: checkpoint 2 vs model 3)" in err


def test_unknown_config_key_is_named_on_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    config = yaml.safe_load(MAE_CONFIG.read_text())
    config["model"]["init_args"]["mask_ratoi"] = 0.5
    bad.write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(bad), f"--runs_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('vispre fit: error: Parser key "model":') and len(err.splitlines()) == 1
    assert "Option 'mask_ratoi' is not accepted" in err and "Traceback" not in err


@pytest.mark.parametrize("override,message", [
    ("--model.init_args.mask_ratio=0", "mask_ratio must lie strictly between 0 and 1, got 0"),
    ("--model.backbone.init_args.img_size=30", "img_size 30 is not divisible by patch_size 7"),
    ("--trainer.max_epochs=many", 'Parser key "trainer.max_epochs": Expected a <class \'int\'> (given value: many)'),
])
def test_bad_values_give_one_line_errors(override: str, message: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    code = main(["fit", "--config", str(MAE_CONFIG), override, f"--runs_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vispre fit: error: ") and message in err and len(err.splitlines()) == 1


def test_validate_is_not_a_command(capsys: pytest.CaptureFixture) -> None:
    """No objective has a validation step, so `vispre validate` is not offered (it could only fail)."""
    assert main(["validate", "--config", str(MAE_CONFIG)]) == 2
    assert "unknown command 'validate'" in capsys.readouterr().err


# `make quickstart`'s (run config, streaming data config) pairs: the default (SimCLR) and MAE, one config away.
QUICKSTART_PAIRS = [("simclr/vit_p14_max_fashion_mnist.yaml", "data/fashion_mnist_wds_two_views.yaml"),
                    ("mae/vit_tiny_fashion_mnist.yaml", "data/fashion_mnist_wds.yaml")]


def test_the_makefile_defaults_are_the_first_quickstart_pair() -> None:
    makefile = (CONFIGS.parent / "Makefile").read_text()
    run_config, data_config = QUICKSTART_PAIRS[0]
    assert f"QUICKSTART_CONFIG ?= configs/{run_config}" in makefile
    assert f"QUICKSTART_DATA ?= configs/{data_config}" in makefile


@pytest.mark.parametrize("run_config,data_config", QUICKSTART_PAIRS)
def test_quickstart_streaming_path_trains_from_real_shards(tmp_path: Path, run_config: str, data_config: str) -> None:
    """`make quickstart`'s data path: Fashion-MNIST images -> shards -> the streaming config with its worker."""
    from vispre.data.fashion_mnist import load_fashion_mnist
    from vispre.data.shard_writer import write_shards

    data = load_fashion_mnist("train")
    write_shards(list(zip(data.images[:256], data.labels[:256].tolist())), tmp_path / "wds", samples_per_shard=128,
                 progress=False)
    args = ["fit", "--config", str(CONFIGS / run_config), "--config", str(CONFIGS / data_config),
            f"--data.init_args.urls={tmp_path / 'wds'}", "--data.init_args.batch_size=32",
            "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false", f"--runs_dir={tmp_path}", "--run_name=qs"]
    assert main(args) == 0
    run = tmp_path / "qs" / "version_0"
    assert "class_path: vispre.data.WebDatasetDataModule" in (run / "config.yaml").read_text()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 256 // 32  # one worker, 2 shards of 128: every sample once, 8 full batches


TINY_RUN = ["--config", str(MAE_CONFIG), *synthetic_data_args(MAE_CONFIG), "--model.backbone.init_args.depth=1",
            "--model.backbone.init_args.embed_dim=48", "--model.backbone.init_args.num_heads=3",
            "--model.init_args.decoder_dim=32", "--model.init_args.decoder_depth=1", "--trainer.max_epochs=1",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def test_lightning_chatter_does_not_reach_the_output(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Issue 16 item 14: no 'GPU available' / 'TPU available' / litlogger advertisement lines."""
    assert main(["fit", *TINY_RUN, f"--runs_dir={tmp_path}", "--run_name=q"]) == 0
    captured = capsys.readouterr()
    output = captured.out + captured.err + caplog.text
    for chatter in ("GPU available", "TPU available", "litlogger", "\U0001f4a1", "Tip:"):
        assert chatter not in output
    assert (tmp_path / "q" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def test_fast_dev_run_writes_no_checkpoint_and_no_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *TINY_RUN, "--trainer.fast_dev_run=true", f"--runs_dir={tmp_path / 'runs'}"]) == 0
    assert list(tmp_path.iterdir()) == []


def test_a_failed_fit_marks_its_run_folder(tmp_path: Path) -> None:
    """An exception inside Trainer.fit (here: a NaN loss) leaves FAILED with the error line in version_N/."""
    with pytest.raises(Exception, match="training loss is nan"):
        main(["fit", *TINY_RUN, "--model.init_args.mask_ratio=0.5", "--trainer.max_epochs=2",
              "--model.init_args.optimizer.init_args.base_lr=1e30", f"--runs_dir={tmp_path}", "--run_name=f"])
    failed = (tmp_path / "f" / "version_0" / "FAILED").read_text().splitlines()
    assert failed[0].startswith("NonFiniteLossError: training loss is nan at global step")
    assert failed[1].startswith("last checkpoint: ")
