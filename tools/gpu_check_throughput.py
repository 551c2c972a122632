"""Throughput section of ``tools/gpu_check.py``: ``vispre.bench.bench_objective`` (bf16-mixed, compiled) of the large
configs of :data:`THROUGHPUT`, then the largest batch that fits (:func:`largest_batch` on the compiled step)."""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from typing import NamedTuple

import torch

from gpu_check_common import BB, REPO, TINY, Report, error_text  # first: puts the repo on sys.path

from vispre.bench import bench_objective, make_train_step, peak_tflops, synthetic_batch
from vispre.callbacks.speed import SpeedSwitchboard, apply_switches
from vispre.commands.config import build_from_config
from vispre.objectives import PretrainObjective

FLOP_METHOD = ("vispre.bench.count_flops: torch.utils.flop_counter.FlopCounterMode over one eager forward + backward "
               "of loss_terms (matmul, conv, SDPA forward and backward; element-wise ops and the optimizer not "
               "counted); MFU = FLOPs / median step time / dense bf16 peak of vispre.bench.PEAK_BF16_TFLOPS")
THROUGHPUT = [  # name, config, overrides, views, tiny-only overrides
    ("mae_vit_b16", "configs/mae/vit_base16_imagenet.yaml", [], 1,
     ["--model.init_args.decoder_dim=32", "--model.init_args.decoder_depth=1", "--model.init_args.decoder_num_heads=2"]),
    ("mae_vit_l16", "configs/mae/vit_base16_imagenet.yaml", [f"{BB}model_name=vit_large_patch16_224"], 1,
     ["--model.init_args.decoder_dim=32", "--model.init_args.decoder_depth=1", "--model.init_args.decoder_num_heads=2"]),
    ("moco_v3_vit_b16", "configs/moco_v3/vit_base16_imagenet.yaml", [], 2,
     ["--model.init_args.projector.init_args.hidden_dim=64", "--model.init_args.projector.init_args.out_dim=32"]),
    ("dino_vit_s16", "configs/dino/vit_small16_imagenet.yaml", [], 2,
     [f"--model.init_args.head.init_args.{k}={v}" for k, v in (("out_dim", 64), ("hidden_dim", 64), ("bottleneck_dim", 32))]),
]
MFU_TARGETS = {"mae_vit_b16": 0.45}
"""Row name -> the MFU it should reach (``mfu_target_met`` in its JSON row)."""


class BatchSearch(NamedTuple):
    """Result of :func:`largest_batch`: the largest batch that fit (None: none did), the smallest that failed,
    every try as (batch, fitted), and why it stopped ("resolved", "batch cap", "time cap")."""

    largest: int | None
    first_failure: int | None
    tries: list[tuple[int, bool]]
    stopped: str


def largest_batch(fits: Callable[[int], bool], start: int, cap: int, deadline: float, granularity: int = 8,
                  known_fit: int = 0, clock: Callable[[], float] = time.monotonic) -> BatchSearch:
    """Largest batch size b <= cap with ``fits(b)``: double from ``start`` until a failure, then bisect until the
    gap is <= ``granularity``; no new try starts after ``deadline`` (a ``clock`` time).

    Args:
        fits: whether one training step at batch b runs (False on out-of-memory). start: first try.
        cap: largest batch tried. granularity: bisection stops at this gap. known_fit: a batch known to fit.
    """
    lo, hi, tries, b = known_fit, None, [], start
    while hi is None:
        if clock() >= deadline:
            return BatchSearch(lo or None, hi, tries, "time cap")
        ok = fits(b)
        tries.append((b, ok))
        if not ok:
            hi = b
        elif b >= cap:
            return BatchSearch(b, None, tries, "batch cap")
        else:
            lo, b = b, min(2 * b, cap)
    while hi - lo > granularity:
        if clock() >= deadline:
            return BatchSearch(lo or None, hi, tries, "time cap")
        mid = (lo + hi) // 2
        ok = fits(mid)
        tries.append((mid, ok))
        lo, hi = (mid, hi) if ok else (lo, mid)
    return BatchSearch(lo or None, hi, tries, "resolved")


def free_memory() -> None:
    """Collect garbage and return cached CUDA memory (between rows and batch-search tries)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def batch_fits(model: PretrainObjective, views: int, dev: torch.device) -> Callable[[int], bool]:
    """``fits(b)``: two bf16 train steps of ``model`` at batch b run without CUDA out-of-memory."""
    optimizer = model.optimizer_recipe.build(model, 256, 10).optimizer

    def fits(b: int) -> bool:
        batch = None
        try:
            batch = synthetic_batch(model, b, views, dev)
            step = make_train_step(model, batch, optimizer, lambda: torch.autocast(dev.type, dtype=torch.bfloat16))
            step(), step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            del batch
            optimizer.zero_grad(set_to_none=True)
            free_memory()

    return fits


def throughput(args: argparse.Namespace, out: dict, report: Report, deadline: float) -> None:
    """Section 3: every :data:`THROUGHPUT` row into ``out["rows"]``: the bench, then the largest-batch search.

    Args:
        args: the parsed command line (device, tiny, compile_backend, search_s, max_batch).
        out: this section's JSON object, filled in place. report: saved after every row.
        deadline: ``time.monotonic()`` time; a row that would not finish by it (judged by the slowest so far) is
            skipped, and each batch search ends by it.
    """
    dev = torch.device(args.device)
    compiled = not args.tiny
    out.update(flop_method=FLOP_METHOD, peak_tflops=peak_tflops(dev), precision="bf16-mixed", compiled=compiled,
               compile_backend=args.compile_backend if compiled else None, mfu_targets=MFU_TARGETS)
    rows = out.setdefault("rows", {})
    slowest = 0.0
    for name, config, overrides, views, tiny_overrides in THROUGHPUT:
        if time.monotonic() + slowest > deadline:
            rows[name] = {"status": "skipped: budget", "config": config}
            report.save()
            continue
        t0 = time.monotonic()
        row = rows.setdefault(name, {"config": config, "overrides": overrides, "views": views})
        try:
            more = [*TINY, *tiny_overrides] if args.tiny else []
            built = build_from_config([REPO / config], [*overrides, *more])
            model, batch_size = built.model, 8 if args.tiny else built.config.data.init_args.batch_size
            switches = SpeedSwitchboard(compile=compiled, compile_backend=args.compile_backend)
            apply_switches(model, switches)
            steps, warmup = (2, 1) if args.tiny else (10, 3)
            bench = bench_objective(model, name, batch_size, steps, warmup, args.device, "bf16-mixed", num_views=views)
            row.update(status="failed" if switches.compile_failed else "measured", bench=bench._asdict(),
                       compile_failed=switches.compile_failed)
            target = MFU_TARGETS.get(name)
            if target is not None and bench.mfu is not None:
                row["mfu_target_met"] = bench.mfu >= target
            report.save()
            free_memory()
            search_end = min(deadline, time.monotonic() + args.search_s)
            found = largest_batch(batch_fits(model, views, dev), 2 * batch_size, args.max_batch, search_end,
                                  granularity=max(1, batch_size // 8), known_fit=batch_size)
            row["largest_batch"] = found._asdict()
            del model, built
        except Exception as err:
            row.update(status="error", error=error_text(err))
        free_memory()
        row["seconds"] = round(time.monotonic() - t0, 2)
        slowest = max(slowest, row["seconds"])
        report.save()

