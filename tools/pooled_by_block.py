"""Where the pooled embedding comes from: kNN top-1 of the max / mean over the patch tokens after every block.

Each block's patch tokens get the final norm (timm ``forward_intermediates(norm=True)``), are max- or mean-pooled
and z-scored with the bank's statistics; cosine kNN (T = 0.07, the suite's rule) over a seeded subset of the
Fashion-MNIST train split, queried with other held-out train images (the test split is never read). After the
last block, ``max`` is the suite's ``max`` feature. ``untrained`` instead of a run gives a ViT of a run config's
shape (``--config``, default the quickstart's) with its initial weights, for the comparison.

    python tools/pooled_by_block.py runs/quickstart/version_0 [--bank 20000] [--queries 10000] [--k 20]
    python tools/pooled_by_block.py untrained --config configs/mae/vit_tiny_fashion_mnist.yaml
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from timm.models.vision_transformer import VisionTransformer

from vispre.commands.config import build_from_config
from vispre.data.fashion_mnist import CLASSES, MEAN, STD, load_fashion_mnist
from vispre.data.transforms import EvalView
from vispre.eval.features import apply_view
from vispre.eval.knn import knn_top1, standardize
from vispre.hub import load_backbone

POOLS = ("max", "mean")
QUICKSTART_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "simclr" / "vit_p14_max_fashion_mnist.yaml"


@torch.no_grad()
def pooled_by_block(vit: VisionTransformer, images: Tensor, batch_size: int = 1000) -> dict[str, Tensor]:
    """Normalised images [N, C, H, W] -> {"b{i}_{pool}": [N, D]} for every block i (1-based) and pool in POOLS."""
    depth = len(vit.blocks)
    out: dict[str, list[Tensor]] = {}
    for start in range(0, len(images), batch_size):
        layers = vit.forward_intermediates(images[start:start + batch_size], indices=depth, norm=True,
                                           output_fmt="NLC", intermediates_only=True)
        for block, patches in enumerate(layers, start=1):
            out.setdefault(f"b{block}_max", []).append(patches.amax(dim=1))
            out.setdefault(f"b{block}_mean", []).append(patches.mean(dim=1))
    return {name: torch.cat(parts) for name, parts in out.items()}


def untrained_vit(seed: int = 0, config: str | Path = QUICKSTART_CONFIG) -> VisionTransformer:
    """The backbone of run ``config`` (default: the quickstart's, the Makefile's QUICKSTART_CONFIG) with its
    initial weights."""
    return build_from_config([config], [f"--seed_everything={seed}"]).model.backbone.vit


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backbone", help="a run folder, checkpoint or export (vispre.load_backbone), or 'untrained'")
    parser.add_argument("--bank", type=int, default=20000, help="train images in the kNN bank")
    parser.add_argument("--queries", type=int, default=10000, help="other train images queried")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default=str(QUICKSTART_CONFIG), help="run config of the 'untrained' ViT")
    args = parser.parse_args(argv)
    if args.bank + args.queries > 60000:
        parser.error(f"--bank + --queries must be at most 60000 (the train split), got {args.bank + args.queries}")
    vit = untrained_vit(args.seed, args.config) if args.backbone == "untrained" else load_backbone(args.backbone)
    vit.eval()
    train = load_fashion_mnist("train")
    order = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(args.seed))
    bank_ids, query_ids = order[:args.bank], order[len(order) - args.queries:]
    images = apply_view(EvalView(train.images.shape[-1], MEAN, STD), train.images)
    bank, queries = pooled_by_block(vit, images[bank_ids]), pooled_by_block(vit, images[query_ids])
    print(f"| block | max kNN top-1 (k={args.k}) | mean kNN top-1 (k={args.k}) |\n|---|---|---|")
    for block in range(1, len(vit.blocks) + 1):
        cells = []
        for pool in POOLS:
            b, q = standardize(bank[f"b{block}_{pool}"], queries[f"b{block}_{pool}"])
            top1 = knn_top1(b, train.labels[bank_ids], q, train.labels[query_ids], len(CLASSES), ks=(args.k,))[args.k]
            cells.append(f"{top1:.4f}")
        print(f"| {block} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
