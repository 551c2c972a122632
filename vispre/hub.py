"""Export a pretrained backbone with timm's parameter names, and load one back from any vispre artefact.

    vispre export RUN_DIR_OR_CKPT OUT.safetensors     -> OUT.safetensors + OUT.json (timm create_model args)
    timm.create_model(args.pop("model_name"), pretrained=True,
                      pretrained_cfg_overlay=dict(file="OUT.safetensors"), **args)

Warm start: ``MaskedViT(..., init_from=PATH)`` (YAML: ``backbone.init_args.init_from``) loads any of these
files into a new objective's backbone through :func:`init_from_file`; heads and decoders stay freshly initialised.

Loading never unpickles arbitrary objects: safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from vispre.backbones.vit import create_vit, describe_vit

BACKBONE_PREFIXES = ("backbone.vit.", "backbone.", "encoder.", "model.", "module.")
# fc_norm is kept: it belongs to the backbone's pooled feature when global_pool="avg" (timm adds it then).
DROPPED_PREFIXES = ("decoder", "head", "projector", "predictor", "teacher", "momentum", "mask_token")


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
    """torch.load with weights_only=True; a file that needs arbitrary unpickling is refused clearly.

    Raises:
        ValueError: naming the file and, when torch reports it, the Python object it refused to unpickle.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError) as err:
        culprit = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if culprit:
            raise ValueError(f"refusing to load {path}: it contains a pickled Python object ({culprit.group(1)}) "
                             f"that is unsafe to unpickle (only tensors and plain containers are accepted; re-save "
                             f"the weights as safetensors or a plain state dict)") from err
        reason = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", str(err), re.DOTALL)
        detail = reason.group(1) if reason else str(err).strip().splitlines()[0]
        raise ValueError(f"{path} is not a readable torch checkpoint of plain tensors: {detail}") from err
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
        if args is not None:
            args.pop("num_classes", None)  # written for plain timm.create_model; create_vit is always headless
        try:
            state = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"{path} is not a readable safetensors file: {err}") from err
        return backbone_state_dict(state), args
    obj = safe_torch_load(path)
    args = (obj.get("vispre") or {}).get("backbone")
    for key in ("state_dict", "model", "model_state", "module"):
        if isinstance(obj.get(key), dict):
            return backbone_state_dict(obj[key]), args
    return backbone_state_dict(obj), args


def resample_pos_embed(state: dict[str, Tensor], vit: VisionTransformer) -> dict[str, Tensor]:
    """Bicubically resample a saved ``pos_embed`` [1, P + gh*gw, D] to ``vit``'s patch grid (other image size).

    Unchanged when the shapes already match, or when the width or prefix-token count differ (then
    :func:`load_into` reports the mismatch). The saved grid must be square.
    """
    saved, own = state.get("pos_embed"), vit.pos_embed
    if saved is None or own is None or saved.shape == own.shape or saved.shape[-1] != own.shape[-1]:
        return state
    prefix = 0 if vit.no_embed_class else int(vit.num_prefix_tokens)
    side = int(round((saved.shape[1] - prefix) ** 0.5))
    if side * side != saved.shape[1] - prefix:
        return state
    new_size = [int(g) for g in vit.patch_embed.grid_size]
    resampled = resample_abs_pos_embed(saved.float(), new_size, [side, side], num_prefix_tokens=prefix)
    return {**state, "pos_embed": resampled.to(saved.dtype)}


def load_into(vit: VisionTransformer, state: dict[str, Tensor]) -> None:
    """Strict load with one clear error: missing/unexpected keys or the first shape mismatch.

    Raises:
        ValueError: ``backbone weights do not match the model: missing keys [...], unexpected keys [...]`` or
            ``shape mismatch at 'KEY': checkpoint (...) vs model (...)``.
    """
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


def init_from_file(vit: VisionTransformer, path: str | Path) -> None:
    """Overwrite ``vit``'s weights (in place) with the backbone stored in ``path`` (warm start).

    Accepts everything :func:`load_backbone` does; ``pos_embed`` is resampled when the image size differs.
    Never unpickles arbitrary objects.

    Raises:
        ValueError: naming ``path`` and the first mismatch (see :func:`load_into`).
    """
    state, _ = read_backbone(path)
    try:
        load_into(vit, resample_pos_embed(state, vit))
    except ValueError as err:
        raise ValueError(f"cannot initialise the backbone from {path}: {err}") from err


def load_backbone(path: str | Path, **overrides: Any) -> VisionTransformer:
    """A ready timm VisionTransformer (eval mode) from a vispre run folder or checkpoint, an exported
    safetensors file (+ JSON), or a timm/MAE-style state dict (then pass the architecture as ``overrides``).

    Args:
        path: run folder, ``.ckpt``/``.pth``/``.pt`` file or ``.safetensors`` file.
        **overrides: create_vit arguments that replace/complete the recorded ones. A different ``img_size``
            gets a bicubically resampled position embedding.
    """
    state, args = read_backbone(path)
    args = {**(args or {}), **overrides}
    if "embed_dim" not in args:
        raise ValueError(f"{path} records no architecture: pass create_vit arguments, e.g. "
                         f"load_backbone(path, model_name='vit_base_patch16_224', img_size=224)")
    vit = create_vit(**args)
    load_into(vit, resample_pos_embed(state, vit))
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
    meta = out.with_suffix(".json")
    tmp_meta = meta.with_suffix(f".tmp{os.getpid()}")
    # num_classes 0: plain timm.create_model(..., pretrained=True) then expects no classifier weights
    tmp_meta.write_text(json.dumps({**describe_vit(vit), "num_classes": 0}, indent=2) + "\n")
    tmp_meta.replace(meta)
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
