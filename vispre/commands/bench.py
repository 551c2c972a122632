"""``vispre bench``: train-step throughput of a config's objective (images/s, step time, peak memory, MFU).

    vispre bench --config configs/mae/vit_tiny_fashion_mnist.yaml [--steps 20] [--batch_size 256]
                 [--set model.init_args.mask_ratio=0.9] [--device cpu|cuda] [--precision bf16-mixed]
                 [--compile] [--out bench.json]

The objective is built from the configs plus ``--set`` overrides by :func:`build_from_config` (the data
module is parsed, not built: benching needs no data files). The batch size is ``--batch_size``, else the
merged config's ``data.init_args.batch_size`` (``--set data.init_args.batch_size=N`` counts). What is timed:
see :mod:`vispre.bench`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from vispre.bench import bench_objective
from vispre.commands.checks import check_data_matches_model
from vispre.commands.config import BuiltRun, build_from_config, default_precision
from vispre.errors import VispreError
from vispre.io import atomic_write_text


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options of ``vispre bench`` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="vispre bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", required=True, help="vispre YAML (repeat to merge)")
    parser.add_argument("--batch_size", type=int, default=None, help="default: the config's data batch_size")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default=None, help="default: bf16-mixed on a bf16 GPU, else 32-true")
    parser.add_argument("--compile", action="store_true", help="torch.compile loss_terms (eager fallback)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--peak_tflops", type=float, default=None, help="device peak for MFU")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON rows here")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set model.init_args.mask_ratio=0.9")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """Run ``vispre bench ARGV``: print one JSON row (and write it to ``--out``); returns 0."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = args.precision or (default_precision() if args.device == "cuda" else "32-true")
    built = build_checked(args.config, [f"--{s}" for s in args.set])
    batch_size = args.batch_size or config_batch_size(built.config)
    model = built.model
    if args.compile:
        from vispre.callbacks.speed import SpeedSwitchboard, apply_switches

        apply_switches(model, SpeedSwitchboard(compile=True))
    name = " + ".join(Path(c).stem for c in args.config) + (" +compile" if args.compile else "")
    row = bench_objective(model, name, batch_size, args.steps, args.warmup, args.device, precision,
                          peak=args.peak_tflops)._asdict()
    print(json.dumps(row))
    if args.out is not None:
        write_json_atomically(args.out, [row])
    return 0


def build_checked(configs: list[str], overrides: list[str]) -> BuiltRun:
    """The configs' objective, with its image size / channels checked against the data's view
    (:func:`vispre.commands.checks.check_data_matches_model`) when the data module can be built here.

    Benching needs no data files: when the data module cannot be built (shards absent on this machine), the
    check is skipped with a note on stderr.

    Raises:
        VispreError: the configs do not build, or the model does not fit the data's images.
    """
    try:
        built = build_from_config(configs, overrides, data=True)
    except (VispreError, FileNotFoundError) as err:
        built = build_from_config(configs, overrides)  # a model error raises again here, as itself
        print(f"vispre bench: note: data not built ({err}); model/data shapes not checked", file=sys.stderr)
        return built
    check_data_matches_model(built.model, built.datamodule)
    return built


def config_batch_size(config: Any) -> int:
    """``data.init_args.batch_size`` of a parsed run config (overrides applied).

    Raises:
        VispreError: the config has no integer data batch size.
    """
    size = config.get("data.init_args.batch_size") if config.get("data") is not None else None
    if not isinstance(size, int):
        raise VispreError("no data.init_args.batch_size in the config(s); pass --batch_size")
    return size


def write_json_atomically(path: Path, rows: list[dict]) -> None:
    """Write rows as JSON via a temporary file + rename (:func:`vispre.io.atomic_write_text`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(rows, indent=2) + "\n")
