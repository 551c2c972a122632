"""The DINO projection head: MLP, bottleneck, L2-normalisation, weight-normalised prototypes.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021 (arXiv 2104.14294),
Sec. 3.1 and App. (head: 3 layers, hidden 2048, GELU, bottleneck 256, L2-normalise, weight-normalised linear
to K prototypes, K = 65536 on ImageNet; the weight norm fixed to 1, ``norm_last_layer``, and the last layer
frozen during the first epoch). Also the iBOT / DINOv2 patch head (the same module on patch tokens).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from vispre.errors import VispreError


def _check_dim(name: str, value: int, minimum: int) -> None:
    if int(value) < minimum:
        raise VispreError(f"DINOHead: {name} must be >= {minimum}, got {value}")


class DINOHead(nn.Module):
    """``n_layers`` Linear layers (GELU between) to a bottleneck, L2-normalise, weight-normalised Linear to K.

    Args:
        in_dim: input features D (the backbone's embedding width).
        out_dim: K prototypes (>= 2; DINO 65536 on ImageNet, a few thousand for small data).
        hidden_dim: width of the hidden layers (DINO 2048).
        bottleneck_dim: width of the normalised bottleneck (DINO 256).
        n_layers: Linear layers before the bottleneck (>= 1; DINO 3). 1 maps in_dim straight to bottleneck_dim.
        use_bn: BatchNorm1d after each hidden Linear (DINO default off for ViTs).
        norm_last_layer: fix every prototype's weight norm to 1 (the weight-norm magnitude ``g`` is frozen at 1;
            DINO's choice for ViT-S stability). False lets ``g`` train.
        mlp_bias: biases in the MLP Linears.

    Shapes: [..., in_dim] -> [..., out_dim] (a class token [B, D] or patch tokens [B, N, D]).

    The last layer is ``weight_norm(Linear(bottleneck_dim, out_dim, bias=False))`` from
    ``torch.nn.utils.parametrizations``: its weight row k is ``g_k * v_k / ||v_k||``. DINO freezes it during
    the first epoch: call :meth:`cancel_last_layer_grads` after backward (before the optimiser step) while
    frozen. That drops the gradients (``grad = None``) so that the optimiser skips these parameters entirely; a
    zero gradient would still let AdamW apply weight decay and its running moments.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 n_layers: int = 3, use_bn: bool = False, norm_last_layer: bool = True,
                 mlp_bias: bool = True) -> None:
        super().__init__()
        _check_dim("in_dim", in_dim, 1)
        _check_dim("out_dim (K prototypes)", out_dim, 2)
        _check_dim("hidden_dim", hidden_dim, 1)
        _check_dim("bottleneck_dim", bottleneck_dim, 1)
        _check_dim("n_layers", n_layers, 1)
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(n_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim, bias=mlp_bias))
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim, bias=mlp_bias))
        self.mlp = nn.Sequential(*layers)
        self.mlp.apply(self._init_weights)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False), dim=0)
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)
        self.last_layer.parametrizations.weight.original0.requires_grad_(not norm_last_layer)
        self.out_dim, self.bottleneck_dim = out_dim, bottleneck_dim
        self.use_bn, self.norm_last_layer = use_bn, norm_last_layer

    @property
    def in_dim(self) -> int:
        """Input features D: read from the first Linear, so a width-grown head (vispre.growth) reports its width."""
        return self.mlp[0].in_features

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def bottleneck(self, x: Tensor) -> Tensor:
        """The L2-normalised bottleneck features: [..., in_dim] -> [..., bottleneck_dim], unit norm."""
        if x.shape[-1] != self.in_dim:
            raise VispreError(f"DINOHead: expected inputs [..., {self.in_dim}], got {tuple(x.shape)}")
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_dim) if self.use_bn else x  # BatchNorm1d needs [N, C]
        z = self.mlp(flat)
        z = z.reshape(*lead, self.bottleneck_dim) if self.use_bn else z
        return F.normalize(z, dim=-1, p=2, eps=1e-6 if z.dtype == torch.float16 else 1e-12)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(self.bottleneck(x))

    def last_layer_parameters(self) -> Iterator[nn.Parameter]:
        """The trainable parameters of the prototype layer (``v``, and ``g`` unless the norm is fixed)."""
        return (p for p in self.last_layer.parameters() if p.requires_grad)

    def cancel_last_layer_grads(self) -> None:
        """Drop the prototype layer's gradients (set to None) so the next optimiser step leaves it unchanged.

        DINO's first-epoch freeze: call it after backward and before ``optimizer.step()`` while the last layer
        is frozen (e.g. from ``on_before_optimizer_step``). Safe under DDP (the gradients are dropped after the
        all-reduce), unlike toggling ``requires_grad`` after the DDP wrapper is built.
        """
        for p in self.last_layer.parameters():
            p.grad = None


__all__ = ["DINOHead"]
