"""AMCL on each base objective (Wang, Koniusz, Gedeon, Zheng, "Adaptive Multi-head Contrastive Learning",
ECCV 2024, arXiv 2310.05615): the base objective with C projection heads (:class:`MultiProjectionHead`) and
the per-head AMCL loss (:mod:`vispre.losses.amcl`), nothing else.

These factories give the paper's defaults (3 heads, adaptive temperatures, hardest-negative form) to
Python callers and the registry; any argument of the base objective overrides them. In YAML the same is
written with the base class: ``class_path: vispre.objectives.SimCLR`` with ``projector: {class_path:
vispre.heads.MultiProjectionHead, ...}`` and ``loss: {class_path: vispre.losses.AMCLNTXentLoss, ...}``
(configs/amcl/). Facts and caveats: docs/amcl.md.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from vispre.backbones.vit import MaskedViT
from vispre.heads.projection import MultiProjectionHead
from vispre.losses.amcl import AMCLBarlowTwinsLoss, AMCLInfoNCELoss, AMCLNTXentLoss
from vispre.objectives.barlow_twins import BarlowTwins
from vispre.objectives.moco_v3 import MoCoV3
from vispre.objectives.simclr import SimCLR


def amcl_simclr(backbone: MaskedViT, **kwargs: Any) -> SimCLR:
    """SimCLR with 3 heads (SimCLR's sizes: 2048 hidden -> 128, 2 layers) and :class:`AMCLNTXentLoss`."""
    heads = partial(MultiProjectionHead, num_heads=3, hidden_dim=2048, out_dim=128, num_layers=2)
    return SimCLR(backbone, **{"projector": heads, "loss": AMCLNTXentLoss, **kwargs})


def amcl_moco_v3(backbone: MaskedViT, **kwargs: Any) -> MoCoV3:
    """MoCo v3 with 3 projector heads (MoCo v3's sizes), one predictor per head, :class:`AMCLInfoNCELoss`."""
    heads = partial(MultiProjectionHead, num_heads=3, hidden_dim=4096, out_dim=256, num_layers=3,
                    last_batch_norm=True)
    return MoCoV3(backbone, **{"projector": heads, "loss": AMCLInfoNCELoss, **kwargs})


def amcl_barlow_twins(backbone: MaskedViT, **kwargs: Any) -> BarlowTwins:
    """Barlow Twins with 3 heads (8192-8192-8192, 3 layers) and :class:`AMCLBarlowTwinsLoss`."""
    heads = partial(MultiProjectionHead, num_heads=3, hidden_dim=8192, out_dim=8192, num_layers=3)
    return BarlowTwins(backbone, **{"projector": heads, "loss": AMCLBarlowTwinsLoss, **kwargs})


__all__ = ["amcl_barlow_twins", "amcl_moco_v3", "amcl_simclr"]
