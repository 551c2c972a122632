"""timm ViT creation by name / sizes, MaskedViT features and architecture description."""

from __future__ import annotations

import pytest
import torch
import yaml

from tests.helpers import CONFIGS, tiny_vit
from vispre.backbones import MaskedViT, create_vit, describe_vit, embed_tokens
from vispre.errors import VispreError


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
    with pytest.raises(VispreError, match=message):
        create_vit(**kwargs)


def test_unknown_model_name_is_named() -> None:
    with pytest.raises(VispreError, match="unknown timm ViT name 'vit_nonexistent'"):
        create_vit("vit_nonexistent")


@pytest.mark.parametrize("overrides", [{}, dict(reg_tokens=2), dict(class_token=False, global_pool="avg"),
                                       dict(global_pool="max", fc_norm=False), dict(init_values=1e-3, qkv_bias=False)])
def test_describe_vit_rebuilds_the_same_architecture(overrides: dict) -> None:
    vit = tiny_vit(**overrides).vit
    rebuilt = create_vit(**describe_vit(vit))
    shapes = {k: v.shape for k, v in vit.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}
    rebuilt.load_state_dict(vit.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), vit.eval()(x))


EMBED_VARIANTS = [{}, dict(reg_tokens=2), dict(class_token=False, global_pool="avg"),
                  dict(class_token=False, reg_tokens=2, global_pool="avg"), dict(sincos_pos_embed=False),
                  dict(global_pool="max", fc_norm=False)]


def test_max_pool_without_fc_norm_is_the_channel_max_of_the_normed_patch_tokens() -> None:
    """global_pool='max', fc_norm=False (the quickstart's export): the final norm stays on every token (the
    architecture the MAE encoder trains) and the embedding is the per-channel max over the patch tokens."""
    backbone = tiny_vit(global_pool="max", fc_norm=False).eval()
    assert isinstance(backbone.vit.norm, torch.nn.LayerNorm) and isinstance(backbone.vit.fc_norm, torch.nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    tokens = backbone.forward_features(x)
    torch.testing.assert_close(backbone(x), tokens[:, backbone.num_prefix_tokens:].amax(dim=1))
    assert describe_vit(backbone.vit)["global_pool"] == "max" and describe_vit(backbone.vit)["fc_norm"] is False


@pytest.mark.parametrize("overrides", EMBED_VARIANTS)
def test_masked_vit_full_forward_is_bit_identical_to_timm(overrides: dict) -> None:
    """MaskedViT builds prefix tokens and positions from timm's public attributes: same bits as timm."""
    backbone = tiny_vit(**overrides).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(backbone.forward_features(x), backbone.vit.forward_features(x))
    assert torch.equal(backbone(x), backbone.vit(x))


@pytest.mark.parametrize("no_embed_class", [False, True])
@pytest.mark.parametrize("tokens", [dict(), dict(reg_tokens=1), dict(class_token=False, global_pool="avg")])
def test_embed_tokens_handles_every_prefix_layout(no_embed_class: bool, tokens: dict) -> None:
    vit = create_vit(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, no_embed_class=no_embed_class,
                     **tokens).eval()
    with torch.no_grad():
        vit.pos_embed.normal_()
    x = torch.randn(2, 3, 32, 32)
    tokens_out = embed_tokens(vit, x)
    assert tokens_out.shape == (2, vit.num_prefix_tokens + 16, 32)
    assert torch.equal(vit.norm(vit.blocks(tokens_out)), vit.forward_features(x))


@pytest.mark.parametrize("config", sorted(p for p in CONFIGS.rglob("*.yaml") if "backbone" in p.read_text()),
                         ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_backbones_encode_as_timm(config) -> None:
    """Every backbone of configs/ (small image size for speed): MaskedViT == timm, bit for bit."""
    model = yaml.safe_load(config.read_text()).get("model") or {}
    args = (model.get("init_args") or {}).get("backbone", {}).get("init_args")
    if args is None:
        pytest.skip("no backbone in this config")
    patch = args.get("patch_size") or 16
    small = {**args, "img_size": 2 * patch, "depth": 1, "init_from": None}
    backbone = MaskedViT(**small).eval()
    x = torch.randn(2, backbone.in_chans, 2 * patch, 2 * patch)
    assert torch.equal(backbone.forward_features(x), backbone.vit.forward_features(x))


def test_grad_checkpointing_is_honoured_and_keeps_gradients() -> None:
    backbone = tiny_vit()
    x, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    backbone.forward_masked(x, 0.5, noise=noise).tokens.pow(2).sum().backward()
    reference = {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None}
    backbone.zero_grad()
    calls = []
    backbone.vit.blocks[0].attn.register_forward_hook(lambda *_: calls.append(1))
    backbone.vit.set_grad_checkpointing(True)  # timm's public switch
    backbone.forward_masked(x, 0.5, noise=noise).tokens.pow(2).sum().backward()
    assert len(calls) == 2  # forward + recomputation in backward
    for name, grad in reference.items():
        torch.testing.assert_close(dict(backbone.named_parameters())[name].grad, grad, rtol=1e-5, atol=1e-7)
    calls.clear()
    with torch.no_grad():
        backbone.forward_features(x)
    assert len(calls) == 1  # no checkpointing without gradients
    backbone.vit.set_grad_checkpointing(False)
    backbone.forward_features(x).sum().backward()
    assert len(calls) == 2  # off again: no recomputation


def test_prefix_tokens_survive_masking() -> None:
    backbone = tiny_vit(reg_tokens=3)
    enc = backbone.forward_masked(torch.randn(2, 3, 32, 32), 0.5)
    assert backbone.num_prefix_tokens == 4
    assert enc.tokens.shape == (2, 4 + 8, 32)


def test_masked_vit_properties() -> None:
    backbone = MaskedViT(img_size=28, patch_size=7, in_chans=1, embed_dim=24, depth=1, num_heads=2)
    assert (backbone.patch_size, backbone.grid_size, backbone.num_patches) == (7, (4, 4), 16)
    assert (backbone.in_chans, backbone.embed_dim, backbone.num_prefix_tokens) == (1, 24, 1)
