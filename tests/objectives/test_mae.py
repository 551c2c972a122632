"""MAE objective: forward shapes, gradients, channels, reconstruction, argument checks."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_mae, tiny_vit
from vispre.backbones import patchify
from vispre.losses import masked_mse_loss, normalize_patches
from vispre.objectives import MAE, MAEOutput


def test_mae_forward_shapes_and_grads_reach_every_trainable_parameter() -> None:
    mae = tiny_mae()
    out = mae.forward_loss(torch.randn(4, 3, 32, 32))
    assert isinstance(out, MAEOutput)
    assert out.pred.shape == (4, 16, 8 * 8 * 3) and out.mask.shape == (4, 16)
    assert out.mask.sum(1).tolist() == [12.0] * 4  # 0.75 of 16 patches masked per image
    out.loss.backward()
    missing = [n for n, p in mae.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert missing == []
    assert not mae.backbone.vit.pos_embed.requires_grad  # fixed sin-cos


def test_forward_loss_is_the_masked_mse_of_its_own_prediction() -> None:
    mae = tiny_mae()
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    out = mae.forward_loss(images, noise)
    want = masked_mse_loss(out.pred, patchify(images, 8), out.mask, norm_pix=True)
    assert torch.equal(out.loss, want)
    terms = mae.loss_terms({"views": [images]})
    assert set(terms) == {"loss", "mae_loss"} and torch.equal(terms["loss"], terms["mae_loss"])


def test_decoder_is_sized_from_the_backbone() -> None:
    mae = tiny_mae(backbone=tiny_vit(in_chans=1, embed_dim=48, num_heads=3))
    assert mae.decoder.decoder_embed.in_features == 48
    assert mae.decoder.pred.out_features == 8 * 8 * 1
    assert mae.decoder.pos_embed.shape == (1, 1 + 16, 16)  # cls + 4x4 grid, decoder_dim 16


def test_grey_and_rgb_both_train() -> None:
    for chans in (1, 3):
        mae = tiny_mae(backbone=tiny_vit(in_chans=chans))
        loss = mae.loss_terms({"views": [torch.randn(2, chans, 32, 32)]})["loss"]
        assert torch.isfinite(loss)


def test_reconstruction_keeps_visible_patches_exactly() -> None:
    mae = tiny_mae().eval()
    images = torch.randn(2, 3, 32, 32)
    rec = mae.reconstruct(images, noise=torch.rand(2, 16))
    assert rec.reconstruction.shape == images.shape
    kept = rec.masked != 0
    torch.testing.assert_close(rec.reconstruction[kept], images[kept])


def test_reconstruction_maps_predictions_back_with_each_true_patch_statistics() -> None:
    mae = tiny_mae().eval()
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    out = mae.forward_loss(images, noise)
    rec = mae.reconstruct(images, noise=noise)
    target = patchify(images, 8)
    masked = out.mask.bool()
    pasted = patchify(rec.reconstruction, 8)
    # re-normalising the pasted masked patches with the true patches' statistics gives the raw prediction
    mean, std = target.mean(-1, keepdim=True), (target.var(-1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(((pasted - mean) / std)[masked], out.pred[masked], rtol=1e-5, atol=1e-5)
    # and normalising the true patches is what the loss compares against
    torch.testing.assert_close(normalize_patches(target), (target - mean) / std)


def test_invalid_mae_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="mask_ratio must lie strictly between 0 and 1, got 1.0"):
        tiny_mae(mask_ratio=1.0)
    with pytest.raises(ValueError, match="decoder_dim 30 is not divisible by decoder_num_heads 4"):
        MAE(tiny_vit(), decoder_dim=30, decoder_num_heads=4)
    with pytest.raises(TypeError):
        MAE(tiny_vit(), 0.5)  # type: ignore[misc] - everything but the backbone is keyword-only
