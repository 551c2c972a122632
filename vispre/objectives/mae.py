"""Masked Autoencoder pretraining (He et al., "Masked Autoencoders Are Scalable Vision Learners",
CVPR 2022, arXiv 2111.06377)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from vispre.backbones.masking import check_mask_ratio, patchify, unpatchify
from vispre.backbones.vit import MaskedViT
from vispre.heads.mae_decoder import MAEDecoder
from vispre.losses.masked_mse import masked_mse_loss
from vispre.objectives.base import Batch, PretrainObjective
from vispre.objectives.optim import AdamWRecipe


class Reconstruction(NamedTuple):
    """Images for a reconstruction figure, each [B, C, H, W] in the input's (normalised) pixel space."""

    original: Tensor
    masked: Tensor
    reconstruction: Tensor


class MAE(PretrainObjective):
    """MAE: encode 1 - mask_ratio of the patches, decode all, MSE on the masked ones.

    Args:
        backbone: encoder (use ``sincos_pos_embed=True`` for the paper's fixed positions).
        mask_ratio: fraction of patches removed, in (0, 1); paper 0.75.
        decoder_dim, decoder_depth, decoder_num_heads: decoder sizes; paper 512, 8, 16.
        norm_pix_loss: per-patch standardised targets (paper's better variant).
        optimizer: AdamW recipe; MAE defaults base_lr 1.5e-4, betas (0.9, 0.95), wd 0.05.
    """

    def __init__(self, backbone: MaskedViT, mask_ratio: float = 0.75, decoder_dim: int = 512,
                 decoder_depth: int = 8, decoder_num_heads: int = 16, norm_pix_loss: bool = True,
                 optimizer: AdamWRecipe | None = None) -> None:
        super().__init__(backbone, optimizer)
        check_mask_ratio(mask_ratio)
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        patch_pixels = backbone.patch_size**2 * backbone.in_chans
        self.decoder = MAEDecoder(backbone.embed_dim, backbone.grid_size, backbone.num_prefix_tokens,
                                  patch_pixels, decoder_dim, decoder_depth, decoder_num_heads)

    def forward_loss(self, images: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Masked reconstruction loss.

        Args:
            images: [B, C, H, W].
            noise: optional [B, L] masking noise for a reproducible mask.

        Returns:
            (loss scalar, pred [B, L, p*p*C], mask [B, L] with 1 = masked).
        """
        encoding = self.backbone.forward_masked(images, self.mask_ratio, noise=noise)
        pred = self.decoder(encoding.tokens, encoding.mask)
        target = patchify(images, self.backbone.patch_size)
        loss = masked_mse_loss(pred, target, encoding.mask.mask, norm_pix=self.norm_pix_loss)
        return loss, pred, encoding.mask.mask

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        loss, _, _ = self.forward_loss(batch["views"][0])
        return {"loss": loss, "mae_loss": loss}

    @torch.no_grad()
    def reconstruct(self, images: Tensor, noise: Tensor | None = None) -> Reconstruction:
        """Original, masked input (masked patches zeroed) and reconstruction pasted over the visible patches.

        With norm_pix_loss the prediction is mapped back with each true patch's own mean and std, as in
        the MAE visualisation demo.
        """
        _, pred, mask = self.forward_loss(images, noise)
        p, grid, chans = self.backbone.patch_size, self.backbone.grid_size, self.backbone.in_chans
        target = patchify(images, p)
        if self.norm_pix_loss:
            mean, std = target.mean(-1, keepdim=True), (target.var(-1, keepdim=True) + 1e-6) ** 0.5
            pred = pred * std + mean
        keep = (1 - mask).unsqueeze(-1)
        masked = unpatchify(target * keep, p, grid, chans)
        pasted = unpatchify(target * keep + pred * (1 - keep), p, grid, chans)
        return Reconstruction(images, masked, pasted)


__all__ = ["MAE", "Reconstruction"]
