"""NT-Xent, InfoNCE and Barlow Twins against loop/numpy references, closed forms and symmetry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vispre.losses.barlow_twins import barlow_twins_loss
from vispre.losses.info_nce import info_nce_loss, nt_xent_loss

GRID = [(n, d, t) for n in (2, 5, 16) for d in (3, 8, 32) for t in (0.07, 0.2, 1.0)]


def nt_xent_loop(z1: np.ndarray, z2: np.ndarray, t: float) -> float:
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2, n = len(z), len(z1)
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        denom = sum(math.exp(z[i] @ z[k] / t) for k in range(n2) if k != i)
        total += -math.log(math.exp(z[i] @ z[j] / t) / denom)
    return total / n2


def info_nce_loop(q: np.ndarray, k: np.ndarray, t: float) -> float:
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    k = k / np.linalg.norm(k, axis=1, keepdims=True)
    total = 0.0
    for i in range(len(q)):
        logits = [q[i] @ k[m] / t for m in range(len(k))]
        total += -logits[i] + math.log(sum(math.exp(x) for x in logits))
    return total / len(q)


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


@pytest.mark.parametrize("n,d,t", GRID)
def test_nt_xent_matches_loop(n: int, d: int, t: float) -> None:
    z1, z2 = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
    got = nt_xent_loss(z1, z2, t, gather=False).item()
    assert got == pytest.approx(nt_xent_loop(z1.numpy(), z2.numpy(), t), rel=1e-10)


@pytest.mark.parametrize("n,d,t", GRID)
def test_info_nce_matches_loop(n: int, d: int, t: float) -> None:
    q, k = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
    assert info_nce_loss(q, k, t, gather=False).item() == pytest.approx(info_nce_loop(q.numpy(), k.numpy(), t),
                                                                         rel=1e-10)


@pytest.mark.parametrize("n,d,lambd", [(2, 3, 5e-3), (6, 4, 5e-3), (9, 7, 0.1), (16, 5, 1.0)])
def test_barlow_twins_matches_loop(n: int, d: int, lambd: float) -> None:
    z1, z2 = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
    got = barlow_twins_loss(z1, z2, lambd, gather=False).item()
    assert got == pytest.approx(barlow_loop(z1.numpy(), z2.numpy(), lambd), rel=1e-9)


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_closed_form_identical_positives_orthogonal_negatives(t: float) -> None:
    # n one-hot samples, both views equal: s_pos = 1, all negatives 0.
    n = 4
    z = torch.eye(n, dtype=torch.float64)
    expected_nt = -1 / t + math.log(math.exp(1 / t) + (2 * n - 2))
    assert nt_xent_loss(z, z.clone(), t, gather=False).item() == pytest.approx(expected_nt, rel=1e-12)
    expected_nce = -1 / t + math.log(math.exp(1 / t) + (n - 1))
    assert info_nce_loss(z, z.clone(), t, gather=False).item() == pytest.approx(expected_nce, rel=1e-12)


def test_barlow_twins_closed_form_perfect_decorrelated_views() -> None:
    # Columns +-1 in a Hadamard pattern: standardised, orthogonal -> C = I (up to eps) -> loss ~ 0.
    h = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float64)
    z = h[:, 1:]
    assert barlow_twins_loss(z, z.clone(), 5e-3, gather=False).item() == pytest.approx(0.0, abs=1e-4)
    # Anti-correlated second view: C = -I -> loss = D * (1 - (-1))^2 = 4D (eps shifts it by ~1e-5).
    assert barlow_twins_loss(z, -z, 5e-3, gather=False).item() == pytest.approx(4 * 3, rel=1e-4)


def test_symmetry_under_view_swap_and_scale_invariance() -> None:
    z1, z2 = torch.randn(8, 16, dtype=torch.float64), torch.randn(8, 16, dtype=torch.float64)
    assert nt_xent_loss(z1, z2, 0.2, gather=False).item() == pytest.approx(
        nt_xent_loss(z2, z1, 0.2, gather=False).item(), rel=1e-12)
    assert nt_xent_loss(3 * z1, z2, 0.2, gather=False).item() == pytest.approx(
        nt_xent_loss(z1, z2, 0.2, gather=False).item(), rel=1e-12)
    # Barlow Twins: C(z2, z1) = C(z1, z2)^T, same loss.
    assert barlow_twins_loss(z1, z2, gather=False).item() == pytest.approx(
        barlow_twins_loss(z2, z1, gather=False).item(), rel=1e-12)


def test_bad_shapes_and_temperature_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"expected two \[N, D\] embeddings of equal shape, got \(4, 8\) and \(4, 7\)"):
        nt_xent_loss(torch.randn(4, 8), torch.randn(4, 7), gather=False)
    with pytest.raises(ValueError, match="temperature must be > 0, got 0.0"):
        nt_xent_loss(torch.randn(4, 8), torch.randn(4, 8), 0.0, gather=False)
    with pytest.raises(ValueError, match="Barlow Twins needs a batch of at least 2 samples"):
        barlow_twins_loss(torch.randn(1, 8), torch.randn(1, 8), gather=False)
