"""MAE loss semantics, encoder behaviour, decoder shapes, position embeddings, optimizer recipe."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import tiny_vit
from vispre.backbones import patchify, sincos_pos_embed_2d
from vispre.losses import masked_mse_loss, normalize_patches
from vispre.objectives import MAE, AdamWRecipe
from vispre.objectives.optim import param_groups, warmup_cosine


def tiny_mae(**kw: object) -> MAE:
    return MAE(tiny_vit(), decoder_dim=16, decoder_depth=1, decoder_num_heads=2, **kw)


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


def test_loss_shape_mismatch_is_named() -> None:
    with pytest.raises(ValueError, match=r"pred \(1, 2, 3\) and target \(1, 2, 4\) differ"):
        masked_mse_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), torch.ones(1, 2))


def test_encoder_sees_only_kept_tokens_and_visible_pixels() -> None:
    backbone = tiny_vit().eval()
    images = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    enc = backbone.forward_masked(images, 0.75, noise=noise)
    assert enc.tokens.shape == (2, 1 + 4, 32)
    # changing masked pixels must not change the encoding
    patches = patchify(images, 8)
    patches[enc.mask.mask.bool()] = 7.0
    from vispre.backbones import unpatchify

    changed = unpatchify(patches, 8, (4, 4), 3)
    enc2 = backbone.forward_masked(changed, 0.75, noise=noise)
    torch.testing.assert_close(enc.tokens, enc2.tokens)


def test_mae_forward_shapes_and_grads_reach_every_trainable_parameter() -> None:
    mae = tiny_mae()
    loss, pred, mask = mae.forward_loss(torch.randn(4, 3, 32, 32))
    assert pred.shape == (4, 16, 8 * 8 * 3) and mask.shape == (4, 16)
    loss.backward()
    missing = [n for n, p in mae.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert missing == []
    assert not mae.backbone.vit.pos_embed.requires_grad  # fixed sin-cos


def test_grey_and_rgb_both_train() -> None:
    for chans in (1, 3):
        mae = MAE(tiny_vit(in_chans=chans), decoder_dim=16, decoder_depth=1, decoder_num_heads=2)
        loss = mae.loss_terms({"views": [torch.randn(2, chans, 32, 32)]})["loss"]
        assert torch.isfinite(loss)


def test_reconstruction_keeps_visible_patches_exactly() -> None:
    mae = tiny_mae().eval()
    images = torch.randn(2, 3, 32, 32)
    rec = mae.reconstruct(images, noise=torch.rand(2, 16))
    assert rec.reconstruction.shape == images.shape
    kept = rec.masked != 0
    torch.testing.assert_close(rec.reconstruction[kept], images[kept])


def test_invalid_mae_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="mask_ratio must lie strictly between 0 and 1, got 1.0"):
        tiny_mae(mask_ratio=1.0)
    with pytest.raises(ValueError, match="decoder_dim 30 is not divisible by decoder_num_heads 4"):
        MAE(tiny_vit(), decoder_dim=30, decoder_num_heads=4)


def test_sincos_pos_embed_matches_reference_formula() -> None:
    emb = sincos_pos_embed_2d(8, (2, 3), num_prefix_tokens=1)
    assert emb.shape == (7, 8)
    assert torch.equal(emb[0], torch.zeros(8))
    # token for row 1, col 2: first half encodes x=2, second half y=1; dim 4 -> omega = [1, 1/100]
    x, y, omega = 2.0, 1.0, [1.0, 0.01]
    ref = [math.sin(x * w) for w in omega] + [math.cos(x * w) for w in omega]
    ref += [math.sin(y * w) for w in omega] + [math.cos(y * w) for w in omega]
    torch.testing.assert_close(emb[1 + 1 * 3 + 2], torch.tensor(ref), rtol=1e-6, atol=1e-6)


def test_no_weight_decay_on_biases_norms_tokens_and_pos_embeds() -> None:
    groups = param_groups(tiny_mae(), weight_decay=0.05)
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    plain = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    assert "backbone.vit.blocks.0.attn.qkv.weight" in decayed
    assert {"backbone.vit.cls_token", "decoder.mask_token", "backbone.vit.blocks.0.norm1.weight",
            "backbone.vit.blocks.0.attn.qkv.bias"} <= plain
    assert "backbone.vit.pos_embed" not in decayed | plain  # frozen, not optimised
    assert all(p.ndim >= 2 for g in groups if g["weight_decay"] > 0 for p in g["params"])


def test_lr_scaling_and_schedule() -> None:
    recipe = AdamWRecipe(base_lr=1.5e-4, warmup_fraction=0.1)
    assert recipe.peak_lr(4096) == pytest.approx(2.4e-3)
    bundle = recipe.build(tiny_mae(), effective_batch_size=512, total_steps=100)
    assert bundle.peak_lr == pytest.approx(3e-4) and bundle.warmup_steps == 10
    lrs = []
    for _ in range(100):
        lrs.append(bundle.optimizer.param_groups[0]["lr"])
        bundle.optimizer.step()
        bundle.scheduler.step()
    assert lrs[0] == pytest.approx(3e-5)  # (step+1)/warmup
    assert lrs[9] == pytest.approx(3e-4)  # peak at the end of warmup
    assert lrs[-1] < 1e-6 and all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5)
    assert bundle.optimizer.defaults["betas"] == (0.9, 0.95)


def test_bad_optimizer_recipe_is_rejected() -> None:
    with pytest.raises(ValueError, match="optimizer.warmup_fraction must lie in"):
        AdamWRecipe(warmup_fraction=1.5)
