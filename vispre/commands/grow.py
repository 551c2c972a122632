"""``vispre grow CKPT OUT [--depth N] [--embed_dim D] [--mlp_ratio R] [--depth_mode zero] [--noise_std S]``:
grow a saved run checkpoint offline.

The checkpoint is read with ``torch.load(weights_only=True)``; the objective is rebuilt from the run's
``config.yaml`` above the checkpoint (``version_N/config.yaml``) with :func:`build_from_config`, grown with
:func:`vispre.growth.grow_objective` and written atomically with the new architecture recorded in
``checkpoint["vispre"]["backbone"]``. Optimizer state is dropped (resume with a fresh optimizer).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vispre.backbones.vit import describe_vit
from vispre.backbones.weights import safe_torch_load
from vispre.callbacks.safety import save_atomically
from vispre.commands.config import build_from_config
from vispre.errors import VispreError
from vispre.growth.modules import GrowthSpec, grow_objective


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options of ``vispre grow`` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="vispre grow", description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", type=Path, help="checkpoint of a vispre run (its config.yaml lies above it)")
    parser.add_argument("out", type=Path, help="where the grown checkpoint is written")
    parser.add_argument("--depth", type=int)
    parser.add_argument("--embed_dim", type=int)
    parser.add_argument("--mlp_ratio", type=float)
    parser.add_argument("--depth_mode", default="zero", choices=["stack", "interleave", "zero"])
    parser.add_argument("--noise_std", type=float, default=0.0)
    return parser.parse_args(argv)


def run_config_of(ckpt: Path) -> Path:
    """The ``config.yaml`` of the run a checkpoint belongs to (the nearest one in its parent folders)."""
    for parent in ckpt.resolve().parents:
        if (parent / "config.yaml").is_file():
            return parent / "config.yaml"
    raise FileNotFoundError(f"no config.yaml found above checkpoint {ckpt}; expected a vispre run folder")


def main(argv: list[str]) -> int:
    """Run ``vispre grow ARGV``; returns 0 after the grown checkpoint is written."""
    args = parse_args(argv)
    if args.depth is None and args.embed_dim is None and args.mlp_ratio is None:
        raise VispreError("nothing to grow: pass at least one of --depth, --embed_dim, --mlp_ratio")
    if not args.ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {args.ckpt} does not exist")
    checkpoint = safe_torch_load(args.ckpt)
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise VispreError(f"checkpoint {args.ckpt} has no 'state_dict' (expected a Lightning checkpoint of a "
                          f"vispre run)")
    module = build_from_config([run_config_of(args.ckpt)]).model
    saved = (checkpoint.get("vispre") or {}).get("backbone")
    if saved is not None and saved != describe_vit(module.backbone.vit):
        raise VispreError(f"checkpoint {args.ckpt} holds an already grown backbone {saved}; "
                          "grow the run's original architecture only")
    module.load_state_dict(checkpoint["state_dict"])
    grow_objective(module, GrowthSpec(depth=args.depth, embed_dim=args.embed_dim, mlp_ratio=args.mlp_ratio,
                                      depth_mode=args.depth_mode, noise_std=args.noise_std))
    grown = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(grown)  # the objective records its own metadata (grown architecture)
    save_atomically(grown, args.out)
    print(f"grew {args.ckpt} -> {args.out}: {grown['vispre']['backbone']}")
    return 0
