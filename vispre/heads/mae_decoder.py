"""MAE decoder: lightweight ViT that reconstructs pixels of the masked patches.

He et al., "Masked Autoencoders Are Scalable Vision Learners", arXiv 2111.06377, Sec. 3 "MAE decoder".
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from vispre.backbones.masking import TokenMask
from vispre.backbones.pos_embed import sincos_pos_embed_2d
from vispre.backbones.vit import forward_blocks
from vispre.errors import VispreError


class MAEDecoder(nn.Module):
    """Linear D -> d, learned mask token, unshuffle, fixed sin-cos positions, ``depth`` blocks, -> pixels.

    Args:
        encoder_dim: D of the encoder tokens.
        grid_size: (gh, gw) patch grid of the encoder.
        num_prefix_tokens: P prefix tokens in the encoder output (cls/registers), passed through.
        patch_pixels: p*p*C pixel values predicted per patch.
        decoder_dim, depth, num_heads, mlp_ratio: decoder transformer sizes (MAE: 512, 8, 16, 4).
    """

    def __init__(self, encoder_dim: int, grid_size: tuple[int, int], num_prefix_tokens: int,
                 patch_pixels: int, decoder_dim: int = 512, depth: int = 8, num_heads: int = 16,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if decoder_dim % num_heads:
            raise VispreError(f"decoder_dim {decoder_dim} is not divisible by decoder_num_heads {num_heads}")
        self.num_prefix_tokens = num_prefix_tokens
        self.decoder_embed = nn.Linear(encoder_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        pos = sincos_pos_embed_2d(decoder_dim, grid_size, num_prefix_tokens=num_prefix_tokens)
        self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=False)
        self.blocks = nn.Sequential(*[Block(decoder_dim, num_heads, mlp_ratio, qkv_bias=True)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(decoder_dim)
        self.pred = nn.Linear(decoder_dim, patch_pixels)
        self.apply(_init_linear)
        nn.init.normal_(self.mask_token, std=0.02)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the decoder blocks' activations in backward (timm's switch, used by SpeedSwitchboard)."""
        self.grad_checkpointing = enable

    def forward(self, tokens: Tensor, mask: TokenMask) -> Tensor:
        """Predict the pixels of every patch.

        Args:
            tokens: [B, P + L_keep, D] encoder output.
            mask: the TokenMask used by the encoder.

        Returns:
            [B, L, p*p*C] predictions in the original patch order.
        """
        x = self.decoder_embed(tokens)
        prefix, kept = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens:]
        b, num_tokens = mask.ids_restore.shape
        fill = self.mask_token.expand(b, num_tokens - kept.shape[1], -1)
        x = torch.cat([kept, fill], dim=1)
        x = torch.gather(x, 1, mask.ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # unshuffle
        x = torch.cat([prefix, x], dim=1) + self.pos_embed
        x = self.norm(forward_blocks(self.blocks, x, checkpointing=self.grad_checkpointing))
        return self.pred(x[:, self.num_prefix_tokens:])


def _init_linear(module: nn.Module) -> None:
    """MAE init: xavier_uniform Linear weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
