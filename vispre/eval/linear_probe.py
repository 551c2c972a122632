"""Linear-probe sweep on cached features: many linear heads trained in one pass (DINOv2 spirit).

Oquab et al., "DINOv2", arXiv 2304.07193, Sec. 7 / linear evaluation: features are extracted once and a grid of
linear classifiers (learning rates x weight decays) is trained simultaneously; the head is chosen on a
validation split carved from train and reported on test. Features are standardised with train statistics,
which is the MAE protocol's BatchNorm1d(affine=False) in closed form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm


class ProbeRow(NamedTuple):
    """One head of the sweep: its hyper-parameters and accuracies (test only for the selected head)."""

    lr: float
    weight_decay: float
    val_top1: float


class ProbeResult(NamedTuple):
    """Outcome of :func:`linear_probe_sweep`: the selected head's settings and accuracies, and all rows."""

    lr: float
    weight_decay: float
    val_top1: float
    test_top1: float
    rows: list[ProbeRow]
    test_predictions: Tensor


def split_train_val(num: int, val_fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random disjoint (train, val) index tensors covering range(num)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    perm = torch.randperm(num, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(num * val_fraction))
    return perm[n_val:], perm[:n_val]


def train_linear_heads(x: Tensor, y: Tensor, num_classes: int, lrs: Tensor, wds: Tensor, epochs: int = 30,
                       batch_size: int = 1024, momentum: float = 0.9, seed: int = 0,
                       progress: bool = True) -> tuple[Tensor, Tensor]:
    """Train H linear heads at once with SGD + momentum + cosine lr, each with its own lr and wd.

    Args:
        x: [N, D] standardised features. y: [N] labels.
        lrs, wds: [H] learning rate and weight decay of each head.

    Returns:
        (weights [H, D, C], biases [H, C]).
    """
    gen = torch.Generator().manual_seed(seed)
    heads, dim = lrs.shape[0], x.shape[1]
    weight = torch.zeros(heads, dim, num_classes)
    bias = torch.zeros(heads, num_classes)
    vel_w, vel_b = torch.zeros_like(weight), torch.zeros_like(bias)
    steps_per_epoch = math.ceil(x.shape[0] / batch_size)
    total = epochs * steps_per_epoch
    step = 0
    for _ in tqdm(range(epochs), desc="linear probe", disable=not progress, leave=False):
        perm = torch.randperm(x.shape[0], generator=gen)
        for start in range(0, x.shape[0], batch_size):
            idx = perm[start: start + batch_size]
            xb, yb = x[idx], y[idx]
            weight.requires_grad_(True)
            bias.requires_grad_(True)
            logits = torch.einsum("nd,hdc->hnc", xb, weight) + bias[:, None, :]
            loss = F.cross_entropy(logits.reshape(-1, num_classes), yb.repeat(heads), reduction="sum") / len(idx)
            grad_w, grad_b = torch.autograd.grad(loss, (weight, bias))
            scale = 0.5 * (1 + math.cos(math.pi * step / total))
            with torch.no_grad():
                weight, bias = weight.detach(), bias.detach()
                vel_w.mul_(momentum).add_(grad_w + wds[:, None, None] * weight)
                vel_b.mul_(momentum).add_(grad_b)
                weight -= (scale * lrs)[:, None, None] * vel_w
                bias -= (scale * lrs)[:, None] * vel_b
            step += 1
    return weight.detach(), bias.detach()


@torch.no_grad()
def head_predictions(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """[N, D] features, [H, D, C] weights, [H, C] biases -> [H, N] predicted labels."""
    return (torch.einsum("nd,hdc->hnc", x, weight) + bias[:, None, :]).argmax(-1)


def linear_probe_sweep(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
                       lrs: Sequence[float] = (0.01, 0.03, 0.1, 0.3), weight_decays: Sequence[float] = (0.0, 1e-4),
                       epochs: int = 30, batch_size: int = 1024, val_fraction: float = 0.1, seed: int = 0,
                       progress: bool = True) -> ProbeResult:
    """Sweep lr x wd linear heads on frozen features; select on a val split of train; report test.

    Args:
        train_x: [N, D], train_y: [N]; test_x: [M, D], test_y: [M].
        num_classes: C. lrs, weight_decays: the grid. epochs, batch_size: SGD schedule.
        val_fraction: part of train held out for selection (test is never used to select).

    Returns:
        ProbeResult of the head with the best validation top-1.
    """
    tr, va = split_train_val(train_x.shape[0], val_fraction, seed)
    mean, std = train_x[tr].mean(0), train_x[tr].std(0) + 1e-6
    norm = lambda t: (t.float() - mean) / std  # noqa: E731 - BatchNorm(affine=False) with train statistics
    grid = [(lr, wd) for lr in lrs for wd in weight_decays]
    lr_t = torch.tensor([g[0] for g in grid], dtype=torch.float32)
    wd_t = torch.tensor([g[1] for g in grid], dtype=torch.float32)
    weight, bias = train_linear_heads(norm(train_x[tr]), train_y[tr], num_classes, lr_t, wd_t, epochs,
                                      batch_size, seed=seed, progress=progress)
    val_acc = (head_predictions(norm(train_x[va]), weight, bias) == train_y[va]).float().mean(1)
    best = int(val_acc.argmax())
    test_pred = head_predictions(norm(test_x), weight[best: best + 1], bias[best: best + 1])[0]
    rows = [ProbeRow(lr, wd, float(acc)) for (lr, wd), acc in zip(grid, val_acc.tolist())]
    return ProbeResult(grid[best][0], grid[best][1], float(val_acc[best]),
                       float((test_pred == test_y).float().mean()), rows, test_pred)
