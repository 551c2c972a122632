"""Linear-probe sweep: solves a linearly separable problem; heads are selected on val, never on test."""

from __future__ import annotations

import pytest
import torch

from vispre.eval.linear_probe import head_logits, linear_probe_sweep, split_train_val, train_linear_heads


def separable(n: int, dim: int = 6, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, dim] features whose first `classes` coordinates hold a one-hot of the label (+ small noise and an
    offset/scale the probe must standardise away), remaining coordinates noise: linearly separable."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=gen)
    x = torch.randn(n, dim, generator=gen) * 0.1
    x[:, :classes] += 4.0 * torch.nn.functional.one_hot(y, classes)
    return x * 10.0 + 3.0, y


def noise(n: int, dim: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


# LARS steps are trust 0.001 x ||w|| / ||g|| x lr: its learning rates live on a ~30x larger scale than SGD's.
@pytest.mark.parametrize("optimizer,lrs", [("sgd", (0.1, 1.0)), ("lars", (3.0, 30.0))])
def test_sweep_solves_a_linearly_separable_problem(optimizer: str, lrs: tuple[float, float]) -> None:
    x, y = separable(600)
    xt, yt = separable(200, seed=5)
    result = linear_probe_sweep({"f": x}, y, {"f": xt}, yt, num_classes=3, lrs=lrs, weight_decays=(0.0,),
                                epochs=20, batch_size=64, optimizer=optimizer, progress=False)
    assert result.best.test_top1 == 1.0 and result.best.val_top1 == 1.0
    assert torch.equal(result.test_predictions, yt)
    assert len(result.rows) == 2


def test_selection_uses_val_not_test() -> None:
    """Feature "good" is separable on train/val but noise on test; "swapped" is noise on train/val and
    separable on test (where its heads then score above chance). Selecting on test would pick "swapped";
    selecting on val must pick "good" and report its (now chance-level) test accuracy."""
    x, y = separable(600)
    xt, yt = separable(300, seed=5)
    train = {"good": x, "swapped": noise(600)}
    test = {"good": noise(300, seed=7), "swapped": xt}
    result = linear_probe_sweep(train, y, test, yt, num_classes=3, lrs=(0.03, 0.3), weight_decays=(0.0, 1e-4),
                                epochs=5, batch_size=64, progress=False)
    assert result.best.feature == "good"
    assert result.best.val_top1 == 1.0 and result.best.test_top1 < 0.45
    assert result.per_feature["swapped"].test_top1 > result.best.test_top1
    # the chosen head is the argmax of the validation column over all rows (first of ties)
    best_row = max(result.rows, key=lambda r: r.val_top1)
    assert result.best.val_top1 == best_row.val_top1
    # changing test labels changes reported test numbers but never the selection
    other = linear_probe_sweep(train, y, test, (yt + 1) % 3, num_classes=3, lrs=(0.03, 0.3),
                               weight_decays=(0.0, 1e-4), epochs=5, batch_size=64, progress=False)
    assert other.best[:4] == result.best[:4] and other.rows == result.rows


def test_each_grid_head_is_a_separate_model() -> None:
    """Heads with lr 0 stay at their zero init (all logits equal) while lr > 0 heads learn."""
    x, y = separable(200)
    heads = train_linear_heads({"f": x}, y, 3, torch.tensor([0.0, 0.5]), torch.tensor([0.0, 0.0]), epochs=3,
                               batch_size=50, progress=False)["f"]
    assert heads.weight.shape == (6, 2, 3) and heads.bias.shape == (2, 3)
    assert torch.all(heads.weight[:, 0] == 0) and torch.all(heads.bias[0] == 0)
    assert (heads.predict(x)[1] == y).float().mean() == 1.0


def test_head_logits_is_one_gemm_of_every_head() -> None:
    x, w, b = torch.randn(5, 4), torch.randn(4, 3, 2), torch.randn(3, 2)
    logits = head_logits(x, w, b)
    assert logits.shape == (5, 3, 2)
    for h in range(3):
        torch.testing.assert_close(logits[:, h], x @ w[:, h] + b[h])


def test_split_train_val_is_disjoint_covering_and_seeded() -> None:
    tr, va = split_train_val(100, 0.1, seed=3)
    assert len(va) == 10 and len(tr) == 90
    assert sorted(torch.cat([tr, va]).tolist()) == list(range(100))
    assert torch.equal(split_train_val(100, 0.1, seed=3)[1], va)
    with pytest.raises(ValueError, match=r"val_fraction must lie in \(0, 1\), got 1.0"):
        split_train_val(10, 1.0)


def test_unknown_optimizer_is_named() -> None:
    x, y = separable(20)
    with pytest.raises(ValueError, match="unknown probe optimizer 'adam'"):
        train_linear_heads({"f": x}, y, 3, torch.tensor([0.1]), torch.tensor([0.0]), optimizer="adam")
