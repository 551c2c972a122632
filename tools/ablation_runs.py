"""The ablation's runs: the objective list, machine load, wall-clock budget -> steps, and calibration.

Used by tools/ablate_objectives.py (the command line, method in docs/ablation.md) and tools/poa_subnets.py.
A calibration row is the steady-state step time of an objective's own ``vispre fit`` loop (median seconds
between consecutive training batches after warm-up: data loading, EMA updates, clipping and logging
included), measured while few cores are busy with other work; a run then trains ``round(budget_s / step_s)``
steps, its lr and per-step schedules spanning exactly those steps.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from vispre.commands.config import BuiltRun, build_from_config  # noqa: E402
from vispre.errors import VispreError  # noqa: E402
from vispre.io import atomic_write_text  # noqa: E402

OBJECTIVES = REPO / "configs" / "ablation" / "objectives.yaml"


# -- the objectives -------------------------------------------------------------------------------------------
class Objective(NamedTuple):
    """One ablation entry. configs: run YAMLs (merged); overrides: ``--key=value``; base: the objective an AMCL
    form is compared against; default: part of a run without --only; untrained: evaluate without training."""

    name: str
    configs: list[str]
    overrides: list[str] = []
    base: str | None = None
    default: bool = True
    untrained: bool = False


def load_objectives(path: str | Path = OBJECTIVES) -> dict[str, Objective]:
    """The ``objectives:`` list of an ablation YAML by name (``set: [KEY=VALUE]`` become ``--KEY=VALUE``)."""
    entries = (yaml.safe_load(Path(path).read_text()) or {}).get("objectives") or []
    out: dict[str, Objective] = {}
    for entry in entries:
        entry = dict(entry)
        sets = entry.pop("set", [])
        try:
            obj = Objective(**entry, overrides=[f"--{s}" for s in sets])
        except TypeError as err:
            raise VispreError(f"{path}: bad objective entry {entry}: {err}") from None
        out[obj.name] = obj
    return out


def select(objectives: dict[str, Objective], only: str | None) -> list[Objective]:
    """``--only a,b`` (any entry, in that order), else every ``default`` entry; VispreError on unknown names."""
    if not only:
        return [o for o in objectives.values() if o.default]
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in objectives]
    if unknown:
        raise VispreError(f"--only: unknown objectives {unknown}; expected names from {list(objectives)}")
    return [objectives[n] for n in names]


def parse_seeds(text: str) -> list[int]:
    """``"0,1"`` -> [0, 1]; VispreError on anything but comma-separated non-negative integers."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise VispreError(f"--seeds must be comma-separated integers, e.g. 0,1; got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise VispreError(f"--seeds must list non-negative integers, got {text!r}")
    return seeds


# -- machine load ---------------------------------------------------------------------------------------------
class MachineLoad(NamedTuple):
    """load1/5/15: /proc/loadavg. busy_cores: CPU cores busy with other work while this process slept for the
    sample (from /proc/stat), which, unlike the 1-minute load, is not raised by this tool's previous step."""

    load1: float
    load5: float
    load15: float
    busy_cores: float


def _cpu_times() -> tuple[int, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields[:8]) - idle, sum(fields[:8])


def machine_load(sample_s: float = 2.0) -> MachineLoad:
    """The load averages and the cores busy with other processes over ``sample_s`` seconds (NaN off Linux)."""
    try:
        load = [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
        busy0, total0 = _cpu_times()
        time.sleep(sample_s)
        busy1, total1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return MachineLoad(math.nan, math.nan, math.nan, math.nan)
    cores = (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1)
    return MachineLoad(*load, round(cores, 3))


def quiet_enough(load: MachineLoad, max_busy: float, force: bool) -> str | None:
    """None when ``load.busy_cores <= max_busy``; else a warning (``force``) or VispreError (refusal)."""
    if not load.busy_cores > max_busy:  # NaN (no /proc) passes
        return None
    msg = (f"machine busy: {load.busy_cores:.2f} cores used by other processes (limit {max_busy}), load average "
           f"{load.load1:.2f}/{load.load5:.2f}/{load.load15:.2f}")
    if not force:
        raise VispreError(msg + ": step times measured now would be too slow; wait, or pass --force to record "
                          "them anyway (flagged in the calibration file)")
    return msg + " (recorded anyway: --force)"


# -- budget -> steps, and the epochs they span ----------------------------------------------------------------
def plan_steps(budget_s: float, step_s: float) -> int:
    """Training steps of a wall-clock budget: ``max(1, round(budget_s / step_s))``."""
    if not budget_s > 0 or not step_s > 0:
        raise VispreError(f"budget ({budget_s} s) and calibrated step time ({step_s} s) must both be > 0")
    return max(1, round(budget_s / step_s))


class EpochPlan(NamedTuple):
    """Trainer limits of a run of ``steps`` steps: ``max_epochs`` epochs of ``limit_train_batches`` batches."""

    steps: int
    max_epochs: int
    limit_train_batches: int


def epoch_plan(steps: int, config_epochs: int, batches_per_epoch: int | None) -> EpochPlan:
    """Keep the config's epoch count and shorten each epoch to ``ceil(steps / epochs)`` batches, so schedules
    given in epochs (DINO's teacher-temperature warm-up, last-layer freeze) keep their share of the run; more
    epochs only when the data has fewer batches than that (``batches_per_epoch``; None = unknown length).
    Epochs of one batch are not planned (Lightning reads ``limit_train_batches`` 1 as "100 %")."""
    epochs = max(1, int(config_epochs or 1))
    if batches_per_epoch and math.ceil(steps / epochs) > batches_per_epoch:
        epochs = math.ceil(steps / batches_per_epoch)
    elif math.ceil(steps / epochs) < 2:
        epochs = 1
    return EpochPlan(steps, epochs, math.ceil(steps / epochs))


def config_epochs(configs: Sequence[str], overrides: Sequence[str]) -> int:
    """``trainer.max_epochs`` of merged run configs and ``--trainer.max_epochs=N`` overrides (last wins; 1)."""
    epochs = 1
    for config in configs:
        trainer = (yaml.safe_load((REPO / config).read_text()) or {}).get("trainer") or {}
        epochs = trainer.get("max_epochs", epochs)
    for arg in overrides:
        if arg.startswith("--trainer.max_epochs="):
            epochs = int(arg.split("=", 1)[1])
    return int(epochs or 1)


class StepTimer(L.Callback):
    """Seconds between consecutive ``on_train_batch_end`` calls (the whole loop: data, step, EMA, logging)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, *args: object) -> None:
        self.ends.append(time.perf_counter())

    def intervals(self, skip: int = 0) -> list[float]:
        """Step times after the first ``skip`` intervals (warm-up)."""
        return [b - a for a, b in zip(self.ends, self.ends[1:])][skip:]


class FitResult(NamedTuple):
    checkpoint: str | None
    seconds: float
    step_times: list[float]
    final_loss: float | None
    plan: EpochPlan


def fit_objective(obj: Objective, steps: int, seed: int, runs_dir: Path, extra: Sequence[str] = (),
                  checkpoint: bool = True, one_epoch: bool = False) -> FitResult:
    """Train ``obj`` for exactly ``steps`` optimizer steps through ``vispre fit``'s Trainer.

    Args:
        obj: the objective. steps: optimizer steps (the schedules span them). seed: ``seed_everything``.
        runs_dir: parent of the run folder ``<name>_seed<seed>``. extra: more ``--key=value`` overrides.
        checkpoint: write ``last.ckpt`` (off for calibration).
        one_epoch: run the steps as one epoch (calibration: no epoch-end work among the timed steps).

    Returns:
        FitResult(checkpoint path, fit wall-clock seconds, per-step seconds, last logged loss, epoch plan).
    """
    base = [*obj.overrides, *extra, f"--seed_everything={seed}"]

    def build(plan: EpochPlan) -> BuiltRun:
        limits = [f"--trainer.max_steps={plan.steps}", f"--trainer.max_epochs={plan.max_epochs}",
                  f"--trainer.limit_train_batches={plan.limit_train_batches}", "--trainer.enable_progress_bar=false",
                  "--trainer.enable_model_summary=false", f"--trainer.enable_checkpointing={str(checkpoint).lower()}",
                  f"--runs_dir={runs_dir}", f"--run_name={obj.name}_seed{seed}"]
        return build_from_config(obj.configs, [*base, *limits], data=True, trainer=True)

    plan = epoch_plan(steps, 1 if one_epoch else config_epochs(obj.configs, base), None)
    built = build(plan)
    built.datamodule.setup("fit")
    try:
        batches = len(built.datamodule.train_dataloader())
    except TypeError:  # an iterable (streaming) loader: no length, no cap
        batches = None
    if batches and plan.limit_train_batches > batches:  # too little data for that many steps an epoch
        plan = epoch_plan(steps, plan.max_epochs, batches)
        built = build(plan)
    timer = StepTimer()
    built.trainer.callbacks.append(timer)
    start = time.perf_counter()
    built.trainer.fit(built.model, datamodule=built.datamodule)
    seconds = time.perf_counter() - start
    loss = built.trainer.callback_metrics.get("loss")
    ckpt = built.trainer.checkpoint_callback.last_model_path if checkpoint else None
    return FitResult(ckpt or None, seconds, timer.intervals(), None if loss is None else float(loss), plan)


# -- calibration ----------------------------------------------------------------------------------------------
def calibrate_objective(obj: Objective, runs_dir: Path, warmup: int = 3, steps: int = 8, extra: Sequence[str] = (),
                        max_busy: float = 0.3, force: bool = False, sample_s: float = 2.0) -> dict[str, Any]:
    """Median step time of ``obj`` after ``warmup`` steps (``steps`` timed), with the machine load around it.

    Raises:
        VispreError: the machine is busy (see :func:`quiet_enough`) and ``force`` is off.
    """
    before = machine_load(sample_s)
    warning = quiet_enough(before, max_busy, force)
    fit = fit_objective(obj, warmup + steps + 1, 0, runs_dir, extra, checkpoint=False, one_epoch=True)
    times = fit.step_times[warmup:]
    after = machine_load(sample_s)
    return {"objective": obj.name, "configs": obj.configs, "overrides": [*obj.overrides, *extra],
            "method": "fit loop (median s between training batches after warm-up)", "step_s": statistics.median(times),
            "step_s_min": min(times), "timed_steps": len(times), "warmup_steps": warmup,
            "load_before": before._asdict(), "load_after": after._asdict(), "warning": warning,
            "threads": torch.get_num_threads(), "measured_at": now()}


def import_calibration(folder: Path, objectives: dict[str, Objective], noisy_ratio: float = 1.25) -> dict[str, dict]:
    """Rows of ``vispre bench --out FOLDER/<group>_<stem>.json`` (one per shipped config; FOLDER/load.txt holds
    ``uptime`` lines) for the objectives that run exactly that config without overrides."""
    loads = []
    if (folder / "load.txt").is_file():
        for line in (folder / "load.txt").read_text().splitlines():
            m = re.match(r"\s*(\d\d:\d\d:\d\d).*load average: ([\d.]+), ([\d.]+), ([\d.]+)", line)
            if m:
                loads.append((m.group(1), [float(v) for v in m.groups()[1:]]))
    rows = {}
    for obj in objectives.values():
        if len(obj.configs) != 1 or obj.overrides or obj.untrained:
            continue
        path = folder / f"{config_stem(obj.configs[0])}.json"
        if not path.is_file():
            continue
        bench = json.loads(path.read_text())[0]
        stamp = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
        earlier = [v for t, v in loads if t <= stamp.strftime("%H:%M:%S")]
        median, fastest = bench["step_ms_median"] / 1e3, bench["step_ms_min"] / 1e3
        rows[obj.name] = {"objective": obj.name, "configs": obj.configs, "overrides": [],
                          "method": "vispre bench (synthetic 2-view batch; no data loading, no EMA update)",
                          "step_s": median, "step_s_min": fastest, "timed_steps": bench["steps"],
                          "batch_size": bench["batch_size"], "device": bench["device"],
                          "load_before": dict(zip(("load1", "load5", "load15"), earlier[-1])) if earlier else None,
                          "warning": (f"noisy: median {median:.3f} s vs min {fastest:.3f} s"
                                      if median > noisy_ratio * fastest else None),
                          "measured_at": stamp.isoformat(timespec="seconds"), "source": str(path)}
    return rows


def config_stem(config: str) -> str:
    """``configs/amcl/simclr_vit_tiny_fashion_mnist.yaml`` -> ``amcl_simclr_vit_tiny_fashion_mnist``."""
    path = Path(config)
    return f"{path.parent.name}_{path.stem}"


def read_json(path: Path, default: Any = None) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def calibration_for(calibration: dict[str, dict], obj: Objective, extra: Sequence[str]) -> dict:
    """The calibration row of ``obj``; VispreError when missing or measured with other overrides."""
    row = calibration.get(obj.name)
    if row is None:
        raise VispreError(f"no calibration for {obj.name!r}: run `calibrate --only {obj.name}` (or import-calib) first")
    wanted = [*obj.overrides, *extra]
    if row["overrides"] != wanted:
        raise VispreError(f"calibration of {obj.name!r} was measured with overrides {row['overrides']}, this run uses "
                          f"{wanted}: recalibrate it")
    return row


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
