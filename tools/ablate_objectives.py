"""Equal wall-clock ablation of vispre's objectives on Fashion-MNIST: pooled and best-feature kNN / linear top-1.

Every objective of configs/ablation/objectives.yaml trains its shipped Fashion-MNIST config (ViT dim 192 /
depth 6 / patch 7, 28 px, as users run it) for the same wall-clock budget (default 300 s on 2 threads). The
budget becomes a step count so that runs can be made in parts, on a machine that may be busy later:
``calibrate`` measures each objective's steady-state step time (median seconds between consecutive
training batches of its own ``vispre fit`` loop, after warm-up: data loading, EMA updates, clipping and
logging included) while the machine is quiet, and ``run`` trains ``round(budget_s / step_s)`` steps (the lr
and every per-step schedule span exactly those steps), then evaluates the frozen backbone (the EMA teacher's
for self-distillation) with a quick suite (configs/ablation/eval_quick.yaml). Method: docs/ablation.md.

    python tools/ablate_objectives.py calibrate [--only mae,dino]     # -> OUT/calibration.json
    python tools/ablate_objectives.py import-calib /tmp/calib         # `vispre bench` rows instead
    python tools/ablate_objectives.py run [--only NAME,...] [--seeds 0,1]   # OUT/results/quick/NAME__seedS.json
    python tools/ablate_objectives.py full-eval [--only NAME,...]     # default: the top three, full eval
    python tools/ablate_objectives.py summarize [--docs docs/ablation.md]
    python tools/ablate_objectives.py note --change "mask 0.75 -> 0.5" --before A.json --after B.json

One result file per (objective, seed), written atomically; what exists is skipped, so ``run`` can be
repeated across sessions until every file is there. tools/poa_subnets.py builds on these functions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules below, also when imported

from ablation_results import (aggregate, append_note, base_table, evaluate_vit, load_results, ranking,  # noqa: E402
                              result_path, results_table, write_sections)
from ablation_runs import (OBJECTIVES, REPO, Objective, calibrate_objective, calibration_for,  # noqa: E402
                           fit_objective, import_calibration, load_objectives, machine, machine_load, now,
                           parse_seeds, plan_steps, read_json, select, write_json)
from vispre.commands.config import build_from_config  # noqa: E402
from vispre.errors import VispreError  # noqa: E402
from vispre.hub import load_backbone  # noqa: E402

QUICK_EVAL, FULL_EVAL = REPO / "configs" / "ablation" / "eval_quick.yaml", REPO / "configs" / "ablation" / "eval_full.yaml"
DOCS = REPO / "docs" / "ablation.md"


def train_and_evaluate(obj: Objective, seed: int, out: Path, budget_s: float, calibration: dict[str, dict],
                       eval_config: Path, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Train ``obj`` for the calibrated step count of ``budget_s``, evaluate, write its quick result file."""
    load_before = machine_load(0.5)
    if obj.untrained:
        built = build_from_config(obj.configs, [*obj.overrides, *extra, f"--seed_everything={seed}"])
        vit, calib, fit = built.model.backbone.vit.eval(), None, None
    else:
        calib = calibration_for(calibration, obj, extra)
        if calib.get("warning") or not calib.get("method", "").startswith("fit loop"):
            print(f"warning: {obj.name} calibration: {calib.get('method')}; {calib.get('warning')}", flush=True)
        fit = fit_objective(obj, plan_steps(budget_s, calib["step_s"]), seed, out / "runs", extra)
        vit = load_backbone(fit.checkpoint)  # the EMA teacher for self-distillation, as `vispre eval`
    result = {"objective": obj.name, "seed": seed, "kind": "quick", "configs": obj.configs,
              "overrides": [*obj.overrides, *extra], "budget_s": budget_s, "calibration": calib,
              "steps": fit.plan.steps if fit else 0, "epoch_plan": fit.plan._asdict() if fit else None,
              "train_seconds": fit.seconds if fit else 0.0,
              "train_step_s_median": statistics.median(fit.step_times) if fit and fit.step_times else None,
              "final_loss": fit.final_loss if fit else None, "checkpoint": fit.checkpoint if fit else None,
              "load_before": load_before._asdict(), "machine": machine(),
              **evaluate_vit(vit, obj.name, eval_config), "finished_at": now()}
    write_json(result_path(out, "quick", obj.name, seed), result)
    return result


def full_evaluate(name: str, seed: int, out: Path, eval_config: Path) -> dict[str, Any]:
    """Evaluate the checkpoint of a quick result with the full suite; writes ``results/full/...``."""
    quick = read_json(result_path(out, "quick", name, seed))
    if quick is None:
        raise VispreError(f"no quick result for {name} seed {seed} under {out}: run it first")
    if quick["checkpoint"] is None:
        built = build_from_config(quick["configs"], [*quick["overrides"], f"--seed_everything={seed}"])
        vit = built.model.backbone.vit.eval()
    else:
        vit = load_backbone(quick["checkpoint"])
    result = {**{k: v for k, v in quick.items() if k not in ("tasks", "report", "eval_config", "finished_at")},
              "kind": "full", **evaluate_vit(vit, name, eval_config), "finished_at": now()}
    write_json(result_path(out, "full", name, seed), result)
    return result


# -- command line ---------------------------------------------------------------------------------------------
def common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"), help="results, runs and calibration")
    parser.add_argument("--objectives", type=Path, default=OBJECTIVES, help="objective list YAML")
    parser.add_argument("--only", default=None, help="comma-separated objective names (default: all default ones)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds per objective")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every objective (calibrate with the same ones), e.g. data.init_args.batch_size=32")
    parser.add_argument("--warmup", type=int, default=3, help="calibration: untimed steps")
    parser.add_argument("--steps", type=int, default=8, help="calibration: timed steps")
    parser.add_argument("--max-busy", type=float, default=0.3, help="calibration: most cores other work may use")
    parser.add_argument("--force", action="store_true", help="calibrate even on a busy machine (flagged)")
    parser.add_argument("--eval-config", type=Path, default=None, help="suite YAML (default: quick / full config)")
    parser.add_argument("--docs", type=Path, default=None, help="summarize: also replace the tables in this file")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("calibrate", "run", "full-eval", "summarize"):
        common_args(sub.add_parser(name))
    imp = sub.add_parser("import-calib", help="import `vispre bench --out` rows from a folder")
    common_args(imp)
    imp.add_argument("folder", type=Path)
    note = sub.add_parser("note", help="append a what-moved-it row to docs/ablation.md")
    note.add_argument("--change", required=True)
    note.add_argument("--before", required=True, help="a number or a result JSON")
    note.add_argument("--after", required=True, help="a number or a result JSON")
    note.add_argument("--metric", default=None)
    note.add_argument("--evidence", default=None)
    note.add_argument("--doc", type=Path, default=DOCS)
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (VispreError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def calibrate_all(objectives: Sequence[Objective], args: argparse.Namespace) -> None:
    """Calibrate each trained objective into ``args.out/calibration.json`` (rows replaced one at a time)."""
    torch.set_num_threads(args.threads)
    path = args.out / "calibration.json"
    for obj in objectives:
        if obj.untrained:
            continue
        row = calibrate_objective(obj, args.out / "calibration_runs", args.warmup, args.steps,
                                  [f"--{s}" for s in args.set], args.max_busy, args.force)
        write_json(path, {**read_json(path, {}), obj.name: row})
        print(f"{obj.name}: {row['step_s']:.3f} s/step (min {row['step_s_min']:.3f}), load {row['load_before']}", flush=True)


def run_all(objectives: Sequence[Objective], args: argparse.Namespace) -> None:
    """Train + quick-evaluate every (objective, seed) of ``args.seeds`` whose result file is missing."""
    torch.set_num_threads(args.threads)
    calibration = read_json(args.out / "calibration.json", {})
    extra = [f"--{s}" for s in args.set]
    for obj in objectives:
        for seed in parse_seeds(args.seeds):
            if result_path(args.out, "quick", obj.name, seed).exists():
                print(f"{obj.name} seed {seed}: done, skipped", flush=True)
                continue
            r = train_and_evaluate(obj, seed, args.out, args.budget, calibration, args.eval_config or QUICK_EVAL, extra)
            print(f"{obj.name} seed {seed}: {r['steps']} steps, {r['train_seconds']:.0f} s, {r['tasks']}", flush=True)


def _calibrate(args: argparse.Namespace) -> int:
    calibrate_all(select(load_objectives(args.objectives), args.only), args)
    return 0


def _import(args: argparse.Namespace) -> int:
    path = args.out / "calibration.json"
    rows = import_calibration(args.folder, load_objectives(args.objectives))
    write_json(path, {**read_json(path, {}), **rows})
    for name, row in rows.items():
        print(f"{name}: {row['step_s']:.3f} s/step" + (f"  WARNING {row['warning']}" if row["warning"] else ""))
    return 0


def _run(args: argparse.Namespace) -> int:
    run_all(select(load_objectives(args.objectives), args.only), args)
    return 0


def _full_eval(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    objectives = load_objectives(args.objectives)
    quick = load_results(args.out, "quick")
    names = [o.name for o in select(objectives, args.only)] if args.only else \
        [n for n in ranking(aggregate(quick)) if not objectives.get(n, Objective(n, [])).untrained][:3]
    for name in names:
        for seed in sorted({r["seed"] for r in quick if r["objective"] == name}):
            if result_path(args.out, "full", name, seed).exists():
                print(f"{name} seed {seed}: full eval done, skipped", flush=True)
                continue
            r = full_evaluate(name, seed, args.out, args.eval_config or FULL_EVAL)
            print(f"{name} seed {seed} (full): {r['tasks']}", flush=True)
    return 0


def _summarize(args: argparse.Namespace) -> int:
    objectives = load_objectives(args.objectives)
    quick, full = load_results(args.out, "quick"), load_results(args.out, "full")
    sections = {"ablate:quick": method_line(quick) + results_table(quick), "ablate:full": method_line(full) + results_table(full),
                "ablate:amcl": base_table(quick, objectives)}
    for tag, body in sections.items():
        print(f"## {tag}\n\n{body}")
    if args.docs:
        write_sections(args.docs, sections)
    return 0


def method_line(results: Sequence[dict]) -> str:
    """What the table's runs share: budget, machine, calibration method (a line above the table)."""
    if not results:
        return "pending: no result files yet\n\n"
    budgets = sorted({r.get("budget_s") for r in results if r.get("steps")})
    machines = sorted({r.get("machine") for r in results if r.get("machine")})
    methods = sorted({(r.get("calibration") or {}).get("method") for r in results if r.get("calibration")})
    return (f"Budget {', '.join(f'{b:g} s' for b in budgets)} of training per run, converted to steps = round(budget / "
            f"calibrated step time) ({'; '.join(m for m in methods if m)}); machine: {'; '.join(machines)}; "
            f"last result {max(r.get('finished_at', '') for r in results)}.\n\n")


def _note(args: argparse.Namespace) -> int:
    print(append_note(args.doc, args.change, args.before, args.after, args.metric, args.evidence))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "calibrate": _calibrate, "import-calib": _import, "run": _run, "full-eval": _full_eval, "summarize": _summarize,
    "note": _note}


if __name__ == "__main__":
    raise SystemExit(main())
