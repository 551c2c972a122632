"""Projection / predictor MLPs for joint-embedding objectives, and C independent heads (AMCL).

SimCLR (Chen et al., arXiv 2002.05709): Linear-BN-ReLU-Linear projector. MoCo v3 (Chen, Xie, He, arXiv
2104.02057): 3-layer projector and 2-layer predictor with BN, last BN without affine. Barlow Twins (Zbontar
et al., arXiv 2103.03230): 3-layer 8192-wide projector. AMCL (Wang et al., arXiv 2310.05615): C heads.

Every head takes the width of what it reads as its first argument (``in_dim``): an objective calls the
head factory of its YAML (``class_path`` + ``init_args`` without ``in_dim``) with the backbone's width, so
no config repeats it. Heads expose ``out_dim`` (and ``hidden_dim``), which the objective uses to size what
reads the head (a predictor, a loss with learned temperatures).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from vispre.errors import VispreError

HeadFactory = Callable[[int], nn.Module]
"""Builds a head from the width it reads: ``factory(in_dim) -> nn.Module`` (in YAML: class_path + init_args)."""


class ProjectionMLP(nn.Module):
    """``num_layers`` Linear layers, with BatchNorm1d + ReLU between them.

    Args:
        in_dim: input features D (given by the objective). hidden_dim: width of the hidden layers.
        out_dim: output features. num_layers: number of Linear layers (>= 1).
        batch_norm: BatchNorm1d after every hidden Linear.
        last_batch_norm: non-affine BatchNorm1d on the output (MoCo v3 projector).

    Shapes: [B, in_dim] -> [B, out_dim].
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, num_layers: int = 2,
                 batch_norm: bool = True, last_batch_norm: bool = False) -> None:
        super().__init__()
        if num_layers < 1:
            raise VispreError(f"ProjectionMLP.num_layers must be >= 1, got {num_layers}")
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
        self.hidden_dim, self.out_dim = hidden_dim, out_dim

    def forward(self, x: Tensor) -> Tensor:
        """[B, in_dim] -> [B, out_dim]."""
        return self.net(x)


class MultiProjectionHead(nn.Module):
    """C independent :class:`ProjectionMLP` heads (AMCL's multiple projection heads).

    Given one tensor every head reads it (a projector on the backbone feature); given a list of C tensors
    head c reads entry c (a predictor on a multi-head projector's outputs, as in AMCL-MoCo v3).

    Args:
        in_dim: input features D (given by the objective). num_heads: C >= 1 (paper 3).
        hidden_dim, out_dim, num_layers, batch_norm, last_batch_norm: those of :class:`ProjectionMLP`,
            shared by every head.

    Shapes: [B, in_dim] (or C of them) -> list of C tensors [B, out_dim].
    """

    def __init__(self, in_dim: int, num_heads: int = 3, hidden_dim: int = 2048, out_dim: int = 128,
                 num_layers: int = 2, batch_norm: bool = True, last_batch_norm: bool = False) -> None:
        super().__init__()
        if num_heads < 1:
            raise VispreError(f"MultiProjectionHead.num_heads must be >= 1, got {num_heads}")
        self.heads = nn.ModuleList(
            ProjectionMLP(in_dim, hidden_dim=hidden_dim, out_dim=out_dim, num_layers=num_layers,
                          batch_norm=batch_norm, last_batch_norm=last_batch_norm) for _ in range(num_heads))
        self.num_heads, self.hidden_dim, self.out_dim = num_heads, hidden_dim, out_dim

    def __len__(self) -> int:
        return len(self.heads)

    def forward(self, x: Tensor | Sequence[Tensor]) -> list[Tensor]:
        """[B, in_dim] (shared by all heads) or C tensors [B, in_dim] (one per head) -> C x [B, out_dim]."""
        if isinstance(x, Tensor):
            return [head(x) for head in self.heads]
        if len(x) != len(self.heads):
            raise VispreError(f"MultiProjectionHead has {len(self.heads)} heads but got {len(x)} inputs")
        return [head(part) for head, part in zip(self.heads, x)]


def num_outputs(head: nn.Module) -> int:
    """How many embeddings ``head`` returns: its ``num_heads`` (a multi-head), else 1."""
    return int(getattr(head, "num_heads", 1))


__all__ = ["HeadFactory", "MultiProjectionHead", "ProjectionMLP", "num_outputs"]
