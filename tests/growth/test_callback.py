"""GrowthCallback inside a Lightning fit run, resume from a post-growth checkpoint, and the objective's regrowth."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from tests.helpers import CONFIGS, CPU_TRAINER, build_run, cpu_trainer, synthetic_data_args, tiny_mae
from vispre.backbones import describe_vit
from vispre.errors import VispreError
from vispre.growth import GrownRecipe, GrowthCallback, GrowthSpec, grow_objective, growth_steps
from vispre.objectives.mae import MAE
from vispre.optim import AdamWRecipe


class _Data(L.LightningDataModule):
    batch_size = 4

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        items = [{"views": [torch.randn(3, 32, 32, generator=g)]} for _ in range(16)]
        return DataLoader(items, batch_size=self.batch_size)


def _fit(tmp_path, callback: GrowthCallback, ckpt: str | None = None, **trainer_args) -> tuple[L.Trainer, MAE]:
    mae = tiny_mae(optimizer=AdamWRecipe(base_lr=1e-3, warmup_fraction=0.3, fused=False))
    trainer = cpu_trainer(callbacks=[callback, *trainer_args.pop("callbacks", [])], default_root_dir=tmp_path,
                          **trainer_args)
    trainer.fit(mae, datamodule=_Data(), ckpt_path=ckpt)
    return trainer, mae


class _Recorder(L.Callback):
    """Records every group's lr after each optimizer step; saves a checkpoint at the end of epoch 0."""

    def __init__(self, path=None) -> None:
        self.lrs: dict[int, list[float]] = {}
        self.path = path

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self.lrs[trainer.global_step] = [g["lr"] for g in trainer.optimizers[0].param_groups]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.path is not None and trainer.current_epoch == 0:
            trainer.save_checkpoint(self.path)


@pytest.mark.parametrize("mode", ["exact", "reset"])
def test_fit_grows_mid_run_and_resumes(tmp_path, mode: str) -> None:
    cb = GrowthCallback(at_step=2, depth=3, embed_dim=64, optimizer_mode=mode)
    ckpt = tmp_path / "grown.ckpt"
    straight = _Recorder(ckpt)  # 2 epochs of 4 steps, checkpoint after epoch 0 (post-growth)
    trainer, mae = _fit(tmp_path, cb, max_epochs=2, callbacks=[straight])
    assert (len(mae.backbone.vit.blocks), mae.backbone.embed_dim, cb.grown_at) == (3, 64, 2)
    opt = trainer.optimizers[0]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in mae.parameters() if p.requires_grad}
    assert isinstance(mae.optimizer_recipe, GrownRecipe) and mae.optimizer_recipe.schedule.offset == 2
    assert (len(opt.param_groups) > 2) == (mode == "exact")  # exact: the 2 groups split by (a, b)
    assert len(opt.state) == sum(p.requires_grad for p in mae.parameters())  # moments in the new optimizer
    meta = torch.load(ckpt, weights_only=True)["vispre"]
    assert (meta["backbone"]["depth"], meta["backbone"]["embed_dim"], meta["backbone"]["num_heads"]) == (3, 64, 4)
    assert meta["growth"] == [{"step": 2, "from": describe_vit(tiny_mae().backbone.vit)}]

    cb2 = GrowthCallback(at_step=2, depth=3, embed_dim=64, optimizer_mode=mode)
    resumed = _Recorder()
    trainer2, mae2 = _fit(tmp_path, cb2, ckpt=str(ckpt), max_epochs=2, callbacks=[resumed])
    assert trainer2.global_step == 8 and mae2.backbone.embed_dim == 64 and cb2.grown_at == 2
    assert len(trainer2.optimizers[0].param_groups) == len(opt.param_groups)
    assert mae2.optimizer_recipe.scales == mae.optimizer_recipe.scales
    # the resumed run continues the uninterrupted run's schedule (warmup + cosine from the growth step)
    assert sorted(resumed.lrs) == [5, 6, 7, 8]
    assert len({lr for step in (5, 6, 7) for lr in resumed.lrs[step]}) > 1  # mid-cosine: lrs still change
    for step in (5, 6, 7, 8):
        assert resumed.lrs[step] == pytest.approx(straight.lrs[step], rel=1e-12)


def test_objective_regrows_to_a_grown_checkpoint_before_loading_it() -> None:
    small = tiny_mae().eval()
    big = copy.deepcopy(small)
    grow_objective(big, GrowthSpec(embed_dim=64, depth=3))
    with torch.no_grad():
        for p in big.parameters():
            p.add_(0.01 * torch.randn_like(p))  # distinct from anything the operators produce
    checkpoint = {"state_dict": big.state_dict()}
    big.on_save_checkpoint(checkpoint)
    checkpoint["vispre"]["growth"] = [{"step": 5, "from": describe_vit(small.backbone.vit)}]
    fresh = tiny_mae().eval()
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])  # strict: every key and shape matches
    x, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    assert torch.equal(fresh.forward_loss(x, noise)[0], big.forward_loss(x, noise)[0])
    assert fresh.backbone.vit.pos_embed.requires_grad is False  # the frozen sin-cos table stays frozen


def test_a_bigger_checkpoint_without_a_growth_record_is_refused() -> None:
    big = tiny_mae(backbone=None)
    grow_objective(big, GrowthSpec(depth=3))
    checkpoint = {"state_dict": big.state_dict()}
    big.on_save_checkpoint(checkpoint)
    with pytest.raises(VispreError, match=r"different backbone architecture \(depth: checkpoint 3 vs model 2\)"):
        tiny_mae().on_load_checkpoint(checkpoint)
    checkpoint["vispre"]["growth"] = [{"step": 1, "from": {**describe_vit(tiny_mae().backbone.vit), "depth": 1}}]
    with pytest.raises(VispreError, match=r"different backbone architecture \(depth: checkpoint 1 vs model 2\)"):
        tiny_mae().on_load_checkpoint(checkpoint)


def test_growth_steps_between_architectures() -> None:
    arch = describe_vit(tiny_mae().backbone.vit)  # dim 32, 2 heads, depth 2, mlp_ratio 4
    assert growth_steps(arch, arch) == []
    assert growth_steps(arch, {**arch, "embed_dim": 64, "num_heads": 4, "depth": 5}) == [
        GrowthSpec(depth=5, embed_dim=64)]
    assert growth_steps(arch, {**arch, "embed_dim": 64, "num_heads": 4, "mlp_ratio": 8.0}) == [
        GrowthSpec(depth=2, embed_dim=64), GrowthSpec(mlp_ratio=8.0)]
    for other in [{"depth": 1}, {"embed_dim": 48, "num_heads": 3}, {"embed_dim": 64, "num_heads": 2},
                  {"patch_size": 4}, {"mlp_ratio": 6.0}]:
        assert growth_steps(arch, {**arch, **other}) is None, other


def test_callback_rejects_bad_config() -> None:
    with pytest.raises(VispreError, match="give exactly one of at_step or at_fraction"):
        GrowthCallback(depth=4)
    with pytest.raises(VispreError, match="optimizer_mode must be one of"):
        GrowthCallback(at_step=1, depth=4, optimizer_mode="momentum")
    with pytest.raises(VispreError, match="nothing to grow"):
        GrowthCallback(at_step=1)


@pytest.mark.parametrize("config", sorted((CONFIGS / "growth").glob("*.yaml")), ids=lambda p: p.name)
def test_growth_configs_build_and_grow(config, tmp_path) -> None:
    built = build_run([config], [*synthetic_data_args(config), *CPU_TRAINER, "--trainer.fast_dev_run=true",
                                 f"--trainer.default_root_dir={tmp_path}"], tmp_path)
    growth = next(c for c in built.trainer.callbacks if isinstance(c, GrowthCallback))
    built.trainer.fit(built.model, datamodule=built.datamodule)
    assert growth.grown_at == 0  # fast_dev_run: 1 step, so any at_fraction triggers at step 0
    assert len(built.model.backbone.vit.blocks) == growth.spec.depth


def test_width_growth_of_dino_widens_the_heads_of_student_and_teacher() -> None:
    """The DINO head's first Linear (``mlp.0``) reads the backbone feature, not its later sibling ``last_layer``:
    growing width widens it in the student and in the EMA teacher, and both keep their function."""
    from functools import partial

    from tests.helpers import tiny_vit
    from vispre.heads import DINOHead
    from vispre.objectives import DINO

    model = DINO(tiny_vit(), head=partial(DINOHead, out_dim=16, hidden_dim=16, bottleneck_dim=8)).eval()
    x = torch.randn(2, 3, 32, 32)

    def outputs(m: DINO) -> list[torch.Tensor]:
        teacher = m.teacher.branches
        return [m.head(m.backbone(x)), teacher.head(teacher.backbone(x))]

    with torch.no_grad():
        before = outputs(model)
        grow_objective(model, GrowthSpec(embed_dim=64))
        after = outputs(model)
    assert model.head.mlp[0].in_features == model.teacher.branches.head.mlp[0].in_features == 64
    for a, b in zip(after, before, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
