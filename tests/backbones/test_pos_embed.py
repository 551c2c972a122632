"""2-D sin-cos position embeddings against the reference formula (MAE's get_2d_sincos_pos_embed)."""

from __future__ import annotations

import math

import torch

from vispre.backbones import sincos_pos_embed_2d


def test_sincos_pos_embed_matches_reference_formula() -> None:
    emb = sincos_pos_embed_2d(8, (2, 3), num_prefix_tokens=1)
    assert emb.shape == (7, 8)
    assert torch.equal(emb[0], torch.zeros(8))
    # token for row 1, col 2: first half encodes x=2, second half y=1; dim 4 -> omega = [1, 1/100]
    x, y, omega = 2.0, 1.0, [1.0, 0.01]
    ref = [math.sin(x * w) for w in omega] + [math.cos(x * w) for w in omega]
    ref += [math.sin(y * w) for w in omega] + [math.cos(y * w) for w in omega]
    torch.testing.assert_close(emb[1 + 1 * 3 + 2], torch.tensor(ref), rtol=1e-6, atol=1e-6)
