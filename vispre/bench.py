"""Train-step throughput of an objective: images/s, step time, peak memory, FLOPs and MFU.

The command line form is ``vispre bench --config RUN.yaml [--steps 20] [--batch_size 256] [--set KEY=VALUE]``
(vispre/commands/bench.py); :func:`bench_objective` is the library call.

What is timed: one optimizer step of the objective (``loss_terms`` forward, backward, the recipe's
optimizer step, zero_grad) on a fixed synthetic batch of the backbone's image size, after warm-up steps;
data loading is not included. Peak memory: ``torch.cuda.max_memory_allocated`` on a GPU, the process's
peak resident set size (``ru_maxrss``, includes Python and torch themselves) on CPU.

FLOPs (for MFU): ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward step; it counts
matrix multiplies, convolutions and SDPA attention (forward and backward) and ignores element-wise ops
and the optimizer, so MFU = counted FLOPs / step time / the device's dense bf16 peak (H100 SXM: 989 TFLOP/s).
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple

import torch
from torch.utils.flop_counter import FlopCounterMode

from vispre.errors import VispreError
from vispre.objectives.base import PretrainObjective

PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
"""Dense bf16 tensor-core peaks (vendor datasheets, no sparsity) by GPU-name substring."""


class BenchResult(NamedTuple):
    """One benchmark row (JSON via ``_asdict()``)."""

    name: str
    device: str
    precision: str
    batch_size: int
    steps: int
    step_ms_median: float
    step_ms_min: float
    images_per_s: float
    peak_memory_mb: float
    peak_memory_kind: str
    flops_per_step: float
    mfu: float | None


def synthetic_batch(model: PretrainObjective, batch_size: int, num_views: int, device: torch.device) -> dict:
    """A fixed random batch ``{"views": [num_views x [B, C, H, W]], "label": [B]}`` of the backbone's size."""
    vit = model.backbone.vit
    size, chans = vit.patch_embed.img_size, vit.patch_embed.proj.in_channels
    gen = torch.Generator().manual_seed(0)
    views = [torch.randn(batch_size, chans, *size, generator=gen).to(device) for _ in range(num_views)]
    return {"views": views, "label": torch.zeros(batch_size, dtype=torch.int64, device=device)}


def make_train_step(model: PretrainObjective, batch: dict, optimizer: torch.optim.Optimizer,
                    autocast: Callable[[], object]) -> Callable[[], torch.Tensor]:
    """Closure running one full optimizer step of ``model.loss_terms`` on ``batch``; returns the loss."""

    def step() -> torch.Tensor:
        with autocast():
            loss = model(batch)["loss"]  # the module call: compiled when the switchboard compiled it
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def time_steps(step: Callable[[], torch.Tensor], steps: int, warmup: int, device: torch.device) -> list[float]:
    """Run ``warmup`` untimed then ``steps`` timed calls; seconds per call (device-synchronised)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def count_flops(model: PretrainObjective, batch: dict, autocast: Callable[[], object]) -> float:
    """Matmul/conv/attention FLOPs of one forward + backward of ``loss_terms`` (FlopCounterMode)."""
    counter = FlopCounterMode(display=False)
    with counter:
        with autocast():
            loss = model.loss_terms(batch)["loss"]
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def peak_tflops(device: torch.device) -> float | None:
    """Dense bf16 peak of the current GPU from :data:`PEAK_BF16_TFLOPS`, None on CPU or an unknown GPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def bench_objective(model: PretrainObjective, name: str, batch_size: int, steps: int = 20, warmup: int = 3,
                    device: str = "cpu", precision: str = "32-true", num_views: int = 2,
                    peak: float | None = None) -> BenchResult:
    """Measure one objective's train step.

    Args:
        model: the objective (moved to ``device``; its optimizer recipe builds the optimizer).
        name: row label. batch_size: per-step batch. steps/warmup: timed and untimed steps.
        device: "cpu" or "cuda". precision: "32-true" or "bf16-mixed".
        num_views: views in the synthetic batch (MAE uses the first; contrastive objectives two).
        peak: device peak TFLOP/s for MFU (default from :func:`peak_tflops`).

    Returns:
        BenchResult with median/min step time, images/s (batch / median step), peak memory, FLOPs, MFU.
    """
    if precision not in ("32-true", "bf16-mixed"):
        raise VispreError(f"precision must be '32-true' or 'bf16-mixed', got {precision!r}")
    dev = torch.device(device)
    model = model.to(dev).train()
    batch = synthetic_batch(model, batch_size, num_views, dev)
    optimizer = model.optimizer_recipe.build(model, batch_size, steps + warmup).optimizer
    bf16 = precision == "bf16-mixed"
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    flops = count_flops(model, batch, autocast)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = time_steps(make_train_step(model, batch, optimizer, autocast), steps, warmup, dev)
    median = statistics.median(times)
    if dev.type == "cuda":
        memory, kind = torch.cuda.max_memory_allocated(dev) / 2**20, "cuda_max_allocated"
    else:
        memory, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_peak_rss"
    peak = peak if peak is not None else peak_tflops(dev)
    mfu = flops / median / (peak * 1e12) if peak else None
    return BenchResult(name, _device_name(dev), precision, batch_size, steps, 1e3 * median, 1e3 * min(times),
                       batch_size / median, memory, kind, flops, mfu)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows, for benchmark records."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu {cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
