"""Contract of every registry objective on a tiny ViT (forward/backward, every trainable parameter gets a
gradient, fast_dev_run on CPU), AMCL C=1 reduction at the objective level, MoCo EMA, MultiObjective,
the online probe, and the configs of the contrastive objectives."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.conftest import tiny_vit
from vispre.callbacks import OnlineLinearProbe
from vispre.data.synthetic import SyntheticDataModule
from vispre.objectives import (MAE, OBJECTIVES, AMCLBarlowTwins, AMCLMoCoV3, AMCLSimCLR, BarlowTwins, MoCoV3,
                               MultiObjective, SimCLR)
from vispre.objectives.moco_v3 import cosine_momentum

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(proj_hidden_dim=16, proj_dim=8)
MAE_SMALL = dict(decoder_dim=16, decoder_depth=1, decoder_num_heads=2)
FACTORIES = {
    "mae": partial(MAE, **MAE_SMALL),
    "simclr": partial(SimCLR, **SMALL),
    "moco_v3": partial(MoCoV3, **SMALL),
    "barlow_twins": partial(BarlowTwins, **SMALL),
    "amcl_simclr": partial(AMCLSimCLR, **SMALL, tau_hidden_dim=8),
    "amcl_moco_v3": partial(AMCLMoCoV3, **SMALL, tau_hidden_dim=8, form="logsumexp"),
    "amcl_barlow_twins": partial(AMCLBarlowTwins, **SMALL),
    "multi": lambda b: MultiObjective(b, [partial(MAE, **MAE_SMALL), partial(AMCLSimCLR, **SMALL)],
                                      weights=[1.0, 0.5], views=[[0], [0, 1]]),
}


def two_view_batch(n: int = 6) -> dict:
    return {"views": [torch.randn(n, 3, 32, 32), torch.randn(n, 3, 32, 32)], "label": torch.arange(n) % 3}


def test_every_registry_entry_has_a_contract_factory() -> None:
    assert set(OBJECTIVES) == set(FACTORIES)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_forward_backward_every_trainable_parameter_gets_a_gradient(name: str) -> None:
    module = FACTORIES[name](tiny_vit())
    assert isinstance(module, OBJECTIVES[name])
    terms = module.loss_terms(two_view_batch())
    assert torch.isfinite(terms["loss"])
    terms["loss"].backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing


@pytest.mark.parametrize("name", list(FACTORIES))
def test_fast_dev_run_on_cpu(name: str, tmp_path: Path) -> None:
    module = FACTORIES[name](tiny_vit())
    before = {n: p.detach().clone() for n, p in module.backbone.named_parameters() if p.requires_grad}
    data = SyntheticDataModule(img_size=32, in_chans=3, num_samples=8, batch_size=4, num_views=2)
    trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    assert any(not torch.equal(p, before[n]) for n, p in module.backbone.named_parameters() if p.requires_grad)


def copy_into_single_head(base: torch.nn.Module, amcl: torch.nn.Module) -> None:
    state = {}
    for key, value in base.state_dict().items():
        for part in ("projector.", "predictor."):
            if key.startswith(part) or key.startswith("momentum_" + part):
                key = key.replace(part + "net", part + "heads.0.net", 1)
        state[key] = value
    amcl.load_state_dict(state)


@pytest.mark.parametrize("base_cls,amcl_cls,extra", [
    (SimCLR, AMCLSimCLR, dict(form="logsumexp")),
    (MoCoV3, AMCLMoCoV3, dict(form="logsumexp")),
    (BarlowTwins, AMCLBarlowTwins, {}),
])
def test_amcl_with_one_head_and_fixed_temperature_is_exactly_its_base(base_cls, amcl_cls, extra) -> None:
    base = base_cls(tiny_vit(), **SMALL)
    amcl = amcl_cls(tiny_vit(), num_heads=1, adaptive_temperature=False, **SMALL, **extra)
    copy_into_single_head(base, amcl)
    batch = two_view_batch(8)
    want, got = base.loss_terms(batch)["loss"], amcl.loss_terms(batch)["loss"]
    assert torch.equal(got, want)
    assert got.item() == amcl.loss_terms(batch)["loss_head0"].item()


def test_amcl_logs_per_head_losses_and_temperatures_in_bounds() -> None:
    module = AMCLSimCLR(tiny_vit(), num_heads=3, **SMALL, tau_hidden_dim=8, tau_min=0.05, tau_max=0.5)
    terms = module.loss_terms(two_view_batch())
    assert {f"loss_head{c}" for c in range(3)} | {"tau_pos", "tau_neg"} <= set(terms)
    assert torch.allclose(terms["loss"], sum(terms[f"loss_head{c}"] for c in range(3)))
    for key in ("tau_pos", "tau_neg", "tau_pos_head1"):
        assert 0.05 <= terms[key].item() <= 0.5


def test_moco_momentum_schedule_and_ema_update() -> None:
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert cosine_momentum(100, 100, 0.99) == pytest.approx(1.0)
    module = MoCoV3(tiny_vit(), **SMALL, freeze_patch_embed=True)
    assert not module.backbone.vit.patch_embed.proj.weight.requires_grad
    online = module.backbone.vit.blocks[0].attn.qkv.weight
    key = module.momentum_backbone.vit.blocks[0].attn.qkv.weight
    with torch.no_grad():
        online.add_(1.0)
    old_key = key.detach().clone()
    module.update_momentum(0, 100)  # m = 0.99
    assert torch.allclose(key, 0.99 * old_key + 0.01 * online, atol=1e-6)
    assert not key.requires_grad


def test_multi_objective_shares_backbone_weights_sum_and_logs_each() -> None:
    backbone = tiny_vit()
    module = MultiObjective(backbone, [partial(MAE, **MAE_SMALL), partial(SimCLR, **SMALL)],
                            weights=[1.0, 0.5], views=[[0], [0, 1]], names=["mae", "simclr"])
    assert all(sub.backbone is backbone for sub in module.objectives)
    torch.manual_seed(1)
    terms = module.loss_terms(two_view_batch())
    assert torch.allclose(terms["loss"], terms["mae/loss"] + 0.5 * terms["simclr/loss"])
    with pytest.raises(ValueError, match=r"MultiObjective.weights has 1 entries, expected one per objective \(2\)"):
        MultiObjective(tiny_vit(), [partial(MAE, **MAE_SMALL), partial(SimCLR, **SMALL)], weights=[1.0])
    with pytest.raises(ValueError, match=r"MultiObjective.views\[1\] = \[0, 2\] but batches have 2 views"):
        MultiObjective(tiny_vit(), [partial(MAE, **MAE_SMALL), partial(SimCLR, **SMALL)],
                       views=[[0], [0, 2]]).loss_terms(two_view_batch())


def test_one_view_batch_gets_a_clear_error() -> None:
    with pytest.raises(ValueError, match="SimCLR needs batches with at least 2 views .* got 1"):
        SimCLR(tiny_vit(), **SMALL).loss_terms({"views": [torch.randn(4, 3, 32, 32)]})


def test_online_probe_learns_without_touching_the_backbone() -> None:
    backbone = tiny_vit()
    module = SimCLR(backbone, **SMALL)
    probe = OnlineLinearProbe(num_classes=2, lr=0.05, holdout_fraction=0.25)
    probe.setup(None, module, "fit")  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(2, backbone.embed_dim, generator=gen) * 3
    state = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    for _ in range(60):
        labels = torch.randint(0, 2, (32,), generator=gen)
        feats = centers[labels] + torch.randn(32, backbone.embed_dim, generator=gen)
        loss, hits, count = probe.step(feats, labels)
    assert count == 8 and hits >= 7  # separable clusters: held-out top-1 near 1 after training
    assert all(torch.equal(p, state[n]) for n, p in backbone.named_parameters())
    assert all(p.grad is None for p in backbone.parameters())


def test_online_probe_logs_during_fit(tmp_path: Path) -> None:
    module = SimCLR(tiny_vit(), **SMALL)
    probe = OnlineLinearProbe(num_classes=10)
    data = SyntheticDataModule(img_size=32, in_chans=3, num_samples=8, batch_size=4, num_views=2)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[probe],
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    assert {"probe/train_loss", "probe/holdout_top1"} <= set(trainer.callback_metrics)
    assert 0.0 <= float(trainer.callback_metrics["probe/holdout_top1"]) <= 1.0


# The Fashion-MNIST configs build with their real data module here; the ImageNet recipes (GPU trainer, shards
# that do not exist on this machine) are built with synthetic data in tests/test_cli.py.
OUR_CONFIGS = sorted(p for d in ("simclr", "moco_v3", "barlow_twins", "amcl", "multi")
                     for p in (ROOT / "configs" / d).glob("*fashion_mnist.yaml"))


@pytest.mark.parametrize("config", OUR_CONFIGS, ids=[p.stem for p in OUR_CONFIGS])
def test_config_parses_and_builds(config: Path, tmp_path: Path) -> None:
    from vispre.cli import VispreCLI
    from vispre.objectives.base import PretrainObjective

    cli = VispreCLI(PretrainObjective, subclass_mode_model=True, subclass_mode_data=True, run=False,
                    auto_configure_optimizers=False,
                    args=["--config", str(config), "--trainer.logger=false", f"--runs_dir={tmp_path}"])
    assert isinstance(cli.model, PretrainObjective)
    assert cli.datamodule.batch_size >= 1
