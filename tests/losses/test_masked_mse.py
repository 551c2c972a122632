"""MAE's masked pixel loss and the per-patch normalisation it shares with the reconstruction figure."""

from __future__ import annotations

import math

import pytest
import torch

from vispre.losses import denormalize_patches, masked_mse_loss, normalize_patches, patch_stats


def test_loss_ignores_visible_patches() -> None:
    target = torch.randn(2, 6, 12)
    mask = torch.tensor([[1, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.float32)
    pred = target.clone()
    pred[mask == 0] += 100.0  # garbage on visible patches only
    assert masked_mse_loss(pred, target, mask, norm_pix=False).item() == 0.0


def test_loss_is_zero_when_prediction_equals_normalised_target() -> None:
    target = torch.randn(3, 5, 8) * 4 + 2
    mask = (torch.rand(3, 5) > 0.5).float()
    mask[0, 0] = 1
    assert masked_mse_loss(normalize_patches(target), target, mask, norm_pix=True).item() == pytest.approx(0, abs=1e-10)


def test_loss_matches_hand_computation_with_norm_pix() -> None:
    target = torch.tensor([[[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 4.0, 4.0]]])
    pred = torch.zeros(1, 2, 4)
    mask = torch.tensor([[1.0, 0.0]])
    patch = [1.0, 2.0, 3.0, 6.0]
    mean = sum(patch) / 4
    var = sum((v - mean) ** 2 for v in patch) / 3  # unbiased, as torch.var and the MAE code
    normed = [(v - mean) / math.sqrt(var + 1e-6) for v in patch]
    expected = sum(v * v for v in normed) / 4
    assert masked_mse_loss(pred, target, mask, norm_pix=True).item() == pytest.approx(expected, rel=1e-6)
    # without norm_pix: mean of squares of the first patch only
    assert masked_mse_loss(pred, target, mask, norm_pix=False).item() == pytest.approx(50 / 4)
    stats = patch_stats(target)
    assert stats.mean[0, 0, 0].item() == pytest.approx(mean)
    assert stats.std[0, 0, 0].item() == pytest.approx(math.sqrt(var + 1e-6))


def test_denormalize_inverts_normalize() -> None:
    target = torch.randn(2, 5, 12, dtype=torch.float64) * 3 + 1
    torch.testing.assert_close(denormalize_patches(normalize_patches(target), target), target)


def test_loss_shape_mismatch_is_named() -> None:
    with pytest.raises(ValueError, match=r"pred \(1, 2, 3\) and target \(1, 2, 4\) differ"):
        masked_mse_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), torch.ones(1, 2))
