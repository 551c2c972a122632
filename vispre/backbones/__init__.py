"""ViT backbones (timm), masking helpers and crops of any size."""

from vispre.backbones.crops import check_crop, encode_crop
from vispre.backbones.masking import TokenMask, gather_tokens, patchify, random_token_mask, unpatchify
from vispre.backbones.pos_embed import sincos_pos_embed_2d
from vispre.backbones.vit import (MaskedEncoding, MaskedViT, create_vit, describe_vit, embed_tokens,
                                  forward_blocks)

__all__ = ["MaskedEncoding", "MaskedViT", "TokenMask", "check_crop", "create_vit", "describe_vit", "embed_tokens",
           "encode_crop", "forward_blocks", "gather_tokens", "patchify", "random_token_mask", "sincos_pos_embed_2d",
           "unpatchify"]
