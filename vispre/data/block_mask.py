"""Block-wise patch masking for masked image modelling in the student (iBOT / BEiT / DINOv2).

BEiT: Bao et al., "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022 (arXiv 2106.08254), Alg. 1.
iBOT: Zhou et al., ICLR 2022 (arXiv 2111.07832), Sec. 3.2 and App. (prediction ratio per image in
[0.1, 0.5], blocks of aspect ratio in [0.3, 1/0.3], half of the images not masked). DINOv2 (Oquab et al.
2024) draws the per-image ratios stratified over the range (``collate_data_and_cast``); so does this module.

Each masked image gets a target count ``int(ratio * N)``; rectangles of random area and aspect ratio are
added (each adds between 1 and the remaining count of new patches) until the target is met. Where the
rectangles stall (10 failed tries, as in BEiT), the last few patches are masked one by one at random, so every
masked image gets exactly its target count. Randomness comes only from the ``torch.Generator`` passed in.
"""

from __future__ import annotations

import math
import random
from typing import NamedTuple

import torch
from torch import Tensor

from vispre.errors import VispreError


class BlockMaskSpec(NamedTuple):
    """Parameters of :func:`block_mask` (see there)."""

    grid: tuple[int, int]
    ratio_range: tuple[float, float] = (0.1, 0.5)
    mask_probability: float = 0.5
    min_block_patches: int = 4
    aspect_range: tuple[float, float] = (0.3, 1 / 0.3)


def _check(spec: BlockMaskSpec) -> None:
    h, w = spec.grid
    if int(h) < 1 or int(w) < 1:
        raise VispreError(f"block_mask: grid (h, w) must be positive patch counts, got {spec.grid}")
    lo, hi = spec.ratio_range
    if not 0.0 <= lo <= hi < 1.0:
        raise VispreError(f"block_mask: ratio_range (low, high) must satisfy 0 <= low <= high < 1, "
                          f"got {spec.ratio_range}")
    if not 0.0 <= spec.mask_probability <= 1.0:
        raise VispreError(f"block_mask: mask_probability must be in [0, 1], got {spec.mask_probability}")
    if int(spec.min_block_patches) < 1:
        raise VispreError(f"block_mask: min_block_patches must be >= 1, got {spec.min_block_patches}")
    a_lo, a_hi = spec.aspect_range
    if not 0.0 < a_lo <= a_hi:
        raise VispreError(f"block_mask: aspect_range (low, high) must satisfy 0 < low <= high, got {spec.aspect_range}")


def _one_block(mask: list[list[bool]], h: int, w: int, room: int, spec: BlockMaskSpec, rng: random.Random) -> int:
    """Try (10 times, as BEiT) to add one rectangle adding 1..room new patches; return how many it added."""
    log_lo, log_hi = math.log(spec.aspect_range[0]), math.log(spec.aspect_range[1])
    for _ in range(10):
        area = rng.uniform(min(spec.min_block_patches, room), room)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        bh, bw = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if not (1 <= bh <= h and 1 <= bw <= w):
            continue
        top, left = rng.randint(0, h - bh), rng.randint(0, w - bw)
        new = [(i, j) for i in range(top, top + bh) for j in range(left, left + bw) if not mask[i][j]]
        if 0 < len(new) <= room:
            for i, j in new:
                mask[i][j] = True
            return len(new)
    return 0


def _image_mask(target: int, spec: BlockMaskSpec, rng: random.Random) -> list[bool]:
    h, w = spec.grid
    mask = [[False] * w for _ in range(h)]
    count = 0
    while count < target:
        added = _one_block(mask, h, w, target - count, spec, rng)
        if added == 0:
            break
        count += added
    flat = [cell for row in mask for cell in row]
    free = [n for n, cell in enumerate(flat) if not cell]
    for n in rng.sample(free, target - count):  # top-up after a stall: exact count
        flat[n] = True
    return flat


def block_mask(batch_size: int, grid: tuple[int, int], ratio_range: tuple[float, float] = (0.1, 0.5),
               mask_probability: float = 0.5, *, min_block_patches: int = 4,
               aspect_range: tuple[float, float] = (0.3, 1 / 0.3),
               generator: torch.Generator | None = None) -> Tensor:
    """Block-wise masks of a batch: some images masked at a per-image ratio, the others not at all.

    The number of masked images is ``floor(B * mask_probability)`` plus one with probability equal to the
    fractional part (so the expected fraction is exactly ``mask_probability``, and a batch of 1 can still be
    masked); which images, and their ratios, are random. Masked image i gets ratio r_i drawn uniformly from the
    i-th of equal sub-intervals of ``ratio_range`` (stratified, as DINOv2), then exactly ``int(r_i * N)``
    masked patches, N = h * w, in rectangles (BEiT's algorithm).

    Args:
        batch_size: B >= 0 images.
        grid: (h, w) patch grid of the crop (img_size // patch_size each way).
        ratio_range: (low, high) per-image fraction of masked patches, 0 <= low <= high < 1 (iBOT 0.1-0.5).
        mask_probability: fraction of images masked, in [0, 1] (iBOT / DINOv2 0.5).
        min_block_patches: smallest rectangle area tried (DINOv2 4).
        aspect_range: (low, high) rectangle aspect ratios h / w, drawn log-uniformly (iBOT 0.3 - 1/0.3).
        generator: the only randomness; equal generator states give equal masks.

    Returns:
        [B, h * w] bool, True = masked (row-major over the grid, the ViT's patch-token order).
    """
    spec = BlockMaskSpec((int(grid[0]), int(grid[1])), (float(ratio_range[0]), float(ratio_range[1])),
                         float(mask_probability), int(min_block_patches),
                         (float(aspect_range[0]), float(aspect_range[1])))
    _check(spec)
    if int(batch_size) < 0:
        raise VispreError(f"block_mask: batch_size must be >= 0, got {batch_size}")
    b, n = int(batch_size), spec.grid[0] * spec.grid[1]
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    rng = random.Random(seed)  # python RNG for the per-patch loop, seeded from the torch generator
    whole = b * spec.mask_probability
    n_masked = min(b, int(math.floor(whole)) + int(rng.random() < whole - math.floor(whole)))
    lo, hi = spec.ratio_range
    edges = [lo + (hi - lo) * i / max(n_masked, 1) for i in range(n_masked + 1)]
    ratios = [rng.uniform(edges[i], edges[i + 1]) for i in range(n_masked)] + [0.0] * (b - n_masked)
    rng.shuffle(ratios)
    rows = [_image_mask(int(r * n), spec, rng) if r > 0 else [False] * n for r in ratios]
    return torch.tensor(rows, dtype=torch.bool).reshape(b, n)


class BlockMasker:
    """A configured :func:`block_mask`: ``BlockMasker(grid=(14, 14))(batch_size, generator=g)`` -> [B, N] bool.

    Args: those of :func:`block_mask` except ``batch_size`` and ``generator`` (validated here, at build time).
    """

    def __init__(self, grid: tuple[int, int], ratio_range: tuple[float, float] = (0.1, 0.5),
                 mask_probability: float = 0.5, min_block_patches: int = 4,
                 aspect_range: tuple[float, float] = (0.3, 1 / 0.3)) -> None:
        self.spec = BlockMaskSpec((int(grid[0]), int(grid[1])), (float(ratio_range[0]), float(ratio_range[1])),
                                  float(mask_probability), int(min_block_patches),
                                  (float(aspect_range[0]), float(aspect_range[1])))
        _check(self.spec)

    @property
    def num_patches(self) -> int:
        """N = h * w."""
        return self.spec.grid[0] * self.spec.grid[1]

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        s = self.spec
        return block_mask(batch_size, s.grid, s.ratio_range, s.mask_probability, min_block_patches=s.min_block_patches,
                          aspect_range=s.aspect_range, generator=generator)

    def __repr__(self) -> str:
        s = self.spec
        return (f"BlockMasker(grid={s.grid}, ratio_range={s.ratio_range}, mask_probability={s.mask_probability}, "
                f"min_block_patches={s.min_block_patches}, aspect_range={s.aspect_range})")


__all__ = ["BlockMaskSpec", "BlockMasker", "block_mask"]
