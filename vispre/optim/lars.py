"""LARS: layer-wise adaptive rate scaling (You et al., "Large Batch Training of Convolutional Networks",
arXiv 1708.03888), in the form used by the MAE linear probe (He et al., arXiv 2111.06377, Appendix A.2;
official code ``util/lars.py``).

For every parameter with more than one dimension (weights; not biases or norm scales)::

    d = grad + weight_decay * p
    q = trust_coefficient * ||p|| / ||d||      (1 when ||p|| == 0 or ||d|| == 0)
    d = q * d
    mu = momentum * mu + d
    p = p - lr * mu

One-dimensional parameters skip the decay and the trust ratio (d = grad).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vispre.errors import VispreError
from vispre.optim.recipes import OptimizerRecipe, check_field


class LARS(torch.optim.Optimizer):
    """LARS with momentum, as in the MAE code (no decay / no trust ratio on 1-D parameters).

    Args:
        params: parameters or param groups.
        lr: learning rate (>= 0).
        weight_decay: L2 decay added to the gradient of >1-D parameters before the trust ratio.
        momentum: heavy-ball momentum in [0, 1).
        trust_coefficient: eta of the trust ratio (MAE: 0.001).
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float = 0.0, weight_decay: float = 0.0,
                 momentum: float = 0.9, trust_coefficient: float = 0.001) -> None:
        if lr < 0:
            raise VispreError(f"LARS lr must be >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise VispreError(f"LARS momentum must lie in [0, 1), got {momentum}")
        if trust_coefficient <= 0:
            raise VispreError(f"LARS trust_coefficient must be > 0, got {trust_coefficient}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter that has a gradient; returns the closure's loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    update = update.mul(trust_ratio(p, update, group["trust_coefficient"]))
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(update)
                p.add_(mu, alpha=-group["lr"])
        return loss


def trust_ratio(param: Tensor, update: Tensor, trust_coefficient: float,
                dim: int | tuple[int, ...] | None = None) -> Tensor:
    """LARS trust ratio eta * ||param|| / ||update||, or 1 where either norm is zero (no host sync).

    The one place of this math: :class:`LARS` uses it per parameter (``dim=None``), the batched linear probe
    (``vispre.eval.linear_probe``) per head over ``dim=(0, 2)`` of its [D, H, C] weights.

    Args:
        param: the parameter (any shape).
        update: its update direction (gradient plus decay), same shape.
        trust_coefficient: eta (MAE: 0.001).
        dim: dimensions the norms reduce (None: all, giving a 0-d tensor); kept as size-1 dims.

    Returns:
        The ratio, broadcastable against ``param``.
    """
    keepdim = dim is not None
    param_norm = torch.linalg.vector_norm(param, dim=dim, keepdim=keepdim)
    update_norm = torch.linalg.vector_norm(update, dim=dim, keepdim=keepdim)
    ratio = trust_coefficient * param_norm / update_norm
    return torch.where((param_norm > 0) & (update_norm > 0), ratio, torch.ones_like(param_norm))


@dataclass(kw_only=True)
class LARSRecipe(OptimizerRecipe):
    """LARS with the linearly scaled lr and warmup + cosine schedule (MAE linear probe: base_lr 0.1,
    momentum 0.9, weight_decay 0, 10 of 90 epochs warmup).

    Attributes:
        base_lr, weight_decay, weight_decay_end, warmup_fraction, min_lr_ratio: see
            :class:`vispre.optim.recipes.OptimizerRecipe`.
        momentum: heavy-ball momentum in [0, 1).
        trust_coefficient: eta of the trust ratio (> 0).
    """

    base_lr: float = 0.1
    weight_decay: float = 0.0
    warmup_fraction: float = 10 / 90
    momentum: float = 0.9
    trust_coefficient: float = 0.001

    def validate(self) -> None:
        """See :meth:`OptimizerRecipe.validate`; also momentum and trust_coefficient."""
        super().validate()
        check_field(self, "momentum", 0.0 <= self.momentum < 1.0, "lie in [0, 1)")
        check_field(self, "trust_coefficient", self.trust_coefficient > 0, "be > 0")

    def make_optimizer(self, groups: list[dict], lr: float, on_gpu: bool) -> torch.optim.Optimizer:
        """:class:`LARS` (decay and trust ratio only on matrices)."""
        return LARS(groups, lr=lr, momentum=self.momentum, trust_coefficient=self.trust_coefficient)


__all__ = ["LARS", "LARSRecipe", "trust_ratio"]
