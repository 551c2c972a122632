"""Barlow Twins against a loop reference, closed forms and symmetry; its loss module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vispre.losses import BarlowTwinsLoss, barlow_twins_loss, batch_standardize


def barlow_loop(z1: np.ndarray, z2: np.ndarray, lambd: float) -> float:
    def bn(z: np.ndarray) -> np.ndarray:
        return (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)
    a, b = bn(z1.astype(np.float64)), bn(z2.astype(np.float64))
    n, d = a.shape
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[s, i] * b[s, j] for s in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lambd * c**2
    return loss


@pytest.mark.parametrize("n,d,lambd", [(2, 3, 5e-3), (6, 4, 5e-3), (9, 7, 0.1), (16, 5, 1.0)])
def test_barlow_twins_matches_loop(n: int, d: int, lambd: float) -> None:
    z1, z2 = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
    got = barlow_twins_loss(z1, z2, lambd, gather=False).item()
    assert got == pytest.approx(barlow_loop(z1.numpy(), z2.numpy(), lambd), rel=1e-9)


def test_barlow_twins_closed_form_perfect_decorrelated_views() -> None:
    # Columns +-1 in a Hadamard pattern: standardised, orthogonal -> C = I (up to eps) -> loss ~ 0.
    h = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float64)
    z = h[:, 1:]
    assert barlow_twins_loss(z, z.clone(), 5e-3, gather=False).item() == pytest.approx(0.0, abs=1e-4)
    # Anti-correlated second view: C = -I -> loss = D * (1 - (-1))^2 = 4D (eps shifts it by ~1e-5).
    assert barlow_twins_loss(z, -z, 5e-3, gather=False).item() == pytest.approx(4 * 3, rel=1e-4)


def test_view_swap_gives_the_same_loss() -> None:
    # C(z2, z1) = C(z1, z2)^T, same loss.
    z1, z2 = torch.randn(8, 16, dtype=torch.float64), torch.randn(8, 16, dtype=torch.float64)
    assert barlow_twins_loss(z1, z2, gather=False).item() == pytest.approx(
        barlow_twins_loss(z2, z1, gather=False).item(), rel=1e-12)


def test_batch_standardize_is_batchnorm_without_affine() -> None:
    z = torch.randn(7, 5) * 3 + 1
    bn = torch.nn.BatchNorm1d(5, affine=False, eps=1e-5).train()
    torch.testing.assert_close(batch_standardize(z), bn(z))


def test_module_holds_its_hyper_parameters_and_logs_its_term() -> None:
    z1, z2 = torch.randn(6, 4), torch.randn(6, 4)
    terms = BarlowTwinsLoss(lambd=0.1, gather=False)(z1, z2)
    assert set(terms) == {"loss", "barlow_twins"}
    assert torch.equal(terms["loss"], barlow_twins_loss(z1, z2, 0.1, gather=False))


def test_a_single_sample_batch_gets_a_clear_error() -> None:
    with pytest.raises(ValueError, match="Barlow Twins needs a batch of at least 2 samples"):
        barlow_twins_loss(torch.randn(1, 8), torch.randn(1, 8), gather=False)
