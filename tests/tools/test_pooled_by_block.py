"""tools/pooled_by_block.py: one max and one mean feature per block; after the last block they are the suite's
``max`` / ``mean`` features, and the untrained ViT is reproducible."""

from __future__ import annotations

import sys

import torch

from tests.helpers import MAE_CONFIG, REPO_ROOT, tiny_vit

sys.path.insert(0, str(REPO_ROOT / "tools"))  # tools/ is not a package

from pooled_by_block import pooled_by_block, untrained_vit  # noqa: E402
from vispre.eval.features import token_features  # noqa: E402


def test_every_block_pooled_and_the_last_equals_the_suite_features() -> None:
    torch.manual_seed(0)
    vit = tiny_vit(global_pool="max", fc_norm=False).vit.eval()
    images = torch.randn(5, 3, 32, 32)
    out = pooled_by_block(vit, images, batch_size=2)
    assert sorted(out) == ["b1_max", "b1_mean", "b2_max", "b2_mean"]
    assert all(t.shape == (5, 32) for t in out.values())
    with torch.no_grad():
        suite = token_features(vit, images, ["max", "mean", "pooled"])
    torch.testing.assert_close(out["b2_max"], suite["max"])
    torch.testing.assert_close(out["b2_max"], suite["pooled"])
    torch.testing.assert_close(out["b2_mean"], suite["mean"])
    assert not torch.allclose(out["b1_max"], out["b2_max"])


def test_untrained_vit_is_seeded() -> None:
    a, b = untrained_vit(3), untrained_vit(3)
    assert (len(a.blocks), a.embed_dim, a.global_pool, a.patch_embed.patch_size) == (1, 512, "max", (14, 14))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_untrained_vit_takes_the_shape_of_the_config_given() -> None:
    assert untrained_vit(0, MAE_CONFIG).patch_embed.patch_size == (7, 7)
