"""JointEmbedding's token drop (FLIP-style): the encoder sees only the kept tokens in training, all of them in
evaluation, the pooled feature is timm's pooling of the kept tokens, and a bad fraction is refused."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_vit
from vispre.errors import VispreError
from vispre.objectives import SimCLR


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
