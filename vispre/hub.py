"""Load a pretrained backbone from any vispre artefact, and export one with timm's parameter names.

    vit = vispre.load_backbone("runs/quickstart/version_0")        # or a .ckpt / .safetensors / state dict
    vispre.export_backbone("runs/quickstart/version_0", "backbone.safetensors")  # + backbone.json
    timm.create_model(args.pop("model_name"), pretrained=True,
                      pretrained_cfg_overlay=dict(file="backbone.safetensors"), **args)   # args: backbone.json

The command line form is ``vispre export RUN_DIR_OR_CKPT OUT.safetensors`` (vispre/commands/export.py).
Reading files, key mapping and pos-embed resampling live in :mod:`vispre.backbones.weights` (a warm start,
``MaskedViT(init_from=PATH)``, uses them too). Loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from vispre.backbones.vit import create_vit, describe_vit
from vispre.backbones.weights import load_into, read_backbone, resample_pos_embed
from vispre.errors import VispreError
from vispre.growth.subnet import SubnetSpec, extract_subnet


def load_backbone(path: str | Path, *, branch: str = "teacher", **overrides: Any) -> VisionTransformer:
    """A ready timm VisionTransformer (eval mode) from a vispre run folder or checkpoint, an exported
    safetensors file (+ JSON), or a timm/MAE-style state dict (then pass the architecture as ``overrides``).

    Args:
        path: run folder, ``.ckpt``/``.pth``/``.pt`` file or ``.safetensors`` file.
        branch: of a self-distillation run (DINO, iBOT, DINOv2), the EMA "teacher" backbone (default, the DINO
            convention) or the "student"; other files hold one backbone and ignore it.
        **overrides: create_vit arguments that replace/complete the recorded ones. A different ``img_size``
            gets a bicubically resampled position embedding.

    Returns:
        A headless ``VisionTransformer`` in eval mode holding the file's backbone weights.

    Raises:
        FileNotFoundError: no such file / run folder. VispreError: unreadable or unsafe file, no recorded
            architecture and none given, or weights that do not fit the architecture.
    """
    state, args = read_backbone(path, branch)
    args = {**(args or {}), **overrides}
    if "embed_dim" not in args:
        raise VispreError(f"{path} records no architecture: pass create_vit arguments, e.g. "
                          f"load_backbone(path, model_name='vit_base_patch16_224', img_size=224)")
    vit = create_vit(**args)
    load_into(vit, resample_pos_embed(state, vit))
    return vit.eval()


def export_backbone(source: str | Path, out: str | Path, *, subnet: SubnetSpec | None = None,
                    branch: str = "teacher") -> Path:
    """Write the backbone of ``source`` as timm-named safetensors plus ``<out>.json`` of timm args.

    Both files are written to a temporary name and renamed, so a failed export leaves no partial file.

    Args:
        source: anything :func:`load_backbone` reads (run folder, checkpoint, export).
        out: target path ending in ``.safetensors``.
        subnet: write this elastic sub-network of the backbone instead (POA; a standalone ViT from
            :func:`vispre.growth.subnet.extract_subnet`), e.g. ``SubnetSpec(depth=6, embed_dim=192)``.
        branch: "teacher" (default) or "student" backbone of a self-distillation run (see :func:`load_backbone`).

    Returns:
        The written ``.safetensors`` path (the ``.json`` lies beside it).
    """
    out = Path(out)
    if out.suffix != ".safetensors":
        raise VispreError(f"export target must end in .safetensors, got {out.name}")
    vit = load_backbone(source, branch=branch)
    if subnet is not None:
        vit = extract_subnet(vit, subnet)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(tmp))
    tmp.replace(out)
    meta = out.with_suffix(".json")
    tmp_meta = meta.with_suffix(f".tmp{os.getpid()}")
    # num_classes 0: plain timm.create_model(..., pretrained=True) then expects no classifier weights
    tmp_meta.write_text(json.dumps({**describe_vit(vit), "num_classes": 0}, indent=2) + "\n")
    tmp_meta.replace(meta)
    return out


__all__ = ["export_backbone", "load_backbone"]
