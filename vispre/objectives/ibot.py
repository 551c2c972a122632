"""iBOT pretraining (Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer", ICLR 2022, arXiv
2111.07832): DINO on the class token plus masked image modelling, where the student predicts, at block-masked
patches of its global crops, the teacher's patch distribution of the unmasked crop (Eq. 2)."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from vispre.backbones.vit import MaskedViT
from vispre.data.block_mask import BlockMasker
from vispre.errors import VispreError
from vispre.heads.dino_head import DINOHead
from vispre.heads.projection import HeadFactory
from vispre.losses.dino import ibot_patch_loss
from vispre.losses.gather import world_rank
from vispre.objectives.base import Batch
from vispre.objectives.dino import Crops, SelfDistillation, StudentTeacher


class IBOT(SelfDistillation):
    """DINO's multi-crop self-distillation + iBOT's masked-patch loss with an EMA-teacher online tokenizer.

    Masks: a batch may carry ``batch["masks"]`` [B, G, N] bool (per sample and global crop, True = masked,
    e.g. from a collate); otherwise block-wise masks (:class:`vispre.data.BlockMasker`) are drawn for every
    global crop from a generator seeded by (``mask_seed``, rank, call count): deterministic per seed.

    Args:
        backbone: the student encoder.
        patch_head: head factory for the patch tokens when ``shared_head`` is False (default: as ``head``).
        shared_head: one head for the class and patch tokens (iBOT ViT-S/B) or separate ones (DINOv2).
        patch_loss_weight: weight of the masked-patch loss (iBOT 1).
        mask_ratio_range: per-image fraction of masked patches (iBOT 0.1-0.5).
        mask_probability: fraction of images masked (iBOT 0.5).
        min_block_patches: smallest rectangle of the block masks (4).
        mask_seed: seed of the mask generator.
        **kwargs: those of :class:`vispre.objectives.DINO` (head, temperatures, schedules, optimizer...); the
            patch targets use the same teacher temperature schedule and their own centre ``patch_center``.
    """

    def __init__(self, backbone: MaskedViT, *, patch_head: HeadFactory | None = None, shared_head: bool = True,
                 patch_loss_weight: float = 1.0, mask_ratio_range: tuple[float, float] = (0.1, 0.5),
                 mask_probability: float = 0.5, min_block_patches: int = 4, mask_seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(backbone, **kwargs)
        name = type(self).__name__
        if shared_head and patch_head is not None:
            raise VispreError(f"{name}.patch_head is only used with shared_head: false")
        if not patch_loss_weight >= 0:
            raise VispreError(f"{name}.patch_loss_weight must be >= 0, got {patch_loss_weight}")
        self.shared_head = bool(shared_head)
        self.patch_head: nn.Module | None = None
        if not self.shared_head:
            factory = patch_head or kwargs.get("head") or partial(DINOHead, out_dim=65536)
            self.patch_head = factory(backbone.embed_dim)
        k = self.check_prototypes(self.student_patch_head(), "patch_head")
        self.register_buffer("patch_center", torch.zeros(1, k))
        self.mask_args = dict(ratio_range=tuple(mask_ratio_range), mask_probability=float(mask_probability),
                              min_block_patches=int(min_block_patches))
        self.masker = BlockMasker(backbone.grid_size, **self.mask_args)  # validates the mask arguments
        self.mask_seed, self.mask_calls = int(mask_seed), 0
        self.mask_token = nn.Parameter(torch.zeros(1, 1, backbone.embed_dim))
        self.term_weights["ibot_loss"] = float(patch_loss_weight)
        self.build_teacher()

    def student_modules(self) -> dict[str, nn.Module]:
        modules = super().student_modules()
        if self.patch_head is not None:
            modules["patch_head"] = self.patch_head
        return modules

    def student_patch_head(self) -> nn.Module:
        """The student's patch head (the class head when shared)."""
        return self.head if self.patch_head is None else self.patch_head

    def teacher_patch_head(self) -> nn.Module:
        """The teacher's patch head (its class head when shared)."""
        return self.teacher["head" if self.patch_head is None else "patch_head"]

    def student_masks(self, batch: Batch, crops: Crops) -> Tensor:
        g, b = self.num_global_crops, crops.batch_size
        p = self.backbone.patch_size
        grid = (crops.globals.shape[-2] // p, crops.globals.shape[-1] // p)
        if "masks" in batch:
            masks = torch.as_tensor(batch["masks"], device=crops.globals.device)
            if masks.shape != (b, g, grid[0] * grid[1]) or masks.dtype != torch.bool:
                raise VispreError(f"{type(self).__name__}: batch['masks'] must be bool [B, G, N] = "
                                  f"{(b, g, grid[0] * grid[1])}, got {masks.dtype} {tuple(masks.shape)}")
            return masks.transpose(0, 1).reshape(g * b, -1)
        masker = self.masker if grid == self.masker.spec.grid else BlockMasker(grid, **self.mask_args)
        seed = hash((self.mask_seed, world_rank()[1], self.mask_calls)) & (2**62 - 1)
        self.mask_calls += 1
        return masker(g * b, generator=torch.Generator().manual_seed(seed)).to(crops.globals.device)

    def patch_targets(self, tokens: Tensor, masks: Tensor) -> Tensor:
        """Teacher patch probabilities [G*B, N, K] (rows at unmasked positions are zero with Sinkhorn-Knopp,
        which runs on the masked patches only, as DINOv2; the EMA centre sees every patch, as iBOT)."""
        head = self.teacher_patch_head()
        if self.centering == "sinkhorn_knopp":
            probs = self.teacher_targets(head(tokens[masks]), "patch_center")
            full = probs.new_zeros(*masks.shape, probs.shape[-1])
            full[masks] = probs
            return full
        logits = head(tokens)
        return self.teacher_targets(logits.reshape(-1, logits.shape[-1]), "patch_center").reshape(logits.shape)

    def extra_terms(self, out: StudentTeacher) -> dict[str, Tensor]:
        p = self.backbone.num_prefix_tokens
        with torch.no_grad():
            targets = self.patch_targets(out.teacher_tokens[:, p:], out.masks)
        logits = self.student_patch_head()(out.student_tokens[:, p:][out.masks])  # masked patches only
        full = logits.new_zeros(*out.masks.shape, logits.shape[-1])
        full[out.masks] = logits
        return {"ibot_loss": ibot_patch_loss(full, targets, out.masks, self.student_temp)}


__all__ = ["IBOT"]
