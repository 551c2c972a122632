"""Exact width growth of a pre-LN timm ViT: embed_dim D -> kD, MLP hidden M -> M', heads H -> H'.

Width: HyperCloning-style tiling (Samragh et al. 2024, arXiv 2409.12903; bert2BERT FPI, arXiv 2110.07143):
the residual stream becomes k copies of the small one, heads grow H -> kH with head_dim kept, and every
matrix whose input is tiled is divided by k. A tiled vector keeps its mean and variance, so LayerNorm stays
exact. Optional symmetric noise (+eta / -eta on alternating input blocks, zero-sum over the k blocks) cancels
in the forward pass and breaks the copies' symmetry in the backward pass. Tensor table: docs/growth.md.
"""

from __future__ import annotations

from typing import Literal

import torch
from timm.models.vision_transformer import Attention, VisionTransformer
from torch import Tensor, nn

from vispre.errors import VispreError
from vispre.growth.maps import (GrowthResult, ParamMap, apply_map, check_vit, integer_factor, load_grown,
                                rebuild_vit, split_block_name)


def width_map(name: str, k: int) -> ParamMap:
    """The tiling map of parameter ``name`` when the residual stream grows k-fold (MLP ratio kept)."""
    short = split_block_name(name).suffix
    if short in ("cls_token", "reg_token", "pos_embed"):
        return ParamMap(name, (1, 1, k), b=k)
    if short == "patch_embed.proj.weight":
        return ParamMap(name, (k, 1, 1, 1), b=k)
    if short in ("attn.qkv.weight",):
        return ParamMap(name, (k, k), chunks=3, a=k, b=k)
    if short == "attn.qkv.bias":
        return ParamMap(name, (k,), chunks=3, b=k)
    if short in ("attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight"):
        return ParamMap(name, (k, k), a=k, b=k)
    if short.startswith(("attn.q_norm", "attn.k_norm")) or short == "head.bias":
        return ParamMap(name, (1,))
    if short == "head.weight":
        return ParamMap(name, (1, k), a=k)
    if short.endswith((".bias", ".weight", "gamma")):  # LayerNorms, LayerScale, remaining biases
        return ParamMap(name, (k,), b=k)
    raise VispreError(f"grow_width: no tiling rule for parameter {name!r}")


def symmetric_noise(shape: torch.Size, k: int, std: float, generator: torch.Generator | None,
                    like: Tensor) -> Tensor:
    """[out, k * in] noise whose k column blocks sum to zero (for k = 2: +eta, -eta)."""
    out, cols = shape
    eta = torch.randn(k, out, cols // k, generator=generator, dtype=torch.float64) * std
    eta = eta - eta.mean(dim=0, keepdim=True)
    return torch.cat(list(eta), dim=1).to(like)


def grow_width(model: nn.Module, embed_dim: int, noise_std: float = 0.0,
               generator: torch.Generator | None = None) -> GrowthResult:
    """A new ViT of width ``embed_dim`` = k * D computing the same function as ``model``.

    Args:
        model: timm VisionTransformer of width D and H heads (a classifier keeps its head and its logits).
        embed_dim: k * D, k a positive integer (else VispreError naming embed_dim).
        noise_std: std of the symmetric noise added to every matrix whose input is tiled (qkv, proj, fc1,
            fc2, head); 0 = noise-free (copies then stay tied under deterministic training).
        generator: RNG for the noise.

    Returns:
        GrowthResult(model with embed_dim kD, num_heads kH, same head_dim and mlp_ratio; maps).
        Pooled features of the grown model are k copies of the small model's: reshape [B, k, D].
    """
    vit = check_vit(model, "grow_width")
    k = integer_factor(embed_dim, vit.embed_dim, "embed_dim")
    heads = vit.blocks[0].attn.num_heads
    new = rebuild_vit(vit, embed_dim=embed_dim, num_heads=heads * k)
    old = dict(vit.named_parameters())
    maps, values = {}, {}
    for name, fresh in new.named_parameters():
        pm = width_map(name, k)
        value = apply_map(pm, old[name].detach(), fresh.detach(), pm.a)
        if noise_std > 0 and pm.a == k and k > 1:
            value = value + symmetric_noise(value.shape, k, noise_std, generator, value)
        maps[name], values[name] = pm, value
    return load_grown(new, maps, values, vit)


def grow_mlp(model: nn.Module, mlp_ratio: float, mode: Literal["tile", "random"] = "tile") -> GrowthResult:
    """A new ViT with MLP hidden width ``mlp_ratio * D`` computing the same function as ``model``.

    Args:
        model: timm VisionTransformer with hidden width M.
        mlp_ratio: new ratio; M' = int(D * mlp_ratio) >= M.
        mode: ``tile``: fc1 rows tiled, tiled fc2 columns divided by M'/M (needs an integer factor);
            ``random``: new fc1 rows keep timm's fresh init, new fc2 columns are zero (any M' >= M).

    Returns:
        GrowthResult(grown model, maps).
    """
    vit = check_vit(model, "grow_mlp")
    hidden = vit.blocks[0].mlp.fc1.out_features
    new_hidden = int(vit.embed_dim * mlp_ratio)
    if mode == "tile":
        k = integer_factor(new_hidden, hidden, "mlp_ratio")
    elif mode == "random":
        if new_hidden < hidden:
            raise VispreError(f"grow_mlp: mlp_ratio {mlp_ratio} gives {new_hidden} hidden units < current {hidden}")
        k = 1
    else:
        raise VispreError(f"grow_mlp: mode must be 'tile' or 'random', got {mode!r}")
    new = rebuild_vit(vit, mlp_ratio=mlp_ratio)
    rules = {"mlp.fc1.weight": ParamMap("", (k, 1), b=k), "mlp.fc1.bias": ParamMap("", (k,), b=k),
             "mlp.fc2.weight": ParamMap("", (1, k), a=k)}
    return _map_params(vit, new, rules, pad=mode == "random")


def grow_heads(model: nn.Module, num_heads: int) -> GrowthResult:
    """A new ViT with ``num_heads`` = k * H attention heads of the same head_dim (embed_dim unchanged).

    Each head is copied k times and the proj columns are divided by k (exact). The attention width becomes
    k * D != embed_dim, which ``timm.create_model`` cannot express: the result works in memory and saves
    and loads as a state dict into itself, but :func:`vispre.backbones.vit.describe_vit` cannot rebuild it,
    so the GrowthCallback and ``vispre grow`` refuse heads-only growth (use grow_width, which grows heads).

    Returns:
        GrowthResult(grown model, maps).
    """
    vit = check_vit(model, "grow_heads")
    attn0 = vit.blocks[0].attn
    k = integer_factor(num_heads, attn0.num_heads, "num_heads")
    if not isinstance(attn0.q_norm, nn.Identity):
        raise VispreError("grow_heads: parameter 'attn.q_norm' (qk_norm=True) is not supported")
    new = rebuild_vit(vit)
    for block, old_block in zip(new.blocks, vit.blocks):
        old_attn = old_block.attn
        block.attn = Attention(vit.embed_dim, num_heads, attn_head_dim=old_attn.head_dim,
                               qkv_bias=old_attn.qkv.bias is not None, attn_drop=old_attn.attn_drop.p,
                               proj_drop=old_attn.proj_drop.p).to(old_attn.qkv.weight)
    rules = {"attn.qkv.weight": ParamMap("", (k, 1), chunks=3, b=k),
             "attn.qkv.bias": ParamMap("", (k,), chunks=3, b=k),
             "attn.proj.weight": ParamMap("", (1, k), a=k)}
    return _map_params(vit, new, rules)


def _map_params(vit: VisionTransformer, new: VisionTransformer, rules: dict[str, ParamMap],
                pad: bool = False) -> GrowthResult:
    """Apply per-suffix ``rules`` (others copied) from ``vit`` into ``new``; ``pad`` = leading-slice copy."""
    old = dict(vit.named_parameters())
    maps, values = {}, {}
    for name, fresh in new.named_parameters():
        rule = rules.get(split_block_name(name).suffix)
        pm = ParamMap(name) if rule is None else rule._replace(source=name)
        if pad and rule is not None:
            pm = ParamMap(name, pad=True)
            fresh = torch.zeros_like(fresh) if name.endswith("fc2.weight") else fresh
        values[name] = apply_map(pm, old[name].detach(), fresh.detach(), pm.a)
        maps[name] = pm
    return load_grown(new, maps, values, vit)
