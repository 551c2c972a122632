"""Backbone weight files: read them safely, map their keys to timm's, resample position tables, load strictly.

Pure utilities under :mod:`vispre.backbones` (they import nothing from :mod:`vispre.hub`): a backbone
*receives* weights through :func:`init_from_file` / :func:`load_into`; :mod:`vispre.hub` builds a ready
model from a file (``load_backbone``) and writes exports.

Supported files: a vispre run folder (``checkpoints/last.ckpt``), a Lightning ``.ckpt``, a ``.pth``/``.pt``
state dict (timm, official MAE ``{"model": ...}``, DDP ``module.`` prefixes) and an exported
``.safetensors`` (+ ``.json`` of timm ``create_model`` arguments) or timm / Hugging Face folder (``config.json`` +
``model.safetensors``, :func:`timm_folder_args`). Loading never unpickles arbitrary
objects: safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from vispre.errors import VispreError

BACKBONE_PREFIXES = ("backbone.vit.", "backbone.", "encoder.", "model.", "module.")
"""Wrapper prefixes stripped from state-dict keys (the first one found before ``patch_embed`` wins)."""
# fc_norm is kept: it belongs to the backbone's pooled feature when global_pool="avg" (timm adds it then).
DROPPED_PREFIXES = ("decoder", "head", "projector", "predictor", "teacher", "momentum", "mask_token")
"""Keys that belong to heads / decoders / teacher branches, never to the backbone."""
BRANCHES = ("teacher", "student")
"""Which backbone of a self-distillation checkpoint (DINO, iBOT, DINOv2: the EMA teacher's keys
``[<prefix>.]teacher.branches.backbone.vit.*``) is read; files without a teacher have only the student."""
TEACHER_KEY = re.compile(r"^((?:.+\.)?teacher\.branches\.)backbone\.vit\.patch_embed\.proj\.weight$")


class BackboneWeights(NamedTuple):
    """What a weight file holds for the backbone.

    Attributes:
        state_dict: timm ``VisionTransformer`` keys -> tensors.
        architecture: the recorded ``create_vit`` arguments, or None when the file records none.
    """

    state_dict: dict[str, Tensor]
    architecture: dict[str, Any] | None


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder -> its ``checkpoints/last.ckpt``; a file -> itself.

    Raises:
        FileNotFoundError: naming the missing file, or the folder that holds no checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "last.ckpt", path / "last.ckpt", path / "model.safetensors"):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"{path} is a folder without checkpoints/last.ckpt (expected a vispre run folder) "
                                f"or model.safetensors (a timm / Hugging Face folder)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


EXPECTED_FILES = ("a Lightning checkpoint (.ckpt), a torch state dict (.pt/.pth), an exported .safetensors file, "
                  "a vispre run folder or a timm / Hugging Face folder")
"""What every weight-reading command accepts (named in its errors)."""
TORCH_MAGICS = (b"PK\x03\x04", b"\x80")
"""First bytes of a torch.save file: a zip archive (the default format), or a pickle (the legacy format)."""
UNSAFE_GLOBAL = re.compile(r"unsupported global:? (?:GLOBAL )?([\w.]+)", re.IGNORECASE)


def check_torch_file(path: str | Path) -> bool:
    """Refuse a file that is not a ``torch.save`` file (a text file, an image...) before torch unpickles it.

    Returns:
        Whether it is a zip archive (the default format; ``torch.load(mmap=True)`` works on it).

    Raises:
        VispreError: naming the file and :data:`EXPECTED_FILES`.
    """
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head.startswith(TORCH_MAGICS):
        kind = "an empty file" if not head else f"a file starting with {head!r}"
        raise VispreError(f"{path} is not a checkpoint ({kind}, not a torch.save file): expected {EXPECTED_FILES}")
    return head.startswith(TORCH_MAGICS[0])


def safe_torch_load(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """``torch.load(weights_only=True)``; a file that is not a torch file, or needs arbitrary unpickling, is refused.

    Args:
        path: a ``torch.save`` file. mmap: memory-map the tensors instead of reading them (zip-format files;
            a legacy file is read whole) — for callers that look at names, shapes and metadata only.

    Raises:
        VispreError: naming the file and what was expected (:func:`check_torch_file`), or the pickled Python
            global it refused to import (e.g. ``posix.system``).
    """
    is_zip = check_torch_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError, KeyError, ValueError) as err:
        culprit = UNSAFE_GLOBAL.search(str(err))
        if culprit:
            raise VispreError(f"refusing to load {path}: it is not a plain-tensor checkpoint, it pickles the Python "
                              f"global {culprit.group(1)} (unsafe to unpickle; only tensors and plain containers are "
                              f"read: re-save the weights as safetensors or a plain state dict)") from err
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip() and "weights_only" not in ln]
        detail = lines[0] if lines else type(err).__name__
        raise VispreError(f"{path} is not a readable torch checkpoint of plain tensors ({detail}): expected "
                          f"{EXPECTED_FILES}") from err
    if not isinstance(obj, dict):
        raise VispreError(f"{path} holds a {type(obj).__name__}, expected a dict of tensors or a checkpoint dict")
    return obj


def backbone_state_dict(state: dict[str, Tensor], branch: str = "teacher") -> dict[str, Tensor]:
    """Strip wrapper prefixes (``backbone.vit.``, ``module.``...) and drop decoder/head keys -> timm ViT keys.

    Args:
        state: a state dict.
        branch: "teacher" (default, DINO's convention) reads the EMA teacher's backbone where the state holds
            one (see :data:`BRANCHES`), "student" the trained student's; without a teacher both read the one backbone.

    Raises:
        VispreError: when no key looks like a ViT patch embedding, or an unknown ``branch``.
    """
    if branch not in BRANCHES:
        raise VispreError(f"branch must be one of {BRANCHES}, got {branch!r}")
    teacher = next((m.group(1) for m in map(TEACHER_KEY.match, state) if m), None)
    if branch == "teacher" and teacher is not None:
        state = {k[len(teacher):]: v for k, v in state.items() if k.startswith(teacher)}
    out: dict[str, Tensor] = {}
    prefix = next((p for p in BACKBONE_PREFIXES if any(k.startswith(p + "patch_embed") for k in state)), "")
    for key, value in state.items():
        if not isinstance(value, Tensor) or not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if not name.startswith(DROPPED_PREFIXES):
            out[name] = value
    if "patch_embed.proj.weight" not in out:
        raise VispreError("no ViT backbone weights found (expected keys like 'backbone.vit.patch_embed.proj.weight' "
                          "or 'patch_embed.proj.weight')")
    return out


def timm_folder_args(weights: Path) -> dict[str, Any] | None:
    """``create_vit`` arguments of a timm / Hugging Face folder (``config.json`` beside ``model.safetensors``, as
    ``vispre export RUN OUT_DIR`` and :func:`timm.models.save_for_hf` write): its ``architecture`` and
    ``model_args`` (a square ``img_size`` as one int). None for any other file."""
    config = weights.parent / "config.json"
    if weights.name != "model.safetensors" or not config.is_file():
        return None
    cfg = json.loads(config.read_text())
    args = {"model_name": cfg["architecture"], **cfg.get("model_args", {})}
    size = args.get("img_size")
    if isinstance(size, list) and len(size) == 2 and size[0] == size[1]:
        args["img_size"] = size[0]
    return args


def read_backbone(path: str | Path, branch: str = "teacher") -> BackboneWeights:
    """Backbone weights (timm names) and, when recorded, the ``create_vit`` arguments of any supported file.

    Args:
        path: run folder, ``.ckpt``/``.pth``/``.pt`` file or ``.safetensors`` file (+ optional ``.json`` beside it).
        branch: "teacher" or "student" backbone of a self-distillation checkpoint (:func:`backbone_state_dict`).

    Raises:
        FileNotFoundError: the file or run folder does not exist. VispreError: the file is unreadable, holds
            pickled objects, or holds no ViT backbone.
    """
    path = resolve_checkpoint(path)
    if path.suffix == ".safetensors":
        meta = path.with_suffix(".json")
        args = json.loads(meta.read_text()) if meta.exists() else timm_folder_args(path)
        if args is not None:
            args.pop("num_classes", None)  # written for plain timm.create_model; create_vit is always headless
        try:
            state = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise VispreError(f"{path} is not a readable safetensors file ({err}): expected {EXPECTED_FILES}") from err
        return BackboneWeights(backbone_state_dict(state, branch), args)
    obj = safe_torch_load(path)
    args = (obj.get("vispre") or {}).get("backbone")
    for key in ("state_dict", "model", "model_state", "module"):
        if isinstance(obj.get(key), dict):
            return BackboneWeights(backbone_state_dict(obj[key], branch), args)
    return BackboneWeights(backbone_state_dict(obj, branch), args)


def resample_pos_embed(state: dict[str, Tensor], vit: VisionTransformer) -> dict[str, Tensor]:
    """Bicubically resample a saved ``pos_embed`` [1, P + gh*gw, D] to ``vit``'s patch grid (other image size).

    Unchanged when the shapes already match, or when the width or prefix-token count differ (then
    :func:`load_into` reports the mismatch). The saved grid must be square.

    Returns:
        ``state`` with ``pos_embed`` replaced by the [1, P + gh'*gw', D] table of ``vit``'s grid.
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
        VispreError: ``backbone weights do not match the model: missing keys [...], unexpected keys [...]`` or
            ``shape mismatch at 'KEY': checkpoint (...) vs model (...)``.
    """
    own = vit.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise VispreError(f"backbone weights do not match the model: missing keys {missing[:5]}, "
                          f"unexpected keys {unexpected[:5]}")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise VispreError(f"shape mismatch at {key!r}: checkpoint {tuple(value.shape)} vs model "
                              f"{tuple(own[key].shape)}")
    vit.load_state_dict(state)


def init_from_file(vit: VisionTransformer, path: str | Path) -> None:
    """Overwrite ``vit``'s weights (in place) with the backbone stored in ``path`` (warm start).

    Accepts every file :func:`read_backbone` does; ``pos_embed`` is resampled when the image size differs.

    Raises:
        VispreError: naming ``path`` and the first mismatch (see :func:`load_into`).
    """
    state = read_backbone(path).state_dict
    try:
        load_into(vit, resample_pos_embed(state, vit))
    except VispreError as err:
        raise VispreError(f"cannot initialise the backbone from {path}: {err}") from err


__all__ = ["BACKBONE_PREFIXES", "DROPPED_PREFIXES", "EXPECTED_FILES", "backbone_state_dict", "BackboneWeights",
           "check_torch_file", "init_from_file", "load_into", "read_backbone", "resample_pos_embed",
           "resolve_checkpoint", "safe_torch_load", "timm_folder_args"]
