"""``vispre fit``: pretrain an objective from YAML run configs (LightningCLI over constructor signatures).

    vispre fit --config configs/mae/vit_tiny_fashion_mnist.yaml [--config more.yaml] [--trainer.max_epochs=2 ...]
               [--run_name NAME] [--runs_dir runs] [--ckpt_path runs/NAME/version_0/checkpoints/last.ckpt]

The run lands in ``<runs_dir>/<run_name>/version_N/`` (resolved ``config.yaml``, ``metrics.csv``,
TensorBoard events, ``checkpoints/last.ckpt``). ``vispre fit --help`` lists every option.
There is no ``vispre validate``: no objective defines a validation step (the online probe callback reports
held-out accuracy during ``fit``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from lightning.pytorch import LightningDataModule

from vispre.commands.config import (CLI_KWARGS, VispreCLI, parse_errors_as_config_errors, quiet_lightning_cli,
                                    trainer_defaults)
from vispre.objectives.base import PretrainObjective


CHATTER = ("GPU available:", "TPU available:", "HPU available:", "\U0001f4a1", "Tip:", "LOCAL_RANK:",
           "Loading `train_dataloader` to estimate")
"""Starts of Lightning's informational lines that say nothing about the run (hardware probes, the
advertisement for its cloud logger)."""
CHATTY_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                  "lightning.fabric.utilities.rank_zero", "lightning.pytorch.trainer.connectors.checkpoint_connector")


class _DropChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith(CHATTER)


@contextmanager
def quiet_lightning_chatter() -> Iterator[None]:
    """Drop :data:`CHATTER` lines from Lightning's loggers (a ``logging.Filter``; warnings and errors pass)."""
    drop = _DropChatter()
    loggers = [logging.getLogger(name) for name in CHATTY_LOGGERS]
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


def main(argv: list[str]) -> int:
    """Run ``vispre fit ARGV`` (parse, build, ``Trainer.fit``); returns 0 when the Trainer finished."""
    with quiet_lightning_cli(), parse_errors_as_config_errors(), quiet_lightning_chatter():
        # TensorBoard and CSV logs share one run folder on purpose; the CSV logger's warning about it is noise.
        warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
        VispreCLI(PretrainObjective, LightningDataModule, save_config_kwargs={"overwrite": True},
                  trainer_defaults=trainer_defaults(), args=["fit", *argv], **CLI_KWARGS)
    return 0
