"""Images/s of the webdataset streaming loader vs torchvision ImageFolder over the same JPEGs.

Writes N Fashion-MNIST training images as JPEGs (class sub-folders) to a cache folder once, shards of the
same JPEG bytes with ``vispre shards folder``'s writer, then times, side by side in one run and in
alternating order, one epoch-slice of each loader with the same view transform, batch size and workers.
Also times the in-memory quickstart DataModule and the PNG quickstart shards, and the streaming loader's tar
reader stage (vispre.data.tar_members) against webdataset's own ``tar_file_iterator`` (tarfile) over the same
shards, members read whole, best of rounds (``tar_reader_us_per_member``). Prints JSON.

    flock /tmp/vispre-heavy.lock .venv/bin/python tools/bench_loader.py --num-images 12000 --workers 1

``--end-to-end N`` also times the quickstart training command itself (``vispre fit`` of
configs/mae/vit_tiny_fashion_mnist.yaml, N batches, whole command with start-up) from the in-memory arrays
and streamed from the quickstart shards (``data/fashion_mnist_wds``, written first if missing), alternating.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.io import ImageReadMode, decode_image

from webdataset.tariterators import group_by_keys, tar_file_iterator

from vispre.data import (FashionMNISTDataModule, MAEView, WebDatasetDataModule, ensure_fashion_mnist_shards,
                         iter_tar_members, load_fashion_mnist, read_index, split_member_name, tar_member_expander,
                         write_folder_shards)
from vispre.data.fashion_mnist import MEAN, STD


def write_jpegs(folder: Path, num_images: int) -> None:
    """Fashion-MNIST train images 0..N-1 as ``folder/CLASS/NNNNNN.jpg`` (once; reused when complete)."""
    done = folder / ".complete"
    if done.is_file() and done.read_text() == str(num_images):
        return
    data = load_fashion_mnist("train")
    for i in range(num_images):
        (folder / str(int(data.labels[i]))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.images[i, 0].numpy()).save(folder / str(int(data.labels[i])) / f"{i:06d}.jpg", quality=95)
    done.write_text(str(num_images))


def grey_pil(path: str) -> Image.Image:
    return Image.open(path).convert("L")


def tv_decode(path: str) -> torch.Tensor:
    return decode_image(path, mode=ImageReadMode.GRAY)


def time_loader(loader: Iterable, batches: int, settle_s: float = 1.0) -> float:
    """Images/s over ``batches`` batches, after one warm-up batch (worker start-up excluded). Waits
    ``settle_s`` first, so the other loaders' persistent workers have filled their prefetch queues and sit idle
    instead of sharing the CPU with this loader's timed batches."""
    time.sleep(settle_s)
    it = iter(loader)
    next(it)
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        batch = next(it)
        batch = batch if isinstance(batch, dict) else batch[0]  # ImageFolder: (views dict, target)
        n += batch["views"][0].shape[0]
    return n / (time.perf_counter() - start)


def view_microseconds(view: MAEView, images: torch.Tensor, rounds: int) -> dict[str, float]:
    """Best-of-rounds microseconds per image of MAEView's fast path and of its v2 pipeline (1 thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    best = {"fast_path": float("inf"), "v2_pipeline": float("inf")}
    for _ in range(rounds):
        for name, fn in (("fast_path", view), ("v2_pipeline", view.transform)):
            start = time.perf_counter()
            for image in images:
                fn(image)
            best[name] = min(best[name], (time.perf_counter() - start) / len(images) * 1e6)
    torch.set_num_threads(threads)
    return {k: round(v, 1) for k, v in best.items()}


def tar_reader_microseconds(shards: list[Path], rounds: int) -> dict[str, float]:
    """Best-of-rounds microseconds per tar member: vispre's reader vs webdataset's ``tar_file_iterator``
    (both yield every member's name and bytes), same shards, same run; and their ratio."""
    readers = {"vispre_iter_tar_members": lambda f: sum(1 for _ in iter_tar_members(f)),
               "webdataset_tar_file_iterator": lambda f: sum(1 for _ in tar_file_iterator(f))}
    best = {name: float("inf") for name in readers}
    for round_ in range(rounds):
        for name in (list(readers) if round_ % 2 == 0 else list(reversed(readers))):
            start, members = time.perf_counter(), 0
            for shard in shards:
                with open(shard, "rb") as f:
                    members += readers[name](f)
            best[name] = min(best[name], (time.perf_counter() - start) / members * 1e6)
    out = {k: round(v, 2) for k, v in best.items()}
    out["ratio_webdataset_vs_vispre"] = round(best["webdataset_tar_file_iterator"] / best["vispre_iter_tar_members"], 2)
    return out


def grouping_microseconds(shards: list[Path], rounds: int) -> dict[str, float]:
    """Best-of-rounds thread-CPU microseconds per sample of the shard-reading stages, same shards, same run:
    vispre's tar reader stage alone, then + webdataset's ``group_by_keys`` with its default (regex) key function,
    then + ``group_by_keys(keys=split_member_name)`` (what the stream uses). Thread CPU time, not wall time,
    so the row holds on a busy machine."""
    def read(group: bool, **group_args: object) -> int:
        stream = tar_member_expander(({"url": str(s)} for s in shards), handler=lambda e: True)
        return sum(1 for _ in (group_by_keys(stream, **group_args) if group else stream))

    variants = {"tar_member_expander": lambda: read(False), "+group_by_keys_regex": lambda: read(True),
                "+group_by_keys_split_member_name": lambda: read(True, keys=split_member_name)}
    samples = read(True)
    best = {name: float("inf") for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.thread_time()
            fn()
            best[name] = min(best[name], (time.thread_time() - start) / samples * 1e6)
    return {k: round(v, 2) for k, v in best.items()}


def time_quickstart_fit(batches: int, rounds: int) -> dict[str, list[float]]:
    """Wall seconds of ``vispre fit`` (quickstart config, ``batches`` batches) in-memory vs streaming, alternating."""
    root = Path(__file__).resolve().parents[1]
    vispre = [str(Path(sys.executable).with_name("vispre"))]  # the console script, as `make quickstart` runs it
    if read_index(root / "data/fashion_mnist_wds") is None:
        subprocess.run([*vispre, "shards", "fashion-mnist", str(root / "data/fashion_mnist_wds")], check=True)
    base = [*vispre, "fit", "--config", str(root / "configs/mae/vit_tiny_fashion_mnist.yaml"), "--trainer.max_epochs=1",
            f"--trainer.limit_train_batches={batches}", "--trainer.enable_progress_bar=false"]
    variants = {"in_memory": [], "streaming": ["--config", str(root / "configs/data/fashion_mnist_wds.yaml")]}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as runs:
        for round_ in range(rounds):
            for name in (list(variants) if round_ % 2 == 0 else list(reversed(variants))):
                start = time.perf_counter()
                subprocess.run([*base, *variants[name], f"--runs_dir={runs}", f"--run_name={name}"], check=True,
                               cwd=root, stdout=subprocess.DEVNULL)
                seconds[name].append(round(time.perf_counter() - start, 1))
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-images", type=int, default=12000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=20, help="timed batches per loader and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cache", default=".cache/bench_loader")
    p.add_argument("--end-to-end", type=int, default=0, metavar="N",
                   help="also time the quickstart fit for N batches, in-memory vs streaming (0: skip)")
    args = p.parse_args()
    torch.set_num_threads(2)
    cache = Path(args.cache)
    write_jpegs(cache / "jpg", args.num_images)
    if read_index(cache / "wds") is None:
        write_folder_shards(cache / "jpg", cache / "wds", labels=True, samples_per_shard=2000)
    view = MAEView(28, mean=MEAN, std=STD)

    def folder_loader(loader_fn) -> DataLoader:
        dataset = ImageFolder(str(cache / "jpg"), transform=lambda im: {"views": view(im)}, loader=loader_fn)
        return DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                          drop_last=True, persistent_workers=args.workers > 0)

    def stream(urls: str) -> WebDatasetDataModule:
        return WebDatasetDataModule(urls, batch_size=args.batch_size, num_workers=args.workers, view=view,
                                    in_chans=1, shuffle_buffer=5000, epoch_samples=10**7, resampled=True)

    memory = FashionMNISTDataModule(batch_size=args.batch_size, num_workers=args.workers, view=view)
    memory.setup()
    loaders = {"streaming_wds_jpg": stream(str(cache / "wds")).train_dataloader(),
               "imagefolder_pil": folder_loader(grey_pil),
               "imagefolder_tv_decode": folder_loader(tv_decode),
               "in_memory_fashion_mnist": memory.train_dataloader()}
    ensure_fashion_mnist_shards(cache / "fashion_mnist_wds", progress=False)  # what `make quickstart` writes
    loaders["streaming_wds_png_quickstart"] = stream(str(cache / "fashion_mnist_wds")).train_dataloader()
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for round_ in range(args.rounds):
        for name in (list(loaders) if round_ % 2 == 0 else list(reversed(loaders))):
            rates[name].append(time_loader(loaders[name], args.batches))
    best = {name: max(r) for name, r in rates.items()}
    result = {
        "machine": f"{torch.get_num_threads()}-thread torch, {platform.processor() or platform.machine()}, "
                   f"{len(__import__('os').sched_getaffinity(0))} CPU cores available, no GPU",
        "date": time.strftime("%Y-%m-%d"), "num_images": args.num_images, "workers": args.workers,
        "batch_size": args.batch_size, "timed_images_per_round": args.batches * args.batch_size,
        "images_per_s_best": {k: round(v, 1) for k, v in best.items()},
        "images_per_s_all_rounds": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "ratio_streaming_vs_imagefolder_pil": round(best["streaming_wds_jpg"] / best["imagefolder_pil"], 2),
        "ratio_streaming_vs_imagefolder_tv_decode": round(best["streaming_wds_jpg"] / best["imagefolder_tv_decode"], 2),
        "ratio_streaming_png_vs_in_memory": round(best["streaming_wds_png_quickstart"]
                                                  / best["in_memory_fashion_mnist"], 2),
    }
    shards = [cache / "wds" / shard["name"] for shard in read_index(cache / "wds")["shards"]]
    result["tar_reader_us_per_member"] = tar_reader_microseconds(shards, max(3, args.rounds))
    result["shard_stage_cpu_us_per_sample"] = grouping_microseconds(shards, max(3, args.rounds))
    result["mae_view_us_per_image"] = view_microseconds(view, load_fashion_mnist("train").images[:3000],
                                                        args.rounds)
    if args.end_to_end:
        fit = time_quickstart_fit(args.end_to_end, args.rounds)
        result["quickstart_fit_seconds"] = {"batches": args.end_to_end, **fit,
                                            "ratio_streaming_vs_in_memory_best": round(
                                                min(fit["streaming"]) / min(fit["in_memory"]), 3)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
