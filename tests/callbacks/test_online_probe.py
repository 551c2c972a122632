"""OnlineLinearProbe: learns on detached features without touching the backbone; logs during fit."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from tests.helpers import cpu_trainer, tiny_vit
from vispre.callbacks import OnlineLinearProbe
from vispre.data.synthetic import SyntheticDataModule
from vispre.heads import ProjectionMLP
from vispre.objectives import SimCLR

PROJ = partial(ProjectionMLP, hidden_dim=16, out_dim=8)


def test_online_probe_learns_without_touching_the_backbone() -> None:
    backbone = tiny_vit()
    module = SimCLR(backbone, projector=PROJ)
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
    module = SimCLR(tiny_vit(), projector=PROJ)
    probe = OnlineLinearProbe(num_classes=10)
    data = SyntheticDataModule(img_size=32, in_chans=3, num_samples=8, batch_size=4, num_views=2)
    trainer = cpu_trainer(max_steps=2, callbacks=[probe], default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    assert {"probe/train_loss", "probe/holdout_top1"} <= set(trainer.callback_metrics)
    assert 0.0 <= float(trainer.callback_metrics["probe/holdout_top1"]) <= 1.0
