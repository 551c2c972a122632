"""Linear-probe sweep on cached features: many linear heads trained in one pass (DINOv2 spirit).

Oquab et al., "DINOv2", arXiv 2304.07193, Sec. 7 / linear evaluation: features are extracted once and a grid of
linear classifiers (feature choices x learning rates x weight decays) is trained simultaneously over the same
mini-batches; each head is selected on a validation split carved from train and reported on test.

Features are standardised with train statistics: the MAE protocol's BatchNorm1d(affine=False) in closed form
(He et al., "Masked Autoencoders Are Scalable Vision Learners", arXiv 2111.06377, Appendix A.2). The optimiser is
SGD with momentum (default) or LARS (``optimizer="lars"``, the MAE protocol, trust coefficient 0.001), cosine lr.
LARS steps are 0.001 x ||w|| / ||g|| x lr per head, so its useful learning rates are ~30x larger than SGD's.
Gradients are written out (softmax - one-hot), so every step is two GEMMs per feature choice for all its heads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from vispre.eval.knn import default_device
from vispre.optim.lars import trust_ratio

OPTIMIZERS = ("sgd", "lars")
LARS_TRUST = 0.001
"""Trust coefficient of the probe's LARS (MAE protocol); the ratio is :func:`vispre.optim.trust_ratio`."""


class ProbeRow(NamedTuple):
    """One head of the sweep: its hyper-parameters and validation top-1."""

    feature: str
    lr: float
    weight_decay: float
    val_top1: float


class LinearHeads(NamedTuple):
    """H linear heads on one feature: standardisation statistics, weights [D, H, C], biases [H, C]."""

    mean: Tensor
    std: Tensor
    weight: Tensor
    bias: Tensor

    def predict(self, x: Tensor) -> Tensor:
        """[N, D] raw features (any device) -> [H, N] predicted labels (on the CPU)."""
        x = x.to(self.weight.device).float()
        return head_logits((x - self.mean) / self.std, self.weight, self.bias).argmax(-1).T.cpu()


class FeatureBest(NamedTuple):
    """The best head (on val) of one feature choice and its test top-1."""

    feature: str
    lr: float
    weight_decay: float
    val_top1: float
    test_top1: float


class ProbeResult(NamedTuple):
    """Outcome of :func:`linear_probe_sweep`: the selected head (best val top-1 over every feature and
    hyper-parameter) with its test accuracy and [M] test predictions, each feature's best, and every head's row."""

    best: FeatureBest
    per_feature: dict[str, FeatureBest]
    rows: list[ProbeRow]
    test_predictions: Tensor


def split_train_val(num: int, val_fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random disjoint (train, val) index tensors covering range(num)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    perm = torch.randperm(num, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(num * val_fraction))
    return perm[n_val:], perm[:n_val]


def head_logits(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """[N, D] standardised features, [D, H, C] weights, [H, C] biases -> [N, H, C] logits (one GEMM)."""
    d, h, c = weight.shape
    return (x @ weight.reshape(d, h * c)).view(-1, h, c) + bias


def train_linear_heads(features: Mapping[str, Tensor], labels: Tensor, num_classes: int, lrs: Tensor, wds: Tensor,
                       epochs: int = 20, batch_size: int = 1024, momentum: float = 0.9, optimizer: str = "sgd",
                       seed: int = 0, progress: bool = True,
                       device: str | torch.device | None = None) -> dict[str, LinearHeads]:
    """Train H heads on every feature choice at once over the same mini-batches, cosine lr, momentum.

    Args:
        features: {choice: [N, D_choice]} raw features (standardised here with their own statistics).
        labels: [N] int64 in [0, num_classes).
        lrs, wds: [H] learning rate and weight decay of each head (the same grid for every choice).
        optimizer: "sgd" (momentum SGD, zero init) or "lars" (MAE protocol: trust ratio on weights, 0.01-std init).
        device: where the heads train (default: CUDA when present, else CPU); the random draws stay on the
            CPU generator, so the schedule is the same on either.

    Returns:
        {choice: LinearHeads} (tensors on ``device``).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown probe optimizer {optimizer!r}; expected one of {OPTIMIZERS}")
    dev = torch.device(device) if device is not None else default_device()
    gen = torch.Generator().manual_seed(seed)
    n, h = labels.shape[0], lrs.shape[0]
    lrs, wds = lrs.to(dev), wds.to(dev)
    order = torch.randperm(n, generator=gen)  # shuffle once; batches are contiguous slices (no per-step copies)
    stats = {k: (v.to(dev).float().mean(0), v.to(dev).float().std(0) + 1e-6) for k, v in features.items()}
    xs = {k: (v[order].to(dev).float() - stats[k][0]) / stats[k][1] for k, v in features.items()}
    targets = F.one_hot(labels[order].to(dev), num_classes).float()[:, None, :]  # [N, 1, C]
    init = (lambda d: (torch.randn(d, h, num_classes, generator=gen) * 0.01).to(dev)) if optimizer == "lars" else \
        (lambda d: torch.zeros(d, h, num_classes, device=dev))
    weights = {k: init(x.shape[1]) for k, x in xs.items()}
    biases = {k: torch.zeros(h, num_classes, device=dev) for k in xs}
    vel_w = {k: torch.zeros_like(w) for k, w in weights.items()}
    vel_b = {k: torch.zeros_like(b) for k, b in biases.items()}
    grad_w = {k: torch.empty_like(w) for k, w in weights.items()}
    logits_buf = torch.empty(min(batch_size, n), h * num_classes, device=dev)  # preallocated: no per-step page faults
    starts = torch.arange(0, n, batch_size)
    total = epochs * len(starts)
    step = 0
    for _ in tqdm(range(epochs), desc=f"linear probe ({len(xs)} features x {h} heads)", disable=not progress,
                  leave=False):
        for start in starts[torch.randperm(len(starts), generator=gen)].tolist():  # batch order reshuffled
            batch = slice(start, start + batch_size)
            target = targets[batch]
            size = target.shape[0]
            lr = (0.5 * (1 + math.cos(math.pi * step / total)) * lrs)[None, :, None]  # [1, H, 1]
            for k, x in xs.items():
                w, gw = weights[k], grad_w[k]
                _step_grads(x[batch], target, w, biases[k], logits_buf[:size], gw)
                gw.addcmul_(w, wds[None, :, None])
                if optimizer == "lars":
                    gw.mul_(trust_ratio(w, gw, LARS_TRUST, dim=(0, 2)))  # per head: [1, H, 1]
                vel_w[k].mul_(momentum).add_(gw)
                vel_b[k].mul_(momentum).add_(logits_buf[:size].view(size, h, num_classes).sum(0))
                w.addcmul_(vel_w[k], lr, value=-1.0)
                biases[k].addcmul_(vel_b[k], lr[0], value=-1.0)
            step += 1
    return {k: LinearHeads(*stats[k], weights[k], biases[k]) for k in xs}


def _step_grads(xb: Tensor, target: Tensor, weight: Tensor, bias: Tensor, buf: Tensor, grad_w: Tensor) -> None:
    """Mean cross-entropy gradients of H heads, in place: ``buf`` [b, H*C] <- d loss / d logits,
    ``grad_w`` [D, H, C] <- xb^T buf. ``target`` is [b, 1, C] one-hot."""
    b, (d, h, c) = xb.shape[0], weight.shape
    torch.mm(xb, weight.view(d, h * c), out=buf)
    probs = buf.view(b, h, c).add_(bias)
    # exp(<-60) would be ~0 anyway; clamping keeps the softmax tail out of denormals (~4x slower GEMMs on CPU)
    probs.sub_(probs.amax(-1, keepdim=True)).clamp_min_(-60.0).exp_()
    probs.div_(probs.sum(-1, keepdim=True)).sub_(target).div_(b)
    torch.mm(xb.T, buf, out=grad_w.view(d, h * c))


def linear_probe_sweep(train_x: Mapping[str, Tensor], train_y: Tensor, test_x: Mapping[str, Tensor],
                       test_y: Tensor, num_classes: int, lrs: Sequence[float] = (0.01, 0.03, 0.1, 0.3, 1.0),
                       weight_decays: Sequence[float] = (0.0, 1e-4), epochs: int = 20, batch_size: int = 1024,
                       val_fraction: float = 0.1, optimizer: str = "sgd", seed: int = 0,
                       progress: bool = True, device: str | torch.device | None = None) -> ProbeResult:
    """Sweep feature choice x lr x wd linear heads; select on a val split of train; report test.

    Args:
        train_x: {choice: [N, D_choice]}, train_y: [N]; test_x: {choice: [M, D_choice]}, test_y: [M].
        num_classes: C. lrs, weight_decays: the grid. epochs, batch_size: the schedule.
        val_fraction: part of train held out for selection (test is never used to select).
        device: where the heads train (default: CUDA when present, else CPU).

    Returns:
        ProbeResult of the head with the best validation top-1 (ties: first in grid order).
    """
    tr, va = split_train_val(train_y.shape[0], val_fraction, seed)
    grid = [(lr, wd) for lr in lrs for wd in weight_decays]
    lr_t = torch.tensor([g[0] for g in grid], dtype=torch.float32)
    wd_t = torch.tensor([g[1] for g in grid], dtype=torch.float32)
    heads = train_linear_heads({k: v[tr] for k, v in train_x.items()}, train_y[tr], num_classes, lr_t, wd_t,
                               epochs, batch_size, optimizer=optimizer, seed=seed, progress=progress, device=device)
    rows: list[ProbeRow] = []
    per_feature: dict[str, FeatureBest] = {}
    predictions: dict[str, Tensor] = {}
    for choice, head in heads.items():
        val_acc = (head.predict(train_x[choice][va]) == train_y[va]).float().mean(1)
        rows += [ProbeRow(choice, lr, wd, float(a)) for (lr, wd), a in zip(grid, val_acc.tolist())]
        j = int(val_acc.argmax())  # first of ties
        predictions[choice] = head.predict(test_x[choice])[j]
        per_feature[choice] = FeatureBest(choice, grid[j][0], grid[j][1], float(val_acc[j]),
                                          float((predictions[choice] == test_y).float().mean()))
    best = max(per_feature.values(), key=lambda b: b.val_top1)
    return ProbeResult(best, per_feature, rows, predictions[best.feature])
