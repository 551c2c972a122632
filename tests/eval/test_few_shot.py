"""Few-shot evaluation: balanced seeded draws, determinism per seed, a separable toy set at 1.0, clear errors."""

from __future__ import annotations

import pytest
import torch

from vispre.errors import VispreError
from vispre.eval.few_shot import FEW_SHOT_PROTOCOL, draw_shots, few_shot_eval, few_shot_report


def toy(n_per_class: int, num_classes: int = 4, dim: int = 16, noise: float = 0.1, seed: int = 0):
    """Well separated clusters: class c sits at a fixed random centre (every dimension carries signal) + noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    centres = 3.0 * torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(123))
    return centres[labels] + noise * torch.randn(labels.shape[0], dim, generator=gen), labels


def test_draws_are_balanced_without_replacement_and_seeded() -> None:
    labels = torch.tensor([0] * 7 + [1] * 9 + [2] * 5)[torch.randperm(21, generator=torch.Generator().manual_seed(3))]
    idx = draw_shots(labels, 5, 3, seed=11)
    assert idx.shape == (15,) and idx.unique().numel() == 15  # no image twice
    assert torch.bincount(labels[idx], minlength=3).tolist() == [5, 5, 5]
    assert torch.equal(idx, draw_shots(labels, 5, 3, seed=11))  # same seed, same draw
    assert not torch.equal(idx, draw_shots(labels, 5, 3, seed=12))


def test_a_separable_toy_set_reaches_one_and_results_are_deterministic() -> None:
    train_x, train_y = toy(20)
    test_x, test_y = toy(30, seed=1)
    results = few_shot_eval(train_x, train_y, test_x, test_y, 4, shots=(1, 5), draws=3, seed=0)
    assert list(results) == [1, 5]
    for r in results.values():
        assert r.knn_top1 == [1.0] * 3 and r.linear_top1 == [1.0] * 3
        assert r.summary() == {"knn_mean": 1.0, "knn_std": 0.0, "linear_mean": 1.0, "linear_std": 0.0, "draws": 3}
    again = few_shot_eval(train_x, train_y, test_x, test_y, 4, shots=(1, 5), draws=3, seed=0)
    assert again == results


def test_noisy_draws_differ_and_the_std_is_over_draws() -> None:
    train_x, train_y = toy(30, noise=2.5)
    test_x, test_y = toy(50, noise=2.5, seed=1)
    first = few_shot_eval(train_x, train_y, test_x, test_y, 4, shots=(2,), draws=4, seed=0)[2]
    assert first == few_shot_eval(train_x, train_y, test_x, test_y, 4, shots=(2,), draws=4, seed=0)[2]
    assert len(set(first.knn_top1)) > 1  # different draws, different numbers
    summary = first.summary()
    knn = torch.tensor(first.knn_top1)
    assert summary["knn_mean"] == pytest.approx(knn.mean().item())
    assert summary["knn_std"] == pytest.approx(((knn - knn.mean()) ** 2).mean().sqrt().item())
    other = few_shot_eval(train_x, train_y, test_x, test_y, 4, shots=(2,), draws=4, seed=7)[2]
    assert other.knn_top1 != first.knn_top1


def test_more_shots_than_a_class_has_is_a_clear_error() -> None:
    train_x, train_y = toy(3)
    with pytest.raises(VispreError, match=r"5-shot needs 5 train images of every class, but class 0 \(dark\) has 3; "
                                          r"lower few_shot_shots \(largest possible here: 3\)"):
        few_shot_eval(train_x, train_y, train_x, train_y, 4, shots=(5,), draws=1,
                      class_names=["dark", "b", "c", "d"])
    with pytest.raises(VispreError, match="draws must be >= 1, got 0"):
        few_shot_eval(train_x, train_y, train_x, train_y, 4, shots=(1,), draws=0)
    with pytest.raises(VispreError, match="shots must be >= 1 image per class, got 0"):
        draw_shots(train_y, 0, 4, seed=0)


def test_report_entry_shape() -> None:
    train_x, train_y = toy(5)
    entry = few_shot_report(few_shot_eval(train_x, train_y, train_x, train_y, 4, shots=(1,), draws=2), "pooled")
    assert entry["few_shot_feature"] == "pooled" and entry["few_shot_protocol"] == FEW_SHOT_PROTOCOL
    assert set(entry["few_shot"]["1"]) == {"knn_mean", "knn_std", "linear_mean", "linear_std", "draws"}
