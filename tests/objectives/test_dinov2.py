"""DINOv2 on a tiny ViT: its defaults (separate heads, Sinkhorn-Knopp, EMA 0.994), KoLeo per global crop on the
student's class features, the loss composition, and Sinkhorn-Knopp targets of the masked patches only."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from tests.helpers import tiny_vit
from vispre.backbones.crops import encode_crop
from vispre.errors import VispreError
from vispre.heads import DINOHead
from vispre.losses import koleo_loss, sinkhorn_knopp
from vispre.objectives import OBJECTIVES, DINOv2

HEAD = partial(DINOHead, out_dim=16, hidden_dim=16, bottleneck_dim=8)
B, N = 6, 16


def batch(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    views = [torch.randn(B, 3, 32, 32, generator=gen) for _ in range(2)] + [torch.randn(B, 3, 16, 16, generator=gen)]
    return {"views": views, "masks": torch.rand(B, 2, N, generator=gen) < 0.3}


def test_defaults_are_dinov2s() -> None:
    model = OBJECTIVES["dinov2"](tiny_vit(), head=HEAD)
    assert model.centering == "sinkhorn_knopp" and not model.shared_head and model.patch_head is not None
    assert model.schedule.base_momentum == 0.994 and model.koleo_weight == 0.1
    assert set(model.teacher.branches.keys()) == {"backbone", "head", "patch_head"}


def test_koleo_per_crop_and_the_total() -> None:
    torch.manual_seed(0)
    model = DINOv2(tiny_vit(), head=HEAD, koleo_weight=0.3)
    data = batch()
    terms = model.loss_terms(data)
    masks = data["masks"].transpose(0, 1).reshape(2 * B, N)
    features = model.backbone.pool(encode_crop(model.backbone, torch.cat(data["views"][:2]), masks, model.mask_token))
    want = koleo_loss(features[:B]) + koleo_loss(features[B:])
    torch.testing.assert_close(terms["koleo_loss"], want)
    torch.testing.assert_close(terms["loss"], terms["dino_loss"] + terms["ibot_loss"] + 0.3 * terms["koleo_loss"])
    off = DINOv2(tiny_vit(), head=HEAD, koleo_weight=0.0).loss_terms(data)
    assert "koleo_loss" not in off


def test_sinkhorn_targets_of_masked_patches_and_no_centre_update() -> None:
    model = DINOv2(tiny_vit(), head=HEAD)
    data = batch()
    model.loss_terms(data)
    assert not model.center.any() and not model.patch_center.any()  # Sinkhorn-Knopp keeps no EMA centre
    masks = data["masks"].transpose(0, 1).reshape(2 * B, N)
    p = model.backbone.num_prefix_tokens
    with torch.no_grad():
        tokens = model.teacher["backbone"].forward_features(torch.cat(data["views"][:2]))[:, p:]
        targets = model.patch_targets(tokens, masks)
        want = sinkhorn_knopp(model.teacher["patch_head"](tokens[masks]), model.teacher_temp, 3)
    torch.testing.assert_close(targets[masks], want)
    assert not targets[~masks].any()
    torch.testing.assert_close(targets[masks].sum(-1), torch.ones(int(masks.sum())))


def test_bad_koleo_weight() -> None:
    with pytest.raises(VispreError, match="DINOv2.koleo_weight must be >= 0"):
        DINOv2(tiny_vit(), head=HEAD, koleo_weight=-0.1)


@pytest.mark.parametrize("name", ["dino", "ibot", "dinov2"])
def test_bf16_autocast_step_is_finite_and_close_to_fp32(name: str) -> None:
    torch.manual_seed(0)
    model = OBJECTIVES[name](tiny_vit(), head=HEAD).eval()  # eval: no centre update between the two passes
    data = batch()
    full = model.loss_terms(data)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = model.loss_terms(data)
    half["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    for key, value in full.items():
        assert half[key].dtype == torch.float32
        torch.testing.assert_close(half[key], value, rtol=5e-2, atol=5e-2, msg=key)
