"""Export a pretrained backbone with timm's parameter names, and load one back from any vispre artefact.

    vispre export RUN_DIR_OR_CKPT OUT.safetensors     -> OUT.safetensors + OUT.json (timm create_model args)
    timm.create_model(args.pop("model_name"), pretrained=True,
                      pretrained_cfg_overlay=dict(file="OUT.safetensors"), **args)

Loading never unpickles arbitrary objects: safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from vispre.backbones.vit import create_vit, describe_vit

BACKBONE_PREFIXES = ("backbone.vit.", "backbone.", "encoder.", "model.", "module.")
DROPPED_PREFIXES = ("decoder", "head", "projector", "predictor", "teacher", "momentum", "mask_token", "fc_norm")


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder -> its ``checkpoints/last.ckpt``; a file -> itself. Raises FileNotFoundError otherwise."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "last.ckpt", path / "last.ckpt"):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"{path} is a folder without checkpoints/last.ckpt (expected a vispre run folder)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def safe_torch_load(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True; a file that needs arbitrary unpickling is refused clearly."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError) as err:
        raise ValueError(f"refusing to load {path}: it contains pickled Python objects that are unsafe to "
                         f"unpickle (only tensors and plain containers are accepted; re-save the weights as "
                         f"safetensors or a plain state dict). Loader said: {str(err).splitlines()[0]}") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected a dict of tensors or a checkpoint dict")
    return obj


def backbone_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip wrapper prefixes (``backbone.vit.``, ``module.``...) and drop decoder/head keys -> timm ViT keys."""
    out: dict[str, Tensor] = {}
    prefix = next((p for p in BACKBONE_PREFIXES if any(k.startswith(p + "patch_embed") for k in state)), "")
    for key, value in state.items():
        if not isinstance(value, Tensor) or not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if not name.startswith(DROPPED_PREFIXES):
            out[name] = value
    if "patch_embed.proj.weight" not in out:
        raise ValueError("no ViT backbone weights found (expected keys like 'backbone.vit.patch_embed.proj.weight' "
                         "or 'patch_embed.proj.weight')")
    return out


def read_backbone(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """Backbone weights (timm names) and, when recorded, the timm create_model args of any supported file."""
    path = resolve_checkpoint(path)
    if path.suffix == ".safetensors":
        meta = path.with_suffix(".json")
        args = json.loads(meta.read_text()) if meta.exists() else None
        return backbone_state_dict(load_file(str(path))), args
    obj = safe_torch_load(path)
    args = (obj.get("vispre") or {}).get("backbone")
    for key in ("state_dict", "model", "model_state", "module"):
        if isinstance(obj.get(key), dict):
            return backbone_state_dict(obj[key]), args
    return backbone_state_dict(obj), args


def load_into(vit: VisionTransformer, state: dict[str, Tensor]) -> None:
    """Strict load with one clear error: missing/unexpected keys or the first shape mismatch."""
    own = vit.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"backbone weights do not match the model: missing keys {missing[:5]}, "
                         f"unexpected keys {unexpected[:5]}")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ValueError(f"shape mismatch at {key!r}: checkpoint {tuple(value.shape)} vs model "
                             f"{tuple(own[key].shape)}")
    vit.load_state_dict(state)


def load_backbone(path: str | Path, **overrides: Any) -> VisionTransformer:
    """A ready timm VisionTransformer (eval mode) from a vispre run folder or checkpoint, an exported
    safetensors file (+ JSON), or a timm/MAE-style state dict (then pass the architecture as ``overrides``).

    Args:
        path: run folder, ``.ckpt``/``.pth``/``.pt`` file or ``.safetensors`` file.
        **overrides: create_vit arguments that replace/complete the recorded ones.
    """
    state, args = read_backbone(path)
    args = {**(args or {}), **overrides}
    if "embed_dim" not in args:
        raise ValueError(f"{path} records no architecture: pass create_vit arguments, e.g. "
                         f"load_backbone(path, model_name='vit_base_patch16_224', img_size=224)")
    vit = create_vit(**args)
    load_into(vit, state)
    return vit.eval()


def export_backbone(source: str | Path, out: str | Path) -> Path:
    """Write the backbone of ``source`` as timm-named safetensors plus ``<out>.json`` of timm args."""
    vit = load_backbone(source)
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"export target must end in .safetensors, got {out.name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(tmp))
    tmp.replace(out)
    out.with_suffix(".json").write_text(json.dumps(describe_vit(vit), indent=2) + "\n")
    return out


def export_main(argv: list[str]) -> int:
    """``vispre export RUN_OR_CKPT OUT.safetensors``."""
    parser = argparse.ArgumentParser(prog="vispre export", description=export_backbone.__doc__)
    parser.add_argument("source", help="run folder, Lightning checkpoint or state-dict file")
    parser.add_argument("out", help="output .safetensors path (a .json of timm args is written beside it)")
    args = parser.parse_args(argv)
    out = export_backbone(args.source, args.out)
    print(f"backbone written to {out} (+ {out.with_suffix('.json').name})")
    return 0
