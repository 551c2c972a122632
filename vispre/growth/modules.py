"""Growth of whole modules: the ViTs inside an objective (student and EMA teachers), MAE decoders, heads.

The backbone operators (:mod:`vispre.growth.depth`, :mod:`vispre.growth.width`) act on a timm
VisionTransformer; this module applies them to every ViT inside an objective (student and EMA teacher alike)
and adapts the layers that read the backbone feature: MAE ``decoder_embed`` and the first ``nn.Linear`` of a
projection head take k copies of the feature, so their weight is tiled along the input and divided by k
(docs/growth.md, width table: "head weight / bias, MAE decoder_embed weight: repeat (1, k) / k; bias unchanged").
:func:`regrow_objective` grows a fresh objective to a checkpoint's recorded architecture (resume after growth).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vispre.backbones.vit import describe_vit
from vispre.errors import VispreError
from vispre.growth.depth import DepthMode, grow_depth
from vispre.growth.maps import GrowthResult, ParamMap, apply_map, integer_factor
from vispre.growth.width import grow_mlp, grow_width, symmetric_noise

VitOperator = Callable[[nn.Module], GrowthResult]


class GrowthSpec(NamedTuple):
    """Target sizes of one growth event (None = unchanged); applied as width, then MLP, then depth.

    Attributes:
        depth: new number of blocks. embed_dim: new width (integer multiple). mlp_ratio: new MLP ratio
        (integer multiple of the hidden width). depth_mode: stack | interleave | zero. noise_std: symmetric
        width noise (0 = exact tiling). seed: RNG seed of the noise (teacher and student get the same noise).
    """

    depth: int | None = None
    embed_dim: int | None = None
    mlp_ratio: float | None = None
    depth_mode: DepthMode = "zero"
    noise_std: float = 0.0
    seed: int = 0


def widen_input_linear(linear: nn.Linear, in_features: int, noise_std: float = 0.0,
                       generator: torch.Generator | None = None) -> GrowthResult:
    """A new Linear reading k tiled copies of its input: weight repeat (1, k) / k, bias unchanged. Exact.

    Args:
        linear: [out, D] layer (MAE decoder_embed, first layer of a projection head, classifier).
        in_features: k * D.
        noise_std: symmetric +eta/-eta noise on the input blocks (cancels on tiled inputs).
    """
    k = integer_factor(in_features, linear.in_features, "embed_dim")
    new = nn.Linear(in_features, linear.out_features, bias=linear.bias is not None).to(linear.weight)
    maps = {"weight": ParamMap("weight", (1, k), a=k)}
    if linear.bias is not None:
        maps["bias"] = ParamMap("bias", (1,))
    with torch.no_grad():
        new.weight.copy_(apply_map(maps["weight"], linear.weight, new.weight, k))
        if noise_std > 0 and k > 1:
            new.weight.add_(symmetric_noise(new.weight.shape, k, noise_std, generator, new.weight))
        if linear.bias is not None:
            new.bias.copy_(linear.bias)
    for name, param in new.named_parameters():
        param.requires_grad_(getattr(linear, name).requires_grad)
    return GrowthResult(new, maps)


def vit_operators(spec: GrowthSpec, vit: VisionTransformer) -> list[tuple[str, VitOperator]]:
    """The atomic steps of ``spec`` for ``vit`` in order (width, mlp, depth), skipping unchanged sizes."""
    steps: list[tuple[str, VitOperator]] = []
    if spec.embed_dim is not None and spec.embed_dim != vit.embed_dim:
        steps.append(("width", lambda m: grow_width(m, spec.embed_dim, spec.noise_std,
                                                    torch.Generator().manual_seed(spec.seed))))
    if spec.mlp_ratio is not None:
        steps.append(("mlp", lambda m: grow_mlp(m, spec.mlp_ratio)))
    if spec.depth is not None and spec.depth != len(vit.blocks):
        steps.append(("depth", lambda m: grow_depth(m, spec.depth, spec.depth_mode)))
    return steps


def grow_objective(module: nn.Module, spec: GrowthSpec) -> list[dict[str, ParamMap]]:
    """Grow every ViT inside ``module`` IN PLACE (submodules replaced), plus the layers reading its feature.

    Handles: ``MaskedViT`` / bare ``VisionTransformer`` children at any depth (the student backbone and EMA
    teachers get the same map and the same noise), ``decoder_embed`` of MAE decoders and the first
    ``nn.Linear`` of any other child whose ``in_features`` equals the backbone width (projection heads,
    classifiers; a head whose first Linear reads something else of the same width would be widened too:
    keep head widths different from the backbone width when growing width).

    Args:
        module: an objective (``module.backbone.vit`` is replaced) or any nn.Module holding ViTs.
        spec: target sizes.

    Returns:
        One map per atomic step (width, mlp, depth), each keyed by ``module``'s full parameter names and
        covering every parameter (identity for untouched ones), for the optimizer-state modes.
    """
    vit = next((m for m in module.modules() if isinstance(m, VisionTransformer)), None)
    if vit is None:
        raise VispreError(f"grow_objective: {type(module).__name__} holds no timm VisionTransformer")
    if spec.mlp_ratio is not None and spec.embed_dim is not None:
        raise VispreError("grow_objective: grow embed_dim (keeps the mlp_ratio) or mlp_ratio, not both at once")
    width = vit.embed_dim  # width is the first step, so the feature linears read this width
    all_maps = []
    for kind, operator in vit_operators(spec, vit):
        maps = {name: ParamMap(name) for name, _ in module.named_parameters()}
        _replace_vits(module, "", operator, maps)
        if kind == "width":
            _widen_feature_linears(module, "", width, spec, maps)
        names = {name for name, _ in module.named_parameters()}
        all_maps.append({k: v for k, v in maps.items() if k in names})
    return all_maps


GROWABLE = ("embed_dim", "num_heads", "mlp_ratio", "depth")
"""describe_vit fields that growth changes; every other field must match for :func:`growth_steps`."""


def growth_steps(current: dict[str, object], target: dict[str, object]) -> list[GrowthSpec] | None:
    """The growth events that turn architecture ``current`` into ``target`` (both :func:`describe_vit`
    dicts), or None when ``target`` is not a growth of ``current``.

    A growth keeps every non-size field, multiplies the width by an integer k (heads k-fold, head_dim kept),
    multiplies the MLP hidden width by an integer and never removes blocks.

    Returns:
        [] for the same architecture; else one or two GrowthSpecs (width + depth, then MLP ratio).
    """
    fixed = (set(current) | set(target)) - set(GROWABLE) - {"model_name"}
    if any(current.get(k) != target.get(k) for k in fixed):
        return None
    dim, new_dim = int(current["embed_dim"]), int(target["embed_dim"])
    depth, new_depth = int(current["depth"]), int(target["depth"])
    k = new_dim // dim
    if new_dim % dim or new_depth < depth or int(target["num_heads"]) != int(current["num_heads"]) * k:
        return None
    ratio, new_ratio = float(current["mlp_ratio"]), float(target["mlp_ratio"])
    hidden, new_hidden = int(new_dim * ratio), int(new_dim * new_ratio)
    if new_hidden < hidden or new_hidden % hidden:
        return None
    steps = []
    if (new_dim, new_depth) != (dim, depth):
        steps.append(GrowthSpec(depth=new_depth, embed_dim=new_dim))
    if new_hidden != hidden:
        steps.append(GrowthSpec(mlp_ratio=new_ratio))
    return steps


def regrow_objective(module: nn.Module, target: dict[str, object]) -> bool:
    """Grow ``module`` (an objective with ``module.backbone.vit``) IN PLACE to architecture ``target``.

    Used when a post-growth checkpoint is loaded into a module built from the run's config: the weights
    are overwritten by the checkpoint afterwards, so the operators only need to produce the right shapes
    (and keep frozen parameters frozen), including the heads that read the backbone feature.

    Args:
        module: the objective.
        target: the checkpoint's :func:`describe_vit` dict.

    Returns:
        True if the module grew, False if it already had the architecture.

    Raises:
        VispreError: ``target`` is not a growth of the module's backbone.
    """
    current = describe_vit(module.backbone.vit)
    steps = growth_steps(current, target)
    if steps is None:
        raise VispreError(f"checkpoint backbone {target} is not a growth of the model's backbone {current}")
    for spec in steps:
        grow_objective(module, spec)
    return bool(steps)


def _replace_vits(module: nn.Module, prefix: str, operator: VitOperator, maps: dict[str, ParamMap]) -> None:
    for name, child in module.named_children():
        path = f"{prefix}{name}."
        if isinstance(child, VisionTransformer):
            grown = operator(child)
            setattr(module, name, grown.model)
            _merge(maps, path, grown.maps)
        elif any(isinstance(m, VisionTransformer) for m in child.modules()):
            _replace_vits(child, path, operator, maps)


def _widen_feature_linears(module: nn.Module, prefix: str, width: int, spec: GrowthSpec,
                           maps: dict[str, ParamMap]) -> None:
    for name, child in module.named_children():
        path = f"{prefix}{name}."
        if any(isinstance(m, VisionTransformer) for m in child.modules()):
            _widen_feature_linears(child, path, width, spec, maps)
            continue
        target = getattr(child, "decoder_embed", None)
        if isinstance(child, nn.Linear):
            owner, attr = module, name
        elif isinstance(target, nn.Linear):
            owner, attr = child, "decoder_embed"
        else:
            owner, attr = _first_linear(child)
        if owner is None or getattr(owner, attr).in_features != width:
            continue
        gen = torch.Generator().manual_seed(spec.seed + 1)
        grown = widen_input_linear(getattr(owner, attr), spec.embed_dim, spec.noise_std, gen)
        setattr(owner, attr, grown.model)
        if owner is module:
            _merge(maps, path, grown.maps)
        else:
            sub = next(n for n, m in child.named_modules() if m is grown.model)
            _merge(maps, f"{path}{sub}.", grown.maps)


def _first_linear(module: nn.Module) -> tuple[nn.Module | None, str]:
    """(parent, attribute) of the first ``nn.Linear`` in definition order, depth first: the layer a head's
    input reaches first (DINOHead: ``mlp.0``, not its later sibling ``last_layer``)."""
    for name, child in module.named_modules():
        if isinstance(child, nn.Linear):
            parent, _, attr = name.rpartition(".")
            return module.get_submodule(parent), attr
    return None, ""


def _merge(maps: dict[str, ParamMap], path: str, sub: dict[str, ParamMap]) -> None:
    for key in [k for k in maps if k.startswith(path)]:
        del maps[key]
    for name, pm in sub.items():
        maps[path + name] = pm._replace(source=None if pm.source is None else path + pm.source)
