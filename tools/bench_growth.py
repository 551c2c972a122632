"""Grown vs scratch at the same total compute: MAE on Fashion-MNIST, a depth-D target ViT trained from scratch
vs grown mid-run (GrowthCallback) from a half-depth model. Writes JSON and prints a Markdown table.

Budget: equal training FLOPs. FLOPs per optimizer step of each architecture are counted once with
``torch.utils.flop_counter.FlopCounterMode`` (forward + backward matmul/conv/attention of the whole MAE step,
encoder + decoder; element-wise ops and the optimizer are not counted). The scratch run takes S steps at
F_target; the grown run takes g steps at F_small then T - g at F_target with g = round(f T) and
g F_small + (T - g) F_target <= S F_target. Both runs follow their own warmup + cosine over their own length.

Reported: the fraction of the scratch run's compute at which the grown run's smoothed training loss (trailing
mean over ``--window`` steps) first reaches the scratch run's final smoothed loss, both final losses, the
wall-clock of each run, and kNN / linear-probe top-1 of both final backbones (vispre.eval.suite on a seeded
subset of Fashion-MNIST, selected on val, reported on test).

    flock /tmp/vispre-heavy.lock nice -n 10 .venv/bin/python tools/bench_growth.py --out runs/bench_growth.json
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import subprocess
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml

from vispre.bench import count_flops, synthetic_batch
from vispre.commands import main as vispre_main
from vispre.commands.config import build_from_config
from vispre.eval.suite import load_tasks
from vispre.eval.suite import run_suite
from vispre.hub import load_backbone
from vispre.io import atomic_write_text

BASE = "configs/mae/vit_tiny_fashion_mnist.yaml"


def flops_per_step(depth: int, overrides: list[str], batch_size: int) -> float:
    """Counted FLOPs of one MAE training step (forward + backward) at ``depth``."""
    model = build_from_config([BASE], [*overrides, f"--model.backbone.init_args.depth={depth}",
                                       "--trainer.callbacks=[]"]).model
    return count_flops(model.train(), synthetic_batch(model, batch_size, 1, torch.device("cpu")), nullcontext)


def grown_schedule(scratch_steps: int, fraction: float, ratio: float) -> tuple[int, int]:
    """(total steps T, growth step g) of the grown run: the largest T whose FLOPs fit the scratch budget."""
    total = int(scratch_steps / (1 - fraction * (1 - ratio)))
    while True:
        grow_at = round(fraction * total)
        if grow_at * ratio + (total - grow_at) <= scratch_steps + 1e-9:
            return total, grow_at
        total -= 1


def fit(name: str, runs_dir: Path, args: list[str], fragment: dict) -> tuple[Path, float]:
    """One ``vispre fit`` run; returns (its version folder, wall-clock seconds)."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    extra = runs_dir / f"{name}.yaml"
    extra.write_text(yaml.safe_dump(fragment))
    start = time.perf_counter()
    code = vispre_main(["fit", "--config", BASE, "--config", str(extra), *args, f"--runs_dir={runs_dir}",
                        f"--run_name={name}"])
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"run {name} failed with exit code {code}")
    version = max((runs_dir / name).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    return version, seconds


def train_losses(version: Path) -> list[float]:
    """Per-step ``train/loss`` from the run's metrics.csv, ordered by step."""
    rows = [r for r in csv.DictReader((version / "metrics.csv").open()) if r.get("train/loss")]
    by_step = {int(r["step"]): float(r["train/loss"]) for r in rows}
    return [by_step[s] for s in sorted(by_step)]


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v - (values[i - window] if i >= window else 0.0)
        out.append(acc / min(i + 1, window))
    return out


def evaluate(version: Path, limit_train: int, limit_test: int) -> dict:
    """kNN + linear probe (configs/eval/fashion_mnist.yaml) on a seeded subset; the headline numbers."""
    tasks, _ = load_tasks("configs/eval/fashion_mnist.yaml")
    tasks = [dataclasses.replace(t, limit_train=limit_train, limit_test=limit_test) for t in tasks]
    start = time.perf_counter()
    report = run_suite(load_backbone(version), tasks, str(version), cache_dir=None)
    task = next(iter(report["tasks"].values()))
    keys = ("knn_top1", "knn_feature", "linear_top1", "linear_feature", "linear_lr", "linear_weight_decay")
    return {**{k: task[k] for k in keys}, "eval_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_growth.json"))
    parser.add_argument("--runs_dir", type=Path, default=Path("runs/bench_growth"))
    parser.add_argument("--depth", type=int, default=6, help="target depth (the small model has depth // 2)")
    parser.add_argument("--scratch_steps", type=int, default=600)
    parser.add_argument("--grow_fraction", type=float, default=0.3, help="growth step / grown run's steps")
    parser.add_argument("--depth_mode", default="stack", choices=["stack", "interleave", "zero"])
    parser.add_argument("--optimizer_mode", default="reset", choices=["reset", "transfer", "exact"])
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--window", type=int, default=50, help="loss smoothing window (steps)")
    parser.add_argument("--limit_train", type=int, default=10000)
    parser.add_argument("--limit_test", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: no spin-wait on a shared box)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    small = args.depth // 2
    common = [f"--data.batch_size={args.batch_size}", "--trainer.log_every_n_steps=1",
              "--trainer.enable_progress_bar=false", "--trainer.max_epochs=-1"]
    f_small = flops_per_step(small, [], args.batch_size)
    f_target = flops_per_step(args.depth, [], args.batch_size)
    total, grow_at = grown_schedule(args.scratch_steps, args.grow_fraction, f_small / f_target)
    growth = {"class_path": "vispre.growth.GrowthCallback",
              "init_args": {"at_step": grow_at, "depth": args.depth, "depth_mode": args.depth_mode,
                            "optimizer_mode": args.optimizer_mode}}
    runs = {
        "scratch": fit(f"scratch_d{args.depth}", args.runs_dir,
                       [*common, f"--model.backbone.init_args.depth={args.depth}",
                        f"--trainer.max_steps={args.scratch_steps}"], {"trainer": {"callbacks": []}}),
        "grown": fit(f"grown_d{small}to{args.depth}", args.runs_dir,
                     [*common, f"--model.backbone.init_args.depth={small}", f"--trainer.max_steps={total}"],
                     {"trainer": {"callbacks": [growth]}}),
    }
    budget = args.scratch_steps * f_target
    cum = {"scratch": [f_target * (s + 1) for s in range(args.scratch_steps)],
           "grown": [f_small * min(s + 1, grow_at) + f_target * max(0, s + 1 - grow_at) for s in range(total)]}
    result: dict = {"runs": {}}
    for key, (version, seconds) in runs.items():
        losses = train_losses(version)
        smoothed = smooth(losses, args.window)
        result["runs"][key] = {"folder": str(version), "steps": len(losses), "wall_s": seconds,
                               "flops": cum[key][len(losses) - 1], "smoothed": smoothed, "final_loss": smoothed[-1],
                               **evaluate(version, args.limit_train, args.limit_test)}
    target = result["runs"]["scratch"]["final_loss"]
    grown = result["runs"]["grown"]["smoothed"]
    reach = next((s for s, v in enumerate(grown) if v <= target), None)
    date = subprocess.run(["date"], capture_output=True, text=True).stdout.strip()
    for run in result["runs"].values():
        run["smoothed"] = run["smoothed"][:: max(1, len(run["smoothed"]) // 100)]  # keep the JSON small
    result.update({
        "machine": "2-core CPU dev machine, no GPU", "date": date, "threads": args.threads,
        "setup": {"base_config": BASE, "batch_size": args.batch_size, "target_depth": args.depth,
                  "small_depth": small, "depth_mode": args.depth_mode, "optimizer_mode": args.optimizer_mode,
                  "grow_fraction": args.grow_fraction, "grow_at_step": grow_at, "grown_steps": total,
                  "scratch_steps": args.scratch_steps, "smoothing_window": args.window,
                  "eval_subset": {"train": args.limit_train, "test": args.limit_test}},
        "budget": {"kind": "training FLOPs (FlopCounterMode: fwd+bwd matmul/conv/attention per MAE step)",
                   "flops_per_step_small": f_small, "flops_per_step_target": f_target, "scratch_flops": budget,
                   "grown_flops": cum["grown"][-1]},
        "reach": {"target_loss": target, "grown_step": reach,
                  "fraction_of_scratch_compute": None if reach is None else cum["grown"][reach] / budget},
        "total_wall_s": time.perf_counter() - started,
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1))
    print(markdown(result))


def markdown(result: dict) -> str:
    """The docs table."""
    s, g, r = result["runs"]["scratch"], result["runs"]["grown"], result["reach"]
    setup = result["setup"]
    frac = "not reached" if r["fraction_of_scratch_compute"] is None else f"{r['fraction_of_scratch_compute']:.1%}"
    rows = [
        "| run | steps | training FLOPs | wall-clock | final loss (smoothed) | reaches scratch final loss at | "
        "kNN top-1 | linear top-1 |", "|---|---|---|---|---|---|---|---|",
        f"| scratch, depth {setup['target_depth']} | {s['steps']} | {s['flops']:.3g} | {s['wall_s']:.0f} s | "
        f"{s['final_loss']:.4f} | 100% | {s['knn_top1']:.3f} | {s['linear_top1']:.3f} |",
        f"| grown {setup['small_depth']}->{setup['target_depth']} at step {setup['grow_at_step']} "
        f"({setup['depth_mode']}, {setup['optimizer_mode']}) | {g['steps']} | {g['flops']:.3g} | {g['wall_s']:.0f} s | "
        f"{g['final_loss']:.4f} | {frac} of scratch FLOPs | {g['knn_top1']:.3f} | {g['linear_top1']:.3f} |",
    ]
    return "\n".join(rows) + f"\n\n{result['machine']}, {result['date']}, total {result['total_wall_s']:.0f} s"


if __name__ == "__main__":
    main()
