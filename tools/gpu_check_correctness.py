"""Correctness section of ``tools/gpu_check.py``: bf16-mixed autocast vs fp32, ``torch.compile`` vs eager (fp32),
fused vs foreach AdamW and the SDPA kernel, for every objective of ``vispre.OBJECTIVES`` on a small ViT and one fixed
synthetic batch; the tolerances of :data:`TOLERANCES`."""

from __future__ import annotations

import argparse
import copy
import math
import random
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, NamedTuple

import torch

from gpu_check_common import CONFIGS, EXTRA, REPO, SMALL, TINY, Report, error_text  # first: puts the repo on sys.path

from vispre.bench import synthetic_batch
from vispre.callbacks.speed import SpeedSwitchboard, apply_switches
from vispre.commands.config import build_from_config
from vispre.objectives import OBJECTIVES, PretrainObjective

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
    """A check's JSON: "passed" / "failed" by ``TOLERANCES[kind]``, the violations, ``metrics`` and ``extra``."""
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
    """Section 1: bf16, fused AdamW and (once) SDPA for every objective, then the compile checks until ``deadline``.

    Args:
        args: the parsed command line (device, tiny, check_batch, compile_backend, compile_on).
        out: this section's JSON object, filled in place. report: saved after every objective.
        deadline: ``time.monotonic()`` time after which no compile check starts.
    """
    dev, size = torch.device(args.device), "tiny" if args.tiny else "small"
    out.update(model_size=size, overrides=TINY if args.tiny else SMALL, batch_size=args.check_batch,
               compile_backend=args.compile_backend, tolerances=TOLERANCES)
    objectives = out.setdefault("objectives", {})
    missing = sorted(set(OBJECTIVES) - set(CONFIGS))
    for name in missing:
        objectives[name] = {"build": {"status": "failed", "violations": ["no config in tools/gpu_check_common.py CONFIGS"]}}
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
