"""Losses in fp32 under mixed precision: what every vispre loss does with bf16/fp16 inputs.

Softmaxes over temperatures of 0.04-0.1 (and AMCL's 1/tau up to 1e5), cross-correlations of 8192 standardised
features and KoLeo's nearest-neighbour logs lose too much in bfloat16 (a 15 % gradient-norm error measured on
a bf16 MoCo v3 step, tools/gpu_check.py); the projections arrive in half precision from an autocast forward
and are promoted here.
"""

from __future__ import annotations

import torch
from torch import Tensor


def autocast_off(like: Tensor) -> torch.autocast:
    """A context with autocast disabled on ``like``'s device type (matmuls inside run in their inputs' dtype)."""
    return torch.autocast(device_type=like.device.type, enabled=False)


def to_fp32(x: Tensor) -> Tensor:
    """``x`` as float32 (a no-op for float32): the self-distillation losses compute in float32, whatever
    their inputs (their centres and EMA statistics are float32 buffers)."""
    return x if x.dtype == torch.float32 else x.float()


def at_least_fp32(x: Tensor) -> Tensor:
    """Half / bfloat16 tensors as float32; float32 / float64 as they are (the contrastive losses keep a float64
    input's precision: their loop references are float64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


__all__ = ["at_least_fp32", "autocast_off", "to_fp32"]
