"""Run configs -> objects: the LightningCLI that ``vispre fit`` runs, and :func:`build_from_config`.

``vispre fit``, ``vispre grow``, ``vispre bench`` and the tests all read run configs through the same
parser (:class:`VispreCLI`'s), so a YAML that one of them accepts every other accepts too.

    built = build_from_config(["configs/mae/vit_tiny_fashion_mnist.yaml"], ["--model.init_args.mask_ratio=0.6"])
    built.model            # the objective (a PretrainObjective); built.config: the parsed, merged config
    build_from_config([...], [...], data=True, trainer=True)    # + the data module and the Trainer
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import torch
from jsonargparse import ArgumentError, Namespace
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from vispre.callbacks.checkpoint import RunCheckpoint
from vispre.callbacks.safety import AtomicCheckpointIO, NonFiniteLossGuard, RNGStateCheckpoint
from vispre.commands.checks import check_data_matches_model, check_resume, read_resume_checkpoint
from vispre.errors import VispreError
from vispre.io import read_yaml
from vispre.objectives.base import PretrainObjective


class ConfigError(VispreError):
    """A run config (YAML or ``--key=value`` override) that the parser rejects."""


def default_precision() -> str:
    """``bf16-mixed`` on a GPU that supports it, ``32-true`` otherwise (CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


CLI_KWARGS: dict[str, Any] = dict(
    subclass_mode_model=True, subclass_mode_data=True, auto_configure_optimizers=False,
    parser_kwargs={"exit_on_error": False, "fit": {"exit_on_error": False}},
)
"""Arguments every vispre LightningCLI shares (objectives and data modules by class_path; the objective's
optimizer recipe, not LightningCLI's ``optimizer:``, builds the optimizer; parse errors raise)."""


def trainer_defaults() -> dict[str, Any]:
    """Trainer defaults of every run: the accelerator found, :func:`default_precision`, logging every 10 steps."""
    return {"accelerator": "auto", "precision": default_precision(), "log_every_n_steps": 10}


class VispreCLI(LightningCLI):
    """LightningCLI whose runs land in ``<runs_dir>/<run_name>/version_N`` with the resolved config,
    CSV + TensorBoard logs and checkpoints (``checkpoints/last.ckpt``) side by side.

    Only ``fit`` is a subcommand: no objective defines a validation/test/predict step.
    """

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"fit": LightningCLI.subcommands()["fit"]}

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument("--run_name", type=str | None, default=None,
                            help="run folder name (default: the config file's stem)")
        parser.add_argument("--runs_dir", type=str, default="runs", help="parent folder of all runs")

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """Read every ``--config`` file first (:func:`read_config_files`: an empty or malformed YAML names the
        file and line), then parse as LightningCLI does."""
        if isinstance(args, (list, tuple)):
            read_config_files(args)
        super().parse_arguments(parser, args)
        # read --ckpt_path safely before LightningCLI unpickles it for hyper-parameters (a text file or a pickled
        # object is then one line naming the file, not a traceback); compared with the model in before_fit
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        self.resume_checkpoint = read_resume_checkpoint(ckpt_path)

    def before_fit(self) -> None:
        """Start-up checks before ``Trainer.fit`` (:mod:`vispre.commands.checks`): the backbone's image size and
        channels against the data's view, and a ``--ckpt_path`` against the model the config builds."""
        check_data_matches_model(self.model, self.datamodule)
        check_resume(self.model, self.resume_checkpoint)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        name = config.get("run_name") or _config_stem(config) or type(self.model).__name__.lower()
        tensorboard = TensorBoardLogger(config.get("runs_dir", "runs"), name=name, default_hp_metric=False)
        csv = CSVLogger(tensorboard.save_dir, name=name, version=f"version_{tensorboard.version}")
        kwargs["logger"] = [tensorboard, csv]
        # kwargs replace the YAML's trainer entries, so start from the YAML's own callbacks/plugins
        from_yaml = self.config_init.get(f"{self.subcommand}.trainer" if self.subcommand else "trainer") or {}
        callbacks = _as_list(kwargs.get("callbacks") or from_yaml.get("callbacks"))
        checkpointing = from_yaml.get("enable_checkpointing") is not False
        if checkpointing and not any(isinstance(c, Checkpoint) for c in callbacks):
            # last.ckpt (always the newest) + epoch=E-step=S.ckpt at each epoch's last batch; see RunCheckpoint
            callbacks.append(RunCheckpoint(Path(tensorboard.log_dir) / "checkpoints"))
        callbacks += [cls() for cls in (NonFiniteLossGuard, RNGStateCheckpoint)
                      if not any(isinstance(c, cls) for c in callbacks)]
        kwargs["callbacks"] = callbacks
        plugins = _as_list(kwargs.get("plugins") or from_yaml.get("plugins"))
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        kwargs["plugins"] = plugins
        return super().instantiate_trainer(**kwargs)


class _RunBuilder(VispreCLI):
    """:class:`VispreCLI` without a subcommand: parses exactly what ``vispre fit`` parses (``ckpt_path``
    included, so a run's saved ``config.yaml`` reads back) and instantiates only the requested parts."""

    def __init__(self, *, build_data: bool, build_trainer: bool, **kwargs: Any) -> None:
        self.build_data, self.build_trainer = build_data, build_trainer
        super().__init__(**kwargs)

    def add_arguments_to_parser(self, parser: Any) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_method_arguments(Trainer, "fit", skip=set(self.subcommands()["fit"]))

    def instantiate_classes(self) -> None:
        keys = ["model", *(["data"] if self.build_data else []), *(["trainer"] if self.build_trainer else [])]
        wanted = Namespace({key: self.config[key] for key in keys if key in self.config})
        self.config_init = self.parser.instantiate_classes(wanted)
        self.model = self.config_init.get("model")
        self.datamodule = self.config_init.get("data")
        self.trainer = self.instantiate_trainer() if self.build_trainer else None


class BuiltRun(NamedTuple):
    """What :func:`build_from_config` built.

    Attributes:
        model: the objective. datamodule: the data module (None unless ``data=True``).
        trainer: the Trainer with vispre's loggers, checkpointing and safety callbacks (None unless
            ``trainer=True``). config: the parsed, merged config (a jsonargparse Namespace; nothing is
            instantiated in it, e.g. ``config.data.init_args.batch_size``).
    """

    model: PretrainObjective
    datamodule: LightningDataModule | None
    trainer: Trainer | None
    config: Namespace


def build_from_config(config_paths: Sequence[str | Path], overrides: Sequence[str] = (), *, data: bool = False,
                      trainer: bool = False) -> BuiltRun:
    """Build the objective (and optionally the data module and Trainer) of run configs, as ``vispre fit`` would.

    Args:
        config_paths: YAML run configs, merged left to right (a run's saved ``config.yaml`` works too).
        overrides: ``--key=value`` arguments applied after the configs, e.g. ``--model.init_args.mask_ratio=0.6``.
        data: also instantiate the data module (its files must then exist); without it the ``data:`` section
            is parsed and validated but not built.
        trainer: also build the Trainer (implies its callbacks, loggers under ``--runs_dir``, plugins).

    Like ``vispre fit`` it seeds the global RNGs from the config's ``seed_everything`` before building.

    Returns:
        BuiltRun(model, datamodule, trainer, config).

    Raises:
        ConfigError: the configs or overrides do not parse (one line naming the key). FileNotFoundError: a
            config file does not exist. VispreError: a constructor rejected a value.
    """
    args = [*(a for path in config_paths for a in ("--config", str(path))), *overrides]
    with quiet_lightning_cli(), parse_errors_as_config_errors():
        built = _RunBuilder(build_data=data, build_trainer=trainer, model_class=PretrainObjective,
                            save_config_callback=None, trainer_defaults=trainer_defaults(), run=False,
                            args=args, **CLI_KWARGS)
    return BuiltRun(built.model, built.datamodule, built.trainer, built.config)


def read_config_files(args: Sequence[str]) -> list[dict[str, Any]]:
    """Read the YAML of every ``--config PATH`` / ``--config=PATH`` in a command line (:func:`vispre.io.read_yaml`),
    so a missing, empty or malformed file is named (with its line) before jsonargparse reports it without the
    file. An inline YAML string (jsonargparse accepts one) is left to the parser.

    Returns:
        The configs' top-level mappings, in command-line order.

    Raises:
        FileNotFoundError: ``config PATH does not exist``. VispreError: ``PATH:LINE:COLUMN: YAML syntax error:
            ...``, or ``config PATH is empty ...``.
    """
    values = []
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            values.append(str(args[i + 1]))
        elif arg.startswith("--config="):
            values.append(arg.split("=", 1)[1])
    return [read_yaml(value) for value in values if not _inline_yaml(value)]


def _inline_yaml(value: str) -> bool:
    return "\n" in value or value.lstrip().startswith(("{", "["))


@contextmanager
def quiet_lightning_cli() -> Iterator[None]:
    """Hide LightningCLI's warning about receiving ``args`` while ``sys.argv`` holds other arguments: vispre
    always passes its own argument list (the console script's argv minus the subcommand and ``--traceback``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
        yield


@contextmanager
def parse_errors_as_config_errors() -> Iterator[None]:
    """Around parsing + instantiation: jsonargparse's multi-line parse errors become one-line
    :class:`ConfigError` s (cause chained), and a constructor's :class:`VispreError` / FileNotFoundError,
    which jsonargparse wraps in a ValueError listing the union's subtypes, is re-raised as itself."""
    try:
        yield
    except ArgumentError as err:
        raise ConfigError(summarize_parse_error(str(err))) from err
    except ValueError as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, (VispreError, FileNotFoundError)):
            cause = cause.__cause__
        if cause is None or cause is err:
            raise
        raise cause from None


_NOISE = re.compile(r"^(Does not validate against any of the Union subtypes|Subtypes:|Errors:|Given value type:|"
                    r"- Expected a <class 'NoneType'>)")


def summarize_parse_error(message: str) -> str:
    """One line from a jsonargparse error: the key and the informative reasons, without type-union noise.

    Example: ``Parser key "model": Problem with given class_path 'vispre.objectives.MAE': Option 'mask_ratoi'
    is not accepted``.
    """
    parts: list[str] = []
    for line in (ln.strip() for ln in message.splitlines()):
        if not line or _NOISE.match(line):
            continue
        if line.startswith("Given value:"):
            if len(line) <= 80:
                parts.append(f"({line[0].lower()}{line[1:]})")
            continue
        parts.append(line.removeprefix("- "))
    return " ".join(parts) or message.strip()


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _config_stem(config: Any) -> str | None:
    paths = config.get("config") or []
    return Path(str(paths[-1])).stem if paths else None


__all__ = ["BuiltRun", "CLI_KWARGS", "ConfigError", "VispreCLI", "build_from_config", "default_precision",
           "parse_errors_as_config_errors", "quiet_lightning_cli", "read_config_files", "summarize_parse_error",
           "trainer_defaults"]
