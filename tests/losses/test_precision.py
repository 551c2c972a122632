"""Every contrastive / redundancy loss runs in fp32 under a bf16 autocast (vispre.losses.precision)."""

from __future__ import annotations

import pytest
import torch

from vispre.losses import BarlowTwinsLoss, InfoNCELoss, NTXentLoss
from vispre.losses.precision import at_least_fp32, to_fp32


@pytest.mark.parametrize("make,views", [(lambda: NTXentLoss(temperature=0.1, gather=False), 2),
                                        (lambda: InfoNCELoss(temperature=0.2, gather=False), 4),
                                        (lambda: BarlowTwinsLoss(gather=False), 2)],
                         ids=["nt_xent", "info_nce", "barlow_twins"])
def test_loss_under_bf16_autocast_is_the_fp32_loss_of_the_bf16_inputs(make, views: int) -> None:
    """bf16 projections under autocast give exactly the fp32 computation on those (rounded) projections, and
    the loss is float32: no bf16 matmul inside."""
    torch.manual_seed(0)
    zs = [torch.randn(64, 32).bfloat16() for _ in range(views)]
    loss = make()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(*zs)
    exact = loss(*(z.float() for z in zs))
    key = next(iter(exact))
    assert mixed[key].dtype == torch.float32
    torch.testing.assert_close(mixed[key], exact[key], rtol=1e-6, atol=1e-6)


def test_to_fp32_is_float32_and_a_no_op_on_float32() -> None:
    x = torch.ones(2)
    assert to_fp32(x) is x
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        assert to_fp32(torch.ones(2, dtype=dtype)).dtype == torch.float32


def test_at_least_fp32_keeps_float64() -> None:
    assert at_least_fp32(torch.ones(2, dtype=torch.bfloat16)).dtype == torch.float32
    assert at_least_fp32(torch.ones(2, dtype=torch.float64)).dtype == torch.float64
