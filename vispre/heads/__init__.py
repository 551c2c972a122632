"""Heads on top of a backbone (MAE decoder, projection MLPs, C projection heads, DINO head), built from YAML by
``class_path`` and injected into the objectives, which pass them the backbone's width."""

from vispre.heads.dino_head import DINOHead
from vispre.heads.mae_decoder import MAEDecoder
from vispre.heads.projection import HeadFactory, MultiProjectionHead, ProjectionMLP, num_outputs

__all__ = ["DINOHead", "HeadFactory", "MAEDecoder", "MultiProjectionHead", "ProjectionMLP", "num_outputs"]
