"""Heads on top of a backbone: MAE decoder, projection MLPs."""

from vispre.heads.mae_decoder import MAEDecoder

__all__ = ["MAEDecoder"]
