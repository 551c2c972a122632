"""Exact resume: a run SIGKILLed mid-epoch and resumed from its last checkpoint ends with the parameters,
optimizer and scheduler state of an uninterrupted run. Masks are random (global RNG) and the loader
shuffles, so this also needs the RNG states from RNGStateCheckpoint.

Also runnable as a script (the killed run):  python tests/callbacks/test_safety_resume.py RUN_DIR KILL_AT_STEP
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers import tiny_mae  # noqa: E402
from vispre.callbacks.safety import AtomicCheckpointIO, NonFiniteLossGuard, RNGStateCheckpoint  # noqa: E402
from vispre.data.synthetic import SyntheticDataModule  # noqa: E402
from vispre.objectives.mae import MAE  # noqa: E402

EPOCHS, STEPS_PER_EPOCH = 3, 4


class KillAtStep(L.Callback):
    """SIGKILL this process when the given optimizer step is about to run (no cleanup, no final save)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def run(run_dir: Path, extra: list[L.Callback], ckpt_path: str | None = None,
        rng_state: bool = True) -> tuple[L.Trainer, MAE]:
    L.seed_everything(0, verbose=False)
    torch.set_num_threads(2)
    model = tiny_mae()
    # save_top_k >= 1: with save_top_k=0 Lightning 2.6 writes last.ckpt only when fit ends, never per epoch
    callbacks = [NonFiniteLossGuard(), ModelCheckpoint(run_dir, save_last=True, save_top_k=1), *extra]
    if rng_state:
        callbacks.append(RNGStateCheckpoint())
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=EPOCHS, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, plugins=[AtomicCheckpointIO()], callbacks=callbacks,
                        default_root_dir=run_dir)
    data = SyntheticDataModule(img_size=32, batch_size=4, num_samples=4 * STEPS_PER_EPOCH)
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return trainer, model


def optimizer_state(trainer: L.Trainer) -> dict:
    return trainer.optimizers[0].state_dict()["state"]


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    kill_at = STEPS_PER_EPOCH + 2  # in the middle of epoch 1; last checkpoint: end of epoch 0
    killed = subprocess.run([sys.executable, __file__, str(tmp_path / "killed"), str(kill_at)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = tmp_path / "at_kill.ckpt"  # a copy: the resumed runs overwrite killed/last.ckpt
    shutil.copy(tmp_path / "killed" / "last.ckpt", last)
    assert torch.load(last, weights_only=True)["global_step"] == STEPS_PER_EPOCH

    resumed_trainer, resumed = run(tmp_path / "killed", [], ckpt_path=str(last))
    full_trainer, full = run(tmp_path / "full", [])
    assert resumed_trainer.global_step == full_trainer.global_step == EPOCHS * STEPS_PER_EPOCH
    for name, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0, msg=name)
    for key, state in optimizer_state(full_trainer).items():
        torch.testing.assert_close(optimizer_state(resumed_trainer)[key]["exp_avg_sq"], state["exp_avg_sq"],
                                   rtol=0, atol=0)
    assert (resumed_trainer.lr_scheduler_configs[0].scheduler.state_dict()
            == full_trainer.lr_scheduler_configs[0].scheduler.state_dict())

    # without the RNG states the resumed run draws other masks/shuffles and ends elsewhere
    _, no_rng = run(tmp_path / "no_rng", [], ckpt_path=str(last), rng_state=False)
    weight = "backbone.vit.blocks.0.attn.qkv.weight"
    assert not torch.equal(no_rng.state_dict()[weight], full.state_dict()[weight])


if __name__ == "__main__":
    run(Path(sys.argv[1]), [KillAtStep(int(sys.argv[2]))])


# --- issue 16 item 9: stop at an epoch boundary / mid-epoch, resume, compare with the uninterrupted run --------


class Stop(Exception):
    """Raised by StopAt: the run ends where a kill would (no final save)."""


class StopAt(L.Callback):
    """Record (step, loss) of every batch; raise Stop when the given optimizer step is about to run."""

    def __init__(self, step: int | None = None) -> None:
        self.step, self.losses = step, []

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise Stop

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: dict, *args: object
                           ) -> None:
        self.losses.append((trainer.global_step, float(outputs["loss"])))


def _data(kind: str, root: Path) -> L.LightningDataModule:
    """5 batches of 4 per epoch, deterministic views (the order of samples is what is tested), no workers."""
    from tests.helpers import fake_fashion_mnist
    from vispre.data.in_memory import FashionMNISTDataModule
    from vispre.data.shard_writer import write_shards
    from vispre.data.streaming import WebDatasetDataModule
    from vispre.data.synthetic import RepeatViews

    if kind == "in_memory":
        if not (root / "fm").exists():
            fake_fashion_mnist(root / "fm", "train", 20)
        return FashionMNISTDataModule(str(root / "fm"), batch_size=4, num_workers=0, view=RepeatViews())
    if not (root / "wds").exists():
        images, labels = fake_fashion_mnist(root / "fm_src", "train", 20)
        write_shards([(torch.from_numpy(i).to(torch.uint8)[None], int(c)) for i, c in zip(images, labels)],
                     root / "wds", samples_per_shard=5, progress=False)
    return WebDatasetDataModule(str(root / "wds"), batch_size=4, num_workers=0, view=RepeatViews(), in_chans=1,
                                shuffle_buffer=8)


def _fit(kind: str, data_root: Path, run_dir: Path, stop_at: int | None = None, ckpt: Path | None = None,
         every: int = 0, max_steps: int = -1) -> tuple[StopAt, MAE]:
    from tests.helpers import tiny_vit
    from vispre.callbacks.checkpoint import RunCheckpoint

    L.seed_everything(0, verbose=False)
    model = tiny_mae(tiny_vit(img_size=28, patch_size=7, in_chans=1))
    record = StopAt(stop_at)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=3, max_steps=max_steps, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, plugins=[AtomicCheckpointIO()],
                        callbacks=[RunCheckpoint(run_dir, every_n_train_steps=every), RNGStateCheckpoint(), record])
    try:
        trainer.fit(model, datamodule=_data(kind, data_root), ckpt_path=ckpt)
    except Stop:
        pass
    return record, model


@pytest.mark.parametrize("kind", ["in_memory", "streaming"])
@pytest.mark.parametrize("stop_at,every,max_steps", [(5, 0, -1), (5, 0, 15), (7, 3, -1)],
                         ids=["epoch_boundary", "epoch_boundary_max_steps", "mid_epoch"])
def test_stopped_and_resumed_run_equals_the_uninterrupted_run(tmp_path: Path, kind: str, stop_at: int, every: int,
                                                              max_steps: int) -> None:
    """Losses of every step and the final weights equal the uninterrupted run's, the resumed run does not re-enter
    a finished epoch (no `epoch=0-step=6.ckpt` for a 5-batch epoch) and the sample order continues (the
    streaming epoch / in-memory sampler position are in the checkpoint)."""
    full, full_model = _fit(kind, tmp_path, tmp_path / "full", every=every, max_steps=max_steps)
    stopped, _ = _fit(kind, tmp_path, tmp_path / "stopped", stop_at=stop_at, every=every, max_steps=max_steps)
    last = tmp_path / "stopped" / "last.ckpt"
    saved_step = torch.load(last, weights_only=True)["global_step"]
    assert saved_step == (6 if every else 5)
    resumed, resumed_model = _fit(kind, tmp_path, tmp_path / "resumed", ckpt=last, every=every, max_steps=max_steps)
    assert [s for s, _ in resumed.losses] == list(range(saved_step + 1, 16))
    torch.testing.assert_close(resumed.losses, full.losses[saved_step:], rtol=0, atol=1e-6)
    for name, value in full_model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == sorted(
        p.name for p in (tmp_path / "full").iterdir()) == ["epoch=2-step=15.ckpt", "last.ckpt"]
