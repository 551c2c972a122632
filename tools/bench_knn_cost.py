"""Cost model of the suite's kNN and linear-probe sweep vs bank size (issue 14: a simulated 1.28M x 384 bank).

Random features (fp32, or ``--dtype float16`` storage converted on use) stand in for an ImageNet-sized bank.
For each bank size N it times ``knn_predict`` (k=20, chunked, on this CPU or ``--device``) for ``--queries``
queries and one epoch of ``train_linear_heads`` (the 5 lr x 2 wd grid = 10 heads, 1000 classes), then fits
``seconds = a + b N`` (kNN: per query) and extrapolates to N = 1.28M and 50k queries (ImageNet val) when the full
size was not run. Memory: kNN holds the bank (N x D x 4 bytes) plus one capped similarity block; the probe
holds the standardised features (N x D x 4), the heads and one logits buffer.

    python tools/bench_knn_cost.py                     # 80k .. 1.28M (heavy)
    python tools/bench_knn_cost.py --tiny              # a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def time_one(n: int, dim: int, queries: int, classes: int, dtype: str, device: str) -> dict:
    import torch

    from vispre.eval.knn import knn_predict
    from vispre.eval.linear_probe import train_linear_heads

    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(n, dim, generator=gen).to(getattr(torch, dtype))
    labels = torch.randint(0, classes, (n,), generator=gen)
    query = torch.randn(queries, dim, generator=gen)
    start = time.perf_counter()
    knn_predict(bank, labels, query, classes, ks=(20,), device=device)
    knn_s = time.perf_counter() - start
    lrs, wds = torch.tensor([0.01, 0.03, 0.1, 0.3, 1.0] * 2), torch.tensor([0.0] * 5 + [1e-4] * 5)
    start = time.perf_counter()
    train_linear_heads({"f": bank}, labels, classes, lrs, wds, epochs=1, progress=False, device=device)
    probe_s = time.perf_counter() - start
    return {"n": n, "knn_seconds": round(knn_s, 3), "knn_seconds_per_query": knn_s / queries,
            "probe_epoch_seconds": round(probe_s, 3), "bank_mb": round(n * dim * bank.element_size() / 2**20, 1)}


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (a, b) of y = a + b x."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs) or 1.0
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var
    return my - b * mx, b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[80_000, 160_000, 320_000, 640_000, 1_280_000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000, help="kNN queries timed (extrapolated to 50k)")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="banks of 2k / 4k / 8k, 100 queries")
    args = parser.parse_args(argv)
    sizes, queries = ([2000, 4000, 8000], 100) if args.tiny else (args.sizes, args.queries)
    rows = []
    for n in sizes:
        rows.append(time_one(n, args.dim, queries, args.classes, args.dtype, args.device))
        print(rows[-1], flush=True)
    ns = [float(r["n"]) for r in rows]
    knn_a, knn_b = fit(ns, [r["knn_seconds_per_query"] for r in rows])
    probe_a, probe_b = fit(ns, [r["probe_epoch_seconds"] for r in rows])
    target = 1_280_000
    model = {
        "knn_seconds_per_query": f"{knn_a:.3g} + {knn_b:.3g} x N",
        "probe_epoch_seconds": f"{probe_a:.3g} + {probe_b:.3g} x N",
        "extrapolated_1.28M": {"knn_50k_queries_seconds": round((knn_a + knn_b * target) * 50_000, 1),
                               "probe_epoch_seconds": round(probe_a + probe_b * target, 1),
                               "bank_mb_fp32": round(target * args.dim * 4 / 2**20, 1)},
        "measured_full_size": target in sizes,
    }
    print(json.dumps({"dim": args.dim, "queries": queries, "classes": args.classes, "dtype": args.dtype,
                      "device": args.device, "rows": rows, "model": model}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
