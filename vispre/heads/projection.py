"""Projection / predictor MLPs for joint-embedding objectives and MultiHead (C independent heads).

SimCLR (Chen et al., arXiv 2002.05709): Linear-BN-ReLU-Linear projector. MoCo v3 (Chen, Xie, He, arXiv
2104.02057): 3-layer projector and 2-layer predictor with BN, last BN without affine. Barlow Twins (Zbontar
et al., arXiv 2103.03230): 3-layer 8192-wide projector. AMCL (Wang et al., arXiv 2310.05615): C heads.
"""

from __future__ import annotations

from torch import Tensor, nn


class ProjectionMLP(nn.Module):
    """``num_layers`` Linear layers, with BatchNorm1d + ReLU between them.

    Args:
        in_dim: input features D. hidden_dim: width of the hidden layers. out_dim: output features.
        num_layers: number of Linear layers (>= 1).
        batch_norm: BatchNorm1d after every hidden Linear.
        last_batch_norm: non-affine BatchNorm1d on the output (MoCo v3 projector/predictor).

    Shapes: [B, in_dim] -> [B, out_dim].
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, num_layers: int = 2,
                 batch_norm: bool = True, last_batch_norm: bool = False) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim, bias=not last_batch_norm))
        if last_batch_norm:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        self.net = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MultiHead(nn.Module):
    """C independent ProjectionMLPs on the same input (AMCL's multiple projection heads).

    Args:
        num_heads: C >= 1. Remaining arguments: those of :class:`ProjectionMLP`, shared by every head.

    Shapes: [B, in_dim] -> list of C tensors [B, out_dim].
    """

    def __init__(self, num_heads: int, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128,
                 num_layers: int = 2, batch_norm: bool = True, last_batch_norm: bool = False) -> None:
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        self.heads = nn.ModuleList(ProjectionMLP(in_dim, hidden_dim, out_dim, num_layers, batch_norm,
                                                 last_batch_norm) for _ in range(num_heads))
        self.out_dim = out_dim

    def __len__(self) -> int:
        return len(self.heads)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [head(x) for head in self.heads]


__all__ = ["MultiHead", "ProjectionMLP"]
