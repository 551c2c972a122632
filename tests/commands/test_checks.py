"""vispre.commands.checks: a backbone that does not fit the data's images, and a checkpoint the config's model
cannot resume from, are one line naming both sides before any work starts (fit and bench)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import MAE_CONFIG, lightning_checkpoint, synthetic_data_args, tiny_mae
from vispre.commands import main
from vispre.commands.bench import build_checked
from vispre.commands.checks import check_resume, first_state_difference, read_resume_checkpoint
from vispre.errors import VispreError

SYNTHETIC = synthetic_data_args(MAE_CONFIG)  # 28x28 grey images, as the quickstart's backbone expects
QUIET = ["--trainer.max_steps=1", "--trainer.enable_progress_bar=false", "--trainer.logger=false"]


@pytest.mark.parametrize("override,message", [
    ("--model.backbone.init_args.img_size=14",
     "model.init_args.backbone.init_args.img_size is 14 but data (SyntheticDataModule) makes 28x28 images"),
    ("--model.backbone.init_args.in_chans=3",
     "model.init_args.backbone.init_args.in_chans is 3 but data.init_args.in_chans is 1: set both to the same "
     "channel count"),
])
def test_fit_refuses_a_model_that_does_not_fit_the_data(override: str, message: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    """Before: a 110-line AssertionError after training started (img_size), or a conv2d message (in_chans)."""
    args = ["fit", "--config", str(MAE_CONFIG), *SYNTHETIC, override, *QUIET, f"--runs_dir={tmp_path}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"vispre fit: error: {message}")


def test_bench_refuses_a_model_that_does_not_fit_the_data_view() -> None:
    """The quickstart's Fashion-MNIST module (28 px MAEView) against a 32 px backbone."""
    with pytest.raises(VispreError, match=r"img_size is 32 but data.init_args.view \(MAEView\) makes 28x28 images"):
        build_checked([str(MAE_CONFIG)], ["--model.init_args.backbone.init_args.img_size=32",
                                                 "--model.init_args.backbone.init_args.patch_size=8"])


def test_the_checkpoint_records_the_objective_class_path(tmp_path: Path) -> None:
    ckpt = torch.load(lightning_checkpoint(tiny_mae(), tmp_path / "a.ckpt"), weights_only=True)
    assert ckpt["vispre"]["objective_class"] == "vispre.objectives.mae.MAE" and ckpt["vispre"]["objective"] == "MAE"


def test_resume_names_the_other_objective(tmp_path: Path) -> None:
    path = lightning_checkpoint(tiny_mae(), tmp_path / "a.ckpt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["vispre"]["objective_class"] = "vispre.objectives.simclr.SimCLR"
    torch.save(ckpt, path)
    with pytest.raises(VispreError) as info:
        check_resume(tiny_mae(), read_resume_checkpoint(path))
    assert str(info.value).startswith(f"cannot resume from {path}: it was saved by the objective "
                                      "vispre.objectives.simclr.SimCLR but the config builds vispre.objectives.mae.MAE")


def test_resume_names_the_first_differing_part(tmp_path: Path) -> None:
    """Before: a 30-line state-dict diff from Lightning's strict load."""
    path = lightning_checkpoint(tiny_mae(), tmp_path / "a.ckpt")
    with pytest.raises(VispreError) as info:
        check_resume(tiny_mae(decoder_dim=24), read_resume_checkpoint(path))
    assert str(info.value) == (f"cannot resume from {path}: the model's decoder differs from the checkpoint's "
                               "(decoder.mask_token: checkpoint (1, 1, 16) vs model (1, 1, 24)); resume with the "
                               "run's own config.yaml")
    check_resume(tiny_mae(), read_resume_checkpoint(path))  # the same model resumes


def test_first_state_difference_reports_missing_and_extra_keys() -> None:
    assert first_state_difference({"a.w": (2,)}, {"a.w": (2,)}) is None
    assert first_state_difference({"a.w": (2,)}, {"a.w": (2,), "b.w": (1,)}) == ("b", "b.w is not in the checkpoint")
    assert first_state_difference({"a.w": (2,), "c.x": (1,)}, {"a.w": (2,)}) == (
        "c", "the checkpoint has c.x, the model does not")


@pytest.mark.parametrize("content,message", [
    (b"hello\n", "is not a checkpoint (a file starting with b'hell', not a torch.save file): expected a Lightning "
                 "checkpoint (.ckpt)"),
    (None, "it pickles the Python global posix.system (unsafe to unpickle"),
])
def test_fit_reads_ckpt_path_safely_before_lightning(content: bytes | None, message: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """Before: `KeyError: 101` (a text file) or torch's `weights_only=False` hint, each with a traceback."""
    path = tmp_path / "given.ckpt"
    if content is None:
        from tests.backbones.test_weights import SystemCall

        torch.save({"state_dict": {}, "x": SystemCall()}, path)
    else:
        path.write_bytes(content)
    args = ["fit", "--config", str(MAE_CONFIG), *SYNTHETIC, *QUIET, f"--ckpt_path={path}",
            f"--runs_dir={tmp_path}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "weights_only" not in err
