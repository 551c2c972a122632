"""Elastic sub-networks of a timm ViT: run one on the full model's weights, or extract it as a plain timm ViT.

POA (Zhang et al., "POA: Pre-training Once for Models of All Sizes", ECCV 2024, arXiv 2408.01031; official
code github.com/alipay/POA, ``poa/layers/dynamic_ops.py``, ``mode='order'``) trains sub-networks that share
the intact network's weights. A sub-network of depth L' and width d (POA's elastic depth and width) is:

- blocks: ``linspace(0, L - 1, L')`` rounded down (the first and last block kept, the others evenly spread);
- residual stream: the LEADING d of the D channels everywhere (patch embedding, prefix tokens, position
  embedding, LayerNorms over d channels with the leading gains, LayerScale gammas);
- attention: the leading H' = d / h heads (head_dim h unchanged), i.e. the leading H' h rows of each of the
  q, k, v chunks of ``qkv``; MLP: the leading M' = int(d M / D) hidden units (the same mlp_ratio);
- every Linear reading a sliced input multiplies that input by (full fan-in) / (sliced fan-in), POA's
  ``offset_scale``: D / d for qkv, proj, fc1 and the classifier head, M / M' for fc2.

:func:`subnet_forward` runs that function with slices of the model's own parameters (gradients reach the
shared weights); :func:`extract_subnet` copies the same slices into a standalone ViT through weight
subcloning's :func:`vispre.growth.shrink.subclone` (with a plan of leading indices and POA's blocks) and folds
the input scales into the copied weights, so both compute the same function (float rounding apart).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vispre.backbones.vit import MaskedViT, embed_tokens
from vispre.errors import VispreError
from vispre.growth.maps import check_vit
from vispre.growth.shrink import ShrinkPlan, subclone


class SubnetSpec(NamedTuple):
    """The size of an elastic sub-network (None = the model's own value).

    Attributes:
        depth: L' blocks, 1 <= L' <= L.
        embed_dim: width d, a multiple of head_dim h in [h, D] (whole heads: H' = d / h).
    """

    depth: int | None = None
    embed_dim: int | None = None


class SubnetLayout(NamedTuple):
    """A validated :class:`SubnetSpec` resolved against one model (what the slicing uses).

    Attributes:
        blocks: indices of the kept blocks (ascending, POA's spread).
        embed_dim: d kept residual channels. num_heads: H' = d / h kept heads. head_dim: h (unchanged).
        mlp_hidden: M' kept MLP units. width: D of the full model (= H h). mlp_width: M of the full model.
    """

    blocks: list[int]
    embed_dim: int
    num_heads: int
    head_dim: int
    mlp_hidden: int
    width: int
    mlp_width: int


def spread_blocks(depth: int, subnet_depth: int) -> list[int]:
    """POA's elastic depth: ``floor(linspace(0, depth - 1, subnet_depth))``, first and last block kept.

    Args:
        depth: L blocks of the model. subnet_depth: L' in [1, L].

    Returns:
        L' distinct ascending block indices (``[0]`` for L' = 1).
    """
    return np.linspace(0, depth - 1, subnet_depth).astype(np.int64).tolist()


def as_vit(model: nn.Module) -> VisionTransformer:
    """The timm VisionTransformer of a MaskedViT (its ``.vit``) or the ViT itself."""
    return model.vit if isinstance(model, MaskedViT) else model


def subnet_layout(model: nn.Module, spec: SubnetSpec) -> SubnetLayout:
    """Validate ``spec`` against ``model`` and resolve its blocks, heads and MLP units.

    Args:
        model: a MaskedViT or a timm VisionTransformer (standard timm Block/Attention/Mlp).
        spec: the sub-network size.

    Returns:
        The layout. Raises VispreError naming the parameter and its allowed range when ``spec`` does not fit.
    """
    vit = check_vit(as_vit(model), "subnet")
    for i, block in enumerate(vit.blocks):
        attn, mlp = block.attn, block.mlp
        extras = [name for name, present in (("attn.norm (scale_attn_norm)", not isinstance(attn.norm, nn.Identity)),
                                             ("attn.gate", getattr(attn, "gate", None) is not None),
                                             ("mlp.norm (scale_mlp_norm)", not isinstance(mlp.norm, nn.Identity)))
                  if present]
        if extras:
            raise VispreError(f"subnet: blocks.{i} has {extras[0]}, which elastic sub-networks do not support")
    width, depth = int(vit.embed_dim), len(vit.blocks)
    attn = vit.blocks[0].attn
    head_dim, attn_dim = int(attn.head_dim), int(attn.num_heads * attn.head_dim)
    if attn_dim != width:
        raise VispreError(f"subnet: attention width {attn.num_heads}x{head_dim} differs from embed_dim {width} "
                          "(a grow_heads model); elastic width needs standard timm attention")
    sub_depth = depth if spec.depth is None else spec.depth
    sub_dim = width if spec.embed_dim is None else spec.embed_dim
    if not isinstance(sub_depth, int) or not 1 <= sub_depth <= depth:
        raise VispreError(f"subnet: depth must be an integer in [1, {depth}] (the model's depth), got {sub_depth!r}")
    if not isinstance(sub_dim, int) or not head_dim <= sub_dim <= width or sub_dim % head_dim:
        raise VispreError(f"subnet: embed_dim must be a multiple of head_dim {head_dim} in [{head_dim}, {width}] "
                          f"(the model's width; whole heads are kept), got {sub_dim!r}")
    mlp_width = int(vit.blocks[0].mlp.fc1.out_features)
    # timm's own rounding, as in shrink.rank_parts: hidden = int(d * mlp_ratio), mlp_ratio = M / D
    hidden = int(sub_dim * (mlp_width / width))
    return SubnetLayout(spread_blocks(depth, sub_depth), sub_dim, sub_dim // head_dim, head_dim, hidden, width,
                        mlp_width)


# -- running a sub-network on the shared weights -------------------------------------------------------------
def _norm(module: nn.Module, x: Tensor) -> Tensor:
    """A LayerNorm of the full width applied to the leading ``x.shape[-1]`` channels (Identity passes)."""
    if isinstance(module, nn.Identity):
        return x
    if not isinstance(module, nn.LayerNorm):
        raise VispreError(f"subnet: only LayerNorm / Identity norms can be sliced, got {type(module).__name__}")
    d = x.shape[-1]
    weight = None if module.weight is None else module.weight[:d]
    bias = None if module.bias is None else module.bias[:d]
    return F.layer_norm(x, (d,), weight, bias, module.eps)


def _layer_scale(module: nn.Module, x: Tensor) -> Tensor:
    """timm LayerScale on the leading channels (Identity passes)."""
    return x if isinstance(module, nn.Identity) else x * module.gamma[: x.shape[-1]]


def _linear(module: nn.Linear, x: Tensor, out_features: int | None, rows: Tensor | None = None) -> Tensor:
    """``module`` restricted to its leading input columns (``x``'s width) and leading (or ``rows``) outputs,
    reading ``x * in_features / x.shape[-1]`` (POA's offset_scale)."""
    d = x.shape[-1]
    weight, bias = module.weight, module.bias
    if rows is not None:
        weight, bias = weight.index_select(0, rows), None if bias is None else bias.index_select(0, rows)
    elif out_features is not None:
        weight, bias = weight[:out_features], None if bias is None else bias[:out_features]
    scale = module.in_features / d
    return F.linear(x * scale if scale != 1 else x, weight[:, :d], bias)


def _attention(attn: nn.Module, x: Tensor, layout: SubnetLayout) -> Tensor:
    """timm Attention with the leading ``layout.num_heads`` heads: [B, N, d] -> [B, N, d]."""
    b, n, d = x.shape
    kept = layout.num_heads * layout.head_dim
    rows = torch.arange(kept, device=x.device)[None] + layout.width * torch.arange(3, device=x.device)[:, None]
    qkv = _linear(attn.qkv, x, None, rows=rows.flatten())
    q, k, v = qkv.reshape(b, n, 3, layout.num_heads, layout.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0,
                                         scale=attn.scale)
    out = out.transpose(1, 2).reshape(b, n, kept)
    return attn.proj_drop(_linear(attn.proj, out, d))


def _mlp(mlp: nn.Module, x: Tensor, layout: SubnetLayout) -> Tensor:
    """timm Mlp with the leading ``layout.mlp_hidden`` units: [B, N, d] -> [B, N, d]."""
    h = mlp.drop1(mlp.act(_linear(mlp.fc1, x, layout.mlp_hidden)))
    return mlp.drop2(_linear(mlp.fc2, h, x.shape[-1]))


def _block(block: Block, x: Tensor, layout: SubnetLayout) -> Tensor:
    """One pre-LN timm Block on the sub-network's slices (drop_path and dropouts as in the block)."""
    x = x + block.drop_path1(_layer_scale(block.ls1, _attention(block.attn, _norm(block.norm1, x), layout)))
    return x + block.drop_path2(_layer_scale(block.ls2, _mlp(block.mlp, _norm(block.norm2, x), layout)))


def subnet_tokens(model: nn.Module, tokens: Tensor, spec: SubnetSpec | SubnetLayout) -> Tensor:
    """The sub-network's blocks and final norm on embedded tokens.

    Args:
        model: MaskedViT or timm VisionTransformer (its weights are shared, not copied).
        tokens: [B, N, d] embedded tokens already restricted to the sub-network's width d (e.g. the leading d
            channels of :func:`vispre.backbones.vit.embed_tokens`, possibly a kept subset of the patches).
        spec: the sub-network size (or its resolved layout).

    Returns:
        [B, N, d] tokens after the kept blocks and the final norm (sliced to d channels). With timm's
        ``vit.set_grad_checkpointing()`` each block is recomputed in backward (non-reentrant).
    """
    vit = as_vit(model)
    layout = spec if isinstance(spec, SubnetLayout) else subnet_layout(vit, spec)
    if tokens.shape[-1] != layout.embed_dim:
        raise VispreError(f"subnet_tokens: tokens must be [B, N, {layout.embed_dim}], got {tuple(tokens.shape)}")
    x = tokens
    recompute = vit.grad_checkpointing and torch.is_grad_enabled()  # timm's set_grad_checkpointing(), as in MaskedViT
    for i in layout.blocks:
        if recompute:
            x = checkpoint(_block, vit.blocks[i], x, layout, use_reentrant=False)
        else:
            x = _block(vit.blocks[i], x, layout)
    return _norm(vit.norm, x)


def crop_tokens(vit: VisionTransformer, images: Tensor) -> Tensor:
    """Embedded tokens (before the blocks) of crops of any size that is a multiple of the patch size.

    At the model's image size this is :func:`vispre.backbones.vit.embed_tokens` (timm's arithmetic); for other
    crops (DINO's local crops) the position table is bicubically resampled to the crop's patch grid (timm's
    ``resample_abs_pos_embed``, DINO's ``interpolate_pos_encoding``).

    Args:
        vit: timm VisionTransformer. images: [B, C, H, W], H and W positive multiples of the patch size.

    Returns:
        [B, P + N, D] tokens, P prefix tokens first, N = (H / p)(W / p).
    """
    p, size = vit.patch_embed.patch_size, tuple(images.shape[-2:])
    if images.ndim != 4 or any(side < q or side % q for side, q in zip(size, p)):
        raise VispreError(f"subnet: crops must be [B, C, H, W] with H, W positive multiples of the patch size "
                          f"{tuple(p)}, got {tuple(images.shape)}")
    grid, own = [side // q for side, q in zip(size, p)], [int(g) for g in vit.patch_embed.grid_size]
    if grid == own:
        return embed_tokens(vit, images)
    x = vit.patch_embed.norm(vit.patch_embed.proj(images).flatten(2).transpose(1, 2))
    prefix = [token.expand(x.shape[0], -1, -1) for token in (vit.cls_token, vit.reg_token) if token is not None]
    if vit.pos_embed is None:
        return vit.pos_drop(torch.cat([*prefix, x], dim=1))
    skip = 0 if vit.no_embed_class else vit.num_prefix_tokens
    pos = resample_abs_pos_embed(vit.pos_embed, new_size=grid, old_size=own, num_prefix_tokens=skip)
    if vit.no_embed_class:
        return vit.pos_drop(torch.cat([*prefix, x + pos], dim=1))
    return vit.pos_drop(torch.cat([*prefix, x], dim=1) + pos)


def subnet_features(model: nn.Module, images: Tensor, spec: SubnetSpec | SubnetLayout) -> Tensor:
    """All tokens of the sub-network after its final norm (the sub-network's ``forward_features``).

    Args:
        model: MaskedViT or timm VisionTransformer. images: [B, C, H, W] at the model's image size, or any crop
            size fitting its patch size (position table resampled, see :func:`crop_tokens`).
        spec: the sub-network size.

    Returns:
        [B, P + N, d] tokens, P prefix tokens first.
    """
    vit = as_vit(model)
    layout = spec if isinstance(spec, SubnetLayout) else subnet_layout(vit, spec)
    return subnet_tokens(vit, crop_tokens(vit, images)[..., : layout.embed_dim], layout)


def subnet_forward(model: nn.Module, images: Tensor, spec: SubnetSpec | SubnetLayout) -> Tensor:
    """The sub-network's output on the full model's weights (differentiable in those weights).

    The same as ``extract_subnet(model, spec)(images)`` (1e-5 in float32), without copying anything: timm's
    pooling (``global_pool``), the sliced ``fc_norm`` and, for a classifier, its head on the leading d inputs.

    Args:
        model: MaskedViT or timm VisionTransformer. images: [B, C, H, W]. spec: the sub-network size.

    Returns:
        [B, d] pooled features of a headless model, [B, num_classes] logits of a classifier.
    """
    vit = as_vit(model)
    layout = spec if isinstance(spec, SubnetLayout) else subnet_layout(vit, spec)
    x = subnet_pool(vit, subnet_features(vit, images, layout))
    return _linear(vit.head, x, None) if isinstance(vit.head, nn.Linear) else x


def subnet_pool(model: nn.Module, tokens: Tensor) -> Tensor:
    """timm's pooling (``global_pool``), the sliced ``fc_norm`` and ``head_drop`` of sub-network tokens (the
    sub-network's ``forward_head(pre_logits=True)``, i.e. MaskedViT.pool at width d): [B, N, d] -> [B, d]."""
    vit = as_vit(model)
    return vit.head_drop(_norm(vit.fc_norm, vit.pool(tokens)))


def widen_features(features: Tensor, width: int) -> Tensor:
    """Sub-network features laid out for a head built for the full width (POA's sliced head input).

    A Linear of fan-in ``width`` applied to the result equals POA's elastic first head layer: its leading d
    columns reading ``features * width / d`` (the other columns see zeros, so they get no gradient).

    Args:
        features: [..., d] sub-network features, d <= width. width: D of the full model.

    Returns:
        [..., width]: ``features * width / d`` followed by zeros.
    """
    d = features.shape[-1]
    if d > width:
        raise VispreError(f"widen_features: features of width {d} exceed the head's input width {width}")
    if d == width:
        return features
    return F.pad(features * (width / d), (0, width - d))


# -- extraction -----------------------------------------------------------------------------------------------
def extract_subnet(model: nn.Module, spec: SubnetSpec) -> VisionTransformer:
    """A standalone timm VisionTransformer computing :func:`subnet_forward` (``model`` is left untouched).

    Reuses weight subcloning's :func:`vispre.growth.shrink.subclone` with a plan of leading dims / heads / units
    and POA's blocks (no ranking, no LayerNorm rescaling), then folds POA's input scales into the copied
    Linear weights (qkv, proj, fc1, fc2, head).

    Args:
        model: MaskedViT or timm VisionTransformer (a classifier keeps its ``num_classes``).
        spec: the sub-network size.

    Returns:
        A VisionTransformer of depth L', embed_dim d, num_heads d / h and the model's mlp_ratio, features and
        dropout rates, on ``model``'s device/dtype and in its train/eval mode (frozen parameters stay frozen).
    """
    vit = as_vit(model)
    layout = subnet_layout(vit, spec)
    plan = ShrinkPlan(blocks=layout.blocks, dims=torch.arange(layout.embed_dim),
                      heads=[torch.arange(layout.num_heads)] * len(layout.blocks),
                      units=[torch.arange(layout.mlp_hidden)] * len(layout.blocks), norm_scales={})
    small = subclone(vit, plan)
    d = layout.embed_dim
    scales = {"attn.qkv": layout.width / d, "attn.proj": layout.width / d, "mlp.fc1": layout.width / d,
              "mlp.fc2": layout.mlp_width / layout.mlp_hidden}
    with torch.no_grad():
        for block in small.blocks:
            for name, scale in scales.items():
                if scale != 1:
                    block.get_submodule(name).weight.mul_(scale)
        if isinstance(small.head, nn.Linear) and layout.width != d:
            small.head.weight.mul_(layout.width / d)
    return small


# -- specs from text, POA's elastic choices -------------------------------------------------------------------
def parse_subnet(text: str) -> SubnetSpec:
    """``"depth=4,embed_dim=96"`` (either key may be left out) -> SubnetSpec; VispreError on bad text."""
    fields: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in SubnetSpec._fields:
            raise VispreError(f"--subnet: expected comma-separated key=value with keys {', '.join(SubnetSpec._fields)}"
                              f" (e.g. depth=6,embed_dim=192), got {item!r}")
        try:
            fields[key] = int(value)
        except ValueError:
            raise VispreError(f"--subnet: {key} must be an integer, got {value.strip()!r}") from None
    if not fields:
        raise VispreError(f"--subnet: give depth=D and/or embed_dim=E, got {text!r}")
    return SubnetSpec(**fields)


def elastic_subnets(model: nn.Module, *, widths: Sequence[int], depths: Sequence[int],
                    select_scale: float = 3.0) -> list[SubnetSpec]:
    """POA's pool of elastic sub-networks, smaller sizes repeated more often (``create_dynamic_networks``).

    Width i of W (ascending) gets weight ``linspace(select_scale, 1, W)[i]``, depth j likewise; the pair
    (width, depth) appears ``round(w_i * d_j)`` times. The intact network (full width and depth) is left out:
    it is trained on its own every step. Sampling uniformly from the list is POA's sampling.

    Args:
        model: MaskedViT or timm VisionTransformer (the choices are validated against it).
        widths: elastic embed_dims (multiples of head_dim, at most the width).
        depths: elastic depths (at most the depth).
        select_scale: how much more often the smallest size is drawn than the largest (POA 3; 1 = uniform).

    Returns:
        The list of SubnetSpec (not empty).
    """
    vit = as_vit(model)
    if not select_scale >= 1:
        raise VispreError(f"elastic select_scale must be >= 1 (how much more often the smallest sub-network is "
                          f"drawn), got {select_scale}")
    widths, depths = sorted(set(widths)), sorted(set(depths))
    if not widths or not depths:
        raise VispreError("elastic widths and depths must each list at least one value")
    for w in widths:
        subnet_layout(vit, SubnetSpec(embed_dim=w))
    for dep in depths:
        subnet_layout(vit, SubnetSpec(depth=dep))
    full = (int(vit.embed_dim), len(vit.blocks))
    w_scale = np.linspace(select_scale, 1, len(widths))
    d_scale = np.linspace(select_scale, 1, len(depths))
    pool = [SubnetSpec(depth=dep, embed_dim=w) for w, ws in zip(widths, w_scale) for dep, ds in zip(depths, d_scale)
            if (w, dep) != full for _ in range(int(np.round(ws * ds)))]
    if not pool:
        raise VispreError(f"elastic widths {widths} and depths {depths} give no sub-network smaller than the model "
                          f"(embed_dim {full[0]}, depth {full[1]})")
    return pool


__all__ = ["SubnetLayout", "SubnetSpec", "as_vit", "crop_tokens", "elastic_subnets", "extract_subnet", "parse_subnet",
           "spread_blocks", "subnet_features", "subnet_forward", "subnet_layout", "subnet_pool", "subnet_tokens",
           "widen_features"]
