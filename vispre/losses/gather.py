"""all_gather with a correct backward, for losses whose negatives span the global batch.

``torch.distributed.all_gather`` has no autograd: gathered tensors are leaves and gradients of remote
samples are lost. :func:`gather_with_grad` sends each rank's gradient w.r.t. every gathered slice back to
the slice's owner and sums it there (all_reduce SUM, then take the local slice). With DDP's gradient
averaging over ranks this gives exactly the gradient of the mean of the per-rank losses (tested against
one process over the concatenated batch in tests/losses/test_gather.py). Common bugs this avoids: a gather
without backward (remote negatives give no gradient) and an extra 1/world_size in the backward.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def distributed_ready() -> bool:
    """True when torch.distributed is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_rank() -> tuple[int, int]:
    """(world_size, rank); (1, 0) without an initialised process group."""
    if not distributed_ready():
        return 1, 0
    return dist.get_world_size(), dist.get_rank()


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        world, rank = world_rank()
        ctx.rank, ctx.size = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.size: (ctx.rank + 1) * ctx.size]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0, differentiably.

    Args:
        x: [N, ...] local tensor; every rank must pass the same shape.

    Returns:
        [world_size * N, ...], rank r's rows at ``r*N:(r+1)*N``; ``x`` itself without a process group.
    """
    if not distributed_ready():
        return x
    return _GatherWithGrad.apply(x)


__all__ = ["distributed_ready", "gather_with_grad", "world_rank"]
