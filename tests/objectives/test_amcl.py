"""AMCL on SimCLR / MoCo v3 / Barlow Twins = the base objective with a MultiProjectionHead and an AMCL loss: the
reduction to the base with one head and a fixed temperature, per-head logs, no throw-away heads, the registry
factories' forms, and the shipped configs (stable by default, paper one key away, gradient clipping 1.0)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import CONFIGS, tiny_vit
from vispre.heads import MultiProjectionHead, ProjectionMLP
from vispre.losses import AMCLBarlowTwinsLoss, AMCLInfoNCELoss, AMCLNTXentLoss, PairTemperature
from vispre.objectives import OBJECTIVES, BarlowTwins, MoCoV3, SimCLR

PROJ = dict(hidden_dim=16, out_dim=8)
AMCL_CONFIGS = sorted((CONFIGS / "amcl").glob("*.yaml"))


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
    (SimCLR, dict(num_layers=2), AMCLNTXentLoss),
    (MoCoV3, dict(num_layers=3, last_batch_norm=True), AMCLInfoNCELoss),
    (BarlowTwins, dict(num_layers=3), AMCLBarlowTwinsLoss),
])
def test_stable_amcl_with_one_head_and_fixed_temperature_is_its_base(cls, layers, loss) -> None:
    base = cls(tiny_vit(), projector=partial(ProjectionMLP, **PROJ, **layers))
    amcl = cls(tiny_vit(), projector=partial(MultiProjectionHead, num_heads=1, **PROJ, **layers),
               loss=partial(loss, form="stable", adaptive_temperature=False, beta=0.0))
    copy_into_single_head(base, amcl)
    batch = two_view_batch()
    want, got = base.loss_terms(batch)["loss"], amcl.loss_terms(batch)
    torch.testing.assert_close(got["loss"], want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got["loss"], got["loss_head0"])


@pytest.mark.parametrize("form", ["paper", "stable"])
def test_amcl_logs_per_head_losses_and_temperature_statistics(form: str) -> None:
    module = SimCLR(tiny_vit(), projector=partial(MultiProjectionHead, num_heads=3, **PROJ),
                    loss=partial(AMCLNTXentLoss, form=form, tau_hidden_dim=8, tau_min=0.05, tau_max=0.5))
    terms = module.loss_terms(two_view_batch(6))
    stats = {f"{k}_head{c}" for c in range(3) for k in ("loss", "tau_mean", "tau_p05", "tau_p95", "tau_at_bound")}
    assert stats | {"tau_mean", "tau_at_bound"} <= set(terms)
    torch.testing.assert_close(terms["loss"], sum(terms[f"loss_head{c}"] for c in range(3)))
    for key in ("tau_mean", "tau_p05_head1", "tau_p95_head2"):
        assert 0.05 <= terms[key].item() <= 0.5
    if form == "stable":  # the network starts at T_base = 0.1 for every pair
        assert terms["tau_p05_head0"].item() == pytest.approx(0.1, rel=1e-5)
        assert terms["tau_p95_head0"].item() == pytest.approx(0.1, rel=1e-5)


def test_amcl_objectives_hold_only_their_own_heads_and_one_temperature_network() -> None:
    module = BarlowTwins(tiny_vit(), projector=partial(MultiProjectionHead, num_heads=2, **PROJ, num_layers=3),
                         loss=partial(AMCLBarlowTwinsLoss, tau_hidden_dim=4))
    assert {n.split(".")[0] for n, _ in module.named_parameters()} == {"backbone", "projector", "loss"}
    assert all(".heads." in n for n, _ in module.projector.named_parameters(prefix="projector"))
    phi = (8 * 4 + 4) + (4 * 8 + 8)  # Linear(8, 4) + Linear(4, 8), shared by both heads
    expected = sum(p.numel() for p in module.backbone.parameters()) + sum(
        p.numel() for p in module.projector.parameters()) + phi
    assert sum(p.numel() for p in module.parameters()) == expected


def test_registry_factories_take_the_form_and_accept_overrides() -> None:
    simclr = OBJECTIVES["amcl_simclr"](tiny_vit())
    assert isinstance(simclr, SimCLR) and isinstance(simclr.projector, MultiProjectionHead)
    assert (len(simclr.projector), simclr.projector.hidden_dim, simclr.projector.out_dim) == (3, 2048, 128)
    assert isinstance(simclr.loss, AMCLNTXentLoss) and simclr.loss.form == "stable" and simclr.loss.beta == 0.1
    assert simclr.loss.kappa == pytest.approx(10.0)  # 1/T with NT-Xent's T = 0.1
    paper = OBJECTIVES["amcl_simclr"](tiny_vit(), form="paper", projector=partial(MultiProjectionHead, **PROJ))
    assert paper.loss.form == "paper" and paper.loss.beta == 1e-4 and paper.loss.negatives == 1
    moco = OBJECTIVES["amcl_moco_v3"](tiny_vit(), form="paper",
                                      projector=partial(MultiProjectionHead, num_heads=2, **PROJ))
    assert isinstance(moco, MoCoV3) and isinstance(moco.loss, AMCLInfoNCELoss) and len(moco.predictor) == 2
    assert moco.loss.form == "paper" and isinstance(moco.loss.temperature_net, PairTemperature)
    bt = OBJECTIVES["amcl_barlow_twins"](tiny_vit(), form="paper", projector=partial(MultiProjectionHead, **PROJ))
    assert isinstance(bt, BarlowTwins) and bt.loss.beta == 1e-6 and bt.loss.temperature_net.dim == 8
    with pytest.raises(ValueError, match=r"amcl_simclr.form must be one of \('paper', 'stable'\), got 'hardest'"):
        OBJECTIVES["amcl_simclr"](tiny_vit(), form="hardest")


@pytest.mark.parametrize("config", AMCL_CONFIGS, ids=[p.name for p in AMCL_CONFIGS])
def test_shipped_configs_are_stable_with_clipping_and_paper_is_one_key_away(config: Path) -> None:
    from vispre.commands.config import build_from_config

    raw = yaml.safe_load(config.read_text())
    assert raw["trainer"]["gradient_clip_val"] == 1.0
    loss_args = raw["model"]["init_args"]["loss"]["init_args"]
    assert loss_args["form"] == "stable" and not {"beta", "kappa"} & set(loss_args)  # they follow the form
    small = ["--model.init_args.projector.init_args.hidden_dim=16", "--model.init_args.projector.init_args.out_dim=8"]
    paper = build_from_config([config], [*small, "--model.init_args.loss.init_args.form=paper"]).model.loss
    loss_class = {c.__name__: c for c in (AMCLNTXentLoss, AMCLInfoNCELoss, AMCLBarlowTwinsLoss)}[
        raw["model"]["init_args"]["loss"]["class_path"].rsplit(".", 1)[1]]
    stable = loss_class(3, 8, **loss_args)  # the contract test (tests/commands/test_config.py) builds it in full
    assert (stable.form, paper.form, type(paper)) == ("stable", "paper", loss_class)
    bt = "barlow" in config.name
    assert paper.beta == (1e-6 if bt else 1e-4) and stable.beta == (1.0 if bt else 0.1)
    assert paper.kappa is None and stable.kappa == pytest.approx(1 / stable.temperature)  # None: d'/2
    assert paper.temperature_net.offset.item() == 0.0  # the authors' network, default init
