"""Elastic sub-networks (POA): slicing on the shared weights, extraction to a plain timm ViT, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from tests.helpers import VIT_VARIANTS, tiny_vit
from vispre.backbones.vit import create_vit, embed_tokens
from vispre.errors import VispreError
from vispre.growth.subnet import (SubnetSpec, elastic_subnets, extract_subnet, parse_subnet, spread_blocks,
                                  subnet_features, subnet_forward, subnet_layout, widen_features)

SPECS = [SubnetSpec(depth=2, embed_dim=16), SubnetSpec(depth=3, embed_dim=24), SubnetSpec(depth=1, embed_dim=8),
         SubnetSpec(depth=4), SubnetSpec(embed_dim=16)]


def model(dtype: torch.dtype = torch.float64, **overrides: object) -> nn.Module:
    """Depth 4, width 32, 4 heads of 8: room for several elastic sizes."""
    torch.manual_seed(0)
    return tiny_vit(depth=4, embed_dim=32, num_heads=4, **overrides).to(dtype).eval()


def images(dtype: torch.dtype = torch.float64, n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=dtype)


@pytest.mark.parametrize("variant", sorted(VIT_VARIANTS))
def test_full_spec_is_the_model(variant: str) -> None:
    m = model(**VIT_VARIANTS[variant])
    x = images()
    assert torch.allclose(subnet_forward(m, x, SubnetSpec()), m(x), atol=1e-12, rtol=0)
    assert torch.allclose(subnet_features(m, x, SubnetSpec()), m.forward_features(x), atol=1e-12, rtol=0)


def test_depth_only_runs_poa_blocks_through_timm() -> None:
    m = model()
    x = images()
    vit = m.vit
    ref = vit.norm(vit.blocks[3](vit.blocks[0](embed_tokens(vit, x))))  # spread_blocks(4, 2) = [0, 3]
    assert torch.allclose(subnet_features(m, x, SubnetSpec(depth=2)), ref, atol=1e-12, rtol=0)


def test_spread_blocks_follow_poa() -> None:
    # POA get_block_idx: np.linspace(0, max_depth - 1, depth).astype(np.int64)
    assert spread_blocks(4, 2) == [0, 3]
    assert spread_blocks(6, 3) == [0, 2, 5]
    assert spread_blocks(4, 1) == [0]
    assert spread_blocks(24, 12) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 23]
    for depth in range(1, 13):
        for sub in range(1, depth + 1):
            blocks = spread_blocks(depth, sub)
            assert len(set(blocks)) == sub and blocks[0] == 0 and (sub == 1 or blocks[-1] == depth - 1)


@pytest.mark.parametrize("variant", sorted(VIT_VARIANTS))
@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_extracted_subnet_equals_sliced_forward(variant: str, spec: SubnetSpec) -> None:
    m = model(**VIT_VARIANTS[variant])
    x = images()
    small = extract_subnet(m, spec)
    assert type(small) is VisionTransformer
    layout = subnet_layout(m, spec)
    assert (len(small.blocks), small.embed_dim) == (len(layout.blocks), layout.embed_dim)
    assert small.blocks[0].attn.num_heads == layout.embed_dim // 8
    assert small.blocks[0].mlp.fc1.out_features == 4 * layout.embed_dim
    ref = subnet_forward(m, x, spec)
    assert ref.shape == (3, layout.embed_dim)
    assert torch.allclose(small(x), ref, atol=1e-10, rtol=0)
    assert torch.allclose(small.forward_features(x), subnet_features(m, x, spec), atol=1e-10, rtol=0)


def test_extraction_float32_and_classifier_head_kept() -> None:
    torch.manual_seed(0)
    vit = create_vit("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=5, num_heads=6,
                     num_classes=7).eval()
    x = images(torch.float32, n=4)
    spec = SubnetSpec(depth=3, embed_dim=24)
    small = extract_subnet(vit, spec)
    assert small.head.out_features == 7 and small.head.in_features == 24
    ref = subnet_forward(vit, x, spec)
    assert ref.shape == (4, 7)
    assert (small(x) - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_extracted_weights_are_scaled_leading_slices() -> None:
    m = model(init_values=0.1)
    small = extract_subnet(m, SubnetSpec(depth=2, embed_dim=16))
    big = m.vit
    # block 1 of the subnet is block 3 of the model (POA's spread); d = 16 of D = 32, 2 of 4 heads of 8
    q_rows = torch.cat([torch.arange(16) + 32 * c for c in range(3)])
    assert torch.equal(small.blocks[1].attn.qkv.weight, big.blocks[3].attn.qkv.weight[q_rows, :16] * 2)
    assert torch.equal(small.blocks[1].attn.qkv.bias, big.blocks[3].attn.qkv.bias[q_rows])
    assert torch.equal(small.blocks[1].mlp.fc2.weight, big.blocks[3].mlp.fc2.weight[:16, :64] * 2)
    assert torch.equal(small.blocks[1].ls2.gamma, big.blocks[3].ls2.gamma[:16])
    assert torch.equal(small.blocks[0].norm1.weight, big.blocks[0].norm1.weight[:16])
    assert torch.equal(small.pos_embed, big.pos_embed[..., :16])
    assert torch.equal(small.patch_embed.proj.weight, big.patch_embed.proj.weight[:16])
    assert not small.pos_embed.requires_grad  # the fixed sin-cos table stays frozen
    assert big.embed_dim == 32 and len(big.blocks) == 4  # the model is untouched


def test_widen_features_is_poa_sliced_head_input() -> None:
    head = nn.Linear(32, 5).double()
    f = torch.randn(6, 16, dtype=torch.float64)
    poa = F.linear(f * (32 / 16), head.weight[:, :16], head.bias)  # POA DynamicLinear, mode 'order'
    assert torch.allclose(head(widen_features(f, 32)), poa, atol=1e-12, rtol=0)
    assert widen_features(f, 16) is f
    with pytest.raises(VispreError, match="exceed"):
        widen_features(f, 8)


def test_gradients_reach_only_the_shared_slices() -> None:
    m = model(dtype=torch.float32).train()
    loss = subnet_forward(m, images(torch.float32), SubnetSpec(depth=2, embed_dim=16)).square().sum()
    loss.backward()
    blocks = m.vit.blocks
    grad = blocks[3].attn.qkv.weight.grad
    assert grad is not None and grad[:16, :16].abs().sum() > 0
    assert grad[16:32].abs().sum() == 0 and grad[:, 16:].abs().sum() == 0
    fc1 = blocks[3].mlp.fc1.weight.grad
    assert fc1[:64, :16].abs().sum() > 0 and fc1[64:].abs().sum() == 0 and fc1[:, 16:].abs().sum() == 0
    assert blocks[1].attn.qkv.weight.grad is None and blocks[2].mlp.fc2.weight.grad is None  # skipped blocks
    assert m.vit.cls_token.grad[..., :16].abs().sum() > 0 and m.vit.cls_token.grad[..., 16:].abs().sum() == 0


@pytest.mark.parametrize(("spec", "message"), [
    (SubnetSpec(depth=0), r"depth must be an integer in \[1, 4\]"),
    (SubnetSpec(depth=5), r"depth must be an integer in \[1, 4\]"),
    (SubnetSpec(embed_dim=12), r"embed_dim must be a multiple of head_dim 8 in \[8, 32\]"),
    (SubnetSpec(embed_dim=40), r"embed_dim must be a multiple of head_dim 8 in \[8, 32\]"),
    (SubnetSpec(embed_dim=0), r"embed_dim must be a multiple of head_dim 8 in \[8, 32\]"),
])
def test_bad_specs_name_the_parameter_and_range(spec: SubnetSpec, message: str) -> None:
    m = model()
    for fn in (lambda: extract_subnet(m, spec), lambda: subnet_forward(m, images(), spec)):
        with pytest.raises(VispreError, match=message):
            fn()


def test_parse_subnet() -> None:
    assert parse_subnet("depth=3,embed_dim=96") == SubnetSpec(depth=3, embed_dim=96)
    assert parse_subnet(" embed_dim = 64 ") == SubnetSpec(embed_dim=64)
    for text, message in [("depth=3,width=9", "keys depth, embed_dim"), ("depth", "key=value"),
                          ("depth=x", "depth must be an integer"), ("", "give depth=D")]:
        with pytest.raises(VispreError, match=message):
            parse_subnet(text)


def test_elastic_subnets_follow_poa_weights() -> None:
    m = model()
    pool = elastic_subnets(m, widths=[16, 24, 32], depths=[2, 3, 4], select_scale=3.0)
    counts = {(s.embed_dim, s.depth): pool.count(s) for s in set(pool)}
    # POA create_dynamic_networks: round(linspace(3, 1, 3)[i] * linspace(3, 1, 3)[j]); intact (32, 4) left out
    expected = {(w, d): int(np.round(ws * ds)) for w, ws in zip([16, 24, 32], [3, 2, 1])
                for d, ds in zip([2, 3, 4], [3, 2, 1])}
    del expected[(32, 4)]
    assert counts == expected and len(pool) == 35
    assert set(elastic_subnets(m, widths=[16], depths=[4], select_scale=1.0)) == {SubnetSpec(depth=4, embed_dim=16)}
    with pytest.raises(VispreError, match="no sub-network smaller"):
        elastic_subnets(m, widths=[32], depths=[4])
    with pytest.raises(VispreError, match="select_scale must be >= 1"):
        elastic_subnets(m, widths=[16], depths=[4], select_scale=0.5)
    with pytest.raises(VispreError, match=r"depth must be an integer in \[1, 4\]"):
        elastic_subnets(m, widths=[16], depths=[6])


def test_export_subnet_round_trip_through_vispre_and_plain_timm(tmp_path, capsys) -> None:
    import json

    import timm

    import vispre
    from tests.helpers import lightning_checkpoint, perturbed, tiny_mae
    from vispre.commands.main import main

    mae = tiny_mae(perturbed(tiny_vit(depth=4, embed_dim=32, num_heads=4)))
    run = lightning_checkpoint(mae, tmp_path / "run" / "checkpoints" / "last.ckpt").parents[1]
    out = tmp_path / "sub.safetensors"
    assert main(["export", str(run), str(out), "--subnet", "depth=2,embed_dim=16"]) == 0
    x = images(torch.float32)
    with torch.no_grad():
        ref = subnet_forward(mae.backbone, x, SubnetSpec(depth=2, embed_dim=16))
        ours = vispre.load_backbone(out)
        args = json.loads(out.with_suffix(".json").read_text())
        plain = timm.create_model(args.pop("model_name"), pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(out)), **args).eval()
        assert (len(plain.blocks), plain.embed_dim, plain.blocks[0].attn.num_heads) == (2, 16, 2)
        for vit in (ours, plain):
            assert (vit(x) - ref).abs().max() <= 1e-5
    assert main(["export", str(run), str(tmp_path / "bad.safetensors"), "--subnet", "depth=9"]) == 2
    assert "depth must be an integer in [1, 4]" in capsys.readouterr().err
    assert not (tmp_path / "bad.safetensors").exists()


@pytest.mark.parametrize("variant", sorted(VIT_VARIANTS))
def test_crops_of_another_size_match_the_dino_crop_encoder(variant: str) -> None:
    from vispre.backbones.crops import encode_crop

    m = model(**VIT_VARIANTS[variant])
    crops = torch.randn(2, 3, 16, 24, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert torch.allclose(subnet_features(m, crops, SubnetSpec()), encode_crop(m, crops), atol=1e-12, rtol=0)
    assert subnet_forward(m, crops, SubnetSpec(depth=2, embed_dim=16)).shape == (2, 16)
    with pytest.raises(VispreError, match=r"multiples of the patch size \(8, 8\)"):
        subnet_features(m, crops[..., :12], SubnetSpec())


def test_grad_checkpointing_gives_the_same_gradients() -> None:
    spec, x = SubnetSpec(depth=3, embed_dim=24), images()
    grads = []
    for recompute in (False, True):
        m = model()
        m.vit.set_grad_checkpointing(recompute)
        subnet_forward(m, x, spec).square().sum().backward()
        grads.append(m.vit.blocks[3].mlp.fc1.weight.grad)
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-12, rtol=0)
