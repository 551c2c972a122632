"""vispre: self-supervised vision pretraining on timm ViTs."""

__version__ = "0.1.0"
