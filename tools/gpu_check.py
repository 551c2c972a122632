"""The one prepared GPU check (issue 15): bf16 / compile / fused-AdamW / SDPA correctness on a small ViT for every
registered objective, train-step throughput of the large configs, and one step of the DDP and FSDP configs.

    python tools/gpu_check.py [--device cuda|cpu] [--tiny] [--out docs/gpu_check.json] [--budget_s 480]
                              [--sections correctness,distributed,throughput]

Sections (each writes the JSON atomically when it ends, and after every item, so a killed run keeps what finished):

1. correctness: every objective of ``vispre.OBJECTIVES`` built from its Fashion-MNIST config (``CONFIGS`` of
   gpu_check_common) by ``build_from_config`` with its ``SMALL`` (GPU: the config's ViT at depth 2) or ``TINY``
   overrides; one fixed synthetic batch (2 views; + 2 half-size local crops for self-distillation), RNGs reseeded
   before every pass, a fresh deep copy of the objective per pass (centres, call counters). Checks, tolerances in
   ``TOLERANCES``: bf16-mixed autocast vs fp32 (loss, flattened gradients), ``torch.compile`` (the switchboard's
   ``apply_switches``, inductor's ``fallback_random`` so random masks equal eager's) vs eager in fp32 (a compile
   fallback is a failed check), fused vs foreach AdamW after 5 steps on the same gradients, and which SDPA kernel
   runs (each backend alone under ``sdpa_kernel``, and the ``aten::_scaled_dot_product_*`` op the model's forward
   dispatches to, from the profiler). fp32 means fp32: TF32 is off in this section.
2. distributed: one ``Trainer.fit`` step of the MAE quickstart merged with configs/speed/ddp.yaml, then fsdp.yaml,
   world size 1, synthetic data (CPU: gloo; Lightning refuses FSDP without a GPU, recorded as skipped).
3. throughput: ``vispre.bench.bench_objective`` (bf16-mixed, compiled) of MAE ViT-B/16 and ViT-L/16, MoCo v3
   ViT-B/16 and DINO ViT-S/16 at 224 px (DINO: the 2 global crops only, no local crops), then the largest batch
   that fits (doubling then bisection of ``largest_batch`` on the compiled step, OOM caught, capped in time).

``--tiny`` (img 32, patch 8, dim 32, depth 2, 2 heads; 1 CPU thread) runs every section on a CPU in about 45 s of CPU
time; there the compile checks use the ``aot_eager`` backend (dynamo + AOTAutograd; inductor's C++ build takes
minutes on 2 cores) on MAE only, and the throughput rows run uncompiled. Exit status 1 when a check failed.

Modules (tools/, siblings of this driver, which holds the command line, the time budget, the summary and the table):
``gpu_check_common`` (configs, model sizes, the JSON report), ``gpu_check_correctness`` (section 1 and its
tolerances), ``gpu_check_distributed`` (section 2), ``gpu_check_throughput`` (section 3 and the batch search).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

TOOLS = Path(__file__).resolve().parent
if str(TOOLS) not in sys.path:  # the sibling modules below, also when this file is loaded by path (the tests)
    sys.path.insert(0, str(TOOLS))

from gpu_check_common import REPO, Report  # noqa: E402 (first: puts the repo on sys.path)
from gpu_check_correctness import TOLERANCES, check_within, correctness  # noqa: E402, F401 (the tests use all three)
from gpu_check_distributed import distributed  # noqa: E402
from gpu_check_throughput import largest_batch, throughput  # noqa: E402, F401 (largest_batch: the tests)

SECTIONS: dict[str, Callable[[argparse.Namespace, dict, Report, float], None]] = {
    "correctness": correctness, "distributed": distributed, "throughput": throughput}
"""Section name -> ``section(args, out, report, deadline)`` (``out``: its JSON object, filled in place), in order."""
SHARES = {"correctness": 0.35, "distributed": 0.1, "throughput": 1.0}
"""Share of the whole budget a section may use from its start (capped by what is left)."""


class Budget:
    """The run's time budget: ``deadline(section)`` = section start + its share of the total, capped by the end."""

    def __init__(self, total_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock, self.start, self.total = clock, clock(), total_s

    def deadline(self, share: float) -> float:
        """The ``clock`` time by which a section starting now, allowed ``share`` of the total, must end."""
        return min(self.start + self.total, self.clock() + share * self.total)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line, with the ``--tiny``-dependent defaults filled in (``parser.error`` on a bad value)."""
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
    """Versions, CPU threads and (CUDA) the GPU's name, capability, memory and bf16 support, for the JSON head."""
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
