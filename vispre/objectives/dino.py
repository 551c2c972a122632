"""DINO pretraining (Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021,
arXiv 2104.14294, Alg. 1) on a timm ViT, and :class:`SelfDistillation`, the machinery iBOT and DINOv2 share:
multi-crop split, EMA teacher, per-step schedules, teacher centring, last-layer freeze."""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from vispre.backbones.crops import check_crop, encode_crop
from vispre.backbones.vit import MaskedViT
from vispre.errors import VispreError
from vispre.heads.dino_head import DINOHead
from vispre.heads.projection import HeadFactory
from vispre.losses.dino import dino_loss, dino_teacher_probs, sinkhorn_knopp, update_center
from vispre.objectives.base import Batch, PretrainObjective
from vispre.objectives.teacher import DistillSchedule, EMATeacher, steps_per_epoch
from vispre.optim import OptimizerRecipe

CENTERINGS = ("center", "sinkhorn_knopp")


class Crops(NamedTuple):
    """A multi-crop batch split for the teacher and the student."""

    globals: Tensor
    """[G * B, C, H, W] the G global crops, crop-major (crop g is rows g*B:(g+1)*B)."""
    locals: list[Tensor]
    """Local crops grouped by size, in view order, each [n * B, C, h, w]."""
    num_views: int
    batch_size: int


class StudentTeacher(NamedTuple):
    """What :meth:`SelfDistillation.extra_terms` receives."""

    teacher_tokens: Tensor
    """[G * B, P + N, D] teacher tokens of the unmasked global crops (no gradient)."""
    student_tokens: Tensor
    """[G * B, P + N, D] student tokens of the (masked) global crops."""
    masks: Tensor | None
    """[G * B, N] bool, True = masked in the student; None without masking."""
    batch_size: int


class SelfDistillation(PretrainObjective):
    """Student (backbone + DINO head on every crop) distilled from an EMA teacher on the global crops.

    A concrete subclass builds its extra student modules, then calls :meth:`build_teacher`. Args: see
    :class:`DINO` (all keyword-only).
    """

    def __init__(self, backbone: MaskedViT, *, head: HeadFactory | None = None, num_global_crops: int = 2,
                 student_temp: float = 0.1, teacher_temp: float = 0.07, warmup_teacher_temp: float = 0.04,
                 warmup_teacher_temp_epochs: float = 30.0, center_momentum: float = 0.9, centering: str = "center",
                 sinkhorn_iters: int = 3, base_momentum: float = 0.996, final_momentum: float = 1.0,
                 freeze_last_layer_epochs: float = 1.0, optimizer: OptimizerRecipe | None = None) -> None:
        super().__init__(backbone, optimizer=optimizer)
        name = type(self).__name__
        self.schedule = DistillSchedule(base_momentum, final_momentum, warmup_teacher_temp, teacher_temp,
                                        warmup_teacher_temp_epochs, freeze_last_layer_epochs)
        self.schedule.check(name)
        checks = [("num_global_crops", num_global_crops, num_global_crops >= 1, ">= 1"),
                  ("student_temp", student_temp, student_temp > 0, "> 0"),
                  ("center_momentum", center_momentum, 0.0 <= center_momentum <= 1.0, "in [0, 1]"),
                  ("centering", centering, centering in CENTERINGS, f"one of {CENTERINGS}"),
                  ("sinkhorn_iters", sinkhorn_iters, sinkhorn_iters >= 1, ">= 1")]
        for field, value, ok, allowed in checks:
            if not ok:
                raise VispreError(f"{name}.{field} must be {allowed}, got {value!r}")
        self.num_global_crops, self.student_temp = int(num_global_crops), float(student_temp)
        self.center_momentum, self.centering, self.sinkhorn_iters = center_momentum, centering, int(sinkhorn_iters)
        self.head = (head or partial(DINOHead, out_dim=65536))(backbone.embed_dim)
        self.register_buffer("center", torch.zeros(1, self.check_prototypes(self.head, "head")))
        self.momentum, self.teacher_temp, self.last_layer_frozen = self.schedule.at(0, 1, 1)
        self.ema_step = -1
        self.term_weights: dict[str, float] = {}  # extra term name -> its weight in "loss" (subclasses)

    # -- construction ----------------------------------------------------------------------------------
    def check_prototypes(self, head: nn.Module, field: str) -> int:
        """K of ``head`` (its ``out_dim``); VispreError naming ``field`` unless K >= 2."""
        k = int(getattr(head, "out_dim", 0))
        if k < 2:
            raise VispreError(f"{type(self).__name__}.{field} must output K >= 2 prototypes (out_dim), got {k}")
        return k

    def student_modules(self) -> dict[str, nn.Module]:
        """The student modules the teacher mirrors (subclasses add theirs)."""
        return {"backbone": self.backbone, "head": self.head}

    def build_teacher(self) -> None:
        """Copy the student modules into the EMA teacher (call once, at the end of ``__init__``)."""
        self.teacher = EMATeacher(self.student_modules())

    # -- schedules -------------------------------------------------------------------------------------
    def update_schedules(self, step: int, total_steps: int, epoch_steps: int) -> None:
        """Set momentum, teacher temperature and the freeze flag for optimizer ``step``; EMA-update the teacher
        once per step (gradient accumulation calls this on every micro-batch)."""
        self.momentum, self.teacher_temp, self.last_layer_frozen = self.schedule.at(step, total_steps, epoch_steps)
        if step != self.ema_step:
            self.teacher.update(self.student_modules(), self.momentum)
            self.ema_step = step

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        trainer = self.trainer
        self.update_schedules(trainer.global_step, int(trainer.estimated_stepping_batches), steps_per_epoch(trainer))
        self.log_dict({"train/momentum": self.momentum, "train/teacher_temp": self.teacher_temp}, batch_size=1)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """DINO's last-layer freeze: drop the prototype layers' gradients while frozen."""
        if self.last_layer_frozen:
            for module in self.modules():
                if isinstance(module, DINOHead):
                    module.cancel_last_layer_grads()

    # -- loss ------------------------------------------------------------------------------------------
    def split_crops(self, batch: Batch) -> Crops:
        """Check the crops against ``num_global_crops`` and the backbone and group them (see :class:`Crops`)."""
        views, g, name = batch["views"], self.num_global_crops, type(self).__name__
        if len(views) < max(g, 2):
            raise VispreError(f"{name}.num_global_crops = {g} needs batches with at least {max(g, 2)} views "
                              f"(global crops first, e.g. view: MultiCropViews), got {len(views)}")
        grids = [check_crop(self.backbone, v, f"{name} view {i}") for i, v in enumerate(views)]
        if len(set(grids[:g])) != 1 or any(v.shape[0] != views[0].shape[0] for v in views):
            raise VispreError(f"{name}: the {g} global crops must share one size and every view the batch size, got "
                              f"{[tuple(v.shape) for v in views]}")
        groups: list[list[Tensor]] = []
        for i in range(g, len(views)):
            if i > g and grids[i] == grids[i - 1]:
                groups[-1].append(views[i])
            else:
                groups.append([views[i]])
        return Crops(torch.cat(views[:g]), [torch.cat(group) for group in groups], len(views), views[0].shape[0])

    def teacher_targets(self, logits: Tensor, center: str) -> Tensor:
        """Teacher probabilities [M, K] of logits [M, K]: Sinkhorn-Knopp, or the EMA centre named ``center``
        (updated here over the global batch while training)."""
        if self.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(logits, self.teacher_temp, self.sinkhorn_iters)
        buffer = getattr(self, center)
        probs = dino_teacher_probs(logits, buffer, self.teacher_temp)
        if self.training:
            buffer.copy_(update_center(buffer, logits, self.center_momentum))
        return probs

    def student_masks(self, batch: Batch, crops: Crops) -> Tensor | None:
        """[G * B, N] bool masks of the student's global crops (None: DINO masks nothing)."""
        return None

    def extra_terms(self, out: StudentTeacher) -> dict[str, Tensor]:
        """Loss terms besides DINO's; those named in ``term_weights`` enter ``"loss"`` with their weight."""
        return {}

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        crops = self.split_crops(batch)
        g, b = self.num_global_crops, crops.batch_size
        masks = self.student_masks(batch, crops)
        with torch.no_grad():
            teacher = self.teacher["backbone"]
            t_tokens = encode_crop(teacher, crops.globals)
            t_logits = self.teacher["head"](teacher.pool(t_tokens))
            t_probs = self.teacher_targets(t_logits, "center").reshape(g, b, -1)
        s_tokens = encode_crop(self.backbone, crops.globals, masks, getattr(self, "mask_token", None))
        features = [self.backbone.pool(s_tokens), *(self.backbone.pool(encode_crop(self.backbone, c))
                                                    for c in crops.locals)]
        s_logits = self.head(torch.cat(features)).reshape(crops.num_views, b, -1)
        terms = {"dino_loss": dino_loss(s_logits, t_probs, self.student_temp)}
        terms.update(self.extra_terms(StudentTeacher(t_tokens, s_tokens, masks, b)))
        terms["loss"] = terms["dino_loss"] + sum(w * terms[k] for k, w in self.term_weights.items())
        return terms


class DINO(SelfDistillation):
    """DINO: cross-entropy between the centred, sharpened teacher (global crops) and the student (all crops).

    Args:
        backbone: the student encoder (its pooled feature, cls by default, feeds the head); the teacher is an
            EMA copy of it.
        head: head factory called with the backbone width (YAML: class_path vispre.heads.DINOHead + init_args
            without in_dim); default DINOHead with K = 65536.
        num_global_crops: the first views of a batch that the teacher sees (DINO 2); the rest are local crops.
        student_temp: student temperature (DINO 0.1).
        teacher_temp, warmup_teacher_temp, warmup_teacher_temp_epochs: teacher temperature, linear from
            warmup_teacher_temp to teacher_temp over that many epochs (DINO 0.04 -> 0.07 over 30), per step.
        center_momentum: EMA momentum of the centre (DINO 0.9), over the global batch.
        centering: "center" (DINO's EMA centre) or "sinkhorn_knopp" (DINOv2), with sinkhorn_iters iterations.
        base_momentum, final_momentum: teacher EMA momentum, cosine per step (DINO 0.996 -> 1).
        freeze_last_layer_epochs: the head's prototype layer stays fixed this long (DINO 1).
        optimizer: optimizer recipe (DINO: AdamW, weight_decay 0.04 -> weight_decay_end 0.4).
    """

    def __init__(self, backbone: MaskedViT, **kwargs: Any) -> None:
        super().__init__(backbone, **kwargs)
        self.build_teacher()


__all__ = ["CENTERINGS", "DINO", "Crops", "SelfDistillation", "StudentTeacher"]
