"""POA's elastic student (Zhang et al., "POA: Pre-training Once for Models of All Sizes", ECCV 2024,
arXiv 2408.01031; official code github.com/alipay/POA, ``poa/train/ssl_meta_arch.py``) on the DINO objective.

Every step trains the intact student and one sampled elastic sub-network of it (fewer blocks and/or a
narrower width, sharing the student's weights: :mod:`vispre.growth.subnet`) against the same EMA teacher
(the EMA of the intact student); the elastic student is also distilled from the intact student's outputs:

    loss = lambda_ie * DINO(intact) + (1 - lambda_ie) * (DINO(elastic) + CE(elastic | intact))

After the run any sub-network is extracted with ``vispre export RUN OUT --subnet depth=D,embed_dim=E`` (from
the EMA teacher, DINO's export convention). POA's own runs use DINOv2's losses; this is its DINO form (DINO's
``centering="sinkhorn_knopp"`` gives DINOv2's centring; iBOT's patch loss and KoLeo are not included).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vispre.backbones.crops import encode_crop
from vispre.backbones.vit import MaskedViT
from vispre.errors import VispreError
from vispre.growth.subnet import (SubnetLayout, SubnetSpec, elastic_subnets, subnet_features, subnet_layout,
                                  subnet_pool, widen_features)
from vispre.losses.dino import dino_loss
from vispre.objectives.base import Batch
from vispre.objectives.dino import DINO, Crops


def elastic_distill_loss(elastic_logits: Tensor, intact_logits: Tensor, num_global: int,
                         student_temp: float = 0.1, target_temp: float = 0.1) -> Tensor:
    """POA's intact-to-elastic distillation: per crop, the cross-entropy of the elastic student's softmax
    (at ``student_temp``) against ``softmax(intact_logits / target_temp)`` (no gradient into the intact side);
    the mean over the global crops plus the mean over the local crops (POA's two distill terms).

    Args:
        elastic_logits: [V, B, K] elastic student head outputs, the first ``num_global`` views global.
        intact_logits: [V, B, K] intact student outputs of the same crops (detached here).
        num_global: G global crops. student_temp, target_temp: temperatures (POA 0.1 and 0.1).

    Returns:
        Scalar float32 loss.
    """
    if elastic_logits.shape != intact_logits.shape or elastic_logits.ndim != 3:
        raise VispreError(f"elastic_distill_loss: logits must both be [V, B, K], got {tuple(elastic_logits.shape)} "
                          f"and {tuple(intact_logits.shape)}")
    target = F.softmax(intact_logits.detach().float() / target_temp, dim=-1)
    ce = -(target * F.log_softmax(elastic_logits.float() / student_temp, dim=-1)).sum(-1)  # [V, B]
    loss = ce[:num_global].mean()
    return loss + ce[num_global:].mean() if ce.shape[0] > num_global else loss


class POA(DINO):
    """DINO with POA's elastic student.

    Args:
        backbone: the intact student (the teacher is its EMA copy, as in DINO).
        elastic_widths: elastic embed_dims, multiples of head_dim up to the width (POA: 384..1024 step 64 for a
            ViT-L); None: every multiple of head_dim from half the width up.
        elastic_depths: elastic depths (POA: 12..24); None: every depth from half the depth up.
        select_scale: the smallest sub-network is drawn this many times as often as the largest (POA 3).
        lambda_ie: weight of the intact student's loss; the elastic terms get 1 - lambda_ie (POA 0.8).
        distill_temp: temperature of the intact student's distribution the elastic one is distilled to (POA 0.1).
        elastic_seed: seed of the sub-network draws (a function of the step: identical on every rank, and
            unchanged by a resume).
        **kwargs: the DINO arguments (head, crops, temperatures, centring, momentum, optimizer).
    """

    def __init__(self, backbone: MaskedViT, *, elastic_widths: Sequence[int] | None = None,
                 elastic_depths: Sequence[int] | None = None, select_scale: float = 3.0, lambda_ie: float = 0.8,
                 distill_temp: float = 0.1, elastic_seed: int = 0, **kwargs: Any) -> None:
        super().__init__(backbone, **kwargs)
        if not 0.0 <= lambda_ie <= 1.0:
            raise VispreError(f"POA.lambda_ie must lie in [0, 1], got {lambda_ie}")
        if not distill_temp > 0:
            raise VispreError(f"POA.distill_temp must be > 0, got {distill_temp}")
        width, depth = backbone.embed_dim, len(backbone.vit.blocks)
        head_dim = backbone.vit.blocks[0].attn.head_dim
        if elastic_widths is None:
            elastic_widths = [w for w in range(head_dim, width + 1, head_dim) if 2 * w >= width]
        if elastic_depths is None:
            elastic_depths = [d for d in range(1, depth + 1) if 2 * d >= depth]
        self.elastic_pool = elastic_subnets(backbone, widths=list(elastic_widths), depths=list(elastic_depths),
                                            select_scale=select_scale)
        self.lambda_ie, self.distill_temp, self.elastic_seed = float(lambda_ie), float(distill_temp), int(elastic_seed)
        self.draw_step = 0  # the step whose sub-network the next loss_terms draws (the Trainer's global step)

    def sample_subnet(self, step: int) -> SubnetSpec:
        """The sub-network of optimizer ``step``: POA cycles through its weighted pool in a shuffled order
        (every size once per cycle, by its weight); the order of cycle c is a permutation seeded by seed + c."""
        n = len(self.elastic_pool)
        order = np.random.default_rng(self.elastic_seed + step // n).permutation(n)
        return self.elastic_pool[int(order[step % n])]

    def update_schedules(self, step: int, total_steps: int, epoch_steps: int) -> None:
        """DINO's per-step schedules; also fixes the step whose sub-network is drawn (called on every
        micro-batch, also inside a MultiObjective: one sub-network per optimizer step)."""
        super().update_schedules(step, total_steps, epoch_steps)
        self.draw_step = int(step)

    def student_logits(self, crops: Crops, layout: SubnetLayout | None) -> Tensor:
        """Student head outputs [V, B, K] of every crop: the intact student (``layout`` None) or a sub-network,
        whose d-wide pooled features reach the shared head through :func:`widen_features` (POA's sliced head)."""
        views = [crops.globals, *crops.locals]
        if layout is None:
            features = [self.backbone.pool(encode_crop(self.backbone, v)) for v in views]
        else:
            features = [widen_features(subnet_pool(self.backbone, subnet_features(self.backbone, v, layout)),
                                       self.backbone.embed_dim) for v in views]
        return self.head(torch.cat(features)).reshape(crops.num_views, crops.batch_size, -1)

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        crops = self.split_crops(batch)
        g, b = self.num_global_crops, crops.batch_size
        spec = self.sample_subnet(self.draw_step)
        self.draw_step += 1  # without a Trainer, successive calls walk through the pool
        with torch.no_grad():
            teacher = self.teacher["backbone"]
            t_logits = self.teacher["head"](teacher.pool(encode_crop(teacher, crops.globals)))
            t_probs = self.teacher_targets(t_logits, "center").reshape(g, b, -1)
        intact = self.student_logits(crops, None)
        elastic = self.student_logits(crops, subnet_layout(self.backbone, spec))
        terms = {"dino_loss": dino_loss(intact, t_probs, self.student_temp),
                 "elastic_dino_loss": dino_loss(elastic, t_probs, self.student_temp),
                 "elastic_distill_loss": elastic_distill_loss(elastic, intact, g, self.student_temp,
                                                              self.distill_temp)}
        terms["loss"] = (self.lambda_ie * terms["dino_loss"]
                         + (1 - self.lambda_ie) * (terms["elastic_dino_loss"] + terms["elastic_distill_loss"]))
        device = terms["loss"].device
        terms["elastic_depth"] = torch.tensor(float(spec.depth), device=device)
        terms["elastic_embed_dim"] = torch.tensor(float(spec.embed_dim), device=device)
        return terms


__all__ = ["POA", "elastic_distill_loss"]
