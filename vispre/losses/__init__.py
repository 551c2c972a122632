"""Pure loss functions and thin module wrappers."""

from vispre.losses.masked_mse import MaskedMSELoss, masked_mse_loss, normalize_patches

__all__ = ["MaskedMSELoss", "masked_mse_loss", "normalize_patches"]
