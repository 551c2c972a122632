"""EMA teacher, per-step self-distillation schedules and crop encoding (vispre.objectives.teacher)."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

from tests.helpers import tiny_vit
from vispre.backbones.crops import check_crop, encode_crop
from vispre.errors import VispreError
from vispre.objectives.teacher import DistillSchedule, EMATeacher


def test_teacher_is_a_frozen_copy_without_randomness() -> None:
    student = {"backbone": tiny_vit(drop_path_rate=0.5), "head": nn.Sequential(nn.Dropout(0.5), nn.Linear(32, 4))}
    teacher = EMATeacher(student).train()
    for name, module in student.items():
        for (n, t), s in zip(teacher[name].named_parameters(), module.parameters(), strict=True):
            assert torch.equal(t, s) and t is not s and not t.requires_grad, n
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(teacher["backbone"](x), teacher["backbone"](x))  # no drop-path in the teacher
    assert not torch.equal(student["backbone"].train()(x), student["backbone"](x))  # the student keeps it
    f = torch.randn(2, 32)
    assert torch.equal(teacher["head"](f), teacher["head"](f))


def test_ema_update_is_the_lerp_of_every_parameter() -> None:
    gen = torch.Generator().manual_seed(0)
    student = {"a": nn.Linear(3, 2), "b": nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))}
    teacher = EMATeacher(student)
    old = [p.detach().clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in [*student["a"].parameters(), *student["b"].parameters()]:
            p.copy_(torch.randn(p.shape, generator=gen))
    teacher.update(student, 0.9)
    new = [*student["a"].parameters(), *student["b"].parameters()]
    for t, o, s in zip(teacher.parameters(), old, new, strict=True):
        torch.testing.assert_close(t, 0.9 * o + 0.1 * s, rtol=0, atol=1e-7)
    before = [p.clone() for p in teacher.parameters()]
    teacher.update(student, 1.0)  # momentum 1 keeps the teacher
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))
    with pytest.raises(VispreError, match="expected modules"):
        teacher.update({"a": student["a"]}, 0.9)


def test_schedules_per_step() -> None:
    sched = DistillSchedule(base_momentum=0.996, final_momentum=1.0, warmup_teacher_temp=0.04, teacher_temp=0.07,
                            warmup_teacher_temp_epochs=2, freeze_last_layer_epochs=1)
    total, per_epoch = 100, 10
    first, mid, last = sched.at(0, total, per_epoch), sched.at(50, total, per_epoch), sched.at(100, total, per_epoch)
    assert first.momentum == pytest.approx(0.996) and last.momentum == pytest.approx(1.0)
    assert mid.momentum == pytest.approx(1 - 0.004 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert first.teacher_temp == pytest.approx(0.04) and mid.teacher_temp == pytest.approx(0.07)
    assert sched.at(10, total, per_epoch).teacher_temp == pytest.approx(0.055)  # half of the 20-step warm-up
    assert [sched.at(s, total, per_epoch).last_layer_frozen for s in (0, 9, 10)] == [True, True, False]
    assert sched._replace(warmup_teacher_temp_epochs=0).at(0, total, per_epoch).teacher_temp == pytest.approx(0.07)


@pytest.mark.parametrize(("field", "value", "allowed"), [
    ("teacher_temp", 0.0, "> 0"), ("warmup_teacher_temp", -0.1, "> 0"), ("base_momentum", 1.5, r"\[0, 1\]"),
    ("final_momentum", 0.5, r"\[base_momentum, 1\]"), ("freeze_last_layer_epochs", -1, ">= 0")])
def test_schedule_errors_name_the_field_and_range(field: str, value: float, allowed: str) -> None:
    with pytest.raises(VispreError, match=f"DINO.{field} must (be |lie )?(in )?{allowed}"):
        DistillSchedule()._replace(**{field: value}).check("DINO")


def test_encode_crop_native_size_is_the_backbone_path() -> None:
    vit = tiny_vit().eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(encode_crop(vit, x), vit.forward_features(x))


@pytest.mark.parametrize("size", [16, 24, 48])
def test_encode_crop_other_sizes_match_timm_dynamic_img_size(size: int) -> None:
    vit = tiny_vit(sincos_pos_embed=False).eval()
    ref = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                            num_classes=0, dynamic_img_size=True).eval()
    ref.load_state_dict(vit.vit.state_dict())
    x = torch.randn(2, 3, size, size)
    torch.testing.assert_close(encode_crop(vit, x), ref.forward_features(x), rtol=1e-5, atol=1e-5)


def test_masked_patches_do_not_see_their_pixels() -> None:
    vit = tiny_vit().eval()
    token = torch.randn(1, 1, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :5] = True  # image 0: the first 5 patches (row 0 and one of row 1) of the 4x4 grid
    x = torch.randn(2, 3, 32, 32)
    changed = x.clone()
    changed[0, :, :8, :] = 100.0  # the pixels of the first row of patches (all masked)
    out = encode_crop(vit, x, mask, token)
    torch.testing.assert_close(out, encode_crop(vit, changed, mask, token))
    torch.testing.assert_close(encode_crop(vit, x, torch.zeros_like(mask), token), vit.forward_features(x))
    assert not torch.allclose(out[0], vit.forward_features(x)[0])
    with pytest.raises(VispreError, match="mask must be"):
        encode_crop(vit, x, mask[:, :4], token)


@pytest.mark.parametrize("shape", [(2, 3, 20, 20), (2, 3, 4, 4), (2, 1, 32, 32)])
def test_crops_that_do_not_fit_the_backbone_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(VispreError, match="patch size 8|expected crops"):
        check_crop(tiny_vit(), torch.zeros(shape), "view 2")
