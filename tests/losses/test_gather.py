"""The differentiable gather under real DDP (2 gloo processes on CPU): parameter gradients equal those of
one process over the concatenated batch, to 1e-6, for NT-Xent, InfoNCE and Barlow Twins."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tests.helpers import run_on_gloo_ranks
from vispre.losses.barlow_twins import barlow_twins_loss
from vispre.losses.gather import gather_with_grad
from vispre.losses.info_nce import info_nce_loss, nt_xent_loss

WORLD, N, D_IN, D_OUT = 2, 4, 6, 5
LOSSES = {
    "nt_xent": lambda a, b: nt_xent_loss(a, b, 0.3),
    "info_nce": lambda a, b: info_nce_loss(a, b, 0.2),
    "barlow_twins": lambda a, b: barlow_twins_loss(a, b, 5e-3),
}


def data() -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    encoder = nn.Linear(D_IN, D_OUT).double()
    with torch.no_grad():
        encoder.weight.copy_(torch.randn(D_OUT, D_IN, generator=gen, dtype=torch.float64))
        encoder.bias.copy_(torch.randn(D_OUT, generator=gen, dtype=torch.float64))
    x1 = torch.randn(WORLD * N, D_IN, generator=gen, dtype=torch.float64)
    x2 = torch.randn(WORLD * N, D_IN, generator=gen, dtype=torch.float64)
    return encoder, x1, x2



def rank_grads(rank: int) -> dict[str, list]:
    """One rank's gradient per loss and the gather's order (inside a gloo group: run_on_gloo_ranks)."""
    encoder, x1, x2 = data()
    model = DistributedDataParallel(encoder)
    local = slice(rank * N, (rank + 1) * N)
    grads = {}
    for name, fn in LOSSES.items():
        model.zero_grad()
        fn(model(x1[local]), model(x2[local])).backward()
        grads[name] = [p.grad.clone() for p in model.parameters()]
    gathered = gather_with_grad(torch.full((N, 1), float(rank), dtype=torch.float64))
    grads["gather_order"] = [gathered.squeeze(1)]
    return grads


@pytest.fixture(scope="module")
def ddp_grads(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return run_on_gloo_ranks(rank_grads, tmp_path_factory.mktemp("ddp"), WORLD)


@pytest.mark.parametrize("name", list(LOSSES))
def test_ddp_gradient_equals_single_process_gradient(ddp_grads: list[dict], name: str) -> None:
    encoder, x1, x2 = data()
    LOSSES[name](encoder(x1), encoder(x2)).backward()  # one process, whole batch, no process group
    for rank in range(WORLD):
        for got, want in zip(ddp_grads[rank][name], [p.grad for p in encoder.parameters()], strict=True):
            assert torch.allclose(got, want, atol=1e-6, rtol=0), (name, rank, (got - want).abs().max())


def test_gather_concatenates_in_rank_order(ddp_grads: list[dict]) -> None:
    expected = torch.tensor([0.0] * N + [1.0] * N, dtype=torch.float64)
    for rank in range(WORLD):
        assert torch.equal(ddp_grads[rank]["gather_order"][0], expected)


def test_gather_is_identity_without_process_group() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
