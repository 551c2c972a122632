"""iBOT on a tiny ViT: block masks (given or drawn per seed), the masked-patch loss against a per-image
reference, shared / separate patch heads, the patch centre, and MAE + iBOT through MultiObjective."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import TINY_DECODER, cpu_trainer, tiny_vit
from vispre.backbones.crops import encode_crop
from vispre.backbones.weights import backbone_state_dict
from vispre.data.synthetic import SyntheticDataModule
from vispre.data.transforms import MultiCropViews
from vispre.errors import VispreError
from vispre.heads import DINOHead
from vispre.objectives import IBOT, MAE, OBJECTIVES, MultiObjective

HEAD = partial(DINOHead, out_dim=16, hidden_dim=16, bottleneck_dim=8)
B, N = 4, 16


def batch_with_masks(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    views = [torch.randn(B, 3, 32, 32, generator=gen) for _ in range(2)] + [torch.randn(B, 3, 16, 16, generator=gen)]
    masks = torch.rand(B, 2, N, generator=gen) < 0.4
    masks[0] = False  # an unmasked image (iBOT leaves about half of them)
    return {"views": views, "masks": masks}


def reference_patch_loss(model: IBOT, batch: dict, center: torch.Tensor) -> torch.Tensor:
    """Per image and global crop: mean CE over its masked patches (0 when none); then the mean over them."""
    p, losses = model.backbone.num_prefix_tokens, []
    for g in range(2):
        view, mask = batch["views"][g], batch["masks"][:, g]
        with torch.no_grad():
            t_logits = model.teacher_patch_head()(model.teacher["backbone"].forward_features(view)[:, p:])
            t = F.softmax((t_logits - center) / model.teacher_temp, dim=-1)
        s = model.student_patch_head()(encode_crop(model.backbone, view, mask, model.mask_token)[:, p:])
        ce = -(t * F.log_softmax(s / model.student_temp, dim=-1)).sum(-1)  # [B, N]
        losses += [ce[b][mask[b]].mean() if mask[b].any() else ce.new_zeros(()) for b in range(B)]
    return torch.stack(losses).mean()


@pytest.mark.parametrize("shared", [True, False])
def test_patch_loss_matches_the_reference(shared: bool) -> None:
    torch.manual_seed(0)
    model = OBJECTIVES["ibot"](tiny_vit(), head=HEAD, shared_head=shared, patch_loss_weight=0.5)
    with torch.no_grad():
        model.patch_center.normal_()
        model.mask_token.normal_()
    center, batch = model.patch_center.clone(), batch_with_masks()
    want = reference_patch_loss(model, batch, center)
    terms = model.loss_terms(batch)
    torch.testing.assert_close(terms["ibot_loss"], want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["loss"], terms["dino_loss"] + 0.5 * terms["ibot_loss"])
    with torch.no_grad():  # the patch centre: EMA of the mean over every teacher patch token of both crops
        p = model.backbone.num_prefix_tokens
        logits = torch.cat([model.teacher_patch_head()(model.teacher["backbone"].forward_features(v)[:, p:])
                            for v in batch["views"][:2]])
    torch.testing.assert_close(model.patch_center, 0.9 * center + 0.1 * logits.reshape(-1, 16).mean(0, keepdim=True),
                               rtol=1e-5, atol=1e-6)
    assert ("patch_head" in dict(model.teacher.branches.named_children())) == (not shared)
    assert any(k.startswith("patch_head.") for k in model.state_dict()) == (not shared)


def test_no_masked_patch_gives_a_zero_patch_loss() -> None:
    model = IBOT(tiny_vit(), head=HEAD)
    batch = batch_with_masks()
    batch["masks"] = torch.zeros_like(batch["masks"])
    terms = model.loss_terms(batch)
    assert terms["ibot_loss"] == 0 and torch.equal(terms["loss"], terms["dino_loss"])


def test_drawn_masks_are_block_masks_deterministic_per_seed() -> None:
    batch = {"views": [torch.randn(8, 3, 32, 32) for _ in range(2)]}
    crops = IBOT(tiny_vit(), head=HEAD).split_crops(batch)
    draws = [IBOT(tiny_vit(), head=HEAD, mask_seed=seed).student_masks(batch, crops) for seed in (0, 0, 1)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    model = IBOT(tiny_vit(), head=HEAD, mask_ratio_range=(0.25, 0.5))
    first, second = model.student_masks(batch, crops), model.student_masks(batch, crops)
    assert first.shape == (16, N) and not torch.equal(first, second)  # a new draw per step
    counts = first.sum(1)
    assert (counts == 0).sum() == 8  # half of the 2 x 8 global crops unmasked
    assert all(4 <= c <= 8 for c in counts[counts > 0].tolist())  # int(r * 16), r in [0.25, 0.5]


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(mask_ratio_range=(0.6, 0.2)), r"ratio_range"),
    (dict(mask_probability=1.5), r"mask_probability must be in \[0, 1\]"),
    (dict(patch_head=HEAD), r"IBOT.patch_head is only used with shared_head: false"),
    (dict(shared_head=False, patch_head=partial(DINOHead, out_dim=1)), r"out_dim \(K prototypes\) must be >= 2"),
    (dict(patch_loss_weight=-1.0), r"IBOT.patch_loss_weight must be >= 0"),
    (dict(teacher_temp=-1.0), r"IBOT.teacher_temp must be > 0"),
])
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(VispreError, match=message):
        IBOT(tiny_vit(), head=HEAD, **kwargs)


def test_bad_masks_in_the_batch() -> None:
    batch = batch_with_masks()
    batch["masks"] = batch["masks"][:, :1]
    with pytest.raises(VispreError, match=r"batch\['masks'\] must be bool \[B, G, N\]"):
        IBOT(tiny_vit(), head=HEAD).loss_terms(batch)


def test_mae_plus_ibot_through_multi_objective(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MultiObjective(tiny_vit(), objectives=[partial(MAE, **TINY_DECODER), partial(IBOT, head=HEAD)],
                           weights=[1.0, 0.5], views=[[0], [0, 1, 2, 3]])
    ibot = model.objectives[1]
    assert ibot.backbone is model.backbone and ibot.teacher["backbone"] is not model.backbone
    batch = {"views": [*batch_with_masks()["views"], torch.randn(B, 3, 16, 16)]}
    terms = model.loss_terms(batch)
    torch.testing.assert_close(terms["loss"], terms["mae/loss"] + 0.5 * terms["ibot/loss"])
    assert {"ibot/dino_loss", "ibot/ibot_loss", "mae/mae_loss"} <= set(terms)
    last = ibot.head.last_layer.parametrizations.weight.original1.detach().clone()
    teacher = ibot.teacher["backbone"].vit.blocks[0].mlp.fc1.weight.detach().clone()
    view = MultiCropViews(global_size=32, local_size=16, num_local=2, mean=(0.5,) * 3, std=(0.25,) * 3)
    data = SyntheticDataModule(img_size=40, num_samples=8, batch_size=4, view=view)
    cpu_trainer(max_epochs=1, default_root_dir=tmp_path).fit(model, datamodule=data)
    assert torch.equal(ibot.head.last_layer.parametrizations.weight.original1, last)  # frozen through the wrapper
    assert not torch.equal(ibot.teacher["backbone"].vit.blocks[0].mlp.fc1.weight, teacher)  # EMA ran
    assert ibot.teacher_temp > 0.04 and ibot.ema_step == 1
    state = model.state_dict()  # export reads the iBOT teacher of the shared backbone by default
    key = "blocks.0.mlp.fc1.weight"
    assert torch.equal(backbone_state_dict(state)[key], ibot.teacher["backbone"].vit.state_dict()[key])
    assert torch.equal(backbone_state_dict(state, "student")[key], model.backbone.vit.state_dict()[key])
