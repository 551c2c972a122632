"""``vispre grow CKPT OUT [--depth N] [--embed_dim D] [--mlp_ratio R] [--depth_mode zero]``: grow a saved
checkpoint offline. The checkpoint is read with ``torch.load(weights_only=True)``; the objective is rebuilt
from the run's ``config.yaml`` beside the checkpoint (``version_N/config.yaml``), grown with
:func:`vispre.growth.grow_objective` and written (temp file + rename) with the new architecture recorded in
``checkpoint["vispre"]["backbone"]``. Optimizer state is dropped (resume with a fresh optimizer)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentParser

from vispre.backbones.vit import describe_vit
from vispre.growth.modules import GrowthSpec, grow_objective
from vispre.objectives.base import PretrainObjective


def _config_of(ckpt: Path) -> Path:
    for parent in ckpt.resolve().parents:
        if (parent / "config.yaml").is_file():
            return parent / "config.yaml"
    raise FileNotFoundError(f"no config.yaml found above checkpoint {ckpt}; expected a vispre run folder")


def _objective(config: Path) -> PretrainObjective:
    parser = ArgumentParser()
    parser.add_subclass_arguments(PretrainObjective, "model")
    model_cfg = {"model": yaml.safe_load(config.read_text())["model"]}
    cfg = parser.instantiate_classes(parser.parse_object(model_cfg))
    return cfg.model


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vispre grow", description=__doc__)
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--depth", type=int)
    parser.add_argument("--embed_dim", type=int)
    parser.add_argument("--mlp_ratio", type=float)
    parser.add_argument("--depth_mode", default="zero", choices=["stack", "interleave", "zero"])
    parser.add_argument("--noise_std", type=float, default=0.0)
    args = parser.parse_args(argv)
    if args.depth is None and args.embed_dim is None and args.mlp_ratio is None:
        raise ValueError("nothing to grow: pass at least one of --depth, --embed_dim, --mlp_ratio")
    if not args.ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {args.ckpt} does not exist")
    checkpoint = torch.load(args.ckpt, map_location="cpu", weights_only=True)
    module = _objective(_config_of(args.ckpt))
    saved = (checkpoint.get("vispre") or {}).get("backbone")
    if saved is not None and saved != describe_vit(module.backbone.vit):
        raise ValueError(f"checkpoint {args.ckpt} holds an already grown backbone {saved}; "
                         "grow the run's original architecture only")
    module.load_state_dict(checkpoint["state_dict"])
    grow_objective(module, GrowthSpec(args.depth, args.embed_dim, args.mlp_ratio, args.depth_mode, args.noise_std))
    out = {"state_dict": module.state_dict(), "vispre": {"objective": type(module).__name__,
                                                          "backbone": describe_vit(module.backbone.vit)}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    torch.save(out, tmp)
    os.replace(tmp, args.out)
    print(f"grew {args.ckpt} -> {args.out}: {out['vispre']['backbone']}")
    return 0
