"""MAE decoder: shapes, unshuffle back to the original patch order, mask tokens, size checks."""

from __future__ import annotations

import pytest
import torch

from vispre.backbones import random_token_mask
from vispre.heads import MAEDecoder


def test_decoder_predicts_every_patch_with_prefix_tokens_passed_through() -> None:
    decoder = MAEDecoder(encoder_dim=12, grid_size=(2, 3), num_prefix_tokens=1, patch_pixels=5, decoder_dim=8,
                         depth=1, num_heads=2).eval()
    mask = random_token_mask(2, 6, 0.5, noise=torch.rand(2, 6))
    pred = decoder(torch.randn(2, 1 + 3, 12), mask)
    assert pred.shape == (2, 6, 5) and bool(torch.isfinite(pred).all())
    assert decoder.pos_embed.shape == (1, 7, 8)


def test_kept_tokens_return_to_their_patches_and_mask_tokens_fill_the_rest() -> None:
    decoder = MAEDecoder(encoder_dim=4, grid_size=(1, 4), num_prefix_tokens=0, patch_pixels=3, decoder_dim=4,
                         depth=0, num_heads=1).eval()
    with torch.no_grad():
        decoder.pos_embed.zero_()  # no blocks, no positions: each output depends on its own token only
    mask = random_token_mask(1, 4, 0.5, noise=torch.tensor([[0.1, 0.9, 0.2, 0.8]]))  # keeps patches 0 and 2
    tokens = torch.randn(1, 2, 4)
    pred = decoder(tokens, mask)
    per_token = decoder.pred(decoder.norm(decoder.decoder_embed(tokens)))
    torch.testing.assert_close(pred[0, [0, 2]], per_token[0])  # kept tokens in ids_keep order -> patches 0, 2
    filler = decoder.pred(decoder.norm(decoder.mask_token))[0, 0]
    torch.testing.assert_close(pred[0, 1], filler)
    torch.testing.assert_close(pred[0, 3], filler)


def test_decoder_width_must_divide_into_heads() -> None:
    with pytest.raises(ValueError, match="decoder_dim 30 is not divisible by decoder_num_heads 4"):
        MAEDecoder(encoder_dim=8, grid_size=(2, 2), num_prefix_tokens=1, patch_pixels=4, decoder_dim=30,
                   num_heads=4)
