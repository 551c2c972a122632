"""report.json, report.md and the plots of an evaluation (probe accuracy vs lr, embedding, confusion).

report.md leads each task with the ``pooled`` row (the embedding the exported timm model returns) and keeps the
best-of-features row beside it; a few-shot table follows when a task ran few-shot. The embedding and confusion
plots label classes by name (folder names, Fashion-MNIST's names, ``classes.json``) when the data has names.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vispre.io import atomic_write_bytes, atomic_write_text


def public_report(report: dict[str, Any]) -> dict[str, Any]:
    """The report without plot-only arrays (keys starting with '_')."""
    return {"backbone": report["backbone"],
            "tasks": {name: {k: v for k, v in task.items() if not k.startswith("_")}
                      for name, task in report["tasks"].items()}}


def _pooled_row(name: str, t: dict[str, Any]) -> str:
    p = t["pooled"]
    return (f"| {name} | pooled (timm embedding, global_pool={p.get('global_pool', '?')}) | {p['knn_top1']:.4f} | "
            f"{p['knn_variant']} (k={p['knn_k']}) | {p['linear_top1']:.4f} | {p['feature']} | "
            f"{p['linear_lr']} / {p['linear_weight_decay']} / {t['linear_optimizer']} |")


def markdown_table(report: dict[str, Any]) -> str:
    """report.md: per task the pooled row, then the best-of-features row; a few-shot table when present."""
    lines = [f"Backbone: `{report['backbone']}`", "",
             "| task | embedding | kNN top-1 | kNN feature (k) | linear top-1 | linear feature | lr / wd / optimizer |",
             "|---|---|---|---|---|---|---|"]
    for name, t in report["tasks"].items():
        if "pooled" in t:
            lines.append(_pooled_row(name, t))
        lines.append(f"| {name} | best of features | {t['knn_top1']:.4f} | {t['knn_feature']} (k={t['knn_k']}) | "
                     f"{t['linear_top1']:.4f} | {t['linear_feature']} | {t['linear_lr']} / "
                     f"{t['linear_weight_decay']} / {t['linear_optimizer']} |")
    lines += ["", "Feature choice, kNN preprocessing and probe hyper-parameters selected on a validation split carved "
              "from train (the pooled row: among the pooled variants only); numbers on test."]
    few = {name: t for name, t in report["tasks"].items() if t.get("few_shot")}
    if few:
        lines += ["", "| task | shots per class | kNN top-1 (mean ± std) | linear top-1 (mean ± std) | draws | "
                      "feature |",
                  "|---|---|---|---|---|---|"]
        for name, t in few.items():
            for shots, r in t["few_shot"].items():
                lines.append(f"| {name} | {shots} | {r['knn_mean']:.4f} ± {r['knn_std']:.4f} | "
                             f"{r['linear_mean']:.4f} ± {r['linear_std']:.4f} | {r['draws']} | "
                             f"{t['few_shot_feature']} |")
        protocol = next(iter(few.values())).get("few_shot_protocol")
        if protocol:
            lines += ["", f"Few-shot protocol: {protocol}."]
    return "\n".join(lines) + "\n"


def class_labels(plot: dict[str, Any]) -> list[str]:
    """The plot's class names (``plot["class_names"]``), else the class indices as strings."""
    names = plot.get("class_names")
    return list(names) if names else [str(i) for i in range(plot["classes"])]


def probe_lr_figure(rows: Sequence[Any], title: str) -> Any:
    """Best val top-1 vs learning rate, one line per feature choice (rows: ProbeRow of the sweep)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for choice in dict.fromkeys(r.feature for r in rows):
        lrs = sorted({r.lr for r in rows if r.feature == choice})
        best = [max(r.val_top1 for r in rows if r.feature == choice and r.lr == lr) for lr in lrs]
        ax.plot(lrs, best, marker="o", label=choice)
    ax.set(xscale="log", xlabel="learning rate", ylabel="val top-1", title=title)
    ax.legend(fontsize=7)
    return fig


def embedding_figure(features: Tensor, labels: Tensor, class_names: Sequence[str], title: str) -> Any:
    """2-D PCA of ``features`` [N, D] coloured by ``labels`` [N], the legend naming each class present."""
    import matplotlib.pyplot as plt

    feats = features.float()
    centred = feats - feats.mean(0)
    _, _, v = torch.pca_lowrank(centred, q=2, center=False)
    xy = (centred @ v[:, :2]).numpy()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for c in labels.unique().tolist():
        pts = xy[(labels == c).numpy()]
        ax.scatter(pts[:, 0], pts[:, 1], s=2, color=cmap(c % cmap.N), label=class_names[c])
    ax.legend(fontsize=6, loc="best", title="class", markerscale=4)
    ax.set(title=title)
    return fig


def confusion_figure(labels: Tensor, predictions: Tensor, class_names: Sequence[str], title: str) -> Any:
    """Confusion matrix (rows: true, columns: predicted) with the class names as tick labels."""
    import matplotlib.pyplot as plt

    c = len(class_names)
    confusion = torch.zeros(c, c, dtype=torch.long)
    confusion.index_put_((labels, predictions), torch.ones_like(labels), accumulate=True)
    side = 4.5 + 0.15 * max(0, c - 10)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    ax.imshow(confusion.numpy(), cmap="Blues")
    for i in range(c):
        for j in range(c):
            ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=5)
    ax.set_xticks(range(c), list(class_names), rotation=60, ha="right", fontsize=6)
    ax.set_yticks(range(c), list(class_names), fontsize=6)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return fig


def write_plots(task_name: str, plot: dict[str, Any], out_dir: Path) -> list[Path]:
    """Probe val accuracy vs lr per feature, 2-D PCA embedding of test features, confusion matrix (class names
    from ``plot["class_names"]`` when given)."""
    import matplotlib

    matplotlib.use("Agg")
    probe, names = plot["probe"], class_labels(plot)
    figures = {
        "probe_lr": probe_lr_figure(probe.rows, f"{task_name}: linear probe sweep"),
        "embedding": embedding_figure(plot["test_features"], plot["test_labels"], names,
                                      f"{task_name}: test features ({probe.best.feature}), PCA"),
        "confusion": confusion_figure(plot["test_labels"], probe.test_predictions, names,
                                      f"{task_name}: linear probe confusion"),
    }
    return [_save(fig, out_dir / f"{task_name}_{kind}.png") for kind, fig in figures.items()]


def _save(fig: Any, path: Path) -> Path:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, dpi=110, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def write_report(report: dict[str, Any], out_dir: str | Path, plots: bool = True) -> list[Path]:
    """Write report.json, report.md and (optionally) the plots into ``out_dir``; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.json", json.dumps(public_report(report), indent=2) + "\n")
    atomic_write_text(out / "report.md", markdown_table(report))
    written = [out / "report.json", out / "report.md"]
    if plots:
        for name, task in report["tasks"].items():
            written += write_plots(name, task["_plot"], out)
    return written
