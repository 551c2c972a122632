"""KoLeo regulariser: the Kozachenko-Leonenko differential-entropy estimate of L2-normalised features.

Sablayrolles et al., "Spreading vectors for similarity search", ICLR 2019 (arXiv 1806.03198); used on the
student's class tokens by DINOv2 (Oquab et al., TMLR 2024, arXiv 2304.07193, Sec. 4, weight 0.1).
Nearest neighbours are taken within the local batch, as in DINOv2's code: under DDP each rank computes its own
loss (no collective), by design.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vispre.errors import VispreError


def koleo_loss(x: Tensor, eps: float = 1e-8) -> Tensor:
    """``-mean_i log(min_{j != i} ||x_i - x_j|| + eps)`` on the L2-normalised rows of ``x``.

    The nearest neighbour of each row is found by the largest inner product (the diagonal excluded); the
    distance itself is then computed as the norm of the difference, which stays accurate (and has a finite
    gradient) for near-duplicate rows, where ``sqrt(2 - 2 cos)`` does not. Computed in float32, whatever the
    input dtype or an enclosing autocast.

    Args:
        x: [B, D] features, B >= 2 (normalised here).
        eps: added to each distance inside the log (> 0), bounding the loss of duplicated rows by -log(eps).

    Returns:
        Scalar float32 loss (lower = more spread out).
    """
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise VispreError(f"koleo_loss: x must be [B, D] with B >= 2 and D >= 1, got {tuple(x.shape)}")
    if not float(eps) > 0:
        raise VispreError(f"koleo_loss: eps must be > 0, got {eps}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        z = F.normalize(x.float(), p=2, dim=1, eps=eps)
        with torch.no_grad():
            dots = z @ z.t()
            dots.fill_diagonal_(float("-inf"))
            nearest = dots.argmax(dim=1)  # [B]
        distance = torch.linalg.vector_norm(z - z[nearest], dim=1)  # [B]
        return -torch.log(distance + eps).mean()


__all__ = ["koleo_loss"]
