"""AMCL on each base objective (Wang, Koniusz, Gedeon, Zheng, "Adaptive Multi-head Contrastive Learning",
ECCV 2024, arXiv 2310.05615): the base objective with C projection heads (:class:`MultiProjectionHead`) and
the AMCL loss (:mod:`vispre.losses.amcl`, :mod:`vispre.losses.amcl_barlow_twins`), nothing else.

These factories give 3 heads and the AMCL loss in the chosen ``form`` (``"stable"``, ours, default;
``"paper"``, the authors') to Python callers and the registry; any argument of the base objective
overrides them (``loss=...`` replaces the loss and its form). In YAML the same is written with the base
class: ``class_path: vispre.objectives.SimCLR`` with ``projector: {class_path: vispre.heads.MultiProjectionHead,
...}`` and ``loss: {class_path: vispre.losses.AMCLNTXentLoss, init_args: {form: stable}}`` (configs/amcl/).
The paper form is meant to run with gradient-norm clipping 1.0 (the Trainer's ``gradient_clip_val``, set in
configs/amcl/). Facts and caveats: docs/amcl.md.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from vispre.backbones.vit import MaskedViT
from vispre.heads.projection import MultiProjectionHead
from vispre.losses.amcl import AMCLInfoNCELoss, AMCLNTXentLoss
from vispre.losses.amcl_barlow_twins import AMCLBarlowTwinsLoss
from vispre.losses.amcl_temperature import AMCLForm, check_form
from vispre.objectives.barlow_twins import BarlowTwins
from vispre.objectives.moco_v3 import MoCoV3
from vispre.objectives.simclr import SimCLR


def _with_amcl(base: type, name: str, loss: type, backbone: MaskedViT, form: AMCLForm, kwargs: dict[str, Any],
               **head_sizes: Any) -> Any:
    """``base(backbone, ...)`` with 3 :class:`MultiProjectionHead` heads of ``head_sizes`` and ``loss`` in
    ``form``; ``kwargs`` (any argument of the base) override both."""
    check_form(name, form)
    heads = partial(MultiProjectionHead, num_heads=3, **head_sizes)
    return base(backbone, **{"projector": heads, "loss": partial(loss, form=form), **kwargs})


def amcl_simclr(backbone: MaskedViT, *, form: AMCLForm = "stable", **kwargs: Any) -> SimCLR:
    """SimCLR with 3 heads (SimCLR's sizes: 2048 hidden -> 128, 2 layers) and :class:`AMCLNTXentLoss` in ``form``.

    Raises:
        VispreError: unknown ``form``.
    """
    return _with_amcl(SimCLR, "amcl_simclr", AMCLNTXentLoss, backbone, form, kwargs,
                      hidden_dim=2048, out_dim=128, num_layers=2)


def amcl_moco_v3(backbone: MaskedViT, *, form: AMCLForm = "stable", **kwargs: Any) -> MoCoV3:
    """MoCo v3 with 3 projector heads (MoCo v3's sizes), one predictor per head, :class:`AMCLInfoNCELoss`.

    Raises:
        VispreError: unknown ``form``.
    """
    return _with_amcl(MoCoV3, "amcl_moco_v3", AMCLInfoNCELoss, backbone, form, kwargs,
                      hidden_dim=4096, out_dim=256, num_layers=3, last_batch_norm=True)


def amcl_barlow_twins(backbone: MaskedViT, *, form: AMCLForm = "stable", **kwargs: Any) -> BarlowTwins:
    """Barlow Twins with 3 heads (8192-8192-8192, 3 layers) and :class:`AMCLBarlowTwinsLoss` in ``form``.

    Raises:
        VispreError: unknown ``form``.
    """
    return _with_amcl(BarlowTwins, "amcl_barlow_twins", AMCLBarlowTwinsLoss, backbone, form, kwargs,
                      hidden_dim=8192, out_dim=8192, num_layers=3)


__all__ = ["amcl_barlow_twins", "amcl_moco_v3", "amcl_simclr"]
