"""AMCL on SimCLR / MoCo v3 / Barlow Twins = the base objective with a MultiProjectionHead and an AMCL loss:
exact reduction to the base with one head and a fixed temperature, per-head logs, no throw-away heads, and
the registry factories' paper defaults."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from tests.helpers import tiny_vit
from vispre.heads import MultiProjectionHead, ProjectionMLP
from vispre.losses import AMCLBarlowTwinsLoss, AMCLInfoNCELoss, AMCLNTXentLoss
from vispre.objectives import OBJECTIVES, BarlowTwins, MoCoV3, SimCLR

PROJ = dict(hidden_dim=16, out_dim=8)


def two_view_batch(n: int = 8) -> dict:
    return {"views": [torch.randn(n, 3, 32, 32), torch.randn(n, 3, 32, 32)]}


def copy_into_single_head(base: torch.nn.Module, amcl: torch.nn.Module) -> None:
    state = {}
    for key, value in base.state_dict().items():
        for part in ("projector.", "predictor."):
            if key.startswith(part) or key.startswith("momentum_" + part):
                key = key.replace(part + "net", part + "heads.0.net", 1)
        state[key] = value
    amcl.load_state_dict(state)


@pytest.mark.parametrize("cls,layers,loss", [
    (SimCLR, dict(num_layers=2), partial(AMCLNTXentLoss, form="logsumexp")),
    (MoCoV3, dict(num_layers=3, last_batch_norm=True), partial(AMCLInfoNCELoss, form="logsumexp")),
    (BarlowTwins, dict(num_layers=3), AMCLBarlowTwinsLoss),
])
def test_amcl_with_one_head_and_fixed_temperature_is_exactly_its_base(cls, layers, loss) -> None:
    base = cls(tiny_vit(), projector=partial(ProjectionMLP, **PROJ, **layers))
    amcl = cls(tiny_vit(), projector=partial(MultiProjectionHead, num_heads=1, **PROJ, **layers),
               loss=partial(loss, adaptive_temperature=False))
    copy_into_single_head(base, amcl)
    batch = two_view_batch()
    want, got = base.loss_terms(batch)["loss"], amcl.loss_terms(batch)
    assert torch.equal(got["loss"], want)
    assert torch.equal(got["loss"], got["loss_head0"])


def test_amcl_logs_per_head_losses_and_temperatures_in_bounds() -> None:
    module = SimCLR(tiny_vit(), projector=partial(MultiProjectionHead, num_heads=3, **PROJ),
                    loss=partial(AMCLNTXentLoss, tau_hidden_dim=8, tau_min=0.05, tau_max=0.5))
    terms = module.loss_terms(two_view_batch(6))
    assert {f"loss_head{c}" for c in range(3)} | {"tau_pos", "tau_neg"} <= set(terms)
    assert torch.allclose(terms["loss"], sum(terms[f"loss_head{c}"] for c in range(3)))
    for key in ("tau_pos", "tau_neg", "tau_pos_head1"):
        assert 0.05 <= terms[key].item() <= 0.5


def test_amcl_objectives_hold_only_their_own_heads() -> None:
    module = BarlowTwins(tiny_vit(), projector=partial(MultiProjectionHead, num_heads=2, **PROJ, num_layers=3),
                         loss=AMCLBarlowTwinsLoss)
    heads = {n.split(".")[0] for n, _ in module.named_parameters()}
    assert heads == {"backbone", "projector", "loss"}
    assert all(".heads." in n for n, _ in module.projector.named_parameters(prefix="projector"))
    expected = sum(p.numel() for p in module.backbone.parameters()) + sum(
        p.numel() for p in module.projector.parameters()) + 2 * 2 * 8  # two logit vectors [8] per head
    assert sum(p.numel() for p in module.parameters()) == expected


def test_registry_factories_give_the_paper_defaults_and_accept_overrides() -> None:
    simclr = OBJECTIVES["amcl_simclr"](tiny_vit())
    assert isinstance(simclr, SimCLR) and isinstance(simclr.projector, MultiProjectionHead)
    assert (len(simclr.projector), simclr.projector.hidden_dim, simclr.projector.out_dim) == (3, 2048, 128)
    assert isinstance(simclr.loss, AMCLNTXentLoss) and simclr.loss.form == "hardest" and simclr.loss.beta == 0.1
    moco = OBJECTIVES["amcl_moco_v3"](tiny_vit(), projector=partial(MultiProjectionHead, num_heads=2, **PROJ))
    assert isinstance(moco, MoCoV3) and isinstance(moco.loss, AMCLInfoNCELoss) and len(moco.predictor) == 2
    bt = OBJECTIVES["amcl_barlow_twins"](tiny_vit(), projector=partial(MultiProjectionHead, **PROJ))
    assert isinstance(bt, BarlowTwins) and len(bt.loss.temperatures) == 3
