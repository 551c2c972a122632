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
from torch import Tensor, nn

from vispre.objectives.optim import OptimizerBundle, param_groups, warmup_cosine


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
            raise ValueError(f"LARS lr must be >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"LARS momentum must lie in [0, 1), got {momentum}")
        if trust_coefficient <= 0:
            raise ValueError(f"LARS trust_coefficient must be > 0, got {trust_coefficient}")
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


def trust_ratio(param: Tensor, update: Tensor, trust_coefficient: float) -> Tensor:
    """eta * ||param|| / ||update||, or 1 when either norm is zero (a 0-d tensor; no host sync)."""
    param_norm, update_norm = torch.linalg.vector_norm(param), torch.linalg.vector_norm(update)
    one = torch.ones_like(param_norm)
    ratio = trust_coefficient * param_norm / update_norm
    return torch.where((param_norm > 0) & (update_norm > 0), ratio, one)


@dataclass
class LARSRecipe:
    """LARS with the linearly scaled lr and warmup + cosine schedule (MAE linear probe: base_lr 0.1,
    momentum 0.9, weight_decay 0, 10 of 90 epochs warmup).

    Same ``build`` interface as :class:`vispre.objectives.optim.AdamWRecipe`.
    """

    base_lr: float = 0.1
    weight_decay: float = 0.0
    momentum: float = 0.9
    trust_coefficient: float = 0.001
    warmup_fraction: float = 10 / 90
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.base_lr <= 0:
            raise ValueError(f"optimizer.base_lr must be > 0, got {self.base_lr}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"optimizer.warmup_fraction must lie in [0, 1), got {self.warmup_fraction}")

    def peak_lr(self, effective_batch_size: int) -> float:
        """base_lr * effective_batch / 256 (linear scaling rule)."""
        return self.base_lr * effective_batch_size / 256

    def build(self, module: nn.Module, effective_batch_size: int, total_steps: int) -> OptimizerBundle:
        """LARS over ``module``'s trainable parameters (decay only on matrices) + per-step LambdaLR."""
        lr = self.peak_lr(effective_batch_size)
        groups = param_groups(module, self.weight_decay)
        optimizer = LARS(groups, lr=lr, momentum=self.momentum, trust_coefficient=self.trust_coefficient)
        warmup = int(self.warmup_fraction * total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup, total_steps, self.min_lr_ratio))
        return OptimizerBundle(optimizer, scheduler, lr, warmup)
