"""The ``vispre`` command: LightningCLI for ``fit``/``validate`` and a table of further subcommands.

    vispre fit --config configs/mae/vit_tiny_fashion_mnist.yaml [--trainer.max_epochs=2 ...]
    vispre eval RUN_DIR --config configs/eval/fashion_mnist.yaml
    vispre shards | export | grow | bench ...   (each: ``vispre NAME --help``)
"""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from vispre.callbacks.safety import AtomicCheckpointIO, NonFiniteLossGuard, RNGStateCheckpoint
from vispre.objectives.base import PretrainObjective

LIGHTNING_COMMANDS = ("fit", "validate")
SUBCOMMANDS = {
    # name -> "module:function"; each function takes argv (list[str]) and returns an exit code.
    "eval": "vispre.eval.cli:main",
    "export": "vispre.hub:export_main",
    "shards": "vispre.data.shards:main",
    "grow": "vispre.growth.cli:main",
    "bench": "vispre.bench:main",
}
# TensorBoard and CSV logs share one run folder on purpose; the CSV logger's warning about it is noise.
warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
USER_ERRORS = (ValueError, FileNotFoundError, KeyError, TypeError, RuntimeError)


def default_precision() -> str:
    """bf16-mixed on a GPU that supports it, fp32 otherwise (CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


class VispreCLI(LightningCLI):
    """LightningCLI whose runs land in ``<runs_dir>/<run_name>/version_N`` with the resolved config,
    CSV + TensorBoard logs and checkpoints (``checkpoints/last.ckpt``) side by side."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument("--run_name", type=str | None, default=None,
                            help="run folder name (default: the config file's stem)")
        parser.add_argument("--runs_dir", type=str, default="runs", help="parent folder of all runs")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config.get(self.subcommand, self.config)
        name = config.get("run_name") or _config_stem(config) or type(self.model).__name__.lower()
        tensorboard = TensorBoardLogger(config.get("runs_dir", "runs"), name=name, default_hp_metric=False)
        csv = CSVLogger(tensorboard.save_dir, name=name, version=f"version_{tensorboard.version}")
        kwargs["logger"] = [tensorboard, csv]
        # kwargs replace the YAML's trainer entries, so start from the YAML's own callbacks/plugins
        from_yaml = self._get(self.config_init, "trainer", default={}) or {}
        callbacks = _as_list(kwargs.get("callbacks") or from_yaml.get("callbacks"))
        if not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            # save_top_k=1: with 0, Lightning writes last.ckpt only when fit ends (a killed run keeps nothing)
            # explicit dirpath: with fast_dev_run Lightning swaps the loggers out and would fall back to
            # ./checkpoints (its on_train_end still writes last.ckpt there)
            callbacks.append(ModelCheckpoint(dirpath=Path(tensorboard.log_dir) / "checkpoints", save_last=True,
                                             save_top_k=1))
        callbacks += [cls() for cls in (NonFiniteLossGuard, RNGStateCheckpoint)
                      if not any(isinstance(c, cls) for c in callbacks)]
        kwargs["callbacks"] = callbacks
        plugins = _as_list(kwargs.get("plugins") or from_yaml.get("plugins"))
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        kwargs["plugins"] = plugins
        return super().instantiate_trainer(**kwargs)


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _config_stem(config: Any) -> str | None:
    paths = config.get("config") or []
    return Path(str(paths[-1])).stem if paths else None


def run_lightning(argv: list[str]) -> None:
    """``vispre fit/validate ...`` through LightningCLI (configs map 1:1 onto constructor signatures)."""
    VispreCLI(
        PretrainObjective, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
        save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False,
        trainer_defaults={"accelerator": "auto", "precision": default_precision(), "log_every_n_steps": 10},
        # From the console script argv is sys.argv[1:], which LightningCLI reads itself; passing it again as
        # args only makes Lightning warn about getting both.
        args=None if argv == sys.argv[1:] else argv,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vispre`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("subcommands:", ", ".join((*LIGHTNING_COMMANDS, *SUBCOMMANDS)))
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command in LIGHTNING_COMMANDS:
            run_lightning(argv)
            return 0
        if command not in SUBCOMMANDS:
            print(f"vispre: unknown command {command!r}; expected one of "
                  f"{', '.join((*LIGHTNING_COMMANDS, *SUBCOMMANDS))}", file=sys.stderr)
            return 2
        module, func = SUBCOMMANDS[command].split(":")
        return int(getattr(importlib.import_module(module), func)(rest) or 0)
    except USER_ERRORS as err:
        if "--traceback" in argv or _debug():
            raise
        print(f"vispre {command}: error: {err}", file=sys.stderr)
        return 2


def _debug() -> bool:
    import os

    return os.environ.get("VISPRE_DEBUG", "") not in ("", "0")


if __name__ == "__main__":
    sys.exit(main())
