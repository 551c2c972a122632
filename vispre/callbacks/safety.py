"""Run safety: stop on a non-finite loss, write checkpoints atomically, checkpoint the RNG states.

* :class:`NonFiniteLossGuard` checks the loss *before* backward, so no optimizer step (and no checkpoint)
  ever sees NaN/Inf weights; the run stops with the step number and the last good checkpoint stays.
* :class:`AtomicCheckpointIO` writes ``path.tmp-<pid>``, fsyncs it and ``os.replace``-s it onto ``path``:
  a crash (or SIGKILL) while saving leaves the previous checkpoint intact.
* :class:`RNGStateCheckpoint` stores the torch / CUDA / numpy / python RNG states in every checkpoint and
  restores them on resume, so random masks and the shuffle order of the next epoch continue exactly.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import Tensor

from vispre.io import atomic_writer


class NonFiniteLossError(RuntimeError):
    """Raised by :class:`NonFiniteLossGuard`; the message names the step and the last checkpoint."""


class NonFiniteLossGuard(L.Callback):
    """Stop the run when the training loss is NaN or Inf, before the bad gradient reaches the weights.

    The check costs one device-to-host copy of the scalar loss per step: a synchronisation point on a GPU
    (free in practice only while something else, e.g. the progress bar, reads the loss every step anyway).
    """

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        if bool(torch.isfinite(loss.detach()).all()):
            return
        value = loss.detach().float().cpu().tolist()
        last = _last_checkpoint(trainer)
        where = f"last good checkpoint kept: {last}" if last else "no checkpoint was written before it"
        raise NonFiniteLossError(
            f"training loss is {value} at global step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"batch {trainer.fit_loop.epoch_loop.batch_idx}); stopped before the optimizer step, {where}")


def _last_checkpoint(trainer: L.Trainer) -> str | None:
    callback = getattr(trainer, "checkpoint_callback", None)
    for attr in ("last_model_path", "best_model_path"):
        path = getattr(callback, attr, "") if callback is not None else ""
        if path and Path(path).exists():
            return str(path)
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO that never leaves a half-written file at the checkpoint's path.

    The checkpoint goes to a temporary file in the same folder (same file system), is flushed and
    fsync-ed, then atomically renamed over the target; on any error the temporary file is removed and
    the previous checkpoint is untouched.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint does not take storage_options")
        save_atomically(checkpoint, Path(path))


def save_atomically(obj: Any, path: Path) -> Path:
    """``torch.save(obj)`` to ``path`` via a temporary file + fsync + ``os.replace``.

    Args:
        obj: anything ``torch.save`` accepts.
        path: final file path (its folder is created).

    Returns:
        ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as handle:
        torch.save(obj, handle)
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class RNGStateCheckpoint(L.Callback):
    """Save the global RNG states (torch CPU, CUDA, numpy, python) in each checkpoint; restore on resume.

    Lightning restores model, optimizer, scheduler and loop counters but not the RNG streams; without
    them a resumed MAE run draws different masks and the next epoch shuffles differently. Restored
    exactly: everything drawn from the global generators after the checkpoint (masks, the RandomSampler
    seed of the next epoch, augmentations in the main process). Not restored: the position inside an
    epoch of a map-style DataLoader (Lightning restarts a partial epoch's iterator), and per-worker RNGs
    of DataLoader worker processes beyond what the seed of the next epoch determines.

    The states are plain tensors/lists, so checkpoints stay loadable with ``weights_only=True``.
    """

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_plain, np_state[2:])],
            "python": _python_state_to_plain(random.getstate()),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        name, keys, *rest = state_dict["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
        random.setstate(_python_state_from_plain(state_dict["python"]))
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_plain(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
