"""The speed switchboard: torch.compile of the training step (with an eager fallback), activation
checkpointing of the transformer blocks and the float32 matmul precision, set from YAML::

    trainer:
      precision: bf16-mixed
      callbacks:
        - class_path: vispre.callbacks.speed.SpeedSwitchboard
          init_args: {compile: true, activation_checkpointing: false, matmul_precision: high}

Only public routes: compile is ``nn.Module.compile`` on the objective (whose ``forward`` is its loss step)
with :class:`FallbackBackend`; activation checkpointing is timm's ``set_grad_checkpointing()`` on every
module that offers it (the ViT, the MAE decoder), run through ``timm.models.checkpoint_seq``. Nothing is
renamed, so checkpoints, exports and resume are unaffected by the switches. Precision, gradient
accumulation, fused AdamW and the strategy are the Trainer's and the optimizer recipe's own settings
(docs/scale.md).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from timm.models.vision_transformer import Block
from torch import nn

from vispre.errors import VispreError

MATMUL_PRECISIONS = ("highest", "high", "medium")


class CompileFallbackWarning(UserWarning):
    """torch.compile failed; the step runs eagerly (same math, slower)."""


class FallbackBackend:
    """A ``torch.compile`` backend that compiles each captured graph with ``backend`` and, when that fails,
    runs the graph eagerly (the same math, slower) after one :class:`CompileFallbackWarning`.

    Compilation is lazy (at the first call and on recompiles), so a failure is caught at call time; from
    then on every graph runs eagerly. A genuine error of the code itself still surfaces: the eager repeat
    raises it.

    Args:
        name: what is compiled, for the warning (e.g. "MAE.loss_terms").
        backend: the real backend, a name of ``torch.compiler.list_backends()`` or a backend callable.
        mode: torch.compile mode of the real backend (None = default, "max-autotune", "reduce-overhead").

    Attributes:
        failed: whether the fallback was taken.
    """

    def __init__(self, name: str, backend: str | Callable = "inductor", mode: str | None = None) -> None:
        self.name, self.backend, self.mode = name, backend, mode
        self.failed = False

    def check(self) -> bool:
        """False (after the warning) when ``backend`` is a name torch does not know; True otherwise."""
        if isinstance(self.backend, str) and self.backend not in torch.compiler.list_backends(exclude_tags=()):
            self.fail(VispreError(f"unknown backend {self.backend!r}; torch.compiler.list_backends() lists "
                                  "the known ones"))
            return False
        return True

    def fail(self, err: Exception) -> None:
        """Switch to eager mode, with one warning naming ``err``."""
        self.failed = True
        # dynamo's message starts "backend='inductor' raised:" and names the real error on the next line
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = " ".join(lines[:2])[:400]
        warnings.warn(f"torch.compile of {self.name} failed ({type(err).__name__}: {reason}); "
                      f"continuing without compilation (eager mode, same results, slower)",
                      CompileFallbackWarning, stacklevel=3)

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list) -> Callable[..., Any]:
        kwargs = {} if self.mode is None else {"mode": self.mode}
        try:
            compiled = torch.compile(graph, backend=self.backend, **kwargs)
        except Exception as err:
            self.fail(err)
            return graph.forward

        def run(*args: Any) -> Any:
            if not self.failed:
                try:
                    return compiled(*args)
                except Exception as err:
                    self.fail(err)
            return graph(*args)

        return run


class CompiledFunction:
    """``fn`` compiled with a :class:`FallbackBackend`; ``compile_failed`` tells whether it fell back."""

    def __init__(self, fn: Callable[..., Any], backend: FallbackBackend, **compile_kwargs: Any) -> None:
        self.backend = backend
        self.fn = fn
        self.compiled = torch.compile(fn, backend=backend, **compile_kwargs) if backend.check() else fn

    @property
    def compile_failed(self) -> bool:
        return self.backend.failed

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.compiled(*args, **kwargs)


def compile_with_fallback(fn: Callable[..., Any], name: str, backend: str | Callable = "inductor",
                          mode: str | None = None, **compile_kwargs: Any) -> CompiledFunction:
    """``torch.compile(fn)`` that falls back to eager ``fn`` with one clear warning if compiling fails.

    Args:
        fn: the function or bound method to compile.
        name: what it is, for the warning (e.g. "MAE.forward_loss").
        backend, mode: see :class:`FallbackBackend`.
        **compile_kwargs: further torch.compile arguments (fullgraph, dynamic).

    Returns:
        A callable with fn's signature; ``.compile_failed`` tells whether the fallback was taken.
    """
    return CompiledFunction(fn, FallbackBackend(name, backend, mode), **compile_kwargs)


def enable_activation_checkpointing(module: nn.Module) -> int:
    """Recompute the activations of the transformer blocks in backward instead of storing them.

    Calls ``set_grad_checkpointing(True)`` (timm's public switch) on every submodule that offers it and has
    it off: timm ViTs (MaskedViT honours it) and the MAE decoder. Their blocks then run through
    ``timm.models.checkpoint_seq`` (non-reentrant, only while gradients are enabled); parameter names and
    the state dict do not change.

    Args:
        module: model containing the ViTs / decoders.

    Returns:
        Number of transformer blocks newly checkpointed (0 when everything already was).
    """
    count = 0
    for sub in module.modules():
        if callable(getattr(sub, "set_grad_checkpointing", None)) and not getattr(sub, "grad_checkpointing", True):
            sub.set_grad_checkpointing(True)
            count += sum(isinstance(m, Block) for m in sub.modules())
    return count


class SpeedSwitchboard(L.Callback):
    """Apply the speed switches to the LightningModule at setup (before DDP/FSDP wrap it).

    Args:
        compile: compile the objective's step (``forward`` = ``loss_terms``: forward + loss; backward through
            AOTAutograd) with ``nn.Module.compile``; a failed compile warns once and runs eagerly.
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
            raise VispreError(f"matmul_precision must be one of {', '.join(MATMUL_PRECISIONS)} or null, "
                             f"got {matmul_precision!r}")
        self.compile, self.compile_mode, self.compile_backend = compile, compile_mode, compile_backend
        self.activation_checkpointing = activation_checkpointing
        self.matmul_precision = matmul_precision
        self.checkpointed_blocks = 0
        self.compiled_modules: dict[int, FallbackBackend] = {}  # id(module) -> its backend

    @property
    def compile_failed(self) -> bool:
        """Whether a compiled module fell back to eager mode."""
        return any(backend.failed for backend in self.compiled_modules.values())

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        apply_switches(pl_module, self)


def apply_switches(module: nn.Module, switches: SpeedSwitchboard) -> None:
    """Apply a switchboard to a module (also usable without a Trainer, e.g. by the benchmark).

    Compile uses the public ``nn.Module.compile`` (in place; parameters and state dict unchanged): an
    objective's ``forward`` is its loss step (``PretrainObjective.forward`` = ``loss_terms``), and
    ``training_step`` calls the module.
    """
    if switches.matmul_precision is not None:
        torch.set_float32_matmul_precision(switches.matmul_precision)
    if switches.activation_checkpointing:
        switches.checkpointed_blocks += enable_activation_checkpointing(module)
    if switches.compile and id(module) not in switches.compiled_modules:
        if not hasattr(module, "loss_terms"):
            raise VispreError(f"SpeedSwitchboard(compile=True) needs an objective with loss_terms(batch); "
                              f"got {type(module).__name__}")
        backend = FallbackBackend(f"{type(module).__name__}.loss_terms", switches.compile_backend,
                                  switches.compile_mode)
        if backend.check():
            module.compile(backend=backend)
        switches.compiled_modules[id(module)] = backend
