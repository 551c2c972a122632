"""Depth growth L -> L' of a pre-LN timm ViT (embeddings, final norm and head unchanged).

Modes (Du et al., "Stacking Your Transformers", arXiv 2405.15319, G_stack and G_zero):
- ``stack``: new block i copies block ``i mod L``. Not function-preserving (approximate).
- ``interleave``: new block i copies block ``i * L // L'`` (each block repeated in place). Approximate.
- ``zero``: blocks placed as in ``interleave``; every extra copy has its residual branches switched off
  (LayerScale gammas set to 0 where present, else ``attn.proj`` and ``mlp.fc2`` weight and bias set to 0).
  Exact (bitwise). The block itself is never all-zero, so gradients flow from step 1 (proj/fc2 or gamma).
The stochastic-depth schedule is recomputed for L' (timm linspace(0, drop_path_rate, L')).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from vispre.errors import VispreError
from vispre.growth.maps import GrowthResult, ParamMap, check_vit, load_grown, rebuild_vit, split_block_name

DepthMode = Literal["stack", "interleave", "zero"]
DEPTH_MODES = ("stack", "interleave", "zero")
_ZERO_BRANCH = ("attn.proj.weight", "attn.proj.bias", "mlp.fc2.weight", "mlp.fc2.bias")
_ZERO_GAMMA = ("ls1.gamma", "ls2.gamma")


def depth_sources(depth: int, new_depth: int, mode: DepthMode) -> list[int]:
    """Source block index of each of the ``new_depth`` grown blocks."""
    if mode == "stack":
        return [i % depth for i in range(new_depth)]
    return [i * depth // new_depth for i in range(new_depth)]


def grow_depth(model: nn.Module, depth: int, mode: DepthMode = "zero") -> GrowthResult:
    """A new, deeper ViT built from ``model``'s blocks (``model`` is left untouched).

    Args:
        model: timm VisionTransformer with L blocks (any head: a classifier keeps its head and logits).
        depth: L' >= L.
        mode: ``stack`` | ``interleave`` (approximate, G_stack) | ``zero`` (exact).

    Returns:
        GrowthResult(model, maps): maps name block copies as non-primary (their optimizer moments start at 0).
    """
    vit = check_vit(model, "grow_depth")
    old_depth = len(vit.blocks)
    if mode not in DEPTH_MODES:
        raise VispreError(f"grow_depth: mode must be one of {DEPTH_MODES}, got {mode!r}")
    if depth < old_depth:
        raise VispreError(f"grow_depth: depth {depth} is smaller than the current depth {old_depth}; use shrink")
    new = rebuild_vit(vit, depth=depth)
    old_params = dict(vit.named_parameters())
    has_gamma = not isinstance(vit.blocks[0].ls1, nn.Identity)
    zeroed = _ZERO_GAMMA if has_gamma else _ZERO_BRANCH
    seen: set[int] = set()
    block_source = {}
    for i, src in enumerate(depth_sources(old_depth, depth, mode)):
        block_source[i] = (src, src not in seen)
        seen.add(src)
    maps: dict[str, ParamMap] = {}
    values: dict[str, Tensor] = {}
    for name, _ in new.named_parameters():
        index, suffix = split_block_name(name)
        if index is None:
            maps[name], values[name] = ParamMap(name), old_params[name].detach().clone()
            continue
        src, primary = block_source[index]
        source = f"blocks.{src}.{suffix}"
        value = old_params[source].detach().clone()
        if mode == "zero" and not primary and suffix in zeroed:
            value = torch.zeros_like(value)
        maps[name], values[name] = ParamMap(source, primary=primary), value
    return load_grown(new, maps, values, vit)
