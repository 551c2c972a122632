"""``vispre export RUN_DIR_OR_CKPT OUT_DIR``: a timm / Hugging Face folder (``config.json`` + ``model.safetensors``
+ ``README.md`` model card) that plain timm loads by name, ``timm.create_model("local-dir:OUT_DIR", pretrained=True)``;
``vispre export RUN_DIR_OR_CKPT OUT.safetensors``: the backbone with timm's parameter names plus ``OUT.json`` of
timm ``create_model`` arguments (see :func:`vispre.hub.export_backbone`).

``--subnet depth=D,embed_dim=E`` writes an elastic sub-network instead (POA; :mod:`vispre.growth.subnet`)."""

from __future__ import annotations

import argparse

from vispre.growth.subnet import parse_subnet
from vispre.hub import export_backbone


def main(argv: list[str]) -> int:
    """Run ``vispre export ARGV``; returns 0 after the folder (or both files) is written."""
    parser = argparse.ArgumentParser(prog="vispre export", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="run folder, Lightning checkpoint or state-dict file")
    parser.add_argument("out", help="output folder (no suffix: timm / Hugging Face layout) or .safetensors path "
                                    "(a .json of timm args is written beside it)")
    parser.add_argument("--subnet", metavar="depth=D,embed_dim=E", default=None,
                        help="export the elastic sub-network of depth D and width E (a multiple of head_dim; "
                             "POA's evenly spread blocks and leading channels/heads) as a standalone ViT")
    parser.add_argument("--branch", choices=["teacher", "student"], default="teacher",
                        help="self-distillation runs (dino, ibot, dinov2): the EMA teacher's backbone (default, "
                             "the DINO convention) or the student's")
    parser.add_argument("--mean", type=float, nargs="+", default=None,
                        help="folder export: per-channel mean of the model's input (default: the run's data view)")
    parser.add_argument("--std", type=float, nargs="+", default=None,
                        help="folder export: per-channel std of the model's input (default: the run's data view)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    args = parser.parse_args(argv)
    subnet = None if args.subnet is None else parse_subnet(args.subnet)
    out = export_backbone(args.source, args.out, subnet=subnet, branch=args.branch, mean=args.mean, std=args.std,
                          force=args.force)
    if out.suffix == ".safetensors":
        print(f"backbone written to {out} (+ {out.with_suffix('.json').name})")
    else:
        print(f"timm folder written to {out} (config.json, model.safetensors, README.md); load it with "
              f"timm.create_model(\"local-dir:{out}\", pretrained=True)")
    return 0
