"""JointEmbedding: token drop (FLIP-style: the encoder sees only the kept tokens in training, all of them in
evaluation, the pooled feature is timm's pooling of the kept tokens, a bad fraction is refused) and multi-crop
(local crops against both global views, the mean over pairs)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_vit
from vispre.errors import VispreError
from vispre.objectives import BarlowTwins, SimCLR


@pytest.mark.parametrize("global_pool", ["token", "max"])
def test_token_drop_pools_the_kept_tokens_in_training_and_all_tokens_in_eval(global_pool: str) -> None:
    torch.manual_seed(0)
    model = SimCLR(tiny_vit(global_pool=global_pool, fc_norm=False), token_drop=0.5)
    images = torch.randn(3, 3, 32, 32)
    seen: list[int] = []
    hook = model.backbone.vit.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    model.train()
    torch.manual_seed(1)
    pooled = model.encode(images)
    torch.manual_seed(1)
    encoding = model.backbone.forward_masked(images, 0.5)
    kept = encoding.tokens[:, 1:]
    expected = kept.amax(dim=1) if global_pool == "max" else encoding.tokens[:, 0]
    torch.testing.assert_close(pooled, expected)
    model.eval()
    torch.testing.assert_close(model.encode(images), model.backbone(images))
    hook.remove()
    # 16 patches: 8 kept + cls in training, all 16 + cls in evaluation (each twice: the call and the reference)
    assert seen == [9, 9, 17, 17]


def test_token_drop_zero_is_the_plain_objective() -> None:
    torch.manual_seed(0)
    backbone = tiny_vit()
    dropped, plain = SimCLR(backbone, token_drop=0.0), SimCLR(backbone)
    plain.projector.load_state_dict(dropped.projector.state_dict())
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    loss_a = dropped.loss_terms({"views": views})["loss"]
    loss_b = plain.loss_terms({"views": views})["loss"]
    torch.testing.assert_close(loss_a, loss_b)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_token_drop_outside_zero_one_is_refused(bad: float) -> None:
    with pytest.raises(VispreError, match=r"token_drop must be in \[0, 1\).*got"):
        SimCLR(tiny_vit(), token_drop=bad)


# -- multi-crop: local crops against both global views -------------------------------------------------------
@pytest.mark.parametrize("objective", [SimCLR, BarlowTwins])
def test_multi_crop_terms_are_the_mean_over_the_global_pair_and_every_global_local_pair(objective) -> None:
    torch.manual_seed(0)
    model = objective(tiny_vit(), multi_crop=True).eval()  # eval: no dropout, so a view encodes the same twice
    v1, v2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    local = v1.clone()  # a "local" crop at the global size: the backbone's own path, so its projection is z1's
    terms = model.loss_terms({"views": [v1, v2, local]})
    z1, z2 = model.projector(model.backbone(v1)), model.projector(model.backbone(v2))
    pairs = [model.loss(z1, z2), model.loss(z1, z1), model.loss(z2, z1)]
    assert set(terms) == set(pairs[0])
    for key in terms:
        torch.testing.assert_close(terms[key], torch.stack([pair[key] for pair in pairs]).mean())
    assert not torch.allclose(terms["loss"], pairs[0]["loss"])


def test_multi_crop_encodes_smaller_locals_in_one_batch_and_trains_them() -> None:
    torch.manual_seed(0)
    model = SimCLR(tiny_vit(), multi_crop=True)
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32), *(torch.randn(4, 3, 16, 16) for _ in range(3))]
    seen: list[tuple[int, ...]] = []
    hook = model.backbone.vit.blocks[0].register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[:2])))
    model.loss_terms({"views": views})["loss"].backward()
    hook.remove()
    assert seen == [(4, 17), (4, 17), (12, 5)]  # two global views (16 patches + cls), 3 locals together (4 + cls)
    assert model.backbone.vit.patch_embed.proj.weight.grad.abs().sum() > 0


def test_without_multi_crop_extra_views_are_ignored() -> None:
    torch.manual_seed(0)
    model = SimCLR(tiny_vit()).eval()
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    torch.testing.assert_close(model.loss_terms({"views": [*views, torch.randn(4, 3, 16, 16)]})["loss"],
                               model.loss_terms({"views": views})["loss"])


def test_multi_crop_refuses_missing_mixed_or_misfit_local_crops() -> None:
    model = SimCLR(tiny_vit(), multi_crop=True)
    globals_ = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)]
    with pytest.raises(VispreError, match=r"needs local crops after the two global views .*got 2 views"):
        model.loss_terms({"views": globals_})
    with pytest.raises(VispreError, match=r"local crops must share one shape, got \[\(2, 3, 16, 16\), \(2, 3, 8, 8\)\]"):
        model.loss_terms({"views": [*globals_, torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8)]})
    with pytest.raises(VispreError, match="local crop: crop size 12x12 does not fit the backbone"):
        model.loss_terms({"views": [*globals_, torch.randn(2, 3, 12, 12)]})
