"""timm ViT creation by name / sizes, MaskedViT features and architecture description."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_vit
from vispre.backbones import MaskedViT, create_vit
from vispre.backbones.vit import describe_vit


def test_create_by_name_keeps_timm_defaults() -> None:
    vit = create_vit("vit_small_patch16_224", img_size=32)
    assert (vit.embed_dim, len(vit.blocks), vit.blocks[0].attn.num_heads) == (384, 12, 6)
    assert vit.num_classes == 0


def test_create_by_explicit_sizes() -> None:
    vit = create_vit(img_size=28, patch_size=7, in_chans=1, embed_dim=48, depth=3, num_heads=3, mlp_ratio=2.0)
    assert vit.patch_embed.num_patches == 16 and vit.embed_dim == 48 and len(vit.blocks) == 3
    assert vit.blocks[0].mlp.fc1.out_features == 96
    assert vit(torch.randn(2, 1, 28, 28)).shape == (2, 48)


@pytest.mark.parametrize("kwargs,message", [
    (dict(img_size=30, patch_size=8), "img_size 30 is not divisible by patch_size 8"),
    (dict(embed_dim=30, num_heads=4), "embed_dim 30 is not divisible by num_heads 4"),
])
def test_bad_sizes_get_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_vit(**kwargs)


def test_unknown_model_name_is_named() -> None:
    with pytest.raises(ValueError, match="unknown timm ViT name 'vit_nonexistent'"):
        create_vit("vit_nonexistent")


@pytest.mark.parametrize("overrides", [{}, dict(reg_tokens=2), dict(class_token=False, global_pool="avg"),
                                       dict(init_values=1e-3, qkv_bias=False)])
def test_describe_vit_rebuilds_the_same_architecture(overrides: dict) -> None:
    vit = tiny_vit(**overrides).vit
    rebuilt = create_vit(**describe_vit(vit))
    shapes = {k: v.shape for k, v in vit.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}
    rebuilt.load_state_dict(vit.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), vit.eval()(x))


@pytest.mark.parametrize("overrides", [{}, dict(reg_tokens=2), dict(class_token=False, global_pool="avg")])
def test_masked_vit_full_forward_equals_timm(overrides: dict) -> None:
    backbone = tiny_vit(**overrides).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(backbone.forward_features(x), backbone.vit.forward_features(x))
    torch.testing.assert_close(backbone(x), backbone.vit(x))


def test_prefix_tokens_survive_masking() -> None:
    backbone = tiny_vit(reg_tokens=3)
    enc = backbone.forward_masked(torch.randn(2, 3, 32, 32), 0.5)
    assert backbone.num_prefix_tokens == 4
    assert enc.tokens.shape == (2, 4 + 8, 32)


def test_masked_vit_properties() -> None:
    backbone = MaskedViT(img_size=28, patch_size=7, in_chans=1, embed_dim=24, depth=1, num_heads=2)
    assert (backbone.patch_size, backbone.grid_size, backbone.num_patches) == (7, (4, 4), 16)
    assert (backbone.in_chans, backbone.embed_dim, backbone.num_prefix_tokens) == (1, 24, 1)
