"""Per-parameter growth maps and the rebuild of a timm ViT at new sizes.

Every growth operator returns a :class:`GrowthResult`: the new module plus, for each of its parameters, a
:class:`ParamMap` saying where its value came from. The same map moves optimizer moments
(:mod:`vispre.growth.optim_state`), so operators and optimizer-state modes never disagree.
The tensor tables and the optimizer-moment rules are in docs/growth.md; HyperCloning (Samragh et al. 2024,
arXiv 2409.12903).
"""

from __future__ import annotations

import re
from typing import NamedTuple

import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import Tensor, nn

from vispre.backbones.vit import create_vit, describe_vit
from vispre.errors import VispreError


class ParamMap(NamedTuple):
    """How one grown parameter derives from a parameter of the source module.

    value' = tile(value) / a (tiling per ``repeats``; ``chunks`` > 1 tiles each of that many equal slices of
    dim 0 separately, the q/k/v layout); ``pad`` instead places the source in the leading slice (new
    entries are fresh). Optimizer moments follow the reference's exact mode: m' = tile(m) / b,
    v' = tile(v) / b^2, lr' = lr / a, eps' = eps / b, wd' = a * wd.

    Attributes:
        source: parameter name in the source module, or None for a brand-new parameter.
        repeats: per-dimension tiling factors (all ones = plain copy).
        chunks: number of equal slices of dim 0 tiled separately (3 for qkv).
        a: input copies (the value is divided by a).
        b: output copies used downstream (moments are divided by b, b^2).
        pad: source occupies the leading slice, the rest is new (not a tiling).
        primary: this parameter sits at the source's own position (False for extra depth copies).
    """

    source: str | None
    repeats: tuple[int, ...] = ()
    chunks: int = 1
    a: float = 1.0
    b: float = 1.0
    pad: bool = False
    primary: bool = True


class GrowthResult(NamedTuple):
    """What every growth operator returns: the new module and a map per parameter name."""

    model: nn.Module
    maps: dict[str, ParamMap]


def tile(tensor: Tensor, repeats: tuple[int, ...], chunks: int = 1) -> Tensor:
    """Repeat ``tensor`` per dimension; with ``chunks`` > 1 each slice of dim 0 is tiled on its own.

    Args:
        tensor: [d0, ...].
        repeats: factor per dimension (len = tensor.ndim).
        chunks: equal slices of dim 0 (qkv: [3 D, ...] -> each of q, k, v tiled).

    Returns:
        [d0 * repeats[0], ...].
    """
    if chunks == 1:
        return tensor.repeat(*repeats)
    parts = tensor.chunk(chunks, dim=0)
    return torch.cat([p.repeat(*repeats) for p in parts], dim=0)


def pad_into(source: Tensor, target: Tensor) -> Tensor:
    """A copy of ``target`` whose leading slice (``source.shape``) is replaced by ``source``."""
    out = target.clone()
    out[tuple(slice(0, s) for s in source.shape)] = source
    return out


def apply_map(pm: ParamMap, source: Tensor, fresh: Tensor, divide: float) -> Tensor:
    """The grown tensor for one map: tile (or pad into ``fresh``) the source, then divide by ``divide``."""
    if pm.pad:
        return pad_into(source / divide, fresh)
    return tile(source, pm.repeats or (1,) * source.ndim, pm.chunks) / divide


# -- architecture checks and rebuild ---------------------------------------------------------------------
_BLOCK_NAME = re.compile(r"^blocks\.(\d+)\.(.*)$")


class BlockName(NamedTuple):
    """A ViT parameter name split at its block: ``blocks.3.attn.qkv.weight`` -> (3, "attn.qkv.weight");
    a parameter outside the blocks (``pos_embed``, ``head.weight``) -> (None, name)."""

    index: int | None
    suffix: str


def split_block_name(name: str) -> BlockName:
    """Split a timm ViT parameter name into its block index (None outside ``blocks``) and the rest."""
    match = _BLOCK_NAME.match(name)
    return BlockName(None, name) if match is None else BlockName(int(match.group(1)), match.group(2))

KNOWN_SUFFIXES = (
    "cls_token", "reg_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
    "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.qkv.weight", "attn.qkv.bias",
    "attn.proj.weight", "attn.proj.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
    "attn.q_norm.weight", "attn.q_norm.bias", "attn.k_norm.weight", "attn.k_norm.bias",
    "ls1.gamma", "ls2.gamma", "norm.weight", "norm.bias", "fc_norm.weight", "fc_norm.bias",
    "head.weight", "head.bias",
)


def check_vit(vit: nn.Module, operator: str) -> VisionTransformer:
    """Raise a VispreError naming the first feature of ``vit`` the growth operators do not handle."""
    if not isinstance(vit, VisionTransformer):
        raise VispreError(f"{operator}: expected a timm VisionTransformer, got {type(vit).__name__}")
    for i, block in enumerate(vit.blocks):
        if type(block) is not Block or type(block.attn) is not Attention or type(block.mlp) is not Mlp:
            raise VispreError(f"{operator}: blocks.{i} is {type(block).__name__}/{type(block.attn).__name__}/"
                             f"{type(block.mlp).__name__}; only timm Block/Attention/Mlp are supported")
    for name, _ in vit.named_parameters():
        short = split_block_name(name).suffix
        if not short.endswith(KNOWN_SUFFIXES) or short.startswith(("attn_pool", "patch_embed.norm")):
            raise VispreError(f"{operator}: parameter {name!r} belongs to a ViT feature the growth operators "
                             f"do not support (known: {', '.join(KNOWN_SUFFIXES)})")
    if not isinstance(vit.norm_pre, nn.Identity):
        raise VispreError(f"{operator}: parameter 'norm_pre' (pre_norm=True) is not supported")
    return vit


def vit_rates(vit: VisionTransformer) -> dict[str, float]:
    """Dropout rates of ``vit`` as create_model arguments (drop_path_rate = the last block's rate)."""
    last = vit.blocks[-1]
    drop_path = getattr(last.drop_path1, "drop_prob", 0.0) if len(vit.blocks) > 1 else 0.0
    return {"drop_path_rate": float(drop_path), "proj_drop_rate": float(last.attn.proj_drop.p),
            "attn_drop_rate": float(last.attn.attn_drop.p), "pos_drop_rate": float(vit.pos_drop.p)}


def rebuild_vit(vit: VisionTransformer, **overrides: object) -> VisionTransformer:
    """A fresh ViT with ``vit``'s architecture and dropout rates, sizes replaced by ``overrides``.

    The drop_path schedule is recomputed for the new depth (timm's linspace(0, rate, depth)). The result has
    ``vit``'s dtype and device and its classifier (``num_classes``, 0 = headless), so growing a classifier
    keeps its head.
    """
    num_classes = vit.head.out_features if isinstance(vit.head, nn.Linear) else 0
    arch = {**describe_vit(vit), **vit_rates(vit), "num_classes": num_classes, **overrides}
    ref = next(vit.parameters())
    return create_vit(**arch).to(device=ref.device, dtype=ref.dtype)


def load_grown(model: nn.Module, maps: dict[str, ParamMap], values: dict[str, Tensor],
               source: nn.Module) -> GrowthResult:
    """Copy ``values`` into ``model`` (strict: every parameter mapped) and mirror requires_grad flags.

    A grown parameter whose source was frozen (a fixed sin-cos pos_embed) stays frozen.
    """
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(values))
    if missing:
        raise ValueError(f"growth map left parameter {missing[0]!r} without a value")
    src = dict(source.named_parameters())
    with torch.no_grad():
        for name, param in params.items():
            if values[name].shape != param.shape:
                raise ValueError(f"grown parameter {name!r} has shape {tuple(values[name].shape)}, "
                                 f"the new model expects {tuple(param.shape)}")
            param.copy_(values[name])
            origin = maps[name].source
            if origin is not None:
                param.requires_grad_(src[origin].requires_grad)
    model.train(source.training)
    return GrowthResult(model, maps)


def integer_factor(new: float, old: float, parameter: str) -> int:
    """new / old as an integer >= 1, or a VispreError naming ``parameter``."""
    factor = new / old
    if factor < 1 or abs(factor - round(factor)) > 1e-9:
        raise VispreError(f"{parameter}: {new} is not an integer multiple (>= 1x) of the current {old}; "
                         f"exact growth needs an integer factor")
    return int(round(factor))
