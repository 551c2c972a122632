"""The contract every registry objective keeps, on a tiny ViT: forward/backward with a finite loss, every
trainable parameter gets a gradient, and a fast_dev_run on CPU moves the backbone.

Adding an objective to ``vispre.objectives.OBJECTIVES`` without a small factory here fails
:func:`test_every_registry_entry_has_a_contract_factory`.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY_DECODER, cpu_trainer, tiny_vit
from vispre.data.synthetic import SyntheticDataModule
from vispre.heads import DINOHead, MultiProjectionHead, ProjectionMLP
from vispre.losses import AMCLInfoNCELoss, AMCLNTXentLoss
from vispre.objectives import MAE, OBJECTIVES, PretrainObjective, SimCLR

PROJ = partial(ProjectionMLP, hidden_dim=16, out_dim=8)
HEADS = partial(MultiProjectionHead, hidden_dim=16, out_dim=8)
FACTORIES = {  # registry name -> small keyword arguments (the backbone is passed by the test)
    "mae": dict(**TINY_DECODER),
    "simclr": dict(projector=PROJ),
    "moco_v3": dict(projector=partial(PROJ, num_layers=3, last_batch_norm=True)),
    "barlow_twins": dict(projector=partial(PROJ, num_layers=3)),
    "amcl_simclr": dict(projector=HEADS, loss=partial(AMCLNTXentLoss, tau_hidden_dim=8)),
    "amcl_moco_v3": dict(projector=partial(HEADS, num_layers=3, last_batch_norm=True),
                         loss=partial(AMCLInfoNCELoss, tau_hidden_dim=8, form="paper")),
    "amcl_barlow_twins": dict(projector=partial(HEADS, num_layers=3)),
    "multi": dict(objectives=[partial(MAE, **TINY_DECODER), partial(SimCLR, projector=HEADS, loss=AMCLNTXentLoss)],
                  weights=[1.0, 0.5], views=[[0], [0, 1]]),
    "dino": dict(head=partial(DINOHead, out_dim=16, hidden_dim=16, bottleneck_dim=8)),
    "ibot": dict(head=partial(DINOHead, out_dim=16, hidden_dim=16, bottleneck_dim=8)),
    "dinov2": dict(head=partial(DINOHead, out_dim=16, hidden_dim=16, bottleneck_dim=8)),
    "poa": dict(head=partial(DINOHead, out_dim=16, hidden_dim=16, bottleneck_dim=8), elastic_widths=[16],
                elastic_depths=[1]),
}


def build(name: str) -> PretrainObjective:
    return OBJECTIVES[name](tiny_vit(), **FACTORIES[name])


def two_view_batch(n: int = 6) -> dict:
    return {"views": [torch.randn(n, 3, 32, 32), torch.randn(n, 3, 32, 32)], "label": torch.arange(n) % 3}


def test_every_registry_entry_has_a_contract_factory() -> None:
    assert set(OBJECTIVES) == set(FACTORIES)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_forward_backward_every_trainable_parameter_gets_a_gradient(name: str) -> None:
    module = build(name)
    assert isinstance(module, PretrainObjective)
    terms = module.loss_terms(two_view_batch())
    assert torch.isfinite(terms["loss"]) and all(v.ndim == 0 for v in terms.values())
    terms["loss"].backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing


@pytest.mark.parametrize("name", list(FACTORIES))
def test_fast_dev_run_on_cpu(name: str, tmp_path: Path) -> None:
    module = build(name)
    before = {n: p.detach().clone() for n, p in module.backbone.named_parameters() if p.requires_grad}
    data = SyntheticDataModule(img_size=32, in_chans=3, num_samples=8, batch_size=4, num_views=2)
    cpu_trainer(fast_dev_run=True, default_root_dir=tmp_path).fit(module, datamodule=data)
    assert any(not torch.equal(p, before[n]) for n, p in module.backbone.named_parameters() if p.requires_grad)
