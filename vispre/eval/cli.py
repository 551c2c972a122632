"""``vispre eval PATH --config configs/eval/fashion_mnist.yaml [--out DIR]``."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from vispre.eval.report import markdown_table, write_report
from vispre.eval.suite import EvalTask, run_suite
from vispre.hub import load_backbone, resolve_checkpoint


def load_tasks(config_path: str | Path) -> tuple[list[EvalTask], str | None]:
    """Read the suite YAML: ``tasks:`` (list of EvalTask fields) and optional ``cache_dir:``."""
    config = yaml.safe_load(Path(config_path).read_text()) or {}
    unknown = set(config) - {"tasks", "cache_dir"}
    if unknown:
        raise ValueError(f"{config_path}: unknown keys {sorted(unknown)}; expected 'tasks' and 'cache_dir'")
    tasks = []
    for entry in config.get("tasks") or []:
        try:
            tasks.append(EvalTask(**entry))
        except TypeError as err:
            raise ValueError(f"{config_path}: bad task entry {entry}: {err}") from err
    if not tasks:
        raise ValueError(f"{config_path} lists no tasks")
    return tasks, config.get("cache_dir")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vispre eval", description="Evaluate a frozen backbone (kNN + linear probe).")
    parser.add_argument("path", help="run folder, checkpoint, or exported .safetensors backbone")
    parser.add_argument("--config", default="configs/eval/fashion_mnist.yaml", help="evaluation suite YAML")
    parser.add_argument("--out", default=None, help="output folder (default: the run folder, or beside the file)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tasks, cache_dir = load_tasks(args.config)
    vit = load_backbone(args.path)
    source = resolve_checkpoint(args.path)
    out = Path(args.out) if args.out else (Path(args.path) if Path(args.path).is_dir() else source.parent)
    report = run_suite(vit, tasks, str(args.path), cache_dir)
    written = write_report(report, out, plots=not args.no_plots)
    print(markdown_table(report))
    print("written:", *[str(p) for p in written], sep="\n  ")
    return 0
