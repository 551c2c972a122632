"""Distributed section of ``tools/gpu_check.py``: one ``Trainer.fit`` step of the MAE quickstart merged with
configs/speed/ddp.yaml, then fsdp.yaml, world size 1, synthetic data (CPU: gloo; Lightning refuses FSDP without a
GPU, recorded as skipped)."""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from typing import Any

import torch

from gpu_check_common import CONFIGS, REPO, TINY, Report, error_text  # first: puts the repo on sys.path

from vispre.commands.config import build_from_config


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
    """Section 2: :func:`strategy_step` of the DDP then the FSDP config into ``out["ddp"]`` / ``out["fsdp"]``; one
    that would start after ``deadline`` (a ``time.monotonic()`` time) is recorded as skipped."""
    for name in ("ddp", "fsdp"):
        config = f"configs/speed/{name}.yaml"
        out[name] = strategy_step(config, args) if time.monotonic() < deadline else {"status": "skipped: budget"}
        out[name]["config"] = config
        report.save()
