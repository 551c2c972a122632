"""Shrink a pre-LN timm ViT by weight subcloning (Samragh et al. 2023, "Weight subcloning: direct initialization
of transformers using larger pretrained ones", arXiv 2312.09299).

Recipe (docs/growth.md, "Shrinking"): on a calibration batch, rank the residual-stream dims by mean
activation magnitude and keep ONE index set for the residual stream everywhere (patch embedding, tokens, every
LayerNorm, every matrix reading or writing the stream); keep whole attention heads (head_dim unchanged) and
MLP hidden units by mean activation magnitude; drop the blocks whose residual update is smallest relative to
their input (the first and last block are always kept); rescale every residual-stream LayerNorm gain so that
the post-LN RMS on the kept dims matches the large model's. Not function-preserving: the measured change of
the output is returned (``ShrinkResult.output_change``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from vispre.errors import VispreError
from vispre.growth.maps import ParamMap, check_vit, load_grown, rebuild_vit, split_block_name


class ShrinkPlan(NamedTuple):
    """Which parts of the large ViT the small one keeps (all index lists ascending).

    Attributes:
        blocks: kept block indices, length = new depth.
        dims: [d] kept residual-stream dims.
        heads: per kept block, [H'] kept head indices.
        units: per kept block, [M'] kept MLP hidden units.
        norm_scales: LayerNorm module name (in the large model) -> gain multiplier.
    """

    blocks: list[int]
    dims: Tensor
    heads: list[Tensor]
    units: list[Tensor]
    norm_scales: dict[str, float]


class ShrinkResult(NamedTuple):
    """What :func:`shrink` returns.

    Attributes:
        model: the new, smaller VisionTransformer.
        plan: the kept blocks / dims / heads / units and LayerNorm scales.
        output_change: ||small(x) - big(x)[..., dims]|| / ||big(x)[..., dims]|| on the calibration batch
            (eval mode; the big output is restricted to the kept dims when it is the D-wide feature).
    """

    model: VisionTransformer
    plan: ShrinkPlan
    output_change: float


# per parameter suffix: the index set applied along each dim ("dims" residual, "attn" kept heads' channels,
# "units" kept MLP units, None = untouched); "qkv" = the attn set applied to each of the q, k, v chunks.
_RULES: dict[str, tuple[str | None, ...]] = {
    "cls_token": (None, None, "dims"), "reg_token": (None, None, "dims"), "pos_embed": (None, None, "dims"),
    "patch_embed.proj.weight": ("dims",), "patch_embed.proj.bias": ("dims",),
    "attn.qkv.weight": ("qkv", "dims"), "attn.qkv.bias": ("qkv",),
    "attn.proj.weight": ("dims", "attn"), "attn.proj.bias": ("dims",),
    "mlp.fc1.weight": ("units", "dims"), "mlp.fc1.bias": ("units",),
    "mlp.fc2.weight": ("dims", "units"), "mlp.fc2.bias": ("dims",),
    "head.weight": (None, "dims"), "head.bias": (None,),
    "attn.q_norm.weight": (None,), "attn.q_norm.bias": (None,),
    "attn.k_norm.weight": (None,), "attn.k_norm.bias": (None,),
}


def shrink(model: nn.Module, depth: int, embed_dim: int, calibration_batch: Tensor) -> ShrinkResult:
    """A new, smaller ViT subcloned from ``model`` (``model`` is left untouched).

    Args:
        model: timm VisionTransformer with L blocks, width D, H heads of head_dim h, MLP hidden M (a
            classifier keeps its head: the head reads the kept dims).
        depth: L' in [1, L].
        embed_dim: d in [h, D], a multiple of head_dim h (whole heads are kept: H' = d / h).
        calibration_batch: [B, C, H, W] images of the model's input size (a few dozen are enough).

    Returns:
        ShrinkResult(model with depth L', embed_dim d, num_heads d / h, the same mlp_ratio (M' = int(d M / D))
        and the same features/dropout rates (drop_path schedule recomputed), plan, output_change).
    """
    vit = check_vit(model, "shrink")
    head_dim, width = _check_targets(vit, depth, embed_dim, calibration_batch)
    plan = rank_parts(vit, depth, embed_dim // head_dim, calibration_batch)
    small = subclone(vit, plan)
    return ShrinkResult(small, plan, _output_change(vit, small, plan.dims, calibration_batch, width))


def rank_parts(vit: VisionTransformer, depth: int, num_heads: int, calibration_batch: Tensor) -> ShrinkPlan:
    """The importance ranking of weight subcloning on ``calibration_batch`` (two no-grad forward passes).

    Residual dims: mean |x| over batch and tokens of every block's input and the final residual stream, each
    layer normalised by its own mean so deep layers do not dominate. Blocks: mean over tokens of
    ||block(x) - x|| / ||x||. Heads: mean |attention output| of the head (input of ``attn.proj``). MLP units:
    mean |activation| (input of ``mlp.fc2``). LayerNorm gains: RMS of the large model's normalised input on
    the kept dims divided by the RMS of the same input normalised over the kept dims only.
    """
    embed_dim = num_heads * vit.blocks[0].attn.head_dim
    hidden = int(embed_dim * (vit.blocks[0].mlp.fc1.out_features / vit.embed_dim))  # timm: int(d * mlp_ratio)
    stats: dict[str, Tensor] = {}

    def mean_abs(key: str, split: int = 0) -> Callable:
        """Pre-hook: mean |input| over all but the last dim ([.., D] -> [D]; split > 0: [.., S, D/S] -> [S])."""
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().double().abs()
            if split:
                x = x.unflatten(-1, (split, -1)).mean(-1)
            stats[key] = x.flatten(0, -2).mean(0)
        return hook

    def residual_change(key: str) -> Callable:
        def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
            x = args[0].detach().double()
            stats[key] = ((out.detach().double() - x).norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12)).mean()
        return hook

    pre = [(vit.norm, mean_abs("stream.final"))]
    post = []
    for i, block in enumerate(vit.blocks):
        pre += [(block, mean_abs(f"stream.{i}")), (block.attn.proj, mean_abs(f"heads.{i}", block.attn.num_heads)),
                (block.mlp.fc2, mean_abs(f"units.{i}"))]
        post.append((block, residual_change(f"change.{i}")))
    _run_with_hooks(vit, calibration_batch, pre, post)

    streams = [s / s.mean() for k, s in stats.items() if k.startswith("stream.")]
    dims = _top(torch.stack(streams).sum(0), embed_dim)
    blocks = _keep_blocks([stats[f"change.{i}"].item() for i in range(len(vit.blocks))], depth)
    return ShrinkPlan(blocks, dims, [_top(stats[f"heads.{b}"], num_heads) for b in blocks],
                      [_top(stats[f"units.{b}"], hidden) for b in blocks],
                      _norm_scales(vit, dims, calibration_batch))


def subclone(vit: VisionTransformer, plan: ShrinkPlan) -> VisionTransformer:
    """Copy the parts of ``vit`` named by ``plan`` into a fresh ViT of the plan's sizes (no ranking here).

    Args:
        vit: the large timm VisionTransformer.
        plan: kept blocks, dims, heads, units and LayerNorm gain multipliers.

    Returns:
        The small ViT (``vit``'s dtype/device, train/eval mode, frozen parameters stay frozen).
    """
    head_dim = vit.blocks[0].attn.head_dim
    new = rebuild_vit(vit, depth=len(plan.blocks), embed_dim=len(plan.dims),
                      num_heads=len(plan.dims) // head_dim)
    old = dict(vit.named_parameters())
    maps, values = {}, {}
    for name, _ in new.named_parameters():
        j, suffix = split_block_name(name)
        source = name if j is None else f"blocks.{plan.blocks[j]}.{suffix}"
        attn = None if j is None else (plan.heads[j][:, None] * head_dim + torch.arange(head_dim)).flatten()
        index = {"dims": plan.dims, "attn": attn, "units": None if j is None else plan.units[j]}
        value = old[source].detach()
        rule = _RULES.get(suffix, ("dims",))  # LayerNorms, LayerScale gammas: residual-stream vectors
        for axis, kind in enumerate(rule):
            if kind == "qkv":
                value = torch.cat([c.index_select(0, attn.to(value.device)) for c in value.chunk(3, dim=0)])
            elif kind is not None:
                value = value.index_select(axis, index[kind].to(value.device))
        scale = plan.norm_scales.get(source.rsplit(".", 1)[0]) if source.endswith(".weight") else None
        maps[name], values[name] = ParamMap(source), value * scale if scale is not None else value.clone()
    return load_grown(new, maps, values, vit).model


def _check_targets(vit: VisionTransformer, depth: int, embed_dim: int, batch: Tensor) -> tuple[int, int]:
    """Validate the targets; returns (head_dim, D)."""
    attn = vit.blocks[0].attn
    width, head_dim = vit.embed_dim, attn.head_dim
    if attn.num_heads * head_dim != width:
        raise VispreError(f"shrink: attention width {attn.num_heads}x{head_dim} differs from embed_dim {width} "
                         "(a grow_heads model); only standard timm attention can be shrunk")
    if not 1 <= depth <= len(vit.blocks):
        raise VispreError(f"shrink: depth must lie in [1, {len(vit.blocks)}] (the current depth), got {depth}; "
                         "use grow_depth to add blocks")
    if not head_dim <= embed_dim <= width or embed_dim % head_dim:
        raise VispreError(f"shrink: embed_dim must be a multiple of head_dim {head_dim} in [{head_dim}, {width}] "
                         f"(whole heads are kept), got {embed_dim}")
    chans, size = vit.patch_embed.proj.in_channels, tuple(vit.patch_embed.img_size)
    if batch.ndim != 4 or batch.shape[1] != chans or tuple(batch.shape[2:]) != size:
        raise VispreError(f"shrink: calibration_batch must be [B, {chans}, {size[0]}, {size[1]}] images, "
                         f"got shape {tuple(batch.shape)}")
    return head_dim, width


def _norm_scales(vit: VisionTransformer, dims: Tensor, batch: Tensor) -> dict[str, float]:
    """LayerNorm name -> RMS(LN_D(x)[dims]) / RMS(LN_d(x[dims])) over the calibration batch (gain excluded)."""
    scales: dict[str, float] = {}
    names = {m: n for n, m in vit.named_modules()}

    def hook(module: nn.LayerNorm, args: tuple) -> None:
        x = args[0].detach().double()
        big = F.layer_norm(x, module.normalized_shape, eps=module.eps)[..., dims.to(x.device)]
        small = F.layer_norm(x[..., dims.to(x.device)], (len(dims),), eps=module.eps)
        scales[names[module]] = (big.pow(2).mean().sqrt() / small.pow(2).mean().sqrt()).item()

    norms = [m for n, m in vit.named_modules() if isinstance(m, nn.LayerNorm) and ".attn." not in n
             and m.normalized_shape == (vit.embed_dim,) and m.weight is not None]
    _run_with_hooks(vit, batch, [(m, hook) for m in norms])
    return scales


def _run_with_hooks(vit: VisionTransformer, batch: Tensor, pre: list[tuple[nn.Module, Callable]],
                    post: list[tuple[nn.Module, Callable]] | None = None) -> None:
    """One eval-mode, no-grad forward of ``batch`` with forward pre-hooks ``pre`` and forward hooks ``post``;
    the hooks are removed and the train/eval mode restored afterwards."""
    handles, training = [], vit.training
    try:
        handles += [module.register_forward_pre_hook(fn) for module, fn in pre]
        handles += [module.register_forward_hook(fn) for module, fn in post or []]
        with torch.no_grad():
            vit.eval()(batch.to(next(vit.parameters())))
    finally:
        for handle in handles:
            handle.remove()
        vit.train(training)


def _keep_blocks(changes: list[float], depth: int) -> list[int]:
    """The first and last block plus the ``depth - 2`` middle blocks with the largest relative change."""
    last = len(changes) - 1
    middle = sorted(range(1, last), key=lambda i: -changes[i])[: max(depth - 2, 0)]
    return sorted({0, last, *middle})[:depth]


def _top(scores: Tensor, count: int) -> Tensor:
    """Indices of the ``count`` largest scores, ascending (ties: the lower index)."""
    order = torch.sort(-scores, stable=True).indices
    return order[:count].sort().values


def _output_change(big: VisionTransformer, small: VisionTransformer, dims: Tensor, batch: Tensor,
                   width: int) -> float:
    """Relative distance of the small model's output from the big one's (restricted to ``dims``)."""
    with torch.no_grad():
        modes = big.training, small.training
        ref = big.eval()(batch.to(next(big.parameters()))).double()
        out = small.eval()(batch.to(next(small.parameters()))).double()
        big.train(modes[0])
        small.train(modes[1])
    if ref.shape[-1] == width and out.shape[-1] == len(dims):
        ref = ref[..., dims.to(ref.device)]
    return ((out - ref).norm() / ref.norm().clamp_min(1e-12)).item()
