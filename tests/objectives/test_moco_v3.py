"""MoCo v3: cosine momentum schedule, EMA update, one momentum branch built once, default predictor, and
the loss sees queries of one view against keys of the other."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import Tensor, nn

from tests.helpers import tiny_vit
from vispre.heads import MultiProjectionHead, ProjectionMLP
from vispre.losses import AMCLInfoNCELoss, InfoNCELoss
from vispre.objectives import MoCoV3, cosine_momentum

PROJ = partial(ProjectionMLP, hidden_dim=16, out_dim=8, num_layers=3, last_batch_norm=True)


def test_moco_momentum_schedule_and_ema_update() -> None:
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert cosine_momentum(100, 100, 0.99) == pytest.approx(1.0)
    module = MoCoV3(tiny_vit(), projector=PROJ, freeze_patch_embed=True)
    assert not module.backbone.vit.patch_embed.proj.weight.requires_grad
    online = module.backbone.vit.blocks[0].attn.qkv.weight
    key = module.momentum_backbone.vit.blocks[0].attn.qkv.weight
    with torch.no_grad():
        online.add_(1.0)
    old_key = key.detach().clone()
    module.update_momentum(0, 100)  # m = 0.99
    assert torch.allclose(key, 0.99 * old_key + 0.01 * online, atol=1e-6)
    assert not key.requires_grad


def test_key_branch_is_a_frozen_copy_of_backbone_and_projector() -> None:
    module = MoCoV3(tiny_vit(), projector=PROJ)
    branches = ((module.backbone, module.momentum_backbone), (module.projector, module.momentum_projector))
    for online, momentum in branches:
        pairs = list(zip(online.state_dict().values(), momentum.state_dict().values(), strict=True))
        assert all(torch.equal(a, b) for a, b in pairs)
        assert not any(p.requires_grad for p in momentum.parameters())
        assert all(a.data_ptr() != b.data_ptr() for a, b in zip(online.parameters(), momentum.parameters()))


def test_default_predictor_mirrors_the_projector() -> None:
    module = MoCoV3(tiny_vit(), projector=PROJ)
    linears = [m for m in module.predictor.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 16), (16, 8)]
    assert isinstance(module.loss, InfoNCELoss) and module.loss.temperature == 0.2
    multi = MoCoV3(tiny_vit(), projector=partial(MultiProjectionHead, num_heads=2, hidden_dim=16, out_dim=8,
                                                  num_layers=3, last_batch_norm=True), loss=AMCLInfoNCELoss)
    assert isinstance(multi.predictor, MultiProjectionHead) and len(multi.predictor) == 2
    assert multi.predictor.hidden_dim == 16 and (multi.loss.num_heads, multi.loss.temperature_net.dim) == (2, 8)
    given = MoCoV3(tiny_vit(), projector=PROJ, predictor=partial(ProjectionMLP, hidden_dim=4, out_dim=8))
    assert given.predictor.net[0].in_features == 8 and given.predictor.hidden_dim == 4


class Recorder(nn.Module):
    def forward(self, q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor) -> dict[str, Tensor]:
        self.seen = (q1, q2, k1, k2)
        return {"loss": q1.sum()}


def test_loss_gets_both_views_queries_and_keys() -> None:
    module = MoCoV3(tiny_vit(), projector=PROJ, loss=Recorder()).eval()  # eval: BN uses running stats
    v1, v2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    module.loss_terms({"views": [v1, v2]})
    q1, q2, k1, k2 = module.loss.seen
    torch.testing.assert_close(q1, module.query(v1))
    torch.testing.assert_close(q2, module.query(v2))
    torch.testing.assert_close(k1, module.key(v1))
    torch.testing.assert_close(k2, module.key(v2))
    assert not k1.requires_grad and q1.requires_grad


def test_bad_momentum_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"MoCoV3.base_momentum must lie in \[0, 1\], got 1.5"):
        MoCoV3(tiny_vit(), projector=PROJ, base_momentum=1.5)
