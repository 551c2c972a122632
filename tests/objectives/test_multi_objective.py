"""MultiObjective: one shared backbone, weighted sum of the sub-objectives' losses, each one's terms logged,
view selection and its errors."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from tests.helpers import TINY_DECODER, tiny_vit
from vispre.heads import ProjectionMLP
from vispre.objectives import MAE, MultiObjective, SimCLR, default_names

SUBS = [partial(MAE, **TINY_DECODER), partial(SimCLR, projector=partial(ProjectionMLP, hidden_dim=16, out_dim=8))]


def two_view_batch(n: int = 6) -> dict:
    return {"views": [torch.randn(n, 3, 32, 32), torch.randn(n, 3, 32, 32)], "label": torch.arange(n) % 3}


def test_multi_objective_shares_backbone_weights_sum_and_logs_each() -> None:
    backbone = tiny_vit()
    module = MultiObjective(backbone, objectives=SUBS, weights=[1.0, 0.5], views=[[0], [0, 1]],
                            names=["mae", "simclr"])
    assert all(sub.backbone is backbone for sub in module.objectives)
    torch.manual_seed(1)
    terms = module.loss_terms(two_view_batch())
    assert {"mae/loss", "mae/mae_loss", "simclr/loss", "simclr/nt_xent", "loss"} == set(terms)
    assert torch.allclose(terms["loss"], terms["mae/loss"] + 0.5 * terms["simclr/loss"])
    assert default_names(module.objectives) == ["mae", "simclr"]
    assert default_names([module.objectives[1], module.objectives[1]]) == ["simclr_0", "simclr_1"]


def test_bad_multi_objective_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"MultiObjective.weights has 1 entries, expected one per objective \(2\)"):
        MultiObjective(tiny_vit(), objectives=SUBS, weights=[1.0])
    with pytest.raises(ValueError, match=r"MultiObjective.views\[1\] = \[0, 2\] but batches have 2 views"):
        MultiObjective(tiny_vit(), objectives=SUBS, views=[[0], [0, 2]]).loss_terms(two_view_batch())
    with pytest.raises(ValueError, match="MultiObjective needs at least one objective"):
        MultiObjective(tiny_vit(), objectives=[])
