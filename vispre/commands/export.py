"""``vispre export RUN_DIR_OR_CKPT OUT.safetensors``: the backbone with timm's parameter names, plus
``OUT.json`` of timm ``create_model`` arguments (see :func:`vispre.hub.export_backbone`)."""

from __future__ import annotations

import argparse

from vispre.hub import export_backbone


def main(argv: list[str]) -> int:
    """Run ``vispre export ARGV``; returns 0 after both files are written."""
    parser = argparse.ArgumentParser(prog="vispre export", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="run folder, Lightning checkpoint or state-dict file")
    parser.add_argument("out", help="output .safetensors path (a .json of timm args is written beside it)")
    args = parser.parse_args(argv)
    out = export_backbone(args.source, args.out)
    print(f"backbone written to {out} (+ {out.with_suffix('.json').name})")
    return 0
