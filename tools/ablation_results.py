"""The ablation's evaluation and result files: pooled / best-feature summaries, markdown tables, notes.

Used by tools/ablate_objectives.py and tools/poa_subnets.py (see docs/ablation.md). A result file holds one
(objective, seed): its run (steps, seconds, calibration, load), the suite's public report and, per task,
the ``pooled`` row (the exported timm model's embedding) and the ``best`` row (the val-selected feature).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ablation_runs import Objective, read_json  # noqa: E402 (tools/ on sys.path)
from vispre.errors import VispreError
from vispre.eval.report import public_report
from vispre.eval.suite import load_tasks, run_suite
from vispre.io import atomic_write_text


# -- evaluation and result files ------------------------------------------------------------------------------
def feature_summary(task: dict[str, Any]) -> dict[str, dict]:
    """The pooled row and the best-feature row of one task of a suite report (test top-1 and val top-1).

    The pooled kNN variant (raw or z-scored) is the one with the better val top-1; the suite's own ``pooled``
    entry, when the report has one, supplies the test numbers.
    """
    knn, linear, k = task["knn"], task["linear"], f"k{task['knn_k']}"
    variants = [key for key in knn if key.split("+")[0] == "pooled"]
    pooled, own = None, task.get("pooled") or {}
    if own and not (variants and "pooled" in linear):  # the suite's row without per-feature details
        pooled = {"knn_top1": own["knn_top1"], "knn_val": None, "knn_feature": own.get("feature", "pooled"),
                  "linear_top1": own["linear_top1"], "linear_val": None}
    elif variants and "pooled" in linear:
        pk = max(variants, key=lambda key: knn[key]["val_top1"])
        pooled = {"knn_top1": own.get("knn_top1", knn[pk][k]), "knn_val": knn[pk]["val_top1"], "knn_feature": pk,
                  "linear_top1": own.get("linear_top1", linear["pooled"]["test_top1"]),
                  "linear_val": linear["pooled"]["val_top1"]}
    best = {"knn_top1": task["knn_top1"], "knn_feature": task["knn_feature"], "knn_val": knn[task["knn_feature"]]["val_top1"],
            "linear_top1": task["linear_top1"], "linear_feature": task["linear_feature"],
            "linear_val": linear[task["linear_feature"]]["val_top1"]}
    return {"pooled": pooled, "best": best}


def evaluate_vit(vit: torch.nn.Module, name: str, eval_config: Path) -> dict[str, Any]:
    """Run the suite of ``eval_config`` on a frozen ViT: ``{"eval_config", "tasks": {task: summary}, "report"}``."""
    suite = load_tasks(eval_config)
    report = run_suite(vit, suite.tasks, name, suite.cache_dir)
    return {"eval_config": str(eval_config), "tasks": {t: feature_summary(r) for t, r in report["tasks"].items()},
            "report": public_report(report)}


def result_path(out: Path, kind: str, name: str, seed: int) -> Path:
    """``OUT/results/<kind>/<name>__seed<seed>.json`` (kind: quick, full, subnet)."""
    return out / "results" / kind / f"{name}__seed{seed}.json"


# -- summary tables -------------------------------------------------------------------------------------------
def load_results(out: Path, kind: str) -> list[dict]:
    """Every result file of ``kind`` under ``out`` (sorted by name)."""
    return [json.loads(p.read_text()) for p in sorted((out / "results" / kind).glob("*__seed*.json"))]


def mean_spread(values: Sequence[float]) -> str:
    """``0.8123`` for one value, ``0.8123 +- 0.0040`` (mean +- half the range) for several."""
    mean = statistics.fmean(values)
    return f"{mean:.4f}" if len(values) == 1 else f"{mean:.4f} +- {(max(values) - min(values)) / 2:.4f}"


def aggregate(results: Sequence[dict], task: str = "fashion_mnist") -> dict[str, dict]:
    """Per objective (first-seen order): seeds, budgets, steps, seconds and the metric lists of ``task``."""
    rows: dict[str, dict] = {}
    for r in results:
        summary = r["tasks"].get(task)
        if summary is None:
            continue
        row = rows.setdefault(r["objective"], {"seeds": [], "budgets": [], "steps": [], "seconds": [], "metrics": {}})
        row["seeds"].append(r["seed"])
        row["budgets"].append(r.get("budget_s") if r.get("steps") else None)  # untrained: no budget
        row["steps"].append(r["steps"])
        row["seconds"].append(r["train_seconds"])
        for group in ("pooled", "best"):
            for key, value in (summary[group] or {}).items():
                row["metrics"].setdefault(f"{group}_{key}", []).append(value)
    return rows


def ranking(rows: dict[str, dict]) -> list[str]:
    """Objectives by the mean of pooled kNN and pooled linear top-1 (best first; no pooled row: last)."""
    def score(name: str) -> float:
        m = rows[name]["metrics"]
        if "pooled_knn_top1" not in m:
            return -1.0
        return (statistics.fmean(m["pooled_knn_top1"]) + statistics.fmean(m["pooled_linear_top1"])) / 2
    return sorted(rows, key=score, reverse=True)


def _cell(metrics: dict, key: str, feature: str | None = None) -> str:
    if key not in metrics:
        return "-"
    text = mean_spread(metrics[key])
    if feature and feature in metrics:
        text += " (" + ", ".join(dict.fromkeys(metrics[feature])) + ")"
    return text


def results_table(results: Sequence[dict], task: str = "fashion_mnist") -> str:
    """The markdown table: objective, budget, steps, seconds, pooled kNN / linear, best feature kNN / linear, seeds."""
    rows = aggregate(results, task)
    lines = ["| objective | budget s | steps | train s | pooled kNN | pooled linear | best kNN (feature) | "
             "best linear (feature) | seeds |", "|---|---|---|---|---|---|---|---|---|"]
    for name in ranking(rows):
        r, m = rows[name], rows[name]["metrics"]
        budget = " / ".join(sorted({f"{b:g}" for b in r["budgets"] if b is not None})) or "-"
        lines.append(f"| {name} | {budget} | {round(statistics.fmean(r['steps']))} | "
                     f"{statistics.fmean(r['seconds']):.0f} | "
                     f"{_cell(m, 'pooled_knn_top1')} | {_cell(m, 'pooled_linear_top1')} | "
                     f"{_cell(m, 'best_knn_top1', 'best_knn_feature')} | "
                     f"{_cell(m, 'best_linear_top1', 'best_linear_feature')} | {len(r['seeds'])} |")
    return "\n".join(lines) + "\n"


def base_table(results: Sequence[dict], objectives: dict[str, Objective], task: str = "fashion_mnist") -> str:
    """AMCL (any entry with a ``base``) minus its base: pooled kNN / linear differences of the seed means."""
    rows = aggregate(results, task)
    lines = ["| objective | base | pooled kNN diff | pooled linear diff | seeds (objective / base) |", "|---|---|---|---|---|"]
    for obj in objectives.values():
        if obj.base is None or obj.name not in rows or obj.base not in rows:
            continue
        a, b = rows[obj.name]["metrics"], rows[obj.base]["metrics"]
        diffs = [statistics.fmean(a[k]) - statistics.fmean(b[k]) if k in a and k in b else math.nan
                 for k in ("pooled_knn_top1", "pooled_linear_top1")]
        lines.append(f"| {obj.name} | {obj.base} | {diffs[0]:+.4f} | {diffs[1]:+.4f} | "
                     f"{len(rows[obj.name]['seeds'])} / {len(rows[obj.base]['seeds'])} |")
    return "\n".join(lines) + "\n"


def replace_section(text: str, tag: str, body: str) -> str:
    """Replace what lies between ``<!-- tag:start -->`` and ``<!-- tag:end -->``; VispreError without them."""
    start, end = f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise VispreError(f"no '{start}' ... '{end}' markers in the document")
    return text[: i + len(start)] + "\n" + body + text[j:]


def write_sections(doc: Path, sections: dict[str, str]) -> None:
    """Replace each tagged section of ``doc`` (atomically)."""
    text = doc.read_text()
    for tag, body in sections.items():
        text = replace_section(text, tag, body)
    atomic_write_text(doc, text)


# -- what moved it --------------------------------------------------------------------------------------------
def val_numbers(value: str) -> tuple[str, str]:
    """A number or numbers ("0.735 / 0.790") as given, or (for a result JSON) its pooled val kNN / linear:
    -> (text, evidence)."""
    try:
        return " / ".join(f"{float(part):.4f}" for part in value.split("/")), ""
    except ValueError:
        pass
    result = read_json(Path(value))
    if result is None:
        raise VispreError(f"--before/--after: {value!r} is neither a number nor a result file")
    pooled = next(iter(result["tasks"].values()))["pooled"] or {}
    text = " / ".join("n/a" if pooled.get(k) is None else f"{pooled[k]:.4f}" for k in ("knn_val", "linear_val"))
    return text, f"{result['objective']} seed {result['seed']}"


def append_note(doc: Path, change: str, before: str, after: str, metric: str | None, evidence: str | None) -> str:
    """Add one row to the "what moved it" table of ``doc`` (the ``ablate:notes`` section); returns the row."""
    (b, b_src), (a, a_src) = val_numbers(before), val_numbers(after)
    metric = metric or ("val pooled kNN / linear" if b_src or a_src else "val top-1")
    evidence = evidence or " vs ".join(s for s in (b_src, a_src) if s)
    row = f"| {datetime.now(timezone.utc).date()} | {change} | {metric} | {b} | {a} | {evidence} |"
    text = doc.read_text()
    end = "<!-- ablate:notes:end -->"
    if end not in text:
        raise VispreError(f"{doc} has no '{end}' marker for the what-moved-it table")
    atomic_write_text(doc, text.replace(end, row + "\n" + end))
    return row
