"""KoLeo against a brute-force numpy reference, the regular-simplex closed form, duplicates and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vispre.errors import VispreError
from vispre.losses.koleo import koleo_loss


def ref_koleo(x: np.ndarray, eps: float = 1e-8) -> float:
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    nearest = [min(np.linalg.norm(z[i] - z[j]) for j in range(len(z)) if j != i) for i in range(len(z))]
    return float(-np.mean(np.log(np.array(nearest) + eps)))


def simplex(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """n unit vectors with pairwise inner product -1/(n-1), rotated at random into R^dim (dim >= n)."""
    vertices = torch.eye(n, dtype=torch.float64) - 1.0 / n  # centred basis vectors, in the hyperplane sum = 0
    vertices = vertices / vertices.norm(dim=1, keepdim=True)
    gen = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    return torch.cat([vertices, torch.zeros(n, dim - n, dtype=torch.float64)], dim=1) @ rotation


@pytest.mark.parametrize("b,d,seed", [(2, 3, 0), (5, 4, 1), (16, 8, 2), (33, 2, 3), (7, 64, 4)])
def test_koleo_matches_brute_force_reference(b: int, d: int, seed: int) -> None:
    x = torch.randn(b, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3.0
    got = koleo_loss(x)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref_koleo(x.numpy()), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("n,dim", [(2, 2), (3, 3), (4, 6), (10, 10), (50, 64)])
def test_koleo_of_a_regular_simplex_is_minus_log_of_its_edge(n: int, dim: int) -> None:
    # |x_i - x_j|^2 = 2 - 2 <x_i, x_j> = 2 - 2 * (-1 / (n - 1)) = 2 (1 + 1 / (n - 1)) = 2n / (n - 1).
    x = simplex(n, dim)
    edge = math.sqrt(2 * (1 + 1 / (n - 1)))
    pairwise = torch.cdist(x, x) + torch.eye(n, dtype=torch.float64) * edge
    torch.testing.assert_close(pairwise, torch.full((n, n), edge, dtype=torch.float64))
    assert koleo_loss(x * 7.0).item() == pytest.approx(-math.log(edge + 1e-8), rel=1e-6, abs=1e-6)


def test_koleo_is_larger_for_clustered_points() -> None:
    spread = simplex(8, 8)
    clustered = spread * 0.05 + torch.ones(8, 8, dtype=torch.float64)  # all near one direction
    assert koleo_loss(clustered).item() > koleo_loss(spread).item() + 1.0


def test_koleo_duplicates_give_finite_loss_and_gradient() -> None:
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    loss = koleo_loss(x, eps=1e-8)
    assert loss.item() == pytest.approx(-(2 * math.log(1e-8) + math.log(math.sqrt(2) + 1e-8)) / 3, rel=1e-6)
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_koleo_gradient_spreads_the_points() -> None:
    x = torch.tensor([[1.0, 0.1], [1.0, -0.1], [-1.0, 0.0]], requires_grad=True)
    koleo_loss(x).backward()
    # the two close points are pushed apart along the second axis
    assert x.grad[0, 1].item() < 0 < x.grad[1, 1].item()


def test_koleo_is_fp32_under_bf16_autocast() -> None:
    x = torch.randn(12, 8, generator=torch.Generator().manual_seed(5)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = koleo_loss(x)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref_koleo(x.double().numpy()), rel=1e-5)


@pytest.mark.parametrize("shape,eps,words", [((1, 4), 1e-8, "B >= 2"), ((4,), 1e-8, "[B, D]"),
                                             ((3, 0), 1e-8, "D >= 1"), ((3, 4), 0.0, "eps must be > 0")])
def test_koleo_refuses_bad_input(shape, eps, words) -> None:
    with pytest.raises(VispreError) as err:
        koleo_loss(torch.ones(shape), eps=eps)
    assert words in str(err.value)
