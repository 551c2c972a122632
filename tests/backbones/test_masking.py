"""Masking invariants and patchify round-trip (MAE reference semantics)."""

from __future__ import annotations

import pytest
import torch

from vispre.backbones import gather_tokens, patchify, random_token_mask, unpatchify
from vispre.backbones.masking import num_kept_tokens
from vispre.errors import VispreError


@pytest.mark.parametrize("num_tokens,ratio", [(16, 0.75), (49, 0.5), (196, 0.9), (10, 0.33)])
def test_mask_keeps_exact_count_and_partitions_tokens(num_tokens: int, ratio: float) -> None:
    mask = random_token_mask(6, num_tokens, ratio)
    keep = int(num_tokens * (1 - ratio))
    assert mask.ids_keep.shape == (6, keep)
    assert mask.mask.shape == (6, num_tokens)
    assert torch.equal(mask.mask.sum(1), torch.full((6,), float(num_tokens - keep)))
    for row in range(6):
        kept = set(mask.ids_keep[row].tolist())
        removed = set(torch.nonzero(mask.mask[row]).flatten().tolist())
        assert kept.isdisjoint(removed)
        assert kept | removed == set(range(num_tokens))


def test_ids_restore_inverts_the_shuffle() -> None:
    noise = torch.rand(4, 20)
    mask = random_token_mask(4, 20, 0.75, noise=noise)
    shuffle = torch.argsort(noise, dim=1)
    assert torch.equal(torch.gather(shuffle, 1, mask.ids_restore), torch.arange(20).expand(4, 20))
    # kept = the smallest-noise tokens
    assert torch.equal(mask.ids_keep, shuffle[:, :5])


def test_same_noise_gives_same_mask_and_masks_differ_per_sample() -> None:
    noise = torch.rand(8, 16)
    a, b = random_token_mask(8, 16, 0.75, noise=noise), random_token_mask(8, 16, 0.75, noise=noise)
    assert torch.equal(a.mask, b.mask)
    assert len({tuple(r.tolist()) for r in a.mask}) > 1


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_mask_ratio_outside_open_interval_is_rejected(ratio: float) -> None:
    with pytest.raises(VispreError, match="mask_ratio must lie strictly between 0 and 1"):
        random_token_mask(2, 16, ratio)


def test_noise_of_wrong_shape_is_rejected() -> None:
    with pytest.raises(VispreError, match=r"noise must have shape \(2, 16\)"):
        random_token_mask(2, 16, 0.5, noise=torch.rand(2, 15))


def test_num_kept_tokens_matches_mae_rounding() -> None:
    assert num_kept_tokens(196, 0.75) == 49
    assert num_kept_tokens(16, 0.75) == 4
    assert num_kept_tokens(10, 0.95) == 1  # never zero visible tokens


@pytest.mark.parametrize("chans,size,p", [(1, 28, 7), (3, 32, 8), (3, 224, 16), (2, 12, 4)])
def test_patchify_roundtrip(chans: int, size: int, p: int) -> None:
    images = torch.randn(3, chans, size, size)
    patches = patchify(images, p)
    assert patches.shape == (3, (size // p) ** 2, p * p * chans)
    assert torch.equal(unpatchify(patches, p, (size // p, size // p), chans), images)


def test_patchify_layout_matches_mae_reference() -> None:
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    patches = patchify(images, 4)
    # MAE: x.reshape(N, C, h, p, w, p) -> einsum('nchpwq->nhwpqc') -> reshape(N, h*w, p*p*C)
    ref = torch.einsum("nchpwq->nhwpqc", images.reshape(2, 3, 2, 4, 2, 4)).reshape(2, 4, 48)
    assert torch.equal(patches, ref)
    # second patch (row 0, col 1), first pixel, channel 0 is image[0, 0, 0, 4]
    assert patches[0, 1, 0] == images[0, 0, 0, 4]


def test_patchify_rejects_indivisible_size() -> None:
    with pytest.raises(VispreError, match="not divisible by patch_size 8"):
        patchify(torch.zeros(1, 3, 30, 30), 8)


def test_gather_tokens_selects_rows() -> None:
    tokens = torch.randn(2, 5, 3)
    ids = torch.tensor([[4, 0], [1, 1]])
    out = gather_tokens(tokens, ids)
    assert torch.equal(out[0, 0], tokens[0, 4]) and torch.equal(out[1, 1], tokens[1, 1])
