"""Feature choices of vispre.eval.features against the timm model's own forward."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from tests.helpers import VIT_VARIANTS, tiny_vit
from vispre.eval.features import token_features


@pytest.mark.parametrize("variant", sorted(VIT_VARIANTS))
def test_pooled_is_what_the_timm_model_returns(variant: str) -> None:
    """'pooled' == forward_head(forward_features(x), pre_logits=True) for cls / avg-pool / register ViTs."""
    torch.manual_seed(0)
    vit = tiny_vit(**VIT_VARIANTS[variant]).vit.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = vit.forward_head(vit.forward_features(x), pre_logits=True)
        got = token_features(vit, x, ["pooled"])["pooled"]
    assert got.shape == (3, 32)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_pooled_follows_global_pool_avg_with_fc_norm() -> None:
    """An avg-pooled ViT with fc_norm: pooled is the normed mean patch token, not the cls token."""
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0,
                            global_pool="avg", fc_norm=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = token_features(vit, x, ["pooled", "cls"])
        want = vit.forward_head(vit.forward_features(x), pre_logits=True)
    torch.testing.assert_close(feats["pooled"], want, rtol=0, atol=1e-6)
    assert not torch.allclose(feats["pooled"], feats["cls"])


def test_max_is_the_pooled_embedding_of_a_max_pooled_vit() -> None:
    """'max' (per-channel max over the normed patch tokens) == the embedding of timm's global_pool='max' with
    fc_norm=False, the quickstart MAE's export; on a cls-pooled ViT it differs from pooled."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    max_pooled = tiny_vit(global_pool="max", fc_norm=False).vit.eval()
    cls_pooled = tiny_vit().vit.eval()
    cls_pooled.load_state_dict(max_pooled.state_dict())
    with torch.no_grad():
        feats = token_features(max_pooled, x, ["pooled", "max"])
        tokens = max_pooled.forward_features(x)[:, max_pooled.num_prefix_tokens:]
        other = token_features(cls_pooled, x, ["pooled", "max"])
    torch.testing.assert_close(feats["max"], tokens.amax(dim=1), rtol=0, atol=1e-6)
    torch.testing.assert_close(feats["pooled"], feats["max"], rtol=0, atol=1e-6)
    torch.testing.assert_close(other["max"], feats["max"], rtol=0, atol=1e-6)  # same weights, same tokens
    assert not torch.allclose(other["pooled"], other["max"])
