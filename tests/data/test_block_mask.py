"""Block-wise patch masking: per-image ratios within the range, the masked-image fraction, block shape,
determinism under a torch.Generator, and bad parameters."""

from __future__ import annotations

import pytest
import torch

from vispre.data.block_mask import BlockMasker, block_mask
from vispre.errors import VispreError


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("grid,ratio_range", [((14, 14), (0.1, 0.5)), ((4, 4), (0.1, 0.5)), ((7, 5), (0.2, 0.3)),
                                              ((8, 8), (0.4, 0.4))])
def test_masked_counts_lie_in_the_ratio_range(grid, ratio_range) -> None:
    n = grid[0] * grid[1]
    mask = block_mask(64, grid, ratio_range, mask_probability=1.0, generator=_gen(0))
    assert mask.shape == (64, n) and mask.dtype == torch.bool
    counts = mask.sum(1)
    lo, hi = int(ratio_range[0] * n), int(ratio_range[1] * n)  # each image gets exactly int(r * N), r in range
    assert counts.min().item() >= lo and counts.max().item() <= hi


def test_ratios_are_stratified_over_the_range() -> None:
    mask = block_mask(40, (14, 14), (0.1, 0.5), mask_probability=1.0, generator=_gen(1))
    ratios = torch.sort(mask.sum(1).float() / 196).values
    edges = torch.linspace(0.1, 0.5, 41)
    assert ((ratios >= edges[:-1] - 1 / 196) & (ratios <= edges[1:])).all()  # one image per sub-interval


@pytest.mark.parametrize("b,p", [(64, 0.5), (10, 0.3), (8, 0.0), (8, 1.0)])
def test_fraction_of_masked_images(b: int, p: float) -> None:
    mask = block_mask(b, (8, 8), (0.2, 0.5), mask_probability=p, generator=_gen(2))
    assert (mask.any(1).sum().item()) == int(b * p)  # b * p integral here: exact


def test_fractional_expected_masked_images_is_exact_on_average() -> None:
    masked = [block_mask(3, (6, 6), (0.2, 0.5), 0.5, generator=_gen(s)).any(1).sum().item() for s in range(400)]
    assert set(masked) == {1, 2}  # floor(1.5) or one more
    assert abs(sum(masked) / 400 - 1.5) < 0.1


def test_masks_are_blocks_not_scattered_patches() -> None:
    mask = block_mask(32, (14, 14), (0.3, 0.5), mask_probability=1.0, generator=_gen(3)).reshape(32, 14, 14)
    padded = torch.nn.functional.pad(mask.float(), (1, 1, 1, 1))
    neighbours = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    with_neighbour = ((neighbours > 0) & mask).sum().item() / mask.sum().item()
    assert with_neighbour > 0.95  # random masking at 40 % would give ~ 1 - 0.6^4 = 0.87


def test_deterministic_under_a_generator() -> None:
    a = block_mask(16, (14, 14), generator=_gen(7))
    b = block_mask(16, (14, 14), generator=_gen(7))
    c = block_mask(16, (14, 14), generator=_gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    masker = BlockMasker((14, 14))
    assert torch.equal(masker(16, generator=_gen(7)), a)
    assert masker.num_patches == 196


def test_empty_batch_and_zero_ratio() -> None:
    assert block_mask(0, (4, 4), generator=_gen(0)).shape == (0, 16)
    assert not block_mask(5, (4, 4), (0.0, 0.0), 1.0, generator=_gen(0)).any()


@pytest.mark.parametrize("kw,words", [
    (dict(ratio_range=(0.5, 0.1)), "ratio_range"),
    (dict(ratio_range=(-0.1, 0.5)), "ratio_range"),
    (dict(ratio_range=(0.1, 1.0)), "ratio_range"),
    (dict(mask_probability=1.5), "mask_probability must be in [0, 1]"),
    (dict(grid=(0, 4)), "grid (h, w)"),
    (dict(min_block_patches=0), "min_block_patches must be >= 1"),
    (dict(aspect_range=(0.0, 2.0)), "aspect_range"),
])
def test_bad_parameters_are_refused(kw, words) -> None:
    args = dict(grid=(8, 8), ratio_range=(0.1, 0.5), mask_probability=0.5)
    args.update(kw)
    with pytest.raises(VispreError) as err:
        BlockMasker(**args)
    assert words in str(err.value)
    with pytest.raises(VispreError):
        block_mask(4, **args)
