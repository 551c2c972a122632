"""The one prepared GPU check (issue 15): bf16 / compile / fused-AdamW / SDPA correctness on a small ViT for every
registered objective, train-step throughput of the large configs, and one step of the DDP and FSDP configs.

    python tools/gpu_check.py [--device cuda|cpu] [--tiny] [--out docs/gpu_check.json] [--budget_s 480]
                              [--sections correctness,distributed,throughput]

Sections (each writes the JSON atomically when it ends, and after every item, so a killed run keeps what finished):

1. correctness: every objective of ``vispre.OBJECTIVES`` built from its Fashion-MNIST config (:data:`CONFIGS`) by
   ``build_from_config`` with :data:`SMALL` (GPU: the config's ViT at depth 2) or :data:`TINY` overrides; one fixed
   synthetic batch (2 views; + 2 half-size local crops for self-distillation), RNGs reseeded before every pass, a
   fresh deep copy of the objective per pass (centres, call counters). Checks, tolerances in :data:`TOLERANCES`:
   bf16-mixed autocast vs fp32 (loss, flattened gradients), ``torch.compile`` (the switchboard's
   ``apply_switches``, inductor's ``fallback_random`` so random masks equal eager's) vs eager in fp32 (a compile
   fallback is a failed check), fused vs foreach AdamW after 5 steps on the same gradients, and which SDPA kernel
   runs (each backend alone under ``sdpa_kernel``, and the ``aten::_scaled_dot_product_*`` op the model's forward
   dispatches to, from the profiler). fp32 means fp32: TF32 is off in this section.
2. distributed: one ``Trainer.fit`` step of the MAE quickstart merged with configs/speed/ddp.yaml, then fsdp.yaml,
   world size 1, synthetic data (CPU: gloo; Lightning refuses FSDP without a GPU, recorded as skipped).
3. throughput: ``vispre.bench.bench_objective`` (bf16-mixed, compiled) of MAE ViT-B/16 and ViT-L/16, MoCo v3
   ViT-B/16 and DINO ViT-S/16 at 224 px (DINO: the 2 global crops only, no local crops), then the largest batch
   that fits (doubling then bisection of :func:`largest_batch` on the compiled step, OOM caught, capped in time).

``--tiny`` (img 32, patch 8, dim 32, depth 2, 2 heads; 1 CPU thread) runs every section on a CPU in about 45 s of CPU
time; there the compile checks use the ``aot_eager`` backend (dynamo + AOTAutograd; inductor's C++ build takes
minutes on 2 cores) on MAE only, and the throughput rows run uncompiled. Exit status 1 when a check failed.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import platform
import random
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, NamedTuple

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a bare checkout (the GPU machine has no editable install)
    sys.path.insert(0, str(REPO))

from vispre.bench import bench_objective, make_train_step, peak_tflops, synthetic_batch  # noqa: E402
from vispre.callbacks.speed import SpeedSwitchboard, apply_switches  # noqa: E402
from vispre.commands.config import build_from_config  # noqa: E402
from vispre.io import atomic_write_text  # noqa: E402
from vispre.objectives import OBJECTIVES, PretrainObjective  # noqa: E402

CONFIGS = {name: f"configs/{name}/vit_tiny_fashion_mnist.yaml"
           for name in ("mae", "simclr", "moco_v3", "dino", "barlow_twins", "ibot", "dinov2", "poa")}
CONFIGS.update({"multi": "configs/multi/mae_simclr_vit_tiny_fashion_mnist.yaml",
                **{f"amcl_{v}": f"configs/amcl/{v}_vit_tiny_fashion_mnist.yaml"
                   for v in ("simclr", "moco_v3", "barlow_twins")}})
"""Registry name -> its Fashion-MNIST config, in check order (families first: the compile pass may run out of time)."""
BB = "--model.init_args.backbone.init_args."
SMALL = [f"{BB}depth=2"]
TINY = [f"{BB}img_size=32", f"{BB}patch_size=8", f"{BB}embed_dim=32", f"{BB}depth=2", f"{BB}num_heads=2"]
EXTRA = {"small": {"poa": ["--model.init_args.elastic_depths=[1,2]"]},
         "tiny": {"poa": ["--model.init_args.elastic_widths=[16,32]", "--model.init_args.elastic_depths=[1,2]"]}}
TOLERANCES = {
    "bf16_vs_fp32": {"loss_rel": 5e-2, "grad_norm_rel": 0.25, "grad_cos_min": 0.9},
    "compile_vs_eager": {"loss_rel": 1e-4, "grad_norm_rel": 1e-3, "grad_cos_min": 0.9999},
    "fused_vs_foreach": {"param_diff_rel": 1e-3},
}
"""Pass iff every metric is within its bound (``*_min``: lower bound, else upper). loss_rel = |l - l_ref| / |l_ref|,
grad_norm_rel = | ||g|| - ||g_ref|| | / ||g_ref||, grad_cos = cosine of the flattened gradients (float64),
param_diff_rel = max |p_fused - p_foreach| / max |p_5 - p_0| (5 AdamW steps at lr 1e-3, all with the
gradients of one seeded pass).
bf16: unit roundoff 2^-8 per rounding, amplified at random init where contrastive features of different images
nearly coincide (tiny CPU run: MoCo v3 and AMCL MoCo v3 grad_cos 0.97, AMCL MoCo v3 grad_norm_rel 0.15, its hardest
negative flipping on bf16 near-ties; every other objective cos >= 0.987); fp32 compile: reordered reductions only."""
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
SHARES = {"correctness": 0.35, "distributed": 0.1, "throughput": 1.0}
"""Share of the whole budget a section may use from its start (capped by what is left)."""


# -- generic pieces (unit-tested) ------------------------------------------------------------------------------
def check_within(metrics: dict[str, float], tolerance: dict[str, float]) -> list[str]:
    """Violations of ``tolerance`` by ``metrics`` ("grad_cos 0.8 < 0.9"); empty when all hold.

    Keys ending in ``_min`` are lower bounds on the metric without the suffix, others upper bounds; a missing or
    non-finite metric violates its bound.
    """
    out = []
    for key, bound in tolerance.items():
        name, lower = (key[:-4], True) if key.endswith("_min") else (key, False)
        value = metrics.get(name, math.nan)
        if not math.isfinite(value) or (value < bound if lower else value > bound):
            out.append(f"{name} {value:.3g} {'<' if lower else '>'} {bound:g}")
    return out


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


class Budget:
    """The run's time budget: ``deadline(section)`` = section start + its share of the total, capped by the end."""

    def __init__(self, total_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock, self.start, self.total = clock, clock(), total_s

    def deadline(self, share: float) -> float:
        return min(self.start + self.total, self.clock() + share * self.total)


class Report:
    """The JSON document, written atomically to ``path`` by :meth:`save`."""

    def __init__(self, path: Path, head: dict[str, Any]) -> None:
        self.path, self.data = path, {**head, "sections": {}}

    def section(self, name: str) -> dict[str, Any]:
        return self.data["sections"].setdefault(name, {"status": "running"})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.data, indent=2, default=str) + "\n")


def error_text(err: BaseException) -> str:
    """``Type: message`` of an exception plus the last traceback line, for the JSON."""
    tail = traceback.format_exception(err)[-2].strip().splitlines()[0] if err.__traceback__ else ""
    return f"{type(err).__name__}: {str(err).strip()[:600]} [{tail}]"


# -- correctness -----------------------------------------------------------------------------------------------
class Pass(NamedTuple):
    """Loss and flattened float64 gradients (zeros where a parameter got none) of one forward + backward."""

    loss: float
    grads: torch.Tensor


def build_objective(name: str, size: str) -> PretrainObjective:
    """``OBJECTIVES[name]`` from its Fashion-MNIST config with the ``size`` ("small" | "tiny") overrides."""
    overrides = [*(TINY if size == "tiny" else SMALL), *EXTRA[size].get(name, [])]
    return build_from_config([REPO / CONFIGS[name]], overrides).model


def check_batch(model: PretrainObjective, batch_size: int, device: torch.device) -> dict:
    """Two views of the backbone's size (+ two half-size local crops when the objective takes multi-crop)."""
    batch = synthetic_batch(model, batch_size, 2, device)
    if hasattr(model, "num_global_crops"):
        gen = torch.Generator().manual_seed(1)
        chans, (h, w) = batch["views"][0].shape[1], batch["views"][0].shape[2:]
        batch["views"] += [torch.randn(batch_size, chans, h // 2, w // 2, generator=gen).to(device) for _ in range(2)]
    return batch


def run_pass(model: PretrainObjective, batch: dict, bf16: bool = False) -> Pass:
    """One seeded forward (``model(batch)``: compiled when compiled) + backward."""
    torch.manual_seed(0)
    random.seed(0)
    dev = batch["views"][0].device
    with torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else nullcontext():
        loss = model(batch)["loss"]
    loss.backward()
    grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().double().flatten()
             for p in model.parameters() if p.requires_grad]
    return Pass(float(loss.detach()), torch.cat(grads))


def compare(ref: Pass, other: Pass) -> dict[str, float]:
    """loss_rel, grad_norm_rel and grad_cos of ``other`` against ``ref`` (see :data:`TOLERANCES`)."""
    n_ref, n_other = ref.grads.norm(), other.grads.norm()
    cos = float(ref.grads @ other.grads / (n_ref * n_other)) if n_ref > 0 and n_other > 0 else math.nan
    return {"loss_ref": ref.loss, "loss": other.loss, "loss_rel": abs(other.loss - ref.loss) / max(abs(ref.loss), 1e-12),
            "grad_norm_rel": float((n_other - n_ref).abs() / n_ref) if n_ref > 0 else math.nan, "grad_cos": cos}


def verdict(metrics: dict[str, Any], kind: str, **extra: Any) -> dict[str, Any]:
    bad = check_within(metrics, TOLERANCES[kind])
    return {"status": "failed" if bad else "passed", "violations": bad, "metrics": metrics, **extra}


def compile_check(model: PretrainObjective, batch: dict, ref: Pass, backend: str) -> dict[str, Any]:
    """fp32 compiled (``apply_switches`` compile, eager fallback detected) vs eager ``ref``."""
    torch.compiler.reset()  # every objective shares PretrainObjective.forward: keep dynamo's cache limit clear
    switches = SpeedSwitchboard(compile=True, compile_backend=backend, matmul_precision=None)
    compiled = copy.deepcopy(model)
    apply_switches(compiled, switches)
    import torch._inductor.config as inductor_config  # torch's documented accuracy knob (random ops as in eager)

    with warnings.catch_warnings(record=True) as caught, inductor_config.patch(fallback_random=True):
        warnings.simplefilter("always")
        other = run_pass(compiled, batch)
    if switches.compile_failed:
        notes = [str(w.message) for w in caught if "torch.compile of" in str(w.message)]
        return {"status": "failed", "violations": ["compile fell back to eager"], "error": " | ".join(notes)[:800]}
    return verdict(compare(ref, other), "compile_vs_eager", backend=backend)


def fused_check(model: PretrainObjective, batch: dict, steps: int = 5, lr: float = 1e-3) -> dict[str, Any]:
    """The recipe's fused AdamW vs ``torch.optim.AdamW(foreach=True)`` with its settings: ``steps`` steps, all with
    the gradients of one seeded pass (the optimizer kernels are compared, not the model)."""
    recipe = model.optimizer_recipe
    if not hasattr(recipe, "fused"):
        return {"status": "skipped: not an AdamW recipe", "recipe": type(recipe).__name__}
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    start = [p.detach().clone() for p in a.parameters()]
    try:
        fused = recipe.make_optimizer(recipe.groups(a, lr), lr, on_gpu=True)
    except RuntimeError as err:
        return {"status": f"skipped: fused AdamW unavailable on {batch['views'][0].device.type}", "error": error_text(err)}
    foreach = torch.optim.AdamW(recipe.groups(b, lr), lr=lr, betas=recipe.betas, eps=recipe.eps, foreach=True)
    run_pass(a, batch)
    grads = [None if p.grad is None else p.grad.detach().clone() for p in a.parameters()]
    for _ in range(steps):
        for pa, pb, g in zip(a.parameters(), b.parameters(), grads):
            pa.grad, pb.grad = (None, None) if g is None else (g.clone(), g.clone())
        fused.step(), foreach.step()
    diff = max(float((pa - pb).abs().max()) for pa, pb in zip(a.parameters(), b.parameters()))
    update = max(float((pa - p0).abs().max()) for pa, p0 in zip(a.parameters(), start))
    metrics = {"max_abs_param_diff": diff, "max_abs_update": update, "param_diff_rel": diff / update if update else math.nan}
    return verdict(metrics, "fused_vs_foreach", steps=steps, lr=lr, recipe_fused=bool(fused.defaults.get("fused")))


SDPA_OPS = [("cudnn", "cudnn_attention"), ("flash", "flash_attention"), ("efficient", "efficient_attention"),
            ("math", "attention_math")]


def sdpa_kernels_used(fn: Callable[[], Any]) -> list[str]:
    """SDPA backends whose ``aten::_scaled_dot_product_*`` op ran inside ``fn`` (CPU-side profiler op names)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}
    return [kernel for kernel, tag in SDPA_OPS if any(tag in n for n in names)]


def sdpa_check(model: PretrainObjective, batch: dict, dtype: torch.dtype) -> dict[str, Any]:
    """Which SDPA backends run on the model's attention shape, and which one its forward actually dispatches to."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    vit, dev = model.backbone.vit, batch["views"][0].device
    attn = vit.blocks[0].attn
    shape = (batch["views"][0].shape[0], attn.num_heads, vit.patch_embed.num_patches + vit.num_prefix_tokens,
             attn.head_dim)
    q, k, v = (torch.randn(shape, device=dev, dtype=dtype, requires_grad=True) for _ in range(3))
    alone = {}
    for name, backend in [("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                          ("cudnn", SDPBackend.CUDNN_ATTENTION), ("math", SDPBackend.MATH)]:
        try:
            with sdpa_kernel(backend):
                torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()
            alone[name] = "ok"
        except Exception as err:  # "No available kernel" is a RuntimeError; record whatever refuses
            alone[name] = str(err).strip().splitlines()[0][:200]
    default = sdpa_kernels_used(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    m = copy.deepcopy(model)
    bf16 = dtype == torch.bfloat16
    in_model = sdpa_kernels_used(lambda: run_pass(m, batch, bf16=bf16))
    fused = [kernel for kernel in in_model if kernel != "math"]
    ok = bool(in_model) and (bool(fused) or dev.type == "cpu")
    return {"status": "passed" if ok else "failed", "shape_bhnd": list(shape), "dtype": str(dtype),
            "timm_fused_attn": all(b.attn.fused_attn for b in vit.blocks), "each_backend_alone": alone,
            "default_for_shape": default, "model_step_uses": in_model,
            "violations": [] if ok else [f"model step uses {in_model or 'no SDPA op'}"]}


@contextmanager
def true_fp32() -> Iterator[None]:
    """fp32 matmuls and convolutions without TF32 (restored afterwards)."""
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]


def correctness(args: argparse.Namespace, out: dict, report: Report, deadline: float) -> None:
    dev, size = torch.device(args.device), "tiny" if args.tiny else "small"
    out.update(model_size=size, overrides=TINY if args.tiny else SMALL, batch_size=args.check_batch,
               compile_backend=args.compile_backend, tolerances=TOLERANCES)
    objectives = out.setdefault("objectives", {})
    missing = sorted(set(OBJECTIVES) - set(CONFIGS))
    for name in missing:
        objectives[name] = {"build": {"status": "failed", "violations": ["no config in tools/gpu_check.py CONFIGS"]}}
    built: dict[str, tuple[PretrainObjective, dict, Pass]] = {}
    with true_fp32():
        for name in [n for n in CONFIGS if n in OBJECTIVES]:
            row = objectives.setdefault(name, {"config": CONFIGS[name]})
            try:
                model = build_objective(name, size).to(dev).train()
                batch = check_batch(model, args.check_batch, dev)
                ref = run_pass(copy.deepcopy(model), batch)
                row["bf16"] = verdict(compare(ref, run_pass(copy.deepcopy(model), batch, bf16=True)), "bf16_vs_fp32")
                row["fused_adamw"] = fused_check(model, batch)
                built[name] = (model, batch, ref)
                if "sdpa" not in out:
                    out["sdpa"] = sdpa_check(model, batch, torch.bfloat16 if dev.type == "cuda" else torch.float32)
            except Exception as err:  # one objective's failure must not end the one-shot run
                row["error"] = {"status": "error", "error": error_text(err)}
            report.save()
        slowest = 0.0
        for name, (model, batch, ref) in built.items():
            row = objectives[name]
            if args.compile_on != ["all"] and name not in args.compile_on:
                row["compile"] = {"status": f"skipped: --compile_on {','.join(args.compile_on)}"}
            elif time.monotonic() + slowest > deadline:
                row["compile"] = {"status": "skipped: budget"}
            else:
                t0 = time.monotonic()
                try:
                    row["compile"] = compile_check(model, batch, ref, args.compile_backend)
                except Exception as err:
                    row["compile"] = {"status": "failed", "error": error_text(err)}
                row["compile"]["seconds"] = round(time.monotonic() - t0, 2)
                slowest = max(slowest, row["compile"]["seconds"])
            report.save()


# -- distributed -----------------------------------------------------------------------------------------------
def strategy_step(speed_config: str, args: argparse.Namespace) -> dict[str, Any]:
    """One ``Trainer.fit`` step of the MAE quickstart + ``speed_config`` (world size 1, synthetic data)."""
    size = 32 if args.tiny else 28
    overrides = [*(TINY if args.tiny else []), "--data=vispre.data.synthetic.SyntheticDataModule",
                 f"--data.img_size={size}", "--data.in_chans=1", "--data.batch_size=4", "--data.num_samples=8",
                 "--data.view=null", "--trainer.devices=1", "--trainer.max_steps=1", "--trainer.callbacks=[]",
                 "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    if args.device == "cpu":
        overrides += ["--trainer.accelerator=cpu"]
        if "ddp" in speed_config:
            overrides += ["--trainer.strategy.init_args.process_group_backend=gloo"]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as runs:
        try:
            built = build_from_config([REPO / CONFIGS["mae"], REPO / speed_config], [*overrides, f"--runs_dir={runs}"],
                                      data=True, trainer=True)
            model, trainer = built.model, built.trainer
            before = [p.detach().clone() for p in model.backbone.parameters() if p.requires_grad]
            trainer.fit(model, datamodule=built.datamodule)
            after = [p.detach().cpu() for p in model.backbone.parameters() if p.requires_grad]
            loss = float(trainer.callback_metrics.get("loss", math.nan))
            moved = any(not torch.equal(a, b.cpu()) for a, b in zip(after, before)) if len(after) == len(before) else None
            ok = math.isfinite(loss) and trainer.global_step == 1 and moved is not False
            return {"status": "passed" if ok else "failed", "strategy": type(trainer.strategy).__name__,
                    "world_size": trainer.world_size, "precision": str(trainer.precision), "loss": loss,
                    "global_step": trainer.global_step, "backbone_moved": moved,
                    "root_device": str(trainer.strategy.root_device), "seconds": round(time.monotonic() - t0, 2)}
        except Exception as err:
            if args.device == "cpu" and "fsdp" in speed_config:
                return {"status": "skipped: FSDP needs a GPU here", "error": error_text(err)}
            return {"status": "failed", "error": error_text(err), "seconds": round(time.monotonic() - t0, 2)}
        finally:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()


def distributed(args: argparse.Namespace, out: dict, report: Report, deadline: float) -> None:
    for name in ("ddp", "fsdp"):
        config = f"configs/speed/{name}.yaml"
        out[name] = strategy_step(config, args) if time.monotonic() < deadline else {"status": "skipped: budget"}
        out[name]["config"] = config
        report.save()


# -- throughput ------------------------------------------------------------------------------------------------
def free_memory() -> None:
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


# -- driver ----------------------------------------------------------------------------------------------------
SECTIONS = {"correctness": correctness, "distributed": distributed, "throughput": throughput}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tools/gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny models (CPU smoke run, covered by the tests)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "gpu_check.json")
    parser.add_argument("--budget_s", type=float, default=480.0, help="whole-run time budget (seconds)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma list of " + ", ".join(SECTIONS))
    parser.add_argument("--compile_backend", default=None, help="default: inductor (--tiny: aot_eager)")
    parser.add_argument("--compile_on", default=None, help="objectives to compile-check (default: all; --tiny: mae)")
    parser.add_argument("--check_batch", type=int, default=None, help="correctness batch (default 32; --tiny 16)")
    parser.add_argument("--search_s", type=float, default=None, help="time cap of each batch search (45; --tiny 5)")
    parser.add_argument("--max_batch", type=int, default=None, help="batch search cap (4096; --tiny 16)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (--tiny: 1)")
    args = parser.parse_args(argv)
    tiny = args.tiny
    args.compile_backend = args.compile_backend or ("aot_eager" if tiny else "inductor")
    args.compile_on = (args.compile_on or ("mae" if tiny else "all")).split(",")
    args.check_batch = args.check_batch or (16 if tiny else 32)
    args.search_s = args.search_s if args.search_s is not None else (5.0 if tiny else 45.0)
    args.max_batch = args.max_batch or (16 if tiny else 4096)
    args.sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible (use --device cpu --tiny for the CPU smoke run)")
    return args


def environment(dev: torch.device) -> dict[str, Any]:
    import lightning
    import timm

    env = {"torch": torch.__version__, "lightning": lightning.__version__, "timm": timm.__version__,
           "python": platform.python_version(), "cpu_threads": torch.get_num_threads(), "device": str(dev)}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}", memory_gb=round(props.total_memory / 2**30, 1),
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported())
    return env


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """Counts of passed / failed / skipped checks over every ``{"status": ...}`` leaf with a check status."""
    counts: dict[str, list[str]] = {"passed": [], "failed": [], "skipped": [], "measured": []}

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            status = node.get("status")
            if isinstance(status, str) and where.count("/") >= 2:
                key = "failed" if status in ("failed", "error") else status.split(":")[0]
                if key in counts:
                    counts[key].append(where)
            for k, v in node.items():
                walk(v, f"{where}/{k}")

    walk(data.get("sections", {}), "")
    return {"passed": len(counts["passed"]), "measured": len(counts["measured"]), "failed": counts["failed"],
            "skipped": counts["skipped"]}


def print_table(data: dict[str, Any]) -> None:
    """One line per check / row: section, item, check, status, key numbers."""
    lines = ["| section | item | check | status | numbers |", "|---|---|---|---|---|"]
    sections = data["sections"]
    for name, row in sections.get("correctness", {}).get("objectives", {}).items():
        for check, res in row.items():
            if isinstance(res, dict):
                m = res.get("metrics", {})
                nums = ", ".join(f"{k} {v:.3g}" for k, v in m.items() if k in ("loss_rel", "grad_cos", "param_diff_rel"))
                lines.append(f"| correctness | {name} | {check} | {res.get('status')} | {nums or res.get('error', '')[:80]} |")
    sdpa = sections.get("correctness", {}).get("sdpa")
    if sdpa:
        lines.append(f"| correctness | sdpa | kernel | {sdpa.get('status')} | model uses {sdpa.get('model_step_uses')} |")
    for name in ("ddp", "fsdp"):
        res = sections.get("distributed", {}).get(name)
        if res:
            lines.append(f"| distributed | {name} | one step | {res['status']} | loss {res.get('loss', '')} |")
    for name, row in sections.get("throughput", {}).get("rows", {}).items():
        b, lb = row.get("bench") or {}, (row.get("largest_batch") or {}).get("largest")
        nums = (f"batch {b['batch_size']}: {b['images_per_s']:.0f} img/s, {b['step_ms_median']:.1f} ms, "
                f"{b['peak_memory_mb']:.0f} MB, MFU {b['mfu'] if b['mfu'] is None else round(b['mfu'], 3)}, "
                f"largest batch {lb}") if b else row.get("error", "")[:80]
        lines.append(f"| throughput | {name} | bf16 step | {row.get('status')} | {nums} |")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    """Run the check; returns 0 when no check failed, 1 otherwise (the JSON is written either way)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    threads = args.threads or (1 if args.tiny and args.device == "cpu" else None)
    dev = torch.device(args.device)
    budget = Budget(args.budget_s)
    if threads:
        torch.set_num_threads(threads)
    report = Report(args.out, {"tool": "tools/gpu_check.py", "argv": sys.argv[1:] if argv is None else argv,
                               "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tiny": args.tiny,
                               "budget_s": args.budget_s, "environment": environment(dev)})
    for name in SECTIONS:
        out = report.section(name)
        if name not in args.sections:
            out["status"] = "skipped: not requested"
            continue
        deadline = budget.deadline(SHARES[name])
        if time.monotonic() >= deadline:
            out["status"] = "skipped: budget"
            continue
        t0 = time.monotonic()
        if threads:  # before every section: Lightning's DDP setup resets torch's CPU threads to cores / processes
            torch.set_num_threads(threads)
        try:
            SECTIONS[name](args, out, report, deadline)
            out["status"] = "done"
        except Exception as err:
            out.update(status="error", error=error_text(err))
        out["seconds"] = round(time.monotonic() - t0, 2)
        report.data.update(elapsed_s=round(time.monotonic() - budget.start, 2), summary=summarize(report.data))
        report.save()
    print_table(report.data)
    summary = report.data["summary"]
    print(f"{summary['passed']} passed, {len(summary['failed'])} failed, {len(summary['skipped'])} skipped, "
          f"{summary['measured']} measured; JSON: {args.out}")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
