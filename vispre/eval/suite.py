"""The evaluation suite: for each task, cached frozen features -> kNN and linear-probe sweeps, with the
feature choice selected on a validation split carved from train, and the number reported on test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml
from timm.models.vision_transformer import VisionTransformer
from tqdm.auto import tqdm

from vispre.data.transforms import EvalView
from vispre.eval.datasets import check_source, load_task_data, subset
from vispre.eval.features import FEATURE_CHOICES, cached_features
from vispre.eval.knn import knn_top1, standardize
from vispre.eval.linear_probe import OPTIMIZERS, linear_probe_sweep, split_train_val
from vispre.errors import VispreError


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
        features: feature choices to compare (see vispre.eval.features). ks/temperature: kNN settings.
        lrs/weight_decays/epochs: linear-probe sweep grid. probe_optimizer: "sgd" or "lars" (MAE protocol). val_fraction: part of train used for selection.
        report_k: the k reported as ``knn_top1``.
        knn_preprocess: kNN feature preprocessing variants compared on val: "none" (cosine on the raw feature)
            and/or "zscore" (each dimension standardised with the bank's statistics first); reported as
            ``<feature>+zscore``.
    """

    name: str = "fashion_mnist"
    dataset: str = "fashion_mnist"
    root: str | None = None
    train_urls: str | None = None
    test_urls: str | None = None
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

    def __post_init__(self) -> None:
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
        unknown = set(self.features) - set(FEATURE_CHOICES)
        if unknown:
            raise VispreError(f"task {self.name!r}: unknown features {sorted(unknown)}; expected from {FEATURE_CHOICES}")


def evaluate_task(vit: VisionTransformer, task: EvalTask, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Run kNN and the linear sweep for every feature choice; select each on val, report test.

    Returns:
        The task's report.json entry: knn_top1, linear_top1 (test, selected on val), the chosen feature and
        hyper-parameters, and per-feature details (``knn`` and ``linear``), plus arrays for plots under ``_plot``.
    """
    img_size, in_chans = int(vit.patch_embed.img_size[0]), int(vit.patch_embed.proj.in_channels)
    data = load_task_data(task.dataset, img_size, in_chans, task.root, task.train_urls, task.test_urls,
                          task.mean, task.std)
    train, test, num_classes = subset(data.train, task.limit_train), subset(data.test, task.limit_test), data.num_classes
    view = EvalView(img_size, mean=data.mean, std=data.std)
    ftrain = cached_features(vit, train.images, view, cache_dir, (task.dataset, "train", view), task.features,
                             desc=f"{task.name} train features")
    ftest = cached_features(vit, test.images, view, cache_dir, (task.dataset, "test", view), task.features,
                            desc=f"{task.name} test features")
    tr, va = split_train_val(len(train.labels), task.val_fraction)
    y = train.labels
    knn_rows = {}
    variants = [(c, p) for c in task.features for p in task.knn_preprocess]
    for choice, prep in tqdm(variants, desc=f"{task.name} kNN", leave=False):
        x, x_test = ftrain[choice], ftest[choice]
        bank, val = x[tr], x[va]
        if prep == "zscore":  # statistics from the bank only: train-part for val, all of train for test
            bank, val = standardize(bank, val)
            x, x_test = standardize(x, x_test)
        val_knn = knn_top1(bank, y[tr], val, y[va], num_classes, (task.report_k,), task.temperature)
        test_knn = knn_top1(x, y, x_test, test.labels, num_classes, task.ks, task.temperature)
        key = choice if prep == "none" else f"{choice}+{prep}"
        knn_rows[key] = {"val_top1": val_knn[task.report_k], **{f"k{k}": v for k, v in test_knn.items()}}
    probe = linear_probe_sweep(ftrain, y, ftest, test.labels, num_classes, task.lrs, task.weight_decays,
                               task.epochs, val_fraction=task.val_fraction, optimizer=task.probe_optimizer)
    best_knn = max(knn_rows, key=lambda c: knn_rows[c]["val_top1"])
    best = probe.best
    return {
        "knn_top1": knn_rows[best_knn][f"k{task.report_k}"], "knn_feature": best_knn, "knn_k": task.report_k,
        "linear_top1": best.test_top1, "linear_feature": best.feature,
        "linear_lr": best.lr, "linear_weight_decay": best.weight_decay, "linear_optimizer": task.probe_optimizer,
        "selected_on": f"validation split ({task.val_fraction:.0%} of train); test never used for selection",
        "knn": knn_rows,
        "linear": {c: {"val_top1": b.val_top1, "test_top1": b.test_top1, "lr": b.lr, "weight_decay": b.weight_decay}
                   for c, b in probe.per_feature.items()},
        "_plot": {"probe": probe, "test_labels": test.labels, "test_features": ftest[best.feature],
                  "classes": num_classes},
    }


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
    config = yaml.safe_load(config_path.read_text()) or {}
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
