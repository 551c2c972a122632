"""``vispre grow CKPT OUT [--depth N] [--embed_dim D] [--mlp_ratio R] [--depth_mode zero] [--noise_std S]
[--force]``: grow a saved run checkpoint offline.

The checkpoint is read with ``torch.load(weights_only=True)``; the objective is rebuilt from the run's config
(``OUT.config.yaml``-style sibling of a grown checkpoint, else the nearest ``config.yaml`` above it, i.e.
``version_N/config.yaml``) with :func:`build_from_config`, grown with :func:`vispre.growth.grow_objective` and
written atomically with the new architecture recorded in ``checkpoint["vispre"]["backbone"]``. Optimizer state
is dropped. Beside ``OUT`` goes ``<OUT stem>.config.yaml``: the run's config with the grown backbone sizes and
``init_from: OUT``, so ``vispre fit --config <OUT stem>.config.yaml`` continues training the grown model (fresh
optimizer; the objective's decoder / heads start fresh). ``OUT`` equal to ``CKPT`` (also through a symlink or
another spelling of the path) is refused unless ``--force``: it would replace the run's checkpoint (optimizer
state, global step) by one that no longer matches the run's ``config.yaml``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from vispre.backbones.vit import describe_vit
from vispre.backbones.weights import safe_torch_load
from vispre.callbacks.safety import save_atomically
from vispre.commands.config import build_from_config
from vispre.errors import VispreError
from vispre.growth.modules import GrowthSpec, grow_objective
from vispre.io import atomic_write_text, read_yaml

GROWN_SIZES = ("embed_dim", "depth", "num_heads", "mlp_ratio")
"""The MaskedViT arguments a growth changes (the rest of the architecture is kept)."""


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
    parser.add_argument("--force", action="store_true", help="allow OUT to be CKPT itself (replaces it)")
    return parser.parse_args(argv)


def grown_config_path(ckpt: Path) -> Path:
    """Where ``vispre grow`` writes the config of a grown checkpoint: ``<stem>.config.yaml`` beside it."""
    return ckpt.with_name(f"{ckpt.stem}.config.yaml")


def run_config_of(ckpt: Path) -> Path:
    """The config of the run a checkpoint belongs to: a grown checkpoint's own ``<stem>.config.yaml``, else
    the nearest ``config.yaml`` in its parent folders."""
    if grown_config_path(ckpt).is_file():
        return grown_config_path(ckpt)
    for parent in ckpt.resolve().parents:
        if (parent / "config.yaml").is_file():
            return parent / "config.yaml"
    raise FileNotFoundError(f"no config.yaml found above checkpoint {ckpt}; expected a vispre run folder")


def grown_config(run_config: Path, grown_arch: dict[str, Any], grown_ckpt: Path) -> dict[str, Any]:
    """The run config ``run_config`` with every MaskedViT of its model resized to ``grown_arch`` and warm-started
    from ``grown_ckpt`` (``init_from``); ``ckpt_path`` is cleared (the grown checkpoint has no optimizer state).

    Raises:
        VispreError: the model section holds no ``MaskedViT`` to resize.
    """
    config = read_yaml(run_config)
    backbones = [node for node in _mappings(config.get("model"))
                 if str(node.get("class_path", "")).endswith("MaskedViT")]
    if not backbones:
        raise VispreError(f"the run config {run_config} has no MaskedViT backbone under model: to resize")
    for node in backbones:
        init_args = node.setdefault("init_args", {})
        init_args.update({key: grown_arch[key] for key in GROWN_SIZES}, init_from=str(grown_ckpt.resolve()))
    config["ckpt_path"] = None
    return config


def _mappings(node: Any) -> list[dict[str, Any]]:
    """Every mapping inside ``node`` (itself included), depth first."""
    if isinstance(node, dict):
        return [node, *(m for value in node.values() for m in _mappings(value))]
    if isinstance(node, list):
        return [m for value in node for m in _mappings(value)]
    return []


def main(argv: list[str]) -> int:
    """Run ``vispre grow ARGV``; returns 0 after the grown checkpoint and its config are written."""
    args = parse_args(argv)
    if args.depth is None and args.embed_dim is None and args.mlp_ratio is None:
        raise VispreError("nothing to grow: pass at least one of --depth, --embed_dim, --mlp_ratio")
    if not args.ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {args.ckpt} does not exist")
    if args.out.resolve() == args.ckpt.resolve() and not args.force:
        raise VispreError(f"output {args.out} is the input checkpoint {args.ckpt}: growing in place would replace "
                          "the run's checkpoint (optimizer state, global step) by one that no longer matches its "
                          "config.yaml; write the grown checkpoint elsewhere, or pass --force")
    checkpoint = safe_torch_load(args.ckpt)
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise VispreError(f"checkpoint {args.ckpt} has no 'state_dict' (expected a Lightning checkpoint of a "
                          f"vispre run)")
    run_config = run_config_of(args.ckpt)
    module = build_from_config([run_config]).model
    saved = (checkpoint.get("vispre") or {}).get("backbone")
    if saved is not None and saved != describe_vit(module.backbone.vit):
        raise VispreError(f"checkpoint {args.ckpt} holds an already grown backbone {saved}; "
                          "grow the run's original architecture only")
    module.load_state_dict(checkpoint["state_dict"])
    grow_objective(module, GrowthSpec(depth=args.depth, embed_dim=args.embed_dim, mlp_ratio=args.mlp_ratio,
                                      depth_mode=args.depth_mode, noise_std=args.noise_std))
    grown = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(grown)  # the objective records its own metadata (grown architecture)
    config = grown_config(run_config, grown["vispre"]["backbone"], args.out)
    save_atomically(grown, args.out)
    config_path = atomic_write_text(grown_config_path(args.out), yaml.safe_dump(config, sort_keys=False))
    print(f"grew {args.ckpt} -> {args.out}: {grown['vispre']['backbone']}; continue it with "
          f"vispre fit --config {config_path}")
    return 0
