"""Masked Autoencoder pretraining (He et al., "Masked Autoencoders Are Scalable Vision Learners",
CVPR 2022, arXiv 2111.06377)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from vispre.backbones.masking import check_mask_ratio, patchify, unpatchify
from vispre.backbones.vit import MaskedViT
from vispre.heads.mae_decoder import MAEDecoder
from vispre.losses.masked_mse import denormalize_patches, masked_mse_loss
from vispre.objectives.base import Batch, PretrainObjective
from vispre.optim import OptimizerRecipe


class MAEOutput(NamedTuple):
    """What :meth:`MAE.forward_loss` returns."""

    loss: Tensor
    """Scalar masked reconstruction loss."""
    pred: Tensor
    """[B, L, p*p*C] predicted pixels of every patch (normalised units with norm_pix_loss)."""
    mask: Tensor
    """[B, L], 1 = masked."""


class Reconstruction(NamedTuple):
    """Images for a reconstruction figure, each [B, C, H, W] in the input's (normalised) pixel space."""

    original: Tensor
    masked: Tensor
    reconstruction: Tensor


class MAE(PretrainObjective):
    """MAE: encode 1 - mask_ratio of the patches, decode all, MSE on the masked ones.

    The decoder is sized from the backbone (width, patch grid, prefix tokens, pixels per patch); only its own
    sizes are arguments.

    Args:
        backbone: encoder (use ``sincos_pos_embed=True`` for the paper's fixed positions).
        mask_ratio: fraction of patches removed, in (0, 1); paper 0.75.
        decoder_dim, decoder_depth, decoder_num_heads: decoder sizes; paper 512, 8, 16.
        norm_pix_loss: per-patch standardised targets (paper's better variant).
        optimizer: optimizer recipe (default AdamW: base_lr 1.5e-4, betas (0.9, 0.95), wd 0.05).
    """

    def __init__(self, backbone: MaskedViT, *, mask_ratio: float = 0.75, decoder_dim: int = 512,
                 decoder_depth: int = 8, decoder_num_heads: int = 16, norm_pix_loss: bool = True,
                 optimizer: OptimizerRecipe | None = None) -> None:
        super().__init__(backbone, optimizer=optimizer)
        check_mask_ratio(mask_ratio)
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.decoder = MAEDecoder(encoder_dim=backbone.embed_dim, grid_size=backbone.grid_size,
                                  num_prefix_tokens=backbone.num_prefix_tokens,
                                  patch_pixels=backbone.patch_size**2 * backbone.in_chans,
                                  decoder_dim=decoder_dim, depth=decoder_depth, num_heads=decoder_num_heads)

    def forward_loss(self, images: Tensor, noise: Tensor | None = None) -> MAEOutput:
        """Masked reconstruction loss.

        Args:
            images: [B, C, H, W].
            noise: optional [B, L] masking noise for a reproducible mask.

        Returns:
            MAEOutput(loss scalar, pred [B, L, p*p*C], mask [B, L] with 1 = masked).
        """
        encoding = self.backbone.forward_masked(images, self.mask_ratio, noise=noise)
        pred = self.decoder(encoding.tokens, encoding.mask)
        target = patchify(images, self.backbone.patch_size)
        loss = masked_mse_loss(pred, target, encoding.mask.mask, norm_pix=self.norm_pix_loss)
        return MAEOutput(loss, pred, encoding.mask.mask)

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        loss = self.forward_loss(batch["views"][0]).loss
        return {"loss": loss, "mae_loss": loss}

    @torch.no_grad()
    def reconstruct(self, images: Tensor, noise: Tensor | None = None) -> Reconstruction:
        """Original, masked input (masked patches zeroed) and reconstruction pasted over the visible patches.

        With norm_pix_loss the prediction is mapped back with each true patch's own mean and std
        (:func:`vispre.losses.denormalize_patches`), as in the MAE visualisation demo.
        """
        out = self.forward_loss(images, noise)
        p, grid, chans = self.backbone.patch_size, self.backbone.grid_size, self.backbone.in_chans
        target = patchify(images, p)
        pred = denormalize_patches(out.pred, target) if self.norm_pix_loss else out.pred
        keep = (1 - out.mask).unsqueeze(-1)
        masked = unpatchify(target * keep, p, grid, chans)
        pasted = unpatchify(target * keep + pred * (1 - keep), p, grid, chans)
        return Reconstruction(images, masked, pasted)


__all__ = ["MAE", "MAEOutput", "Reconstruction"]
