"""shrink (weight subcloning, arXiv 2312.09299): exact bookkeeping where the recipe is exact (same sizes,
depth only), closeness to the large model vs random init, purity, round trip, errors."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from tests.helpers import VIT_VARIANTS, tiny_vit
from vispre.backbones import create_vit, describe_vit, embed_tokens
from vispre.errors import VispreError
from vispre.growth import shrink
from vispre.growth.shrink import subclone

BIG = dict(embed_dim=64, depth=4, num_heads=4)  # head_dim 16, MLP hidden 256


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def trained_big() -> VisionTransformer:
    """A briefly trained large tiny ViT (a random-init cls feature is noise; this one carries a signal)."""
    torch.manual_seed(0)
    vit = tiny_vit(**BIG).vit
    teacher = torch.randn(3 * 32 * 32, 64, generator=torch.Generator().manual_seed(1)) / 55
    opt = torch.optim.AdamW(vit.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ~1 s; tiny ops with 2 threads on a busy 2-core box spin-wait (measured 30-70 s)
    try:
        for _ in range(40):
            x = torch.randn(32, 3, 32, 32)
            loss = (vit(x) - 3 * torch.tanh(x.flatten(1) @ teacher)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return vit.eval()


@pytest.mark.parametrize("variant", list(VIT_VARIANTS))
def test_same_size_is_identity(variant: str) -> None:
    vit = tiny_vit(**BIG, **VIT_VARIANTS[variant]).vit.eval()
    x = torch.randn(4, 3, 32, 32)
    result = shrink(vit, 4, 64, x)
    assert result.plan.blocks == [0, 1, 2, 3] and torch.equal(result.plan.dims, torch.arange(64))
    assert result.plan.norm_scales and all(abs(s - 1) < 1e-12 for s in result.plan.norm_scales.values())
    assert _rel(result.model.eval()(x), vit(x)) <= 1e-6 and result.output_change <= 1e-6


def test_depth_only_drops_the_blocks_that_change_the_stream_least() -> None:
    vit = tiny_vit(**BIG, drop_path_rate=0.3).vit.eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():  # hand-written ranking: mean over tokens of ||block(h) - h|| / ||h||
        h, change = embed_tokens(vit, x), []
        for block in vit.blocks:
            out = block(h)
            change.append(((out - h).norm(dim=-1) / h.norm(dim=-1)).mean().item())
            h = out
    middle = 1 + max(range(2), key=lambda i: change[1 + i])
    small = shrink(vit, 3, 64, x).model.eval()
    assert [torch.equal(small.blocks[1].mlp.fc1.weight, vit.blocks[i].mlp.fc1.weight) for i in (1, 2)] == \
        [middle == 1, middle == 2]
    reference = create_vit(**{**describe_vit(vit), "depth": 3}).eval()
    reference.load_state_dict({**vit.state_dict(), **{f"blocks.{j}.{k}": v for j, i in enumerate([0, middle, 3])
                                                      for k, v in vit.blocks[i].state_dict().items()}}, strict=False)
    assert torch.equal(small(x), reference(x))
    assert [getattr(b.drop_path1, "drop_prob", 0.0) for b in small.blocks] == pytest.approx([0.0, 0.15, 0.3])


def test_shrunk_model_is_closer_to_the_big_one_than_random_init(trained_big: VisionTransformer) -> None:
    x = torch.randn(16, 3, 32, 32)
    result = shrink(trained_big, 2, 32, x)
    small, plan = result.model.eval(), result.plan
    arch = describe_vit(small)
    assert isinstance(small, VisionTransformer)
    sizes = (arch["depth"], arch["embed_dim"], arch["num_heads"], small.blocks[0].mlp.fc1.out_features)
    assert sizes == (2, 32, 2, 128)
    assert plan.blocks == [0, 3] and len(plan.dims) == 32 and [len(u) for u in plan.units] == [128, 128]
    big_out = trained_big(x)[:, plan.dims]
    assert result.output_change == pytest.approx(_rel(small(x), big_out), rel=1e-6)
    random_init = tiny_vit(embed_dim=32, depth=2, num_heads=2).vit.eval()
    rest = torch.ones(64, dtype=torch.bool).index_fill(0, plan.dims, False).nonzero().flatten()
    least = subclone(trained_big, plan._replace(dims=rest)).eval()  # the 32 least important dims instead
    print(f"shrink 4x64 -> 2x32 output change {result.output_change:.3f}, random init "
          f"{_rel(random_init(x), big_out):.3f}, least-important dims {_rel(least(x), trained_big(x)[:, rest]):.3f}")
    assert result.output_change < 0.5 * _rel(random_init(x), big_out)
    assert result.output_change < 0.5 * _rel(least(x), trained_big(x)[:, rest])
    # index bookkeeping of one block against a hand-written selection
    heads = plan.heads[1]
    rows = torch.cat([c * 64 + h * 16 + torch.arange(16) for c in range(3) for h in heads.tolist()])
    qkv = trained_big.blocks[3].attn.qkv.weight
    assert torch.equal(small.blocks[1].attn.qkv.weight, qkv[rows][:, plan.dims])
    fc2 = trained_big.blocks[3].mlp.fc2.weight
    assert torch.equal(small.blocks[1].mlp.fc2.weight, fc2[plan.dims][:, plan.units[1]])
    scale = plan.norm_scales["blocks.3.norm2"]
    assert torch.allclose(small.blocks[1].norm2.weight, trained_big.blocks[3].norm2.weight[plan.dims] * scale)


def test_input_untouched_and_state_dict_round_trip() -> None:
    vit = tiny_vit(**BIG).vit.train()
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    small = shrink(vit, 2, 48, torch.randn(4, 3, 32, 32)).model
    assert all(torch.equal(before[k], v) for k, v in vit.state_dict().items())
    assert vit.training and small.training
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in vit.modules())
    assert not small.pos_embed.requires_grad  # the fixed sin-cos table stays frozen
    again = create_vit(**describe_vit(small)).eval()
    again.load_state_dict(small.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(again(x), small.eval()(x))


@pytest.mark.parametrize("depth,embed_dim,shape,message", [
    (5, 32, (2, 3, 32, 32), r"shrink: depth must lie in \[1, 4\] \(the current depth\), got 5; use grow_depth"),
    (0, 32, (2, 3, 32, 32), r"shrink: depth must lie in \[1, 4\] \(the current depth\), got 0"),
    (2, 40, (2, 3, 32, 32), r"shrink: embed_dim must be a multiple of head_dim 16 in \[16, 64\] \(whole heads are "
                            r"kept\), got 40"),
    (2, 128, (2, 3, 32, 32), r"shrink: embed_dim must be a multiple of head_dim 16 in \[16, 64\]"),
    (2, 32, (2, 1, 32, 32), r"shrink: calibration_batch must be \[B, 3, 32, 32\] images, got shape \(2, 1, 32, 32\)"),
])
def test_errors_name_the_parameter(depth: int, embed_dim: int, shape: tuple, message: str) -> None:
    with pytest.raises(VispreError, match=f"^{message}"):
        shrink(tiny_vit(**BIG).vit, depth, embed_dim, torch.randn(shape))


def test_rejects_non_vit() -> None:
    with pytest.raises(VispreError, match="shrink: expected a timm VisionTransformer, got Linear"):
        shrink(nn.Linear(2, 2), 1, 2, torch.randn(1, 2))
