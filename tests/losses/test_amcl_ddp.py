"""The AMCL losses under real DDP (2 gloo processes on CPU): both forms on SimCLR, MoCo v3 and Barlow Twins give
the same parameter gradients (encoder and shared temperature network) as one process over the concatenated
batch, to 1e-6 (negatives, top-k and cross-correlations span the global batch)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from tests.helpers import run_on_gloo_ranks
from vispre.losses import AMCLBarlowTwinsLoss, AMCLInfoNCELoss, AMCLNTXentLoss

WORLD, N, D_IN, D_OUT = 2, 4, 6, 5
CASES = [(form, kind) for form in ("paper", "stable") for kind in ("nt_xent", "info_nce", "barlow_twins")]


class Encoded(nn.Module):
    """An encoder and an AMCL loss as one module (so DDP averages the temperature network's gradients too)."""

    def __init__(self, form: str, kind: str) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.encoder = nn.Linear(D_IN, D_OUT).double()
        with torch.no_grad():
            for p in self.encoder.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
        torch.manual_seed(1)
        cls = {"nt_xent": AMCLNTXentLoss, "info_nce": AMCLInfoNCELoss, "barlow_twins": AMCLBarlowTwinsLoss}[kind]
        extra = {"negatives": 3} if form == "paper" and kind != "barlow_twins" else {}
        self.loss = cls(2, D_OUT, form=form, tau_hidden_dim=4, tau_min=0.05, **extra).double()
        self.kind = kind
        with torch.no_grad():  # move the stable network off its constant init so its gradients are non-trivial
            for p in self.loss.temperature_net.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float64))

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        z1, z2 = self.encoder(x1), self.encoder(x2)
        heads1, heads2 = [z1, 2 * z1 + 1], [z2, z2 - 1]
        if self.kind == "info_nce":
            return self.loss(heads1, heads2, heads1, heads2)["loss"]
        return self.loss(heads1, heads2)["loss"]


def inputs() -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(2)
    return (torch.randn(WORLD * N, D_IN, generator=gen, dtype=torch.float64),
            torch.randn(WORLD * N, D_IN, generator=gen, dtype=torch.float64))


def rank_grads(rank: int) -> dict[str, list[Tensor]]:
    """One rank's gradients for every case (inside a gloo group: tests.helpers.run_on_gloo_ranks)."""
    x1, x2 = inputs()
    local = slice(rank * N, (rank + 1) * N)
    grads = {}
    for form, kind in CASES:
        model = DistributedDataParallel(Encoded(form, kind))
        model(x1[local], x2[local]).backward()
        grads[f"{form}-{kind}"] = [p.grad.clone() for p in model.module.parameters()]
    return grads


@pytest.fixture(scope="module")
def ddp_grads(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return run_on_gloo_ranks(rank_grads, tmp_path_factory.mktemp("amcl_ddp"), WORLD)


@pytest.mark.parametrize("form,kind", CASES)
def test_ddp_gradients_equal_single_process_gradients(ddp_grads: list[dict], form: str, kind: str) -> None:
    model = Encoded(form, kind)
    model(*inputs()).backward()  # one process, whole batch, no process group
    want = [p.grad for p in model.parameters()]
    assert any(bool(g.any()) for g in want[2:])  # the temperature network gets a gradient
    for rank in range(WORLD):
        for got, ref in zip(ddp_grads[rank][f"{form}-{kind}"], want, strict=True):
            assert torch.allclose(got, ref, atol=1e-6, rtol=0), (form, kind, rank, (got - ref).abs().max())
