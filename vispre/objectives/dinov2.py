"""DINOv2-style pretraining (Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", TMLR
2024, arXiv 2304.07193, Sec. 4): iBOT with separate class and patch heads, Sinkhorn-Knopp centring of the
teacher (3 iterations) and the KoLeo regulariser on the student's class features."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from vispre.backbones.vit import MaskedViT
from vispre.errors import VispreError
from vispre.losses.koleo import koleo_loss
from vispre.objectives.dino import StudentTeacher
from vispre.objectives.ibot import IBOT


class DINOv2(IBOT):
    """:class:`IBOT` with DINOv2's defaults (separate heads, Sinkhorn-Knopp, EMA 0.994 -> 1) + KoLeo.

    KoLeo is computed per global crop on the student's pooled (pre-head) features of the local batch and
    summed over the crops (DINOv2 code: per GPU, no gather, by design); its weight is ``koleo_weight``.

    Args:
        backbone: the student encoder.
        koleo_weight: weight of the KoLeo term (DINOv2 0.1; 0 turns it off).
        shared_head, centering, base_momentum: DINOv2 defaults False, "sinkhorn_knopp", 0.994.
        **kwargs: those of :class:`IBOT` and :class:`vispre.objectives.DINO`.
    """

    def __init__(self, backbone: MaskedViT, *, koleo_weight: float = 0.1, shared_head: bool = False,
                 centering: str = "sinkhorn_knopp", base_momentum: float = 0.994, **kwargs: Any) -> None:
        super().__init__(backbone, shared_head=shared_head, centering=centering, base_momentum=base_momentum,
                         **kwargs)
        if not koleo_weight >= 0:
            raise VispreError(f"{type(self).__name__}.koleo_weight must be >= 0, got {koleo_weight}")
        self.koleo_weight = float(koleo_weight)
        if self.koleo_weight > 0:
            self.term_weights["koleo_loss"] = self.koleo_weight

    def extra_terms(self, out: StudentTeacher) -> dict[str, Tensor]:
        terms = super().extra_terms(out)
        if self.koleo_weight > 0:
            features = self.backbone.pool(out.student_tokens)  # [G * B, D]
            terms["koleo_loss"] = sum(koleo_loss(crop) for crop in features.split(out.batch_size))
        return terms


__all__ = ["DINOv2"]
