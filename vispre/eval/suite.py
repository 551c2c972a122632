"""The evaluation suite: for each task, cached frozen features -> kNN and linear-probe sweeps, with the
feature choice selected on a validation split carved from train, and the number reported on test."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from timm.models.vision_transformer import VisionTransformer
from tqdm.auto import tqdm

from vispre.eval.datasets import check_source
from vispre.eval.extraction import load_task_features
from vispre.eval.feature_cache import FEATURE_DTYPES
from vispre.eval.features import FEATURE_CHOICES
from vispre.eval.few_shot import few_shot_eval, few_shot_report
from vispre.eval.field_types import check_field_types
from vispre.eval.knn import knn_top1, standardize
from vispre.eval.linear_probe import OPTIMIZERS, ProbeResult, linear_probe_sweep, split_train_val
from vispre.errors import VispreError
from vispre.io import read_yaml

log = logging.getLogger(__name__)


KNN_PREPROCESS = ("none", "zscore")


@dataclass
class EvalTask:
    """One evaluation task of the suite (a YAML list entry).

    Attributes:
        name: key in report.json. dataset: "fashion_mnist", "image_folder" or "shards" (see vispre.eval.datasets).
        root: data folder (fashion_mnist: optional; image_folder: holds train/ and test/ or val/ class folders).
        train_urls, test_urls: shard patterns of the shards dataset.
        limit_train, limit_test: evaluate on a seeded random subset of this many images (None: all).
        mean, std: per-channel normalisation (default: the dataset's, else ImageNet's).
        features: feature choices to compare (see vispre.eval.features); "pooled" (the exported timm model's
            embedding) is always evaluated, first, and reported as the task's ``pooled`` row; so is
            ``few_shot_feature`` when few-shot runs. ks/temperature: kNN settings.
        lrs/weight_decays/epochs: linear-probe sweep grid. probe_optimizer: "sgd" or "lars" (MAE protocol). val_fraction: part of train used for selection.
        report_k: the k reported as ``knn_top1``.
        knn_preprocess: kNN feature preprocessing variants compared on val: "none" (cosine on the raw feature)
            and/or "zscore" (each dimension standardised with the bank's statistics first); reported as
            ``<feature>+zscore``.
        few_shot_shots: images per class of the few-shot evaluation (vispre.eval.few_shot; empty: none).
        few_shot_draws: seeded draws per shot count. few_shot_feature: the feature it uses.
        batch_size, num_workers: images per forward pass and DataLoader workers of feature extraction (None:
            0 for fashion_mnist, whose images are in memory already; 2 for image folders and shards).
        feature_dtype: "float32" or "float16" storage of the cached features (read back as float32).
        skip_bad_images: evaluate without images that cannot be decoded (their count is reported as
            ``unread_images``); by default such a set stops the evaluation, naming the first few.
    """

    name: str = "fashion_mnist"
    dataset: str = "fashion_mnist"
    root: str | None = None
    train_urls: str | Sequence[str] | None = None
    test_urls: str | Sequence[str] | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    features: Sequence[str] = FEATURE_CHOICES
    ks: Sequence[int] = (10, 20, 100, 200)
    temperature: float = 0.07
    report_k: int = 20
    lrs: Sequence[float] = (0.01, 0.03, 0.1, 0.3, 1.0)
    weight_decays: Sequence[float] = (0.0, 1e-4)
    epochs: int = 20
    probe_optimizer: str = "sgd"
    val_fraction: float = 0.1
    knn_preprocess: Sequence[str] = ("none", "zscore")
    few_shot_shots: Sequence[int] = (1, 5, 10)
    few_shot_draws: int = 5
    few_shot_feature: str = "pooled"
    batch_size: int = 512
    num_workers: int | None = None
    feature_dtype: str = "float32"
    skip_bad_images: bool = False

    def __post_init__(self) -> None:
        check_field_types(self, f"task {self.name!r}")  # before any other check: `epochs: abc` is named as such
        try:
            check_source(self.dataset, self.root, self.train_urls, self.test_urls)
        except VispreError as err:
            raise VispreError(f"task {self.name!r}: {err}") from None
        for field in ("limit_train", "limit_test"):
            limit = getattr(self, field)
            if limit is not None and limit < 1:
                raise VispreError(f"task {self.name!r}: {field} must be a positive number of images, got {limit}")
        bad = set(self.knn_preprocess) - set(KNN_PREPROCESS)
        if bad or not self.knn_preprocess:
            raise VispreError(f"task {self.name!r}: knn_preprocess must list some of {KNN_PREPROCESS}, "
                             f"got {list(self.knn_preprocess)}")
        if self.report_k not in self.ks:
            raise VispreError(f"task {self.name!r}: report_k {self.report_k} is not among ks {list(self.ks)}")
        if self.probe_optimizer not in OPTIMIZERS:
            raise VispreError(f"task {self.name!r}: unknown probe_optimizer {self.probe_optimizer!r}; "
                             f"expected one of {OPTIMIZERS}")
        if self.feature_dtype not in FEATURE_DTYPES:
            raise VispreError(f"task {self.name!r}: feature_dtype must be one of {sorted(FEATURE_DTYPES)}, "
                              f"got {self.feature_dtype!r}")
        unknown = set(self.features) - set(FEATURE_CHOICES)
        if unknown:
            raise VispreError(f"task {self.name!r}: unknown features {sorted(unknown)}; expected from {FEATURE_CHOICES}")
        if self.few_shot_feature not in FEATURE_CHOICES:
            raise VispreError(f"task {self.name!r}: unknown few_shot_feature {self.few_shot_feature!r}; expected one "
                              f"of {FEATURE_CHOICES}")
        if any(k < 1 for k in self.few_shot_shots) or self.few_shot_draws < 1:
            raise VispreError(f"task {self.name!r}: few_shot_shots must be images per class >= 1 and few_shot_draws "
                              f">= 1, got {list(self.few_shot_shots)} and {self.few_shot_draws}")
        few_shot = (self.few_shot_feature,) if self.few_shot_shots else ()
        self.features = tuple(dict.fromkeys(("pooled", *self.features, *few_shot)))  # pooled first, no repeats


def pooled_row(vit: VisionTransformer, task: EvalTask, knn_rows: dict[str, dict[str, float]],
               probe: ProbeResult) -> dict[str, Any]:
    """The task's ``pooled`` entry: the exported timm embedding (``forward_head(forward_features(x),
    pre_logits=True)``) under the same selection rules as the best-of-features row, restricted to it (kNN
    preprocessing by val top-1 among the pooled variants at ``report_k``; probe lr / wd by val top-1)."""
    knn = best_variant(knn_rows, "pooled")
    linear = probe.per_feature["pooled"]
    return {"feature": "pooled", "global_pool": str(vit.global_pool), "knn_top1": knn_rows[knn][f"k{task.report_k}"],
            "knn_variant": knn, "knn_k": task.report_k, "linear_top1": linear.test_top1, "linear_lr": linear.lr,
            "linear_weight_decay": linear.weight_decay}


def knn_sweep(train_x: dict[str, Tensor], train_y: Tensor, test_x: dict[str, Tensor], test_y: Tensor,
              num_classes: int, task: EvalTask, choices: Sequence[str]) -> dict[str, dict[str, float]]:
    """kNN of every feature in ``choices`` x ``task.knn_preprocess``: val top-1 at ``report_k`` (bank = the
    train part of train) and test top-1 for every k (bank = all of train).

    Args:
        train_x: {choice: [N, D]}, train_y: [N]; test_x: {choice: [M, D]}, test_y: [M].

    Returns:
        {key: {"val_top1", "k<k>" ...}}; key = the choice, or ``<choice>+zscore`` for z-scored features.
    """
    tr, va = split_train_val(len(train_y), task.val_fraction)
    rows = {}
    variants = [(c, p) for c in choices for p in task.knn_preprocess]
    for choice, prep in tqdm(variants, desc=f"{task.name} kNN", leave=False):
        x, x_test = train_x[choice], test_x[choice]
        bank, val = x[tr], x[va]
        if prep == "zscore":  # statistics from the bank only: train-part for val, all of train for test
            bank, val = standardize(bank, val)
            x, x_test = standardize(x, x_test)
        val_knn = knn_top1(bank, train_y[tr], val, train_y[va], num_classes, (task.report_k,), task.temperature)
        test_knn = knn_top1(x, train_y, x_test, test_y, num_classes, task.ks, task.temperature)
        key = choice if prep == "none" else f"{choice}+{prep}"
        rows[key] = {"val_top1": val_knn[task.report_k], **{f"k{k}": v for k, v in test_knn.items()}}
    return rows


def best_variant(knn_rows: dict[str, dict[str, float]], choice: str) -> str:
    """The kNN preprocessing variant of ``choice`` with the best val top-1 (first of ties: the raw feature)."""
    variants = [key for key in knn_rows if key.split("+")[0] == choice]
    return max(variants, key=lambda key: knn_rows[key]["val_top1"])


def evaluate_task(vit: VisionTransformer, task: EvalTask, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Run kNN and the linear sweep for every feature choice; select each on val, report test.

    Returns:
        The task's report.json entry: ``pooled`` (:func:`pooled_row`: the exported timm embedding's kNN / linear
        top-1), knn_top1, linear_top1 (test, selected on val over every evaluated feature: the best-of-features
        row), the chosen feature and hyper-parameters, per-feature details (``knn`` and ``linear``), ``few_shot``
        (vispre.eval.few_shot; when ``few_shot_shots`` is not empty), plus arrays for plots under ``_plot``.
    """
    data = load_task_features(vit, task, cache_dir)  # streamed + cached (vispre.eval.extraction)
    train, test, num_classes = data.train, data.test, data.num_classes
    ftrain, ftest = train.features, test.features
    y = train.labels
    few_shot = {}
    shots = feasible_shots(task.few_shot_shots, y, num_classes, task.name)
    if shots:
        results = few_shot_eval(ftrain[task.few_shot_feature], y, ftest[task.few_shot_feature], test.labels,
                                num_classes, shots, task.few_shot_draws, class_names=data.class_names)
        few_shot = few_shot_report(results, task.few_shot_feature)
    if len(shots) < len(task.few_shot_shots):
        few_shot["few_shot_skipped"] = [k for k in task.few_shot_shots if k not in shots]
    knn_rows = knn_sweep(ftrain, y, ftest, test.labels, num_classes, task, task.features)
    probe = linear_probe_sweep(ftrain, y, ftest, test.labels, num_classes, task.lrs, task.weight_decays,
                               task.epochs, val_fraction=task.val_fraction, optimizer=task.probe_optimizer)
    best_knn = max(knn_rows, key=lambda c: knn_rows[c]["val_top1"])
    best = probe.best
    return {
        "pooled": pooled_row(vit, task, knn_rows, probe),
        "knn_top1": knn_rows[best_knn][f"k{task.report_k}"], "knn_feature": best_knn, "knn_k": task.report_k,
        "linear_top1": best.test_top1, "linear_feature": best.feature,
        "linear_lr": best.lr, "linear_weight_decay": best.weight_decay, "linear_optimizer": task.probe_optimizer,
        "selected_on": f"validation split ({task.val_fraction:.0%} of train); test never used for selection",
        "class_counts": data.class_counts, "unread_images": data.unread,
        "knn": knn_rows,
        "linear": {c: {"val_top1": b.val_top1, "test_top1": b.test_top1, "lr": b.lr, "weight_decay": b.weight_decay}
                   for c, b in probe.per_feature.items()},
        **few_shot,
        "_plot": {"probe": probe, "test_labels": test.labels, "test_features": ftest[best.feature],
                  "classes": num_classes, "class_names": data.class_names},
    }


def feasible_shots(shots: Sequence[int], labels: torch.Tensor, num_classes: int, task_name: str) -> list[int]:
    """The few-shot counts every train class can supply; the others are skipped with a warning (a small
    image-folder task must not fail because the default asks for 10 per class).

    Args:
        shots: requested images per class. labels: [N] int64 train labels. num_classes: class count.
    """
    counts = torch.bincount(labels, minlength=num_classes)
    smallest = int(counts[counts > 0].min()) if bool((counts > 0).any()) else 0
    keep = [k for k in shots if k <= smallest]
    if len(keep) < len(shots):
        log.warning("task %r: few-shot %s skipped: the smallest train class has %d images",
                    task_name, [k for k in shots if k > smallest], smallest)
    return keep


def run_suite(vit: VisionTransformer, tasks: Sequence[EvalTask], backbone_name: str,
              cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Evaluate ``vit`` on every task; returns the report dict (``{"backbone", "tasks": {name: {...}}}``).

    The backbone is left bit-identical (features are extracted in inference mode, mode restored).
    """
    torch.manual_seed(0)
    return {"backbone": backbone_name, "tasks": {t.name: evaluate_task(vit, t, cache_dir) for t in tasks}}


class SuiteConfig(NamedTuple):
    """An evaluation suite YAML (``configs/eval/*.yaml``): its tasks and the feature cache folder."""

    tasks: list[EvalTask]
    cache_dir: str | None


def load_tasks(config_path: str | Path) -> SuiteConfig:
    """Read a suite YAML: ``tasks:`` (a list of :class:`EvalTask` fields) and an optional ``cache_dir:``.

    Raises:
        FileNotFoundError: no such file. VispreError: unknown top-level keys, a bad task entry, or no tasks.
    """
    config_path = Path(config_path)
    if not config_path.is_file():
        raise FileNotFoundError(f"evaluation config {config_path} does not exist")
    config = read_yaml(config_path)  # names the file (and line) of an empty or malformed YAML
    unknown = set(config) - {"tasks", "cache_dir"}
    if unknown:
        raise VispreError(f"{config_path}: unknown keys {sorted(unknown)}; expected 'tasks' and 'cache_dir'")
    tasks = []
    for entry in config.get("tasks") or []:
        try:
            tasks.append(EvalTask(**entry))
        except TypeError as err:  # an unknown field name
            raise VispreError(f"{config_path}: bad task entry {entry}: {err}") from err
    if not tasks:
        raise VispreError(f"{config_path} lists no tasks")
    return SuiteConfig(tasks, config.get("cache_dir"))
