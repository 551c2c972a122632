"""The speed switchboard: torch.compile of the training step (with an eager fallback), activation
checkpointing of the transformer blocks and the float32 matmul precision, set from YAML::

    trainer:
      precision: bf16-mixed
      callbacks:
        - class_path: vispre.callbacks.speed.SpeedSwitchboard
          init_args: {compile: true, activation_checkpointing: false, matmul_precision: high}

Everything here edits the module in place without renaming parameters, so checkpoints, exports and
resume are unaffected by the switches. Precision, gradient accumulation, fused AdamW and the strategy
are the Trainer's and the optimizer recipe's own settings (see docs/scale.md).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

MATMUL_PRECISIONS = ("highest", "high", "medium")


class CompileFallbackWarning(UserWarning):
    """torch.compile failed; the step runs eagerly (same math, slower)."""


def compile_with_fallback(fn: Callable[..., Any], name: str, **compile_kwargs: Any) -> Callable[..., Any]:
    """``torch.compile(fn)`` that falls back to ``fn`` with one clear warning if compiling fails.

    Compilation is lazy (it happens at the first call and on recompiles), so the fallback is taken at
    call time: when the compiled call raises, the warning names the error and the call is repeated
    eagerly; every later call runs eagerly. A genuine error of ``fn`` itself therefore still surfaces
    (the eager repeat raises it).

    Args:
        fn: the function or bound method to compile.
        name: what it is, for the warning (e.g. "MAE.loss_terms").
        **compile_kwargs: passed to torch.compile (mode, backend, fullgraph, dynamic).

    Returns:
        A callable with fn's signature; ``.compile_failed`` tells whether the fallback was taken.
    """
    try:
        compiled = torch.compile(fn, **compile_kwargs)
    except Exception as err:  # e.g. an unknown backend name is rejected eagerly
        return _eager(fn, name, err)
    state = {"failed": False}

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if state["failed"]:
            return fn(*args, **kwargs)
        try:
            return compiled(*args, **kwargs)
        except Exception as err:
            state["failed"] = True
            run.compile_failed = True  # type: ignore[attr-defined]
            _warn(name, err)
            return fn(*args, **kwargs)

    run.compile_failed = False  # type: ignore[attr-defined]
    return run


def _eager(fn: Callable[..., Any], name: str, err: Exception) -> Callable[..., Any]:
    _warn(name, err)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    run.compile_failed = True  # type: ignore[attr-defined]
    return run


def _warn(name: str, err: Exception) -> None:
    # dynamo's message starts "backend='inductor' raised:" and names the real error on the next line
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reason = " ".join(lines[:2])[:400]
    warnings.warn(f"torch.compile of {name} failed ({type(err).__name__}: {reason}); "
                  f"continuing without compilation (eager mode, same results, slower)",
                  CompileFallbackWarning, stacklevel=3)


def enable_activation_checkpointing(module: nn.Module, block_types: tuple[type[nn.Module], ...] = (Block,)) -> int:
    """Recompute the activations of every transformer block in backward instead of storing them.

    Each matching block's ``forward`` is wrapped in non-reentrant ``torch.utils.checkpoint`` (only while
    gradients are enabled), in place: parameter names and the state dict do not change. This covers the
    encoder and the MAE decoder blocks; for a bare timm model ``vit.set_grad_checkpointing()`` does the
    same inside timm's own forward_features.

    Args:
        module: model containing the blocks.
        block_types: which modules to checkpoint (timm ViT ``Block`` by default).

    Returns:
        Number of blocks wrapped (already-wrapped blocks are not wrapped twice).
    """
    count = 0
    for block in module.modules():
        if isinstance(block, block_types) and not getattr(block, "_vispre_checkpointed", False):
            block.forward = _checkpointed(block.forward)  # type: ignore[method-assign]
            block._vispre_checkpointed = True
            count += 1
    return count


def _checkpointed(forward: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run


class SpeedSwitchboard(L.Callback):
    """Apply the speed switches to the LightningModule at setup (before DDP/FSDP wrap it).

    Args:
        compile: compile the objective's ``loss_terms`` (forward + loss; backward through AOTAutograd).
        compile_mode: torch.compile mode (None = default, "max-autotune", "reduce-overhead").
        compile_backend: torch.compile backend ("inductor"; "eager"/"aot_eager" for debugging).
        activation_checkpointing: recompute transformer block activations in backward (less memory,
            about one extra forward of compute).
        matmul_precision: ``torch.set_float32_matmul_precision`` ("high" enables TF32 on Ampere+ GPUs);
            None leaves it unchanged.
    """

    def __init__(self, compile: bool = False, compile_mode: str | None = None, compile_backend: str = "inductor",
                 activation_checkpointing: bool = False, matmul_precision: str | None = "high") -> None:
        if matmul_precision is not None and matmul_precision not in MATMUL_PRECISIONS:
            raise ValueError(f"matmul_precision must be one of {', '.join(MATMUL_PRECISIONS)} or null, "
                             f"got {matmul_precision!r}")
        self.compile, self.compile_mode, self.compile_backend = compile, compile_mode, compile_backend
        self.activation_checkpointing = activation_checkpointing
        self.matmul_precision = matmul_precision
        self.checkpointed_blocks = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        apply_switches(pl_module, self)


def apply_switches(module: nn.Module, switches: SpeedSwitchboard) -> None:
    """Apply a switchboard to a module (also usable without a Trainer, e.g. by the benchmark)."""
    if switches.matmul_precision is not None:
        torch.set_float32_matmul_precision(switches.matmul_precision)
    if switches.activation_checkpointing:
        switches.checkpointed_blocks = enable_activation_checkpointing(module)
    if switches.compile and not getattr(module, "_vispre_compiled", False):
        if not hasattr(module, "loss_terms"):
            raise ValueError(f"SpeedSwitchboard(compile=True) needs an objective with loss_terms(batch); "
                             f"got {type(module).__name__}")
        kwargs: dict[str, Any] = {"backend": switches.compile_backend}
        if switches.compile_mode is not None:
            kwargs["mode"] = switches.compile_mode
        module.loss_terms = compile_with_fallback(module.loss_terms, f"{type(module).__name__}.loss_terms", **kwargs)
        module._vispre_compiled = True
