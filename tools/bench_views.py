"""Per-image views (torchvision, in a loader worker) vs the same views made on the batch (vispre.data.batch_views).

Side by side in one run, best of rounds:

- ``views_ms_per_batch``: one batch's views, per image (``SimCLRViews`` / ``MultiCropViews``) on 1 thread (what
  a loader worker does) and on the stacked uint8 batch (``BatchSimCLRViews`` / ``BatchMultiCropViews``) on the
  main process's threads (what the data module's ``on_after_batch_transfer`` does; on a GPU it runs there).
  Settings: the quickstart's (28 px grey, batch 256, configs/data/fashion_mnist_wds_two_views.yaml), an
  ImageNet-like SimCLR one (224 px RGB views of 256 px images, batch 64, SimCLR's default augmentations) and the
  Fashion-MNIST DINO multi-crop (2 x 28 px + 4 x 14 px, batch 256, configs/dino/vit_tiny_fashion_mnist.yaml).
- ``--end-to-end N``: a training command with each view, for 10 and for N batches, alternating; ``s_per_step``
  is the difference over N - 10 batches (start-up and the first batches cancel). ``--recipe quickstart``: the
  quickstart SimCLR fit streamed from the quickstart shards (written first if missing); ``--recipe dino``: the
  Fashion-MNIST DINO config (in memory).

    flock /tmp/vispre-heavy.lock .venv/bin/python tools/bench_views.py --end-to-end 110 [--recipe dino]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vispre.bench import cpu_name
from vispre.data import (BatchMultiCropViews, BatchSimCLRViews, MultiCropViews, SimCLRViews, load_fashion_mnist,
                         read_index)

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_VIEWS = dict(img_size=28, scale=(0.3, 1.0), blur_prob=0.0, mean=(0.2860,), std=(0.3530,))
DINO_VIEWS = dict(global_size=28, local_size=14, num_local=4, global_scale=(0.4, 1.0), local_scale=(0.1, 0.4),
                  global_blur_prob=(0.0, 0.0), local_blur_prob=0.0, global_solarize_prob=(0.0, 0.2),
                  mean=(0.2860,), std=(0.3530,))


def fashion_mnist_batch() -> torch.Tensor:
    return load_fashion_mnist("train").images[:256]


def random_photos() -> torch.Tensor:
    return torch.randint(0, 256, (64, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


SETTINGS = {  # name -> (per-image class, batched class, view arguments, images [B, C, H, W] maker)
    "quickstart_28px_grey_batch256": (SimCLRViews, BatchSimCLRViews, QUICKSTART_VIEWS, fashion_mnist_batch),
    "rgb_224px_from_256px_batch64": (SimCLRViews, BatchSimCLRViews, dict(img_size=224), random_photos),
    "dino_multicrop_2x28_4x14_grey_batch256": (MultiCropViews, BatchMultiCropViews, DINO_VIEWS, fashion_mnist_batch),
}
RECIPES = {  # --recipe -> (configs, per-image view class, batched view class, needs the shards)
    "quickstart": (["configs/simclr/vit_p14_max_fashion_mnist.yaml", "configs/data/fashion_mnist_wds_two_views.yaml"],
                   SimCLRViews, BatchSimCLRViews, True),
    "dino": (["configs/dino/vit_tiny_fashion_mnist.yaml"], MultiCropViews, BatchMultiCropViews, False),
}


def best_ms(fn: Callable[[], object], rounds: int, threads: int) -> float:
    """Best-of-rounds milliseconds of ``fn()`` with ``threads`` torch threads (one untimed call first)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    torch.set_num_threads(before)
    return round(best * 1e3, 1)


def views_ms_per_batch(rounds: int) -> dict[str, dict[str, float]]:
    """ms for one batch's views, per image (1 thread) and batched (all threads), per setting."""
    result = {}
    for name, (per_image_class, batched_class, settings, make_images) in SETTINGS.items():
        images = make_images()
        per_image, batched = per_image_class(**settings), batched_class(**settings, load_size=images.shape[-1])
        per_image_ms = best_ms(lambda: [per_image(image) for image in images], rounds, threads=1)
        batched_ms = best_ms(lambda: batched.batch_views(images), rounds, threads=torch.get_num_threads())
        result[name] = {"per_image_1_thread": per_image_ms,
                        f"batched_{torch.get_num_threads()}_threads": batched_ms,
                        "ratio": round(per_image_ms / batched_ms, 2)}
    return result


def time_fit(recipe: str, batches: int, rounds: int) -> dict[str, dict[str, object]]:
    """Seconds of the recipe's ``vispre fit`` with per-image and batched views (10 and ``batches`` batches,
    alternating) and the seconds per step between them."""
    configs, per_image_view, batched_view, needs_shards = RECIPES[recipe]
    vispre = [str(Path(sys.executable).with_name("vispre"))]  # the console script, as `make quickstart` runs it
    if needs_shards and read_index(ROOT / "data/fashion_mnist_wds") is None:
        subprocess.run([*vispre, "shards", "fashion-mnist", str(ROOT / "data/fashion_mnist_wds")], check=True)
    base = [*vispre, "fit", *(arg for config in configs for arg in ("--config", str(ROOT / config))),
            "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false"]
    variants = {"per_image": [f"--data.init_args.view.class_path=vispre.data.{per_image_view.__name__}"],
                "batched": [f"--data.init_args.view.class_path=vispre.data.{batched_view.__name__}"]}
    seconds: dict[str, dict[int, list[float]]] = {name: {10: [], batches: []} for name in variants}
    with tempfile.TemporaryDirectory() as runs:
        for round_ in range(rounds):
            for name in (list(variants) if round_ % 2 == 0 else list(reversed(variants))):
                for count in (10, batches):
                    start = time.perf_counter()
                    subprocess.run([*base, *variants[name], f"--trainer.limit_train_batches={count}",
                                    f"--runs_dir={runs}", f"--run_name={name}"], check=True, cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    seconds[name][count].append(round(time.perf_counter() - start, 1))
    result: dict[str, dict[str, object]] = {}
    for name, by_count in seconds.items():
        step = (min(by_count[batches]) - min(by_count[10])) / (batches - 10)
        result[name] = {"seconds_10_batches": by_count[10], f"seconds_{batches}_batches": by_count[batches],
                        "s_per_step": round(step, 3)}
    result["per_image_over_batched"] = {"s_per_step": round(result["per_image"]["s_per_step"]  # type: ignore[operator]
                                                            / result["batched"]["s_per_step"], 2)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--end-to-end", type=int, default=0, metavar="N",
                        help="also time a training run for N (> 10) batches with each view")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="quickstart",
                        help="the training run --end-to-end times (default: the quickstart)")
    args = parser.parse_args()
    if args.end_to_end and args.end_to_end <= 10:
        parser.error(f"--end-to-end must be more than 10 batches, got {args.end_to_end}")
    result: dict[str, object] = {"machine": f"{cpu_name()}, {os.cpu_count()} cores",
                                 "cpu_threads": torch.get_num_threads(),
                                 "views_ms_per_batch": views_ms_per_batch(args.rounds)}
    if args.end_to_end:
        result[f"{args.recipe}_fit"] = time_fit(args.recipe, args.end_to_end, max(1, args.rounds // 3))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
