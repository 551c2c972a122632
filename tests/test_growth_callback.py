"""GrowthCallback inside a Lightning fit run, and resume from a post-growth checkpoint."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from tests.conftest import tiny_vit
from tests.test_cli import CPU_TRAINER, ROOT, build, synthetic_data_args
from vispre.growth import GrowthCallback
from vispre.objectives.mae import MAE
from vispre.objectives.optim import AdamWRecipe


class _Data(L.LightningDataModule):
    batch_size = 4

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        items = [{"views": [torch.randn(3, 32, 32, generator=g)]} for _ in range(16)]
        return DataLoader(items, batch_size=self.batch_size)


def _fit(tmp_path, callback: GrowthCallback, max_steps: int, ckpt: str | None = None) -> tuple[L.Trainer, MAE]:
    mae = MAE(tiny_vit(), decoder_dim=16, decoder_depth=1, decoder_num_heads=2,
              optimizer=AdamWRecipe(base_lr=1e-3, fused=False))
    trainer = L.Trainer(max_steps=max_steps, callbacks=[callback], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu",
                        enable_checkpointing=False)
    trainer.fit(mae, datamodule=_Data(), ckpt_path=ckpt)
    return trainer, mae


@pytest.mark.parametrize("mode", ["exact", "reset"])
def test_fit_grows_mid_run_and_resumes(tmp_path, mode: str) -> None:
    cb = GrowthCallback(at_step=2, depth=3, embed_dim=64, optimizer_mode=mode)
    trainer, mae = _fit(tmp_path, cb, max_steps=4)
    assert (len(mae.backbone.vit.blocks), mae.backbone.embed_dim, cb.grown_at) == (3, 64, 2)
    opt = trainer.optimizers[0]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in mae.parameters() if p.requires_grad}
    ckpt = tmp_path / "grown.ckpt"
    trainer.save_checkpoint(ckpt)
    meta = torch.load(ckpt, weights_only=True)["vispre"]["backbone"]
    assert (meta["depth"], meta["embed_dim"], meta["num_heads"]) == (3, 64, 4)

    cb2 = GrowthCallback(at_step=2, depth=3, embed_dim=64, optimizer_mode=mode)
    trainer2, mae2 = _fit(tmp_path, cb2, max_steps=6, ckpt=str(ckpt))
    assert trainer2.global_step == 6 and mae2.backbone.embed_dim == 64 and cb2.grown_at == 2
    assert len(trainer2.optimizers[0].param_groups) == len(opt.param_groups)


def test_callback_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="give exactly one of at_step or at_fraction"):
        GrowthCallback(depth=4)
    with pytest.raises(ValueError, match="optimizer_mode must be one of"):
        GrowthCallback(at_step=1, depth=4, optimizer_mode="momentum")


@pytest.mark.parametrize("config", sorted((ROOT / "configs" / "growth").glob("*.yaml")), ids=lambda p: p.name)
def test_growth_configs_build_and_grow(config, tmp_path) -> None:
    """configs/growth/ is skipped by the run-config test in test_cli.py; build and run each one here."""
    cli = build(["--config", str(config), *synthetic_data_args(config), *CPU_TRAINER, "--trainer.fast_dev_run=true",
                 f"--trainer.default_root_dir={tmp_path}"],
                tmp_path)
    growth = next(c for c in cli.trainer.callbacks if isinstance(c, GrowthCallback))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert growth.grown_at == 0  # fast_dev_run: 1 step, so any at_fraction triggers at step 0
    assert len(cli.model.backbone.vit.blocks) == growth.spec.depth
