"""``vispre eval PATH [--config configs/eval/fashion_mnist.yaml] [--out DIR] [--no-plots]``: evaluate a
frozen backbone (cached features -> kNN + linear-probe sweep per task) and write report.json / report.md /
plots beside the run (or into ``--out``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vispre.backbones.weights import resolve_checkpoint
from vispre.eval.report import markdown_table, write_report
from vispre.eval.suite import load_tasks, run_suite
from vispre.hub import load_backbone


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options of ``vispre eval`` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="vispre eval", description="Evaluate a frozen backbone (kNN + linear probe).")
    parser.add_argument("path", help="run folder, checkpoint, or exported .safetensors backbone")
    parser.add_argument("--config", default="configs/eval/fashion_mnist.yaml", help="evaluation suite YAML")
    parser.add_argument("--out", default=None, help="output folder (default: the run folder, or beside the file)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--branch", choices=["teacher", "student"], default="teacher",
                        help="self-distillation runs (dino, ibot, dinov2): evaluate the EMA teacher's backbone "
                             "(default) or the student's")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """Run ``vispre eval ARGV``: print the markdown table and the written files; returns 0."""
    args = parse_args(argv)
    suite = load_tasks(args.config)
    source = resolve_checkpoint(args.path)
    vit = load_backbone(source, branch=args.branch)
    out = Path(args.out) if args.out else (Path(args.path) if Path(args.path).is_dir() else source.parent)
    report = run_suite(vit, suite.tasks, str(args.path), suite.cache_dir)
    written = write_report(report, out, plots=not args.no_plots)
    print(markdown_table(report))
    print("written:", *[str(p) for p in written], sep="\n  ")
    return 0
