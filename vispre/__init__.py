"""vispre: self-supervised vision pretraining on timm ViTs.

The user-facing names, importable from the top level (each loaded on first use, so ``import vispre`` and
the ``vispre`` command stay fast)::

    import vispre
    vit = vispre.load_backbone("runs/quickstart/version_0")      # a timm VisionTransformer, eval mode
    vispre.export_backbone("runs/quickstart/version_0", "backbone.safetensors")
    vispre.OBJECTIVES["mae"]                                     # the objective registry
    vispre.create_vit("vit_base_patch16_224", img_size=224)      # a headless timm ViT

Subpackages (``vispre.backbones``, ``vispre.heads``, ``vispre.losses``, ``vispre.optim``, ``vispre.objectives``,
``vispre.growth``, ``vispre.data``, ``vispre.eval``, ``vispre.callbacks``) hold the building blocks.
"""

from __future__ import annotations

import importlib
from typing import Any

from vispre.errors import VispreError

__version__ = "0.1.0"

_LAZY = {
    # name -> module that defines it
    "load_backbone": "vispre.hub",
    "export_backbone": "vispre.hub",
    "create_vit": "vispre.backbones.vit",
    "describe_vit": "vispre.backbones.vit",
    "MaskedViT": "vispre.backbones.vit",
    "OBJECTIVES": "vispre.objectives",
    "PretrainObjective": "vispre.objectives.base",
    "GrowthSpec": "vispre.growth",
    "grow_objective": "vispre.growth",
    "EvalTask": "vispre.eval.suite",
    "load_tasks": "vispre.eval.suite",
    "run_suite": "vispre.eval.suite",
    "bench_objective": "vispre.bench",
}

__all__ = ["VispreError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'vispre' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
