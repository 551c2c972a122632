"""Cached one-pass probe sweep vs a conventional linear probe on Fashion-MNIST: wall time and test top-1.

    python tools/bench_probe.py [--ckpt RUN_OR_CKPT] [--budget-factor 10] [--out runs/bench_probe.json]

Sweep (vispre): features of the frozen backbone extracted once (all feature choices of the eval config), then
``linear_probe_sweep`` trains every feature x lr x wd head in one pass over them; the head is selected on a
validation split carved from train; the number is on test. Its grid comes from configs/eval/fashion_mnist.yaml.
A second, like-for-like sweep uses the cls feature only (the conventional probe's feature), timed on its own.

Conventional (the lightly / solo-learn way): the frozen backbone is re-run on every batch of every epoch on
augmented images (random crop 28 with 4-pixel padding + horizontal flip), one linear layer on the pooled cls
feature, SGD momentum 0.9, lr 0.1 x batch / 256, no weight decay, cosine schedule; one learning rate; trained on
all of train. It gets ``--budget-factor`` times the full sweep's wall time: its epoch count is set from the
time of a few timed batches (``--conventional-epochs`` overrides), so "the sweep is >= F x faster at equal or
better accuracy" holds exactly when the conventional run's final test top-1 is not above the sweep's. Test
top-1 is also recorded after every epoch (evaluation time excluded from its clock), and the curve is plotted
next to the JSON (``.png``).

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
from vispre.eval.suite import load_tasks
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
              view: EvalView, features: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Extract every feature choice once (``features``, default the task's), then the one-pass sweep;
    seconds of each part and the selected head."""
    features = tuple(features or task.features)
    start = time.perf_counter()
    ftrain = extract_features(vit, train.images, view, features, desc="sweep: train features")
    ftest = extract_features(vit, test.images, view, features, desc="sweep: test features")
    extracted = time.perf_counter()
    result = linear_probe_sweep(ftrain, train.labels, ftest, test.labels, 10, task.lrs, task.weight_decays,
                                task.epochs, val_fraction=task.val_fraction, optimizer=task.probe_optimizer)
    done = time.perf_counter()
    return {"seconds": done - start, "extract_seconds": extracted - start, "sweep_seconds": done - extracted,
            "test_top1": result.best.test_top1, "val_top1": result.best.val_top1, "feature": result.best.feature,
            "lr": result.best.lr, "weight_decay": result.best.weight_decay, "heads": len(result.rows),
            "per_feature_test_top1": {c: b.test_top1 for c, b in result.per_feature.items()},
            "epochs": task.epochs, "optimizer": task.probe_optimizer, "features": list(features)}


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


class ConventionalProbe:
    """Linear head on the pooled feature, trained with the backbone re-run on augmented images every batch.

    Args:
        vit: frozen backbone (eval mode). train: labelled uint8 images. view: normalisation view.
        batch_size, base_lr: SGD (momentum 0.9, no weight decay) at ``base_lr x batch_size / 256``. seed: order
        and augmentation seed.
    """

    def __init__(self, vit: VisionTransformer, train: LabelledImages, view: EvalView, batch_size: int = 256,
                 base_lr: float = 0.1, seed: int = 0) -> None:
        self.vit, self.train, self.view, self.batch_size = vit, train, view, batch_size
        self.lr = base_lr * batch_size / 256
        self.gen = torch.Generator().manual_seed(seed)
        self.head = nn.Linear(vit.embed_dim, 10)
        self.optimizer = torch.optim.SGD(self.head.parameters(), lr=self.lr, momentum=0.9, weight_decay=0.0)
        self.steps_per_epoch = math.ceil(len(train.labels) / batch_size)

    def step(self, idx: Tensor) -> float:
        """One SGD step on the samples ``idx``; returns the loss."""
        with torch.no_grad():
            feats = self.vit(self.view(augment(self.train.images[idx], self.gen))[0])
        loss = F.cross_entropy(self.head(feats), self.train.labels[idx])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def estimate_epoch_seconds(self, batches: int = 8) -> float:
        """Seconds per epoch from ``batches`` timed steps after one warm-up (trains this probe: time a
        throwaway one)."""
        order = torch.randperm(len(self.train.labels), generator=self.gen)
        self.step(order[: self.batch_size])
        began = time.perf_counter()
        for i in range(1, batches + 1):
            self.step(order.roll(-i * self.batch_size)[: self.batch_size])  # wraps around on tiny subsets
        return (time.perf_counter() - began) / batches * self.steps_per_epoch

    def fit(self, epochs: int, test: LabelledImages) -> dict[str, Any]:
        """Train ``epochs`` epochs (cosine schedule over all of them); train seconds (evaluation excluded) and
        test top-1 after every epoch."""
        steps = epochs * self.steps_per_epoch
        schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
        epoch_seconds: list[float] = []
        curve: list[tuple[float, float]] = []  # (train seconds so far, test top-1)
        for epoch in range(epochs):
            began = time.perf_counter()
            order = torch.randperm(len(self.train.labels), generator=self.gen)
            for i in range(0, len(order), self.batch_size):
                loss = self.step(order[i: i + self.batch_size])
                schedule.step()
            epoch_seconds.append(time.perf_counter() - began)
            curve.append((sum(epoch_seconds), top1(self.vit, self.head, test, self.view, 1024)))
            print(f"conventional epoch {epoch + 1}/{epochs}: {epoch_seconds[-1]:.1f} s, last loss {loss:.3f}, "
                  f"test top-1 {curve[-1][1]:.4f}", flush=True)
        return {"seconds": sum(epoch_seconds), "epoch_seconds": epoch_seconds, "epochs": epochs, "lr": self.lr,
                "batch_size": self.batch_size, "feature": "cls (timm pooled)", "curve": curve,
                "test_top1": curve[-1][1]}


def markdown(result: dict[str, Any]) -> str:
    s, c, cls = result["sweep"], result["conventional"], result["sweep_cls"]
    per_epoch = sum(c["epoch_seconds"]) / len(c["epoch_seconds"])
    lines = [
        f"Backbone: `{result['backbone']}`; {result['train_images']} train / {result['test_images']} test images; "
        f"{result['threads']} threads; {result['machine']}; {result['date']}",
        "",
        "| probe | what is trained | epochs | wall time (s) | test top-1 |",
        "|---|---|---|---|---|",
        f"| vispre cached sweep | {s['heads']} heads ({len(s['features'])} features x lr x wd), selected on "
        f"val: `{s['feature']}` lr {s['lr']} wd {s['weight_decay']} | {s['epochs']} | {s['seconds']:.1f} "
        f"(extract {s['extract_seconds']:.1f} + sweep {s['sweep_seconds']:.1f}) | **{s['test_top1']:.4f}** |",
        f"| vispre cached sweep, cls feature only (like for like) | {cls['heads']} heads (lr x wd), selected on "
        f"val: lr {cls['lr']} wd {cls['weight_decay']} | {cls['epochs']} | {cls['seconds']:.1f} (extract "
        f"{cls['extract_seconds']:.1f} + sweep {cls['sweep_seconds']:.1f}) | {cls['test_top1']:.4f} |",
        f"| conventional (backbone re-run on augmented images every batch) | 1 head, cls, SGD lr {c['lr']} | "
        f"{c['epochs']} ({result['budget']}) | {c['seconds']:.1f} ({per_epoch:.1f} / epoch) | "
        f"{c['test_top1']:.4f} |",
        "",
        f"Conventional test top-1 after each epoch (train seconds so far): "
        + ", ".join(f"{acc:.4f} ({sec:.0f} s)" for sec, acc in c["curve"]) + ".",
        "",
        f"The conventional probe ran {c['seconds'] / s['seconds']:.1f}x the full sweep's time and "
        f"{c['seconds'] / cls['seconds']:.1f}x the cls-only sweep's; final test top-1 sweep - conventional: "
        f"{s['test_top1'] - c['test_top1']:+.4f} (full), {cls['test_top1'] - c['test_top1']:+.4f} (cls only).",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Test top-1 vs wall seconds: the conventional probe's per-epoch curve and the two sweeps as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = result["conventional"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot([0.0] + [t for t, _ in c["curve"]], [0.1] + [a for _, a in c["curve"]], "o-", color="tab:grey",
            label=f"conventional (cls, {c['epochs']} epochs, cosine)")
    for key, label, colour in (("sweep", "vispre cached sweep (all features)", "tab:blue"),
                               ("sweep_cls", "vispre cached sweep (cls only)", "tab:orange")):
        ax.plot(result[key]["seconds"], result[key]["test_top1"], "*", ms=14, color=colour, label=label)
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("test top-1")
    ax.set_title(f"Linear probe on Fashion-MNIST ({result['machine']})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default=None, help="run folder / checkpoint / export (default: newest quickstart)")
    parser.add_argument("--config", default=str(ROOT / "configs/eval/fashion_mnist.yaml"),
                        help="eval config whose first task gives the sweep grid")
    parser.add_argument("--budget-factor", type=float, default=10.0,
                        help="conventional probe gets this many times the full sweep's wall time")
    parser.add_argument("--conventional-epochs", type=int, default=None, help="fixed epoch count (overrides)")
    parser.add_argument("--conventional-lr", type=float, default=0.1,
                        help="conventional probe's base lr (x batch / 256); 0.1 is the usual single choice")
    parser.add_argument("--limit-train", type=int, default=None, help="seeded subset of train (smoke runs)")
    parser.add_argument("--limit-test", type=int, default=None)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default="runs/bench_probe.json", help="JSON; the plot is written beside it")
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
        "sweep_cls": run_sweep(vit, train, test, task, view, features=("cls",)),
    }
    if args.conventional_epochs is None:
        estimate = ConventionalProbe(vit, train, view, base_lr=args.conventional_lr, seed=1).estimate_epoch_seconds()
        epochs = max(1, math.ceil(args.budget_factor * result["sweep"]["seconds"] / estimate))
        result["budget"] = (f"{args.budget_factor:g}x the sweep's {result['sweep']['seconds']:.0f} s at an "
                            f"estimated {estimate:.1f} s / epoch")
    else:
        epochs = args.conventional_epochs
        result["budget"] = "fixed epoch count"
    result["conventional"] = ConventionalProbe(vit, train, view, base_lr=args.conventional_lr).fit(epochs, test)
    assert all(torch.equal(v, before[k]) for k, v in vit.state_dict().items()), "a probe changed the backbone"
    table = markdown(result)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**result, "markdown": table}, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    print(f"written: {out}, {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
