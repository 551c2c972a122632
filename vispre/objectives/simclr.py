"""SimCLR pretraining (Chen, Kornblith, Norouzi, Hinton, ICML 2020, arXiv 2002.05709) on a timm ViT."""

from __future__ import annotations

from functools import partial

from vispre.heads.projection import ProjectionMLP
from vispre.losses.info_nce import NTXentLoss
from vispre.objectives.joint_embedding import JointEmbedding


class SimCLR(JointEmbedding):
    """NT-Xent between the projections of two augmented views, negatives over the global batch under DDP.

    Args (see :class:`JointEmbedding`): backbone; projector (default the paper's ProjectionMLP, 2048 hidden
    -> 128, 2 layers); loss (default NTXentLoss, T = 0.1; AMCL: AMCLNTXentLoss with a MultiProjectionHead);
    optimizer.
    """

    default_projector = partial(ProjectionMLP, hidden_dim=2048, out_dim=128, num_layers=2)
    default_loss = NTXentLoss


__all__ = ["SimCLR"]
