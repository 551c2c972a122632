"""Barlow Twins pretraining (Zbontar et al., ICML 2021, arXiv 2103.03230) on a timm ViT."""

from __future__ import annotations

from functools import partial

from vispre.heads.projection import ProjectionMLP
from vispre.losses.barlow_twins import BarlowTwinsLoss
from vispre.objectives.joint_embedding import JointEmbedding


class BarlowTwins(JointEmbedding):
    """Cross-correlation of batch-standardised projections of two views driven to the identity.

    Args (see :class:`JointEmbedding`): backbone; projector (default the paper's ProjectionMLP,
    8192-8192-8192, 3 layers); loss (default BarlowTwinsLoss, lambda = 5e-3, global batch under DDP; AMCL:
    AMCLBarlowTwinsLoss with a MultiProjectionHead); optimizer.
    """

    default_projector = partial(ProjectionMLP, hidden_dim=8192, out_dim=8192, num_layers=3)
    default_loss = BarlowTwinsLoss


__all__ = ["BarlowTwins"]
