"""ViT backbones (timm) and masking helpers."""

from vispre.backbones.masking import TokenMask, gather_tokens, patchify, random_token_mask, unpatchify
from vispre.backbones.pos_embed import sincos_pos_embed_2d
from vispre.backbones.vit import (MaskedEncoding, MaskedViT, create_vit, describe_vit, embed_tokens,
                                  forward_blocks)

__all__ = ["MaskedEncoding", "MaskedViT", "TokenMask", "create_vit", "describe_vit", "embed_tokens",
           "forward_blocks", "gather_tokens", "patchify", "random_token_mask", "sincos_pos_embed_2d", "unpatchify"]
