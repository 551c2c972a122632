"""Function preservation, purity, errors and trainability of the growth operators (docs/growth.md), on
MaskedViT backbones and on plain timm classifiers (head kept, logits preserved)."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from tests.helpers import VIT_VARIANTS, tiny_mae, tiny_vit
from vispre.errors import VispreError
from vispre.growth import (GrowthSpec, grow_depth, grow_heads, grow_mlp, grow_objective, grow_width, shrink,
                           split_block_name)

VARIANTS = VIT_VARIANTS
EXACT_OPS = {
    "depth_zero": lambda m: grow_depth(m, 5, "zero"),
    "width_x2": lambda m: grow_width(m, 64),
    "width_x3_noise": lambda m: grow_width(m, 96, noise_std=0.01, generator=torch.Generator().manual_seed(1)),
    "mlp_tile": lambda m: grow_mlp(m, 8.0),
    "mlp_random": lambda m: grow_mlp(m, 5.0, mode="random"),
    "heads_x2": lambda m: grow_heads(m, 4),
}
TOL = {torch.float64: 1e-8, torch.float32: 1e-5}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _first_copy(features: torch.Tensor, width: int) -> torch.Tensor:
    """[B, kD] -> all k copies must equal the small model's [B, D]; returns [B, k, D]."""
    return features.reshape(features.shape[0], -1, width)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("op", list(EXACT_OPS))
def test_exact_operators_preserve_features(op: str, variant: str, dtype: torch.dtype) -> None:
    vit = tiny_vit(**VARIANTS[variant]).vit.to(dtype).eval()
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    x = torch.randn(3, 3, 32, 32, dtype=dtype)
    small_feats, small_tokens = vit(x), vit.forward_features(x)
    grown = EXACT_OPS[op](vit).model.eval()
    copies = _first_copy(grown(x), 32)
    tokens = grown.forward_features(x).reshape(*small_tokens.shape[:2], -1, 32)
    for c in range(copies.shape[1]):
        assert _rel(copies[:, c], small_feats) <= TOL[dtype]
        assert _rel(tokens[:, :, c], small_tokens) <= TOL[dtype]
    assert all(torch.equal(before[k], v) for k, v in vit.state_dict().items())  # input untouched


def test_depth_zero_is_bitwise_and_recomputes_drop_path() -> None:
    vit = tiny_vit(drop_path_rate=0.2, depth=2).vit.eval()
    grown = grow_depth(vit, 4, "zero").model.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(grown(x), vit(x))
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in grown.blocks]  # rate 0 -> Identity
    assert rates == pytest.approx(torch.linspace(0, 0.2, 4).tolist())


@pytest.mark.parametrize("mode", ["stack", "interleave"])
def test_stacking_is_approximate_and_reports_error(mode: str) -> None:
    vit = tiny_vit().vit.double().eval()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    err = _rel(grow_depth(vit, 4, mode).model.eval()(x), vit(x))
    print(f"grow_depth {mode} 2->4 relative feature change: {err:.3f}")
    assert 1e-3 < err < 2.0  # not function-preserving (reference: 6-23% on a toy ViT)


def test_stack_and_interleave_copy_the_right_blocks() -> None:
    vit = tiny_vit(depth=2).vit
    stacked, inter = grow_depth(vit, 4, "stack").model, grow_depth(vit, 4, "interleave").model
    for i, src in enumerate([0, 1, 0, 1]):
        assert torch.equal(stacked.blocks[i].attn.qkv.weight, vit.blocks[src].attn.qkv.weight)
    for i, src in enumerate([0, 0, 1, 1]):
        assert torch.equal(inter.blocks[i].mlp.fc1.weight, vit.blocks[src].mlp.fc1.weight)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("spec", [GrowthSpec(depth=4), GrowthSpec(embed_dim=64), GrowthSpec(depth=3, embed_dim=64),
                                  GrowthSpec(embed_dim=64, noise_std=0.01)])
def test_mae_loss_preserved_with_identical_mask_noise(spec: GrowthSpec, dtype: torch.dtype) -> None:
    mae = tiny_mae().to(dtype).eval()
    x, noise = torch.randn(4, 3, 32, 32, dtype=dtype), torch.rand(4, 16, dtype=dtype)
    loss, pred, _ = mae.forward_loss(x, noise)
    grow_objective(mae, spec)
    loss2, pred2, _ = mae.forward_loss(x, noise)
    assert mae.backbone.embed_dim == (spec.embed_dim or 32)
    assert abs(loss2.item() - loss.item()) / loss.item() <= TOL[dtype]
    assert _rel(pred2, pred) <= TOL[dtype]
    assert not mae.backbone.vit.pos_embed.requires_grad  # fixed sin-cos stays frozen, tiled
    if spec.embed_dim:
        pos = mae.backbone.vit.pos_embed
        assert torch.equal(pos[..., 32:64], pos[..., :32])


def test_errors_name_the_parameter() -> None:
    vit = tiny_vit().vit
    with pytest.raises(VispreError, match=r"^embed_dim: 48 is not an integer multiple \(>= 1x\) of the current 32"):
        grow_width(vit, 48)
    with pytest.raises(VispreError, match=r"^num_heads: 3 is not an integer multiple"):
        grow_heads(vit, 3)
    with pytest.raises(VispreError, match=r"^mlp_ratio: 160 is not an integer multiple"):
        grow_mlp(vit, 5.0)
    with pytest.raises(VispreError, match="grow_depth: depth 1 is smaller than the current depth 2; use shrink"):
        grow_depth(vit, 1)
    with pytest.raises(VispreError, match="grow_depth: mode must be one of"):
        grow_depth(vit, 4, "copy")
    with pytest.raises(VispreError, match="grow_width: expected a timm VisionTransformer, got Linear"):
        grow_width(torch.nn.Linear(2, 2), 4)


def test_state_dict_round_trip_of_grown_model() -> None:
    grown = grow_depth(grow_width(tiny_vit().vit, 64).model, 3, "zero").model
    again = tiny_vit(embed_dim=64, num_heads=4, depth=3).vit
    again.load_state_dict(grown.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(again.eval()(x), grown.eval()(x))


@pytest.mark.parametrize("op", ["depth_zero", "width_x3_noise", "mlp_random"])
def test_grown_models_are_trainable(op: str) -> None:
    grown = EXACT_OPS[op](tiny_vit().vit).model.train()
    start = {n: p.detach().clone() for n, p in grown.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in grown.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        grown(torch.randn(4, 3, 32, 32)).pow(2).mean().backward()
        opt.step()
    frozen = [n for n, p in grown.named_parameters() if p.requires_grad and torch.equal(p, start[n])]
    assert frozen == []
    if op == "depth_zero":  # the zeroed copies (blocks 1, 3 of 5... ) moved off zero
        assert grown.blocks[1].attn.proj.weight.abs().sum() > 0


def _classifier(**overrides) -> VisionTransformer:
    """A plain timm classifier, as a new user would build it (no vispre wrapper, learned pos_embed)."""
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=7)
    return VisionTransformer(**{**args, **overrides}).eval()


CLASSIFIER_OPS = {**EXACT_OPS, "depth_6_zero": lambda m: grow_depth(m, 6, mode="zero"),
                  "width_96": lambda m: grow_width(m, 96)}


@pytest.mark.parametrize("variant", [{}, dict(global_pool="avg", class_token=False), dict(reg_tokens=1)],
                         ids=["token", "avg", "registers"])
@pytest.mark.parametrize("op", list(CLASSIFIER_OPS))
def test_growing_a_timm_classifier_keeps_its_head_and_logits(op: str, variant: dict) -> None:
    vit = _classifier(**variant).double()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    logits = vit(x)
    grown = CLASSIFIER_OPS[op](vit).model.eval()
    assert isinstance(grown, VisionTransformer) and grown.head.out_features == 7 and grown.num_classes == 7
    assert _rel(grown(x), logits) <= TOL[torch.float64]


def test_shrinking_a_timm_classifier_keeps_its_head() -> None:
    vit = _classifier(embed_dim=64, depth=4, num_heads=4)
    x = torch.randn(8, 3, 32, 32)
    result = shrink(vit, 2, 32, x)
    assert result.model.head.out_features == 7 and result.model(x).shape == (8, 7)
    torch.testing.assert_close(result.model.head.weight, vit.head.weight[:, result.plan.dims])
    assert result.output_change == pytest.approx(_rel(result.model.eval()(x), vit(x)), rel=1e-6)
    same = shrink(vit, 4, 64, x)  # same sizes reproduce the logits
    assert _rel(same.model.eval()(x), vit(x)) <= 1e-6


def test_split_block_name() -> None:
    assert split_block_name("blocks.11.attn.qkv.weight") == (11, "attn.qkv.weight")
    assert split_block_name("pos_embed") == (None, "pos_embed")
    assert split_block_name("head.weight").index is None
