"""Feature choices of vispre.eval.features against the timm model's own forward."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from tests.helpers import VIT_VARIANTS, tiny_vit
from vispre.eval.features import _token_features


@pytest.mark.parametrize("variant", sorted(VIT_VARIANTS))
def test_pooled_is_what_the_timm_model_returns(variant: str) -> None:
    """'pooled' == forward_head(forward_features(x), pre_logits=True) for cls / avg-pool / register ViTs."""
    torch.manual_seed(0)
    vit = tiny_vit(**VIT_VARIANTS[variant]).vit.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = vit.forward_head(vit.forward_features(x), pre_logits=True)
        got = _token_features(vit, x, ["pooled"])["pooled"]
    assert got.shape == (3, 32)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_pooled_follows_global_pool_avg_with_fc_norm() -> None:
    """An avg-pooled ViT with fc_norm: pooled is the normed mean patch token, not the cls token."""
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0,
                            global_pool="avg", fc_norm=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = _token_features(vit, x, ["pooled", "cls"])
        want = vit.forward_head(vit.forward_features(x), pre_logits=True)
    torch.testing.assert_close(feats["pooled"], want, rtol=0, atol=1e-6)
    assert not torch.allclose(feats["pooled"], feats["cls"])
