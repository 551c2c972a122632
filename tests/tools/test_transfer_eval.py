"""tools/transfer_eval.py: the seeded stratified split, the atomically written digit folder, and the raw-pixel
floors under the suite's selection rules (on a tiny synthetic digit set)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.helpers import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tools"))  # tools/ is not a package

from transfer_eval import pixel_floors, stratified_split, summary_table, transfer_task, write_digit_folder  # noqa: E402
from vispre.errors import VispreError  # noqa: E402


def _digits(per_class: int = 20, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Class c = a bright c-th horizontal band on noise: trivially separable from the pixels."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes), per_class)
    images = rng.integers(0, 40, size=(labels.size, 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        images[i, 8 * c: 8 * c + 6] = 250
    return images, labels


def test_split_is_stratified_seeded_and_disjoint() -> None:
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    is_test = stratified_split(labels, 0.2, seed=0)
    assert [int(is_test[labels == c].sum()) for c in range(4)] == [2, 4, 6, 8]
    assert np.array_equal(is_test, stratified_split(labels, 0.2, seed=0))
    assert not np.array_equal(is_test, stratified_split(labels, 0.2, seed=1))


def test_folder_written_once_and_a_partial_one_refused(tmp_path) -> None:
    images, labels = _digits()
    root = write_digit_folder(tmp_path / "digits", images, labels)
    assert sorted(p.name for p in (root / "train").iterdir()) == ["0", "1", "2"]
    assert sum(1 for _ in (root / "test").rglob("*.png")) == 12  # 20 % of 20 per class
    assert sum(1 for _ in root.rglob("*.png")) == 60
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    stamp = next(root.rglob("*.png")).stat().st_mtime_ns
    write_digit_folder(root, images, labels)  # complete: kept as it is
    assert next(root.rglob("*.png")).stat().st_mtime_ns == stamp
    next(root.rglob("*.png")).unlink()
    with pytest.raises(VispreError, match="holds 59 PNG files, expected 60"):
        write_digit_folder(root, images, labels)


def test_pixel_floors_separate_the_bands_and_table_lists_them(tmp_path) -> None:
    task = transfer_task(write_digit_folder(tmp_path / "digits", *_digits()))
    task.ks, task.report_k, task.lrs, task.weight_decays, task.epochs = [5], 5, [0.1], [0.0], 30
    floors = pixel_floors(task, img_size=28)
    assert floors["knn_top1"] == 1.0 and floors["linear_top1"] == 1.0
    assert floors["knn_variant"] in ("none", "zscore")
    entry = {"pooled": {"global_pool": "token", "knn_top1": 0.5, "knn_variant": "pooled", "linear_top1": 0.25},
             "knn_top1": 0.75, "linear_top1": 0.625, "knn_feature": "patches", "linear_feature": "cls"}
    table = summary_table(entry, floors)
    assert "| raw pixels (floor) | 1.000 | 1.000 |" in table
    assert "| pooled (global_pool='token') | 0.500 | 0.250 |" in table
    assert "kNN patches, linear cls" in table
