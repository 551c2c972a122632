"""MaskedViT.forward_masked: the encoder sees only the kept tokens, so masked pixels cannot reach it."""

from __future__ import annotations

import torch

from tests.helpers import tiny_vit
from vispre.backbones import patchify, unpatchify


def test_encoder_sees_only_kept_tokens_and_visible_pixels() -> None:
    backbone = tiny_vit().eval()
    images = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    enc = backbone.forward_masked(images, 0.75, noise=noise)
    assert enc.tokens.shape == (2, 1 + 4, 32)
    # changing masked pixels must not change the encoding
    patches = patchify(images, 8)
    patches[enc.mask.mask.bool()] = 7.0
    changed = unpatchify(patches, 8, (4, 4), 3)
    enc2 = backbone.forward_masked(changed, 0.75, noise=noise)
    torch.testing.assert_close(enc.tokens, enc2.tokens)
