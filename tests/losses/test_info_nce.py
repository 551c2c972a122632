"""NT-Xent and InfoNCE against loop/numpy references, closed forms and symmetry; their loss modules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vispre.losses import InfoNCELoss, NTXentLoss, info_nce_loss, nt_xent_loss

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


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_closed_form_identical_positives_orthogonal_negatives(t: float) -> None:
    # n one-hot samples, both views equal: s_pos = 1, all negatives 0.
    n = 4
    z = torch.eye(n, dtype=torch.float64)
    expected_nt = -1 / t + math.log(math.exp(1 / t) + (2 * n - 2))
    assert nt_xent_loss(z, z.clone(), t, gather=False).item() == pytest.approx(expected_nt, rel=1e-12)
    expected_nce = -1 / t + math.log(math.exp(1 / t) + (n - 1))
    assert info_nce_loss(z, z.clone(), t, gather=False).item() == pytest.approx(expected_nce, rel=1e-12)


def test_symmetry_under_view_swap_and_scale_invariance() -> None:
    z1, z2 = torch.randn(8, 16, dtype=torch.float64), torch.randn(8, 16, dtype=torch.float64)
    assert nt_xent_loss(z1, z2, 0.2, gather=False).item() == pytest.approx(
        nt_xent_loss(z2, z1, 0.2, gather=False).item(), rel=1e-12)
    assert nt_xent_loss(3 * z1, z2, 0.2, gather=False).item() == pytest.approx(
        nt_xent_loss(z1, z2, 0.2, gather=False).item(), rel=1e-12)


def test_bad_shapes_and_temperature_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"expected two \[N, D\] embeddings of equal shape, got \(4, 8\) and \(4, 7\)"):
        nt_xent_loss(torch.randn(4, 8), torch.randn(4, 7), gather=False)
    with pytest.raises(ValueError, match="temperature must be > 0, got 0.0"):
        nt_xent_loss(torch.randn(4, 8), torch.randn(4, 8), 0.0, gather=False)


def test_nt_xent_module_holds_its_hyper_parameters_and_logs_its_term() -> None:
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8)
    terms = NTXentLoss(temperature=0.3, gather=False)(z1, z2)
    assert set(terms) == {"loss", "nt_xent"}
    assert torch.equal(terms["loss"], nt_xent_loss(z1, z2, 0.3, gather=False))
    assert torch.equal(terms["nt_xent"], terms["loss"])


def test_info_nce_module_is_moco_v3s_symmetrised_loss_scaled_by_2t() -> None:
    q1, q2, k1, k2 = (torch.randn(5, 8, dtype=torch.float64) for _ in range(4))
    terms = InfoNCELoss(temperature=0.2, gather=False)(q1, q2, k1, k2)
    want = 0.4 * (info_nce_loop(q1.numpy(), k2.numpy(), 0.2) + info_nce_loop(q2.numpy(), k1.numpy(), 0.2))
    assert set(terms) == {"loss", "info_nce"}
    assert terms["loss"].item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("module", [NTXentLoss, InfoNCELoss])
def test_loss_modules_reject_a_non_positive_temperature(module) -> None:
    with pytest.raises(ValueError, match=f"{module.__name__}.temperature must be > 0, got 0.0"):
        module(temperature=0.0)
