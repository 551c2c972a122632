"""Load a pretrained backbone from any vispre artefact, and export one with timm's parameter names.

    vit = vispre.load_backbone("runs/quickstart/version_0")   # or a .ckpt / .safetensors / state dict / timm folder
    vispre.export_backbone("runs/quickstart/version_0", "exports/quickstart")   # a timm / Hugging Face folder:
    timm.create_model("local-dir:exports/quickstart", pretrained=True)          # config.json + model.safetensors
    vispre.export_backbone("runs/quickstart/version_0", "backbone.safetensors")  # + backbone.json
    timm.create_model(args.pop("model_name"), pretrained=True,
                      pretrained_cfg_overlay=dict(file="backbone.safetensors"), **args)   # args: backbone.json

The folder is what ``timm.create_model("hf-hub:USER/REPO", pretrained=True)`` reads after an upload
(``huggingface_hub.upload_folder(repo_id="USER/REPO", folder_path="exports/quickstart")``); it is written with
timm's own :func:`timm.models.save_for_hf` (``config.json`` with the architecture, ``model_args`` and a
``pretrained_cfg`` of input size, mean, std, ``num_classes=0`` and the pooling) plus a ``README.md`` model card
(:mod:`vispre.model_card`). The command line form is ``vispre export RUN_DIR_OR_CKPT OUT_DIR`` or
``... OUT.safetensors`` (vispre/commands/export.py).
Reading files, key mapping and pos-embed resampling live in :mod:`vispre.backbones.weights` (a warm start,
``MaskedViT(init_from=PATH)``, uses them too). Loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from safetensors.torch import save as save_safetensors
from timm.models import save_for_hf
from timm.models.vision_transformer import VisionTransformer

from vispre.backbones.vit import create_vit, describe_vit
from vispre.backbones.weights import load_into, read_backbone, resample_pos_embed
from vispre.data.fashion_mnist import MEAN as FMNIST_MEAN
from vispre.data.fashion_mnist import STD as FMNIST_STD
from vispre.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from vispre.errors import VispreError
from vispre.growth.subnet import SubnetSpec, extract_subnet
from vispre.io import atomic_write_bytes, atomic_write_text


def load_backbone(path: str | Path, *, branch: str = "teacher", **overrides: Any) -> VisionTransformer:
    """A ready timm VisionTransformer (eval mode) from a vispre run folder or checkpoint, an exported
    safetensors file (+ JSON), or a timm/MAE-style state dict (then pass the architecture as ``overrides``).

    Args:
        path: run folder, ``.ckpt``/``.pth``/``.pt`` file, ``.safetensors`` file, or a timm / Hugging Face folder
            (``config.json`` + ``model.safetensors``, as :func:`export_backbone` writes).
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
    if "embed_dim" not in args and "model_name" not in args:
        raise VispreError(f"{path} records no architecture: pass create_vit arguments, e.g. "
                          f"load_backbone(path, model_name='vit_base_patch16_224', img_size=224)")
    vit = create_vit(**args)
    load_into(vit, resample_pos_embed(state, vit))
    return vit.eval()


class Normalisation(NamedTuple):
    """The per-channel mean / std a backbone was trained with, and where they were read from."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    origin: str


def run_config(source: str | Path) -> Path | None:
    """The ``config.yaml`` of the run ``source`` belongs to (a run folder, or a checkpoint in it), if any."""
    source = Path(source)
    folders = [source] if source.is_dir() else [source.parent, source.parent.parent]
    return next((f / "config.yaml" for f in folders if (f / "config.yaml").is_file()), None)


def training_normalisation(source: str | Path, in_chans: int, mean: Sequence[float] | None = None,
                           std: Sequence[float] | None = None) -> Normalisation:
    """The normalisation the exported model expects: ``mean`` / ``std`` when given, else the run's data view
    (``data.init_args.view.init_args.mean/std`` of its config.yaml), else its data module's default
    (Fashion-MNIST's statistics for FashionMNISTDataModule), else ImageNet's (grey backbones: (0.5,), (0.5,),
    vispre's streaming default).

    Raises:
        VispreError: only one of ``mean`` / ``std`` given, or lengths that differ from ``in_chans``.
    """
    if (mean is None) != (std is None):
        raise VispreError("give both mean and std (one value per channel), or neither")
    if mean is not None and std is not None:
        norm = Normalisation(tuple(map(float, mean)), tuple(map(float, std)), "given on the command line")
    else:
        grey = Normalisation((0.5,) * in_chans, (0.5,) * in_chans, "0.5 / 0.5 (no run config found)")
        rgb = Normalisation(tuple(IMAGENET_MEAN), tuple(IMAGENET_STD), "ImageNet's (no run config found)")
        norm = _config_normalisation(run_config(source)) or (rgb if in_chans == 3 else grey)
    if len(norm.mean) != in_chans or len(norm.std) != in_chans:
        raise VispreError(f"mean {list(norm.mean)} / std {list(norm.std)} ({norm.origin}) need one value per channel: "
                          f"the backbone has in_chans={in_chans}")
    return norm


def _config_normalisation(config: Path | None) -> Normalisation | None:
    if config is None:
        return None
    data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
    view = (data.get("init_args") or {}).get("view") or {}
    view_args = view.get("init_args") or {} if isinstance(view, dict) else {}
    if "mean" in view_args and "std" in view_args:
        return Normalisation(tuple(view_args["mean"]), tuple(view_args["std"]), f"the data view of {config}")
    if str(data.get("class_path", "")).endswith("FashionMNISTDataModule"):
        return Normalisation(tuple(FMNIST_MEAN), tuple(FMNIST_STD), f"Fashion-MNIST's (the data module of {config})")
    return None


def export_backbone(source: str | Path, out: str | Path, *, subnet: SubnetSpec | None = None,
                    branch: str = "teacher", mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    force: bool = False) -> Path:
    """Write the backbone of ``source`` as a timm / Hugging Face folder, or as timm-named safetensors + JSON.

    ``out`` without a suffix (or an existing folder): the folder ``config.json`` + ``model.safetensors`` (timm's
    :func:`timm.models.save_for_hf`; ``pretrained_cfg`` records input size, mean, std, ``num_classes=0`` and the
    pooling) + ``README.md`` (:func:`vispre.model_card.model_card`); plain timm loads it by name alone,
    ``timm.create_model("local-dir:OUT", pretrained=True)``. ``out`` ending in ``.safetensors``: that file plus
    ``<out>.json`` of timm ``create_model`` arguments. Everything is written under a temporary name and renamed,
    so a failed export leaves no partial output.

    Args:
        source: anything :func:`load_backbone` reads (run folder, checkpoint, export).
        out: a folder path (no suffix) or a path ending in ``.safetensors``.
        subnet: write this elastic sub-network of the backbone instead (POA; a standalone ViT from
            :func:`vispre.growth.subnet.extract_subnet`), e.g. ``SubnetSpec(depth=6, embed_dim=192)``.
        branch: "teacher" (default) or "student" backbone of a self-distillation run (see :func:`load_backbone`).
        mean, std: the folder's normalisation (default: :func:`training_normalisation` of ``source``).
        force: replace a non-empty ``out`` folder (default: refuse).

    Returns:
        The written folder, or the ``.safetensors`` path (the ``.json`` lies beside it).

    Raises:
        VispreError: another suffix, a non-empty folder without ``force``, a bad mean / std, or an unreadable source.
    """
    out = Path(out)
    if out.suffix not in ("", ".safetensors") and not out.is_dir():
        raise VispreError(f"export target must end in .safetensors (a file) or have no suffix (a timm / Hugging Face "
                          f"folder), got {out.name}")
    vit = load_backbone(source, branch=branch)
    if subnet is not None:
        vit = extract_subnet(vit, subnet)
    if out.suffix == ".safetensors" and not out.is_dir():
        return _export_file(vit, out)
    norm = training_normalisation(source, int(vit.patch_embed.proj.in_channels), mean, std)
    return _export_folder(vit, out, source, norm, force)


def _export_file(vit: VisionTransformer, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, save_safetensors({k: v.contiguous() for k, v in vit.state_dict().items()}))
    # num_classes 0: plain timm.create_model(..., pretrained=True) then expects no classifier weights
    atomic_write_text(out.with_suffix(".json"), json.dumps({**describe_vit(vit), "num_classes": 0}, indent=2) + "\n")
    return out


def _export_folder(vit: VisionTransformer, out: Path, source: str | Path, norm: Normalisation, force: bool) -> Path:
    from vispre.model_card import model_card

    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise VispreError(f"export folder {out} exists and is not empty: choose another folder or pass --force "
                          f"(force=True) to replace it")
    args = describe_vit(vit)
    model_name = args.pop("model_name")
    # a fresh model built by timm's factory from exactly these arguments: its recorded model args and
    # pretrained_cfg describe this architecture (not a grown / extracted model's origin), its tensors are contiguous
    # (the name's weight tag and licence do not describe these weights: null, so timm leaves them out)
    fresh = create_vit(model_name, **args, pretrained_cfg_overlay={"tag": None, "license": None})
    load_into(fresh, {k: v.detach().contiguous() for k, v in vit.state_dict().items()})
    size = int(fresh.patch_embed.img_size[0])
    data_config = {"input_size": (len(norm.mean), size, size), "mean": norm.mean, "std": norm.std,
                   "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center"}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_for_hf(fresh, str(tmp), model_args=args, safe_serialization=True, data_config=data_config)
        config = json.loads((tmp / "config.json").read_text())
        os.chmod(tmp / "model.safetensors", (tmp / "config.json").stat().st_mode & 0o777)  # safetensors writes 0600
        (tmp / "README.md").write_text(model_card(config, source=source, normalisation_origin=norm.origin,
                                                  run_config=run_config(source), report=_report_json(source),
                                                  folder=out))
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            out.replace(old)
        tmp.replace(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _report_json(source: str | Path) -> Path | None:
    """The report.json ``vispre eval`` wrote for ``source`` (in the run folder, or beside the file), if any."""
    source = Path(source)
    folders = [source] if source.is_dir() else [source.parent, source.parent.parent]
    return next((f / "report.json" for f in folders if (f / "report.json").is_file()), None)


__all__ = ["Normalisation", "export_backbone", "load_backbone", "run_config", "training_normalisation"]
