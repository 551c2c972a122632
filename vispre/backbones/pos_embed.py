"""Fixed 2-D sine-cosine position embeddings (MAE, arXiv 2111.06377, `util/pos_embed.py`)."""

from __future__ import annotations

import torch
from torch import Tensor

from vispre.errors import VispreError


def sincos_1d(embed_dim: int, positions: Tensor) -> Tensor:
    """Sine-cosine embedding of 1-D positions.

    Args:
        embed_dim: even output dimension.
        positions: [M] float positions.

    Returns:
        [M, embed_dim]: first half sin, second half cos, frequencies 1 / 10000^(2i/dim).
    """
    if embed_dim % 2:
        raise VispreError(f"sin-cos embedding needs an even dimension, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_pos_embed_2d(embed_dim: int, grid_size: tuple[int, int], num_prefix_tokens: int = 0) -> Tensor:
    """Fixed 2-D sine-cosine position embedding, half the dimensions for each axis.

    Args:
        embed_dim: D, divisible by 4.
        grid_size: (gh, gw) patch grid.
        num_prefix_tokens: rows of zeros prepended (the cls position in MAE).

    Returns:
        [num_prefix_tokens + gh*gw, D] float32, patch rows in row-major order.
    """
    if embed_dim % 4:
        raise VispreError(f"2-D sin-cos position embedding needs embed_dim divisible by 4, got {embed_dim}")
    gh, gw = grid_size
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    # MAE convention: first half encodes the column (w) coordinate, second half the row (h).
    emb = torch.cat([sincos_1d(embed_dim // 2, xs.flatten()), sincos_1d(embed_dim // 2, ys.flatten())], dim=1)
    prefix = torch.zeros(num_prefix_tokens, embed_dim, dtype=emb.dtype)
    return torch.cat([prefix, emb], dim=0).float()
