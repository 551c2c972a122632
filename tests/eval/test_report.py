"""report.md (pooled row first, best-of-features beside it, few-shot table) and plots labelled by class name."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import torch

from vispre.eval.linear_probe import FeatureBest, ProbeResult, ProbeRow
from vispre.eval.report import class_labels, confusion_figure, embedding_figure, markdown_table, write_report

matplotlib.use("Agg")
NAMES = ["T-shirt/top", "Trouser", "Pullover"]


def fake_report(class_names: list[str] | None = NAMES) -> dict:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    predictions = torch.tensor([0, 1, 1, 1, 2, 0])
    best = FeatureBest("cls", 0.1, 0.0, 0.9, 0.8)
    probe = ProbeResult(best, {"cls": best}, [ProbeRow("cls", 0.1, 0.0, 0.9), ProbeRow("cls", 1.0, 0.0, 0.7)],
                        predictions)
    task = {"pooled": {"feature": "pooled", "global_pool": "token", "knn_top1": 0.61, "knn_variant": "pooled+zscore",
                       "knn_k": 20, "linear_top1": 0.72, "linear_lr": 0.3, "linear_weight_decay": 0.0},
            "knn_top1": 0.81, "knn_feature": "patches+zscore", "knn_k": 20, "linear_top1": 0.875,
            "linear_feature": "patches", "linear_lr": 0.1, "linear_weight_decay": 0.0001, "linear_optimizer": "sgd",
            "few_shot": {"1": {"knn_mean": 0.4, "knn_std": 0.05, "linear_mean": 0.45, "linear_std": 0.04, "draws": 5},
                         "5": {"knn_mean": 0.6, "knn_std": 0.02, "linear_mean": 0.65, "linear_std": 0.01, "draws": 5}},
            "few_shot_feature": "pooled", "few_shot_protocol": "fixed",
            "_plot": {"probe": probe, "test_labels": labels, "test_features": torch.randn(6, 8),
                      "classes": 3, "class_names": class_names}}
    return {"backbone": "runs/x", "tasks": {"fmnist": task}}


def test_markdown_leads_with_the_pooled_row_and_keeps_the_best_beside_it() -> None:
    lines = markdown_table(fake_report()).splitlines()
    rows = [line for line in lines if line.startswith("| fmnist |")]
    assert rows[0] == ("| fmnist | pooled (timm embedding, global_pool=token) | 0.6100 | pooled+zscore (k=20) | 0.7200 "
                       "| pooled | 0.3 / 0.0 / sgd |")
    assert rows[1] == ("| fmnist | best of features | 0.8100 | patches+zscore (k=20) | 0.8750 | patches | "
                       "0.1 / 0.0001 / sgd |")
    assert rows[2] == "| fmnist | 1 | 0.4000 ± 0.0500 | 0.4500 ± 0.0400 | 5 | pooled |"  # the few-shot table
    assert rows[3].startswith("| fmnist | 5 | 0.6000 ± 0.0200 |") and "Few-shot protocol: fixed." in lines


def test_confusion_and_embedding_plots_name_the_classes() -> None:
    labels, predictions = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 2])
    fig = confusion_figure(labels, predictions, NAMES, "t")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == NAMES
    assert [t.get_text() for t in ax.get_yticklabels()] == NAMES
    assert [int(t.get_text()) for t in ax.texts] == [1, 1, 0, 0, 1, 0, 0, 0, 1]  # row-major counts
    fig = embedding_figure(torch.randn(4, 5), labels, NAMES, "t")
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == NAMES


def test_write_report_writes_json_md_and_named_plots(tmp_path: Path) -> None:
    written = write_report(fake_report(), tmp_path)
    assert {p.name for p in written} == {"report.json", "report.md", "fmnist_probe_lr.png", "fmnist_embedding.png",
                                         "fmnist_confusion.png"}
    report = json.loads((tmp_path / "report.json").read_text())
    assert "_plot" not in report["tasks"]["fmnist"] and report["tasks"]["fmnist"]["pooled"]["linear_top1"] == 0.72
    assert (tmp_path / "fmnist_confusion.png").stat().st_size > 1000 and not list(tmp_path.glob(".*tmp*"))
    write_report(fake_report(class_names=None), tmp_path / "no_names")
    assert class_labels(fake_report(class_names=None)["tasks"]["fmnist"]["_plot"]) == ["0", "1", "2"]  # no names
