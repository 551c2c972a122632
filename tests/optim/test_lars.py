"""LARS (MAE linear-probe optimizer) and its trust ratio against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from vispre.errors import VispreError
from vispre.optim import LARS, LARSRecipe, trust_ratio


def test_first_step_matches_hand_computation() -> None:
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    opt = LARS([w, b], lr=2.0, weight_decay=0.1, momentum=0.9, trust_coefficient=0.001)
    w.grad = torch.tensor([[0.3, 0.4]])  # + 0.1 * w = [0.6, 0.8], norm 1 -> trust ratio 0.001 * 5 / 1
    b.grad = torch.tensor([0.5])  # 1-D: no decay, no trust ratio
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([[3.0 - 2.0 * 0.005 * 0.6, 4.0 - 2.0 * 0.005 * 0.8]]))
    torch.testing.assert_close(b.detach(), torch.tensor([1.0 - 2.0 * 0.5]))


def test_three_steps_with_momentum_match_numpy_loop() -> None:
    torch.manual_seed(1)
    w0 = torch.randn(4, 3)
    grads = [torch.randn(4, 3) for _ in range(3)]
    w = nn.Parameter(w0.clone())
    opt = LARS([w], lr=0.5, weight_decay=0.05, momentum=0.9, trust_coefficient=0.01)
    for g in grads:
        w.grad = g.clone()
        opt.step()
    ref, mu = w0.double().numpy(), np.zeros((4, 3))
    for g in grads:
        d = g.double().numpy() + 0.05 * ref
        d = d * (0.01 * np.linalg.norm(ref) / np.linalg.norm(d))
        mu = 0.9 * mu + d
        ref = ref - 0.5 * mu
    np.testing.assert_allclose(w.detach().double().numpy(), ref, rtol=1e-5, atol=1e-6)


def test_zero_weight_uses_trust_ratio_one() -> None:
    w = nn.Parameter(torch.zeros(2, 2))
    opt = LARS([w], lr=1.0, momentum=0.0)
    w.grad = torch.full((2, 2), 0.25)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((2, 2), -0.25))


def test_recipe_scales_lr_and_schedules() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, affine=False))
    bundle = LARSRecipe(base_lr=0.1, warmup_fraction=0.1).build(model, effective_batch_size=512, total_steps=100)
    assert isinstance(bundle.optimizer, LARS)
    assert bundle.peak_lr == pytest.approx(0.2) and bundle.warmup_steps == 10
    assert bundle.optimizer.param_groups[0]["lr"] == pytest.approx(0.2 / 10)  # warmup step 0 = 1/10
    for _ in range(55):
        bundle.optimizer.step()
        bundle.scheduler.step()
    # step 55: cosine half-way between steps 10 and 100
    assert bundle.optimizer.param_groups[0]["lr"] == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 0.5)))


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=-1.0), "LARS lr must be >= 0, got -1.0"),
    (dict(momentum=1.0), "LARS momentum must lie in [0, 1), got 1.0"),
    (dict(trust_coefficient=0.0), "LARS trust_coefficient must be > 0, got 0.0"),
])
def test_bad_hyperparameters_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(VispreError) as err:
        LARS([nn.Parameter(torch.ones(2, 2))], **kwargs)
    assert str(err.value) == message


def test_trust_ratio_per_head_matches_one_call_per_head() -> None:
    """The batched probe's per-head ratio (dim=(0, 2) of [D, H, C]) is the optimizer's ratio of each head."""
    torch.manual_seed(3)
    weight, update = torch.randn(6, 4, 3), torch.randn(6, 4, 3)
    weight[:, 1] = 0.0  # a zero head: ratio 1
    update[:, 2] = 0.0  # a zero update: ratio 1
    batched = trust_ratio(weight, update, 0.001, dim=(0, 2))
    assert batched.shape == (1, 4, 1)
    per_head = torch.stack([trust_ratio(weight[:, h], update[:, h], 0.001) for h in range(4)])
    torch.testing.assert_close(batched.flatten(), per_head)
    assert batched[0, 1, 0] == 1.0 and batched[0, 2, 0] == 1.0
    expected = 0.001 * weight[:, 0].norm() / update[:, 0].norm()
    torch.testing.assert_close(batched[0, 0, 0], expected)


def test_recipe_builds_lars_with_decay_only_on_matrices() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    opt = LARSRecipe(weight_decay=0.01, momentum=0.5).build(model, 256, 10).optimizer
    assert [(len(g["params"]), g["weight_decay"], g["momentum"]) for g in opt.param_groups] == [(1, 0.01, 0.5),
                                                                                                (3, 0.0, 0.5)]
