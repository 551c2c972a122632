"""report.json, report.md and the plots of an evaluation (probe accuracy vs lr, embedding, confusion)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def public_report(report: dict[str, Any]) -> dict[str, Any]:
    """The report without plot-only arrays (keys starting with '_')."""
    return {"backbone": report["backbone"],
            "tasks": {name: {k: v for k, v in task.items() if not k.startswith("_")}
                      for name, task in report["tasks"].items()}}


def markdown_table(report: dict[str, Any]) -> str:
    """A short Markdown table: one row per task."""
    lines = [f"Backbone: `{report['backbone']}`", "",
             "| task | kNN top-1 (k) | feature | linear top-1 | feature | lr / wd / optimizer |",
             "|---|---|---|---|---|---|"]
    for name, t in report["tasks"].items():
        lines.append(f"| {name} | {t['knn_top1']:.4f} (k={t['knn_k']}) | {t['knn_feature']} | "
                     f"{t['linear_top1']:.4f} | {t['linear_feature']} | {t['linear_lr']} / {t['linear_weight_decay']} / "
                     f"{t['linear_optimizer']} |")
    lines += ["", "Feature choice and probe hyper-parameters selected on a validation split carved from train; "
              "numbers on test."]
    return "\n".join(lines) + "\n"


def write_plots(task_name: str, plot: dict[str, Any], out_dir: Path) -> list[Path]:
    """Probe val accuracy vs lr per feature, 2-D PCA embedding of test features, confusion matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(5, 3.5))
    rows = plot["probe"].rows
    for choice in dict.fromkeys(r.feature for r in rows):
        lrs = sorted({r.lr for r in rows if r.feature == choice})
        best = [max(r.val_top1 for r in rows if r.feature == choice and r.lr == lr) for lr in lrs]
        ax.plot(lrs, best, marker="o", label=choice)
    ax.set(xscale="log", xlabel="learning rate", ylabel="val top-1", title=f"{task_name}: linear probe sweep")
    ax.legend(fontsize=7)
    paths.append(_save(fig, out_dir / f"{task_name}_probe_lr.png"))

    feats, labels = plot["test_features"].float(), plot["test_labels"]
    centred = feats - feats.mean(0)
    _, _, v = torch.pca_lowrank(centred, q=2, center=False)
    xy = (centred @ v[:, :2]).numpy()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels.numpy(), cmap="tab10", s=2)
    ax.legend(*sc.legend_elements(), fontsize=6, loc="best", title="class")
    ax.set(title=f"{task_name}: test features ({plot['probe'].best.feature}), PCA")
    paths.append(_save(fig, out_dir / f"{task_name}_embedding.png"))

    probe = plot["probe"]
    c = plot["classes"]
    confusion = torch.zeros(c, c, dtype=torch.long)
    confusion.index_put_((labels, probe.test_predictions), torch.ones_like(labels), accumulate=True)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(confusion.numpy(), cmap="Blues")
    for i in range(c):
        for j in range(c):
            ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=5)
    ax.set(xlabel="predicted", ylabel="true", title=f"{task_name}: linear probe confusion")
    paths.append(_save(fig, out_dir / f"{task_name}_confusion.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_report(report: dict[str, Any], out_dir: str | Path, plots: bool = True) -> list[Path]:
    """Write report.json, report.md and (optionally) the plots into ``out_dir``; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "report.json", json.dumps(public_report(report), indent=2) + "\n")
    _atomic_write(out / "report.md", markdown_table(report))
    written = [out / "report.json", out / "report.md"]
    if plots:
        for name, task in report["tasks"].items():
            written += write_plots(name, task["_plot"], out)
    return written
