"""Equal wall-clock ablation of pretraining objectives on Fashion-MNIST: kNN and linear-probe top-1.

Every method trains the same small ViT on the same two SimCLR views (MAE uses view 0) for the same number
of seconds, with a time-based warmup + cosine lr (and MoCo momentum) schedule; then the frozen cls feature
is evaluated with vispre.eval: kNN (cosine, k=20, T=0.07, bank = --eval_train
random train images) and a linear-probe sweep
(lr x wd selected on a val split of train, reported on test). Run under the shared lock:

    flock /tmp/vispre-heavy.lock .venv/bin/python tools/ablate_objectives.py --seconds 60 --out runs/ablation.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from vispre.backbones import MaskedViT
from vispre.data.in_memory import ViewDataset
from vispre.data.fashion_mnist import MEAN, STD, load_fashion_mnist
from vispre.data.transforms import EvalView, SimCLRViews
from vispre.eval.features import extract_features
from vispre.eval.knn import knn_top1
from vispre.eval.linear_probe import linear_probe_sweep
from vispre.heads import MultiProjectionHead, ProjectionMLP
from vispre.losses import (AMCLBarlowTwinsLoss, AMCLInfoNCELoss, AMCLNTXentLoss, BarlowTwinsLoss, InfoNCELoss,
                           NTXentLoss)
from vispre.objectives import MAE, BarlowTwins, MoCoV3, MultiObjective, PretrainObjective, SimCLR
from vispre.optim import AdamWRecipe, warmup_cosine

VIRTUAL_STEPS = 1000  # schedules run on elapsed / budget mapped onto this many steps


def small_vit() -> MaskedViT:
    return MaskedViT("vit_tiny_patch16_224", img_size=28, patch_size=7, in_chans=1, embed_dim=96, depth=4,
                     num_heads=3)


SIM_HEAD = dict(hidden_dim=512, out_dim=128, num_layers=2)
MOCO_HEAD = dict(hidden_dim=512, out_dim=128, num_layers=3, last_batch_norm=True)
BT_HEAD = dict(hidden_dim=512, out_dim=512, num_layers=3)
MAE_ARGS = dict(decoder_dim=64, decoder_depth=2, decoder_num_heads=4)


def simclr(heads: int | None = None, form: str = "hardest") -> Callable[[MaskedViT], PretrainObjective]:
    """SimCLR (T 0.2), or AMCL-SimCLR with ``heads`` projection heads and the given form."""
    if heads is None:
        return partial(SimCLR, projector=partial(ProjectionMLP, **SIM_HEAD), loss=NTXentLoss(temperature=0.2))
    return partial(SimCLR, projector=partial(MultiProjectionHead, num_heads=heads, **SIM_HEAD),
                   loss=partial(AMCLNTXentLoss, temperature=0.2, form=form))


def moco_v3(heads: int | None = None) -> Callable[[MaskedViT], PretrainObjective]:
    """MoCo v3 (T 0.2, frozen patch embedding), or AMCL-MoCo v3 with ``heads`` heads (hardest form)."""
    if heads is None:
        return partial(MoCoV3, projector=partial(ProjectionMLP, **MOCO_HEAD), loss=InfoNCELoss(temperature=0.2),
                       freeze_patch_embed=True)
    return partial(MoCoV3, projector=partial(MultiProjectionHead, num_heads=heads, **MOCO_HEAD),
                   loss=partial(AMCLInfoNCELoss, temperature=0.2), freeze_patch_embed=True)


def barlow_twins(heads: int | None = None) -> Callable[[MaskedViT], PretrainObjective]:
    """Barlow Twins, or AMCL-Barlow Twins with ``heads`` heads."""
    if heads is None:
        return partial(BarlowTwins, projector=partial(ProjectionMLP, **BT_HEAD), loss=BarlowTwinsLoss())
    return partial(BarlowTwins, projector=partial(MultiProjectionHead, num_heads=heads, **BT_HEAD),
                   loss=AMCLBarlowTwinsLoss)


METHODS: dict[str, Callable[[MaskedViT], PretrainObjective]] = {
    "mae": partial(MAE, **MAE_ARGS),
    "simclr": simclr(),
    "amcl_simclr (hardest)": simclr(heads=3),
    "amcl_simclr (logsumexp)": simclr(heads=3, form="logsumexp"),
    "moco_v3": moco_v3(),
    "amcl_moco_v3 (hardest)": moco_v3(heads=3),
    "barlow_twins": barlow_twins(),
    "amcl_barlow_twins": barlow_twins(heads=3),
    "mae + simclr": lambda b: MultiObjective(b, objectives=[partial(MAE, **MAE_ARGS), simclr()],
                                             weights=[1.0, 0.5], views=[[0], [0, 1]]),
}


def train_for(module: PretrainObjective, loader: DataLoader, seconds: float, batch_size: int,
              base_lr: float) -> dict:
    """Train until ``seconds`` elapse; returns steps done and the last loss."""
    recipe = AdamWRecipe(base_lr=base_lr, betas=(0.9, 0.999), warmup_fraction=0.05, fused=False)
    bundle = recipe.build(module, batch_size, VIRTUAL_STEPS)
    opt, peak = bundle.optimizer, bundle.peak_lr
    momentum_modules = [m for m in module.modules() if hasattr(m, "update_momentum")]
    module.train()
    steps, start, loss = 0, time.perf_counter(), float("nan")
    while True:
        for batch in loader:
            virtual = int(VIRTUAL_STEPS * (time.perf_counter() - start) / seconds)
            if virtual >= VIRTUAL_STEPS:
                return {"steps": steps, "final_loss": loss}
            for group in opt.param_groups:
                group["lr"] = peak * warmup_cosine(virtual, bundle.warmup_steps, VIRTUAL_STEPS)
            for m in momentum_modules:
                m.update_momentum(virtual, VIRTUAL_STEPS)
            terms = module.loss_terms(batch)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            opt.step()
            steps, loss = steps + 1, float(terms["loss"])


def evaluate(backbone: MaskedViT, train, test, probe_epochs: int) -> dict:
    view = EvalView(28, mean=MEAN, std=STD)
    tr = extract_features(backbone.vit, train.images, view, choices=("cls",))["cls"]
    te = extract_features(backbone.vit, test.images, view, choices=("cls",))["cls"]
    knn = knn_top1(tr, train.labels, te, test.labels, 10, ks=(20,), temperature=0.07)[20]
    best = linear_probe_sweep({"cls": tr}, train.labels, {"cls": te}, test.labels, 10, epochs=probe_epochs,
                              progress=False).best
    return {"knn_top1": knn, "linear_top1": best.test_top1, "probe_lr": best.lr, "probe_wd": best.weight_decay}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="training wall-clock per method")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--base_lr", type=float, default=1e-3)
    parser.add_argument("--eval_train", type=int, default=10000, help="train images in the kNN bank / probe set")
    parser.add_argument("--probe_epochs", type=int, default=20)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), help=f"subset of {list(METHODS)}")
    parser.add_argument("--out", type=Path, default=Path("runs/ablate_objectives.json"))
    args = parser.parse_args()
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; expected some of {list(METHODS)}")
    torch.set_num_threads(2)
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    pick = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(0))[: args.eval_train]
    bank = type(train)(train.images[pick], train.labels[pick])
    views = SimCLRViews(28, scale=(0.3, 1.0), blur_prob=0.0, mean=MEAN, std=STD)
    loader = DataLoader(ViewDataset(train.images, None, views), batch_size=args.batch_size, shuffle=True,
                        drop_last=True, num_workers=0)
    results = {"machine": f"{platform.processor() or platform.machine()}, torch threads 2, no GPU",
               "seconds_per_method": args.seconds, "eval_train": args.eval_train, "batch_size": args.batch_size, "rows": {}}
    torch.manual_seed(0)
    results["rows"]["random init (no training)"] = {"steps": 0, **evaluate(small_vit(), bank, test,
                                                                            args.probe_epochs)}
    print(results["rows"], flush=True)
    for name in args.methods:
        torch.manual_seed(0)
        module = METHODS[name](small_vit())
        row = train_for(module, loader, args.seconds, args.batch_size, args.base_lr)
        row.update(evaluate(module.backbone, bank, test, args.probe_epochs))
        results["rows"][name] = row
        print(name, row, flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
