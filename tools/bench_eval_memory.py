"""Peak RSS of streamed feature extraction vs the number of images (issue 14: within 1.25x from 3k to 12k).

Writes shard sets of synthetic JPEG images (smooth random colour fields, ``--side`` px) into a temp folder, then
extracts ``cls`` features of each set in a fresh subprocess (``--model``, default a ViT-S/16 at 224 px, random weights; ``--tiny``: a
tiny ViT at 32 px and sets of 60 / 240 images) through the suite's path (vispre.eval.extraction.extract_split
with a cache folder). The peak RSS of each subprocess is read with GNU ``/usr/bin/time -v`` when present
(``sudo apt-get install -y time``), else from ``resource.getrusage`` inside it (itself + its DataLoader workers).

    python tools/bench_eval_memory.py            # 3k and 12k images at 224 px (heavy: ~minutes per set)
    python tools/bench_eval_memory.py --tiny     # a smoke run
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def write_set(folder: Path, n: int, side: int) -> None:
    """``n`` labelled JPEG images (10 classes) as shards of 1000 samples."""
    import torch
    import torch.nn.functional as F

    from vispre.data.shard_writer import encode_image, write_shards

    gen = torch.Generator().manual_seed(n)

    def samples():
        for i in range(n):
            low = torch.rand(3, 8, 8, generator=gen)[None]
            image = (F.interpolate(low, size=(side, side), mode="bilinear", align_corners=False)[0] * 255).byte()
            yield {"image": encode_image(image, "jpg", quality=90), "ext": "jpg", "label": i % 10, "key": f"{i:08d}"}

    write_shards(samples(), folder, samples_per_shard=1000, progress=False)


def run_one(shards: str, tiny: bool, workers: int, cache: str, model: str, depth: int | None) -> dict:
    """Extract the set's features (subprocess body); returns rows, seconds and this process's peak RSS."""
    import torch

    from vispre.backbones import MaskedViT
    from vispre.data.transforms import EvalView
    from vispre.eval.extraction import extract_split
    from vispre.eval.shard_source import shard_source

    torch.manual_seed(0)
    size = 32 if tiny else 224
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2) if tiny else dict(depth=depth)
    vit = MaskedViT(model_name="vit_tiny_patch16_224" if tiny else model, in_chans=3, **args).vit
    start = time.perf_counter()
    split = extract_split(vit, shard_source(shards, size, 3), EvalView(size), ("cls",), cache_dir=cache,
                          batch_size=64, num_workers=workers)
    seconds = time.perf_counter() - start
    peak_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return {"rows": int(split.labels.shape[0]), "seconds": round(seconds, 1), "getrusage_peak_mb": round(peak_kb / 1024, 1)}


def measure(shards: Path, tiny: bool, workers: int, cache: Path, model: str, depth: int | None) -> dict:
    """Run :func:`run_one` in a subprocess (under GNU time -v when available); its result and peak RSS."""
    cmd = [sys.executable, __file__, "--run-one", str(shards), "--workers", str(workers), "--cache", str(cache), "--model", model]
    cmd += ["--depth", str(depth)] if depth else []
    cmd += ["--tiny"] if tiny else []
    gnu_time = shutil.which("time") and Path("/usr/bin/time").exists()
    proc = subprocess.run((["/usr/bin/time", "-v"] if gnu_time else []) + cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"extraction failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    result["peak_rss_mb"] = round(int(match.group(1)) / 1024, 1) if match else result["getrusage_peak_mb"]
    result["measured_with"] = "GNU time -v" if match else "resource.getrusage"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=None, help="the two set sizes (default 3000 12000)")
    parser.add_argument("--tiny", action="store_true", help="60 / 240 images, 32 px, a tiny ViT")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", default=None, help="write the sets here (default: a temp folder, removed)")
    parser.add_argument("--model", default="vit_small_patch16_224", help="timm ViT name (random weights)")
    parser.add_argument("--depth", type=int, default=None, help="blocks of the ViT (default: the model's own)")
    parser.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_one:
        print(json.dumps(run_one(args.run_one, args.tiny, args.workers, args.cache, args.model, args.depth)))
        return 0
    sizes = args.sizes or ([60, 240] if args.tiny else [3000, 12000])
    side = 32 if args.tiny else 224
    work = Path(args.keep or tempfile.mkdtemp(prefix="vispre-evalmem-"))
    try:
        results = {}
        for n in sizes:
            write_set(work / f"set{n}", n, side)
            results[n] = measure(work / f"set{n}", args.tiny, args.workers, work / f"cache{n}", args.model, args.depth)
            print(f"{n} images: {results[n]}", flush=True)
        small, large = (results[n]["peak_rss_mb"] for n in sizes)
        print(json.dumps({"sizes": sizes, "side": side, "model": "tiny" if args.tiny else args.model, "depth": args.depth, "results": results, "ratio": round(large / small, 3),
                          "target": "<= 1.25"}, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
