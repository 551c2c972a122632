"""Cached one-pass probe sweep vs a conventional linear probe on Fashion-MNIST: wall time and test top-1.

    python tools/bench_probe.py [--ckpt RUN_OR_CKPT] [--conventional-epochs 3] [--out bench_probe.json]

Sweep (vispre): features of the frozen backbone extracted once (all feature choices of the eval config), then
``linear_probe_sweep`` trains every feature x lr x wd head in one pass over them; the head is selected on a
validation split carved from train; the number is on test. Its grid comes from configs/eval/fashion_mnist.yaml.

Conventional (the lightly / solo-learn way): the frozen backbone is re-run on every batch of every epoch on
augmented images (random crop 28 with 4-pixel padding + horizontal flip), one linear layer on the pooled cls
feature, SGD momentum 0.9, lr 0.1 x batch / 256, no weight decay, cosine schedule; one learning rate; trained on
all of train, evaluated on test after the last epoch.

The backbone is the newest ``runs/quickstart/version_*/checkpoints/last.ckpt`` unless ``--ckpt`` is given (a
freshly initialised quickstart-sized ViT when there is none). Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from vispre.backbones.vit import create_vit
from vispre.data.fashion_mnist import LabelledImages, load_fashion_mnist
from vispre.data.transforms import EvalView
from vispre.eval.cli import load_tasks
from vispre.eval.datasets import default_normalisation, subset
from vispre.eval.features import extract_features
from vispre.eval.linear_probe import linear_probe_sweep
from vispre.eval.suite import EvalTask
from vispre.hub import load_backbone

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_SIZES = dict(img_size=28, patch_size=7, in_chans=1, embed_dim=192, depth=6, num_heads=3)


def newest_quickstart(runs: Path) -> Path | None:
    """The most recently written ``quickstart/version_*/checkpoints/last.ckpt`` under ``runs``, if any."""
    found = sorted(runs.glob("quickstart/version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def backbone_for(ckpt: str | None) -> tuple[VisionTransformer, str]:
    """(frozen ViT in eval mode, description) from ``ckpt``, the newest quickstart run, or a fresh init."""
    path = Path(ckpt) if ckpt else newest_quickstart(ROOT / "runs")
    if path is not None:
        return load_backbone(path), str(path)
    torch.manual_seed(0)
    return create_vit(**QUICKSTART_SIZES).eval(), "random init (no quickstart checkpoint found)"


def run_sweep(vit: VisionTransformer, train: LabelledImages, test: LabelledImages, task: EvalTask,
              view: EvalView) -> dict[str, Any]:
    """Extract every feature choice once, then the one-pass sweep; seconds of each part and the selected head."""
    start = time.perf_counter()
    ftrain = extract_features(vit, train.images, view, task.features, desc="sweep: train features")
    ftest = extract_features(vit, test.images, view, task.features, desc="sweep: test features")
    extracted = time.perf_counter()
    result = linear_probe_sweep(ftrain, train.labels, ftest, test.labels, 10, task.lrs, task.weight_decays,
                                task.epochs, val_fraction=task.val_fraction, optimizer=task.probe_optimizer)
    done = time.perf_counter()
    return {"seconds": done - start, "extract_seconds": extracted - start, "sweep_seconds": done - extracted,
            "test_top1": result.best.test_top1, "val_top1": result.best.val_top1, "feature": result.best.feature,
            "lr": result.best.lr, "weight_decay": result.best.weight_decay, "heads": len(result.rows),
            "per_feature_test_top1": {c: b.test_top1 for c, b in result.per_feature.items()},
            "epochs": task.epochs, "optimizer": task.probe_optimizer}


def augment(images: Tensor, gen: torch.Generator, padding: int = 4) -> Tensor:
    """Per-sample random crop (zero padding) + horizontal flip of a uint8 batch: [B, C, H, W] -> same shape."""
    b, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # [B, 1, H, 1]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # [B, 1, 1, W]
    crops = padded[torch.arange(b)[:, None, None, None], torch.arange(images.shape[1])[None, :, None, None],
                   rows, cols]
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], crops.flip(-1), crops)


@torch.inference_mode()
def top1(vit: VisionTransformer, head: nn.Linear, data: LabelledImages, view: EvalView, batch_size: int) -> float:
    correct = 0
    for start in range(0, len(data.labels), batch_size):
        x = view(data.images[start: start + batch_size])[0]
        correct += int((head(vit(x)).argmax(1) == data.labels[start: start + batch_size]).sum())
    return correct / len(data.labels)


def run_conventional(vit: VisionTransformer, train: LabelledImages, test: LabelledImages, view: EvalView,
                     epochs: int, batch_size: int = 256, base_lr: float = 0.1, seed: int = 0) -> dict[str, Any]:
    """Linear head on the pooled feature, backbone re-run on augmented images every batch; train seconds
    (test evaluation excluded) and test top-1 after the last epoch."""
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(vit.embed_dim, 10)
    lr = base_lr * batch_size / 256
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    steps = epochs * math.ceil(len(train.labels) / batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    start = time.perf_counter()
    epoch_seconds = []
    for epoch in range(epochs):
        began = time.perf_counter()
        order = torch.randperm(len(train.labels), generator=gen)
        for i in range(0, len(order), batch_size):
            idx = order[i: i + batch_size]
            with torch.no_grad():
                feats = vit(view(augment(train.images[idx], gen))[0])
            loss = F.cross_entropy(head(feats), train.labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        epoch_seconds.append(time.perf_counter() - began)
        print(f"conventional epoch {epoch + 1}/{epochs}: {epoch_seconds[-1]:.1f} s, last loss {loss.item():.3f}",
              flush=True)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "epoch_seconds": epoch_seconds, "epochs": epochs, "lr": lr,
            "batch_size": batch_size, "feature": "cls (timm pooled)",
            "test_top1": top1(vit, head, test, view, 1024)}


def markdown(result: dict[str, Any]) -> str:
    s, c = result["sweep"], result["conventional"]
    per_epoch = sum(c["epoch_seconds"]) / len(c["epoch_seconds"])
    lines = [
        f"Backbone: `{result['backbone']}`; {result['train_images']} train / {result['test_images']} test images; "
        f"{result['threads']} threads; {result['machine']}; {result['date']}",
        "",
        "| probe | what is trained | epochs | wall time (s) | test top-1 |",
        "|---|---|---|---|---|",
        f"| vispre cached sweep | {s['heads']} heads ({len(result['features'])} features x lr x wd), selected on "
        f"val: `{s['feature']}` lr {s['lr']} wd {s['weight_decay']} | {s['epochs']} | {s['seconds']:.1f} "
        f"(extract {s['extract_seconds']:.1f} + sweep {s['sweep_seconds']:.1f}) | **{s['test_top1']:.4f}** |",
        f"| conventional (backbone re-run on augmented images every epoch) | 1 head, cls, SGD lr {c['lr']} | "
        f"{c['epochs']} (shortened to fit the budget) | {c['seconds']:.1f} ({per_epoch:.1f} / epoch) | "
        f"{c['test_top1']:.4f} |",
        f"| conventional, 90 epochs (MAE / lightly length), extrapolated | 1 head | 90 | ~{90 * per_epoch:.0f} | "
        f"not run |",
        "",
        f"Speed-up of the sweep: {c['seconds'] / s['seconds']:.1f}x vs the {c['epochs']}-epoch run as measured, "
        f"~{90 * per_epoch / s['seconds']:.0f}x vs a 90-epoch conventional run (extrapolated from the measured "
        f"time per epoch); test top-1 difference sweep - conventional: {s['test_top1'] - c['test_top1']:+.4f}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default=None, help="run folder / checkpoint / export (default: newest quickstart)")
    parser.add_argument("--config", default=str(ROOT / "configs/eval/fashion_mnist.yaml"),
                        help="eval config whose first task gives the sweep grid")
    parser.add_argument("--conventional-epochs", type=int, default=3)
    parser.add_argument("--limit-train", type=int, default=None, help="seeded subset of train (smoke runs)")
    parser.add_argument("--limit-test", type=int, default=None)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default="bench_probe.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    vit, name = backbone_for(args.ckpt)
    task = load_tasks(args.config)[0][0]
    train = subset(load_fashion_mnist("train", task.root), args.limit_train)
    test = subset(load_fashion_mnist("test", task.root), args.limit_test)
    mean, std = default_normalisation("fashion_mnist", 1)
    view = EvalView(int(vit.patch_embed.img_size[0]), mean=mean, std=std)
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    result: dict[str, Any] = {
        "backbone": name, "train_images": len(train.labels), "test_images": len(test.labels),
        "threads": args.threads, "features": list(task.features), "date": date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads" + (
            ", CUDA available (unused)" if torch.cuda.is_available() else ", no GPU"),
        "sweep": run_sweep(vit, train, test, task, view),
        "conventional": run_conventional(vit, train, test, view, args.conventional_epochs),
    }
    assert all(torch.equal(v, before[k]) for k, v in vit.state_dict().items()), "a probe changed the backbone"
    table = markdown(result)
    print(table)
    Path(args.out).write_text(json.dumps({**result, "markdown": table}, indent=2) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
