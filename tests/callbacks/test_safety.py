"""vispre.callbacks.safety: NaN/Inf loss stops with the step number before the weights change, atomic checkpoint
writes survive a crash while saving, RNG states round-trip through a weights_only checkpoint."""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.helpers import TINY_DECODER, tiny_vit
from vispre.callbacks.safety import (AtomicCheckpointIO, NonFiniteLossError, NonFiniteLossGuard,
                                     RNGStateCheckpoint, save_atomically)
from vispre.data.synthetic import SyntheticDataModule
from vispre.objectives.mae import MAE


class NaNAtStep(MAE):
    """Tiny MAE whose loss turns NaN/Inf at one global step."""

    def __init__(self, bad_step: int, bad_value: float) -> None:
        super().__init__(backbone=tiny_vit(), **TINY_DECODER)
        self.bad_step, self.bad_value = bad_step, bad_value

    def loss_terms(self, batch: dict) -> dict:
        terms = super().loss_terms(batch)
        if self.global_step == self.bad_step:
            terms["loss"] = terms["loss"] * self.bad_value
        return terms


@pytest.mark.parametrize("bad_value, shown", [(float("nan"), "nan"), (float("inf"), "inf")])
def test_non_finite_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path: Path, bad_value: float,
                                                                         shown: str) -> None:
    model = NaNAtStep(bad_step=3, bad_value=bad_value)
    ckpt_dir = tmp_path / "ckpt"
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=6, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, plugins=[AtomicCheckpointIO()], default_root_dir=tmp_path,
                        callbacks=[NonFiniteLossGuard(), ModelCheckpoint(ckpt_dir, save_last=True, save_top_k=0,
                                                                         every_n_train_steps=1)])
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit(model, datamodule=SyntheticDataModule(img_size=32, batch_size=4, num_samples=32))
    last = ckpt_dir / "last.ckpt"
    assert str(err.value) == (f"training loss is {shown} at global step 3 (epoch 0, batch 3); stopped before the "
                              f"optimizer step, last good checkpoint kept: {last}")
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad step never reached the weights
    assert [p.name for p in ckpt_dir.iterdir()] == ["last.ckpt"]


class FailsWhenSaved:
    """Pickling it raises after torch.save has started writing the file: a crash while saving."""

    def __reduce__(self) -> tuple:
        raise OSError("simulated crash while saving")


def test_crash_while_saving_leaves_previous_checkpoint_loadable(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "w": torch.arange(4.0)}, path)
    with pytest.raises(OSError, match="simulated crash while saving"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(4), "late": FailsWhenSaved()}, path)
    ckpt = io.load_checkpoint(path, weights_only=True)
    assert ckpt["global_step"] == 1 and torch.equal(ckpt["w"], torch.arange(4.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_save_atomically_creates_the_folder_and_refuses_storage_options(tmp_path: Path) -> None:
    save_atomically({"a": torch.ones(1)}, tmp_path / "sub" / "x.ckpt")
    assert torch.load(tmp_path / "sub" / "x.ckpt", weights_only=True)["a"].item() == 1.0
    with pytest.raises(TypeError, match="does not take storage_options"):
        AtomicCheckpointIO().save_checkpoint({}, tmp_path / "y.ckpt", storage_options={"x": 1})


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    callback = RNGStateCheckpoint()
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    save_atomically({"callbacks": {"rng": callback.state_dict()}}, tmp_path / "rng.ckpt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    callback.load_state_dict(torch.load(tmp_path / "rng.ckpt", weights_only=True)["callbacks"]["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert got[2] == expected[2]


def test_stale_temp_files_of_killed_saves_are_removed_at_start_up(tmp_path: Path) -> None:
    """Issue 16 item 8: a SIGKILL during a save left `.NAME.tmp-PID` files forever."""
    import os
    import subprocess
    import time

    from vispre.callbacks.checkpoint import remove_stale_temp_files

    child = subprocess.Popen(["true"])  # a pid that has exited
    child.wait()
    (tmp_path / f".last.ckpt.tmp-{child.pid}").write_bytes(b"half")  # its process is gone
    old_live = tmp_path / f".epoch=0-step=4.ckpt.tmp-{os.getppid()}"  # live process, written before the run
    old_live.write_bytes(b"old")
    os.utime(old_live, (time.time() - 3600, time.time() - 3600))
    started = time.time() - 60
    fresh_live = tmp_path / f".last.ckpt.tmp-{os.getppid()}"  # live process, being written now: kept
    fresh_live.write_bytes(b"writing")
    keep = [tmp_path / "last.ckpt", tmp_path / ".hidden-notes"]
    for path in keep:
        path.write_bytes(b"x")
    removed = remove_stale_temp_files(tmp_path, older_than=started)
    assert sorted(p.name for p in removed) == sorted(
        [f".last.ckpt.tmp-{child.pid}", old_live.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh_live.name, *(p.name for p in keep)])


def test_last_ckpt_is_the_newest_checkpoint_after_every_save(tmp_path: Path) -> None:
    """last.ckpt is written first, the epoch/step file is a hard link to it; the previous one is removed."""
    import os

    from tests.helpers import tiny_mae
    from vispre.callbacks.checkpoint import RunCheckpoint
    from vispre.data.synthetic import SyntheticDataModule

    steps = []

    class Check(L.Callback):
        def on_train_epoch_end(self, trainer: L.Trainer, *args: object) -> None:
            files = sorted(p.name for p in tmp_path.iterdir())
            last = tmp_path / "last.ckpt"
            named = tmp_path / f"epoch={trainer.current_epoch}-step={trainer.global_step}.ckpt"
            assert files == [named.name, "last.ckpt"] and os.path.samefile(last, named)
            steps.append(torch.load(last, weights_only=True)["global_step"])

    (tmp_path / ".last.ckpt.tmp-999999999").write_bytes(b"left by a killed save")
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, plugins=[AtomicCheckpointIO()],
                        callbacks=[RunCheckpoint(tmp_path), Check()])
    trainer.fit(tiny_mae(), datamodule=SyntheticDataModule(img_size=32, batch_size=4, num_samples=8))
    assert steps == [2, 4] and trainer.checkpoint_callback.last_model_path == str(tmp_path / "last.ckpt")
