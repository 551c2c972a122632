"""The checkpoints of a ``vispre fit`` run: ``last.ckpt``, always the newest, and ``epoch=E-step=S.ckpt``.

:class:`RunCheckpoint` saves at the end of every epoch's last batch (``on_train_batch_end``), when the run
reaches ``max_steps`` and, optionally, every ``every_n_train_steps`` steps:

* ``last.ckpt`` is written first (atomically, by the Trainer's CheckpointIO: vispre's AtomicCheckpointIO),
  then ``epoch=E-step=S.ckpt`` is made a hard link to it (no second write) and the previous one is removed.
  A kill at any point leaves ``last.ckpt`` the newest complete checkpoint: resume from it.
* Saving at the last batch, not in ``on_train_epoch_end``: Lightning (2.6) restores such a checkpoint as
  "epoch done" in every mode, while an ``on_train_epoch_end`` checkpoint of a run with ``max_steps`` set is
  restored as the unfinished epoch and trains one extra batch in it (``epoch=0-step=11.ckpt`` for a 10-batch
  epoch; Lightning issue #19815 describes the loop bookkeeping behind it). ``on_train_epoch_end`` still saves
  an epoch cut short (``trainer.should_stop``) that no batch-end save covered.
* At set-up, hidden temp files (``.NAME.tmp-PID``) that a killed save left in the folder are removed
  (:func:`remove_stale_temp_files`).
* ``fast_dev_run`` saves nothing.
* A fit that fails (any exception inside ``Trainer.fit``, set-up included) writes ``FAILED`` into the run
  folder (the checkpoint folder's parent) with the error line; its checkpoints, if any, stay resumable.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

from vispre.errors import VispreError

LAST = "last.ckpt"
FAILED = "FAILED"
TEMP_NAME = re.compile(r"^\..+\.tmp-(\d+)$")
"""Temp files of vispre's atomic writers (``vispre.io``, ``save_atomically``): ``.NAME.tmp-PID``."""


class RunCheckpoint(Checkpoint):
    """Write ``last.ckpt`` (+ an ``epoch=E-step=S.ckpt`` hard link) at each epoch's end (see the module docstring).

    Args:
        dirpath: the checkpoint folder (created at the first save).
        every_n_train_steps: also save every N optimizer steps (0: only at epoch ends and ``max_steps``).

    Attributes:
        last_model_path, best_model_path: the last saved ``last.ckpt`` and its epoch/step-named link (empty
            before the first save), as on Lightning's ModelCheckpoint.
    """

    def __init__(self, dirpath: str | os.PathLike, every_n_train_steps: int = 0) -> None:
        if every_n_train_steps < 0:
            raise VispreError(f"every_n_train_steps must be >= 0, got {every_n_train_steps}")
        self.dirpath, self.every_n_train_steps = Path(dirpath), every_n_train_steps
        self.last_model_path = self.best_model_path = ""
        self.started = time.time()
        self._saved_step = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero:
            remove_stale_temp_files(self.dirpath, older_than=self.started)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: object,
                           batch_idx: int) -> None:
        epoch_end = trainer.is_last_batch or batch_idx + 1 >= trainer.num_training_batches
        at_max_steps = trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps
        periodic = self.every_n_train_steps > 0 and trainer.global_step % self.every_n_train_steps == 0
        if epoch_end or at_max_steps or periodic:
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)  # an epoch cut short by should_stop; a no-op after the last batch's save

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.is_global_zero and not trainer.fast_dev_run and self.dirpath.parent.is_dir():
            line = " ".join(f"{type(exception).__name__}: {exception}".split())
            (self.dirpath.parent / FAILED).write_text(f"{line}\nlast checkpoint: {self.last_model_path or 'none'}\n")

    def save(self, trainer: L.Trainer) -> None:
        """Save ``last.ckpt`` and link ``epoch=E-step=S.ckpt`` to it (once per global step; all ranks call it)."""
        if trainer.fast_dev_run or trainer.sanity_checking or trainer.global_step == self._saved_step:
            return
        self._saved_step = trainer.global_step
        last = self.dirpath / LAST
        trainer.save_checkpoint(last, weights_only=False)  # the full state (optimizer, loops): resumable
        named = self.dirpath / f"epoch={trainer.current_epoch}-step={trainer.global_step}.ckpt"
        if trainer.is_global_zero:
            link_atomically(last, named)
            if self.best_model_path and Path(self.best_model_path) != named:
                Path(self.best_model_path).unlink(missing_ok=True)
        self.last_model_path, self.best_model_path = str(last), str(named)
        trainer.strategy.barrier("RunCheckpoint.save")


def link_atomically(source: Path, target: Path) -> Path:
    """Make ``target`` a hard link to ``source`` (a copy where hard links are not supported), replacing any
    ``target`` atomically.

    Returns:
        ``target``.
    """
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def remove_stale_temp_files(folder: Path, older_than: float) -> list[Path]:
    """Remove the ``.NAME.tmp-PID`` files a killed save left in ``folder``.

    A temp file is stale when its process is gone, or it was last written before ``older_than`` (the run's
    start: a save in progress keeps writing its file). Files of live processes written since are kept.

    Args:
        folder: the checkpoint folder (may not exist yet). older_than: a ``time.time()`` value.

    Returns:
        The removed paths.
    """
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = TEMP_NAME.match(path.name)
        if match is None or not path.is_file():
            continue
        if not _process_alive(int(match.group(1))) or path.stat().st_mtime < older_than:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["FAILED", "LAST", "RunCheckpoint", "link_atomically", "remove_stale_temp_files"]
