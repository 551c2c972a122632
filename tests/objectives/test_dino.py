"""DINO on a tiny ViT: the loss against a hand-written reference, the centre, the EMA teacher (no gradients),
per-step schedules and the last-layer freeze in a CPU fit, multi-crop data, bad input, teacher/student export."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import CONFIGS, CPU_TRAINER, build_run, cpu_trainer, fake_fashion_mnist, tiny_vit, write_shard_set
from vispre.backbones.crops import encode_crop
from vispre.commands.export import main as export_main
from vispre.data.streaming import WebDatasetDataModule
from vispre.data.synthetic import SyntheticDataModule
from vispre.data.transforms import MultiCropViews
from vispre.errors import VispreError
from vispre.heads import DINOHead
from vispre.hub import load_backbone
from vispre.objectives import DINO, OBJECTIVES
from vispre.optim import AdamWRecipe
from vispre.optim.schedules import cosine_value

HEAD = partial(DINOHead, out_dim=16, hidden_dim=16, bottleneck_dim=8)


def multicrop_batch(b: int = 4, locals_: int = 2, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    views = [torch.randn(b, 3, 32, 32, generator=gen) for _ in range(2)]
    return {"views": views + [torch.randn(b, 3, 16, 16, generator=gen) for _ in range(locals_)]}


def reference_loss(model: DINO, batch: dict, center: torch.Tensor) -> torch.Tensor:
    """DINO Alg. 1 written out crop by crop, pair by pair."""
    teacher, head = model.teacher["backbone"], model.teacher["head"]
    with torch.no_grad():
        t = [F.softmax((head(teacher(v)) - center) / model.teacher_temp, dim=-1) for v in batch["views"][:2]]
    s = [model.head(model.backbone.pool(encode_crop(model.backbone, v))) for v in batch["views"]]
    pairs = [-(t[j] * F.log_softmax(s[i] / model.student_temp, dim=-1)).sum(-1).mean()
             for j in range(2) for i in range(len(s)) if i != j]
    return torch.stack(pairs).mean()


def test_loss_matches_the_pairwise_reference_and_centre_updates() -> None:
    torch.manual_seed(0)
    model = OBJECTIVES["dino"](tiny_vit(), head=HEAD)
    with torch.no_grad():
        model.center.normal_()
    center = model.center.clone()
    batch = multicrop_batch()
    want = reference_loss(model, batch, center)
    terms = model.loss_terms(batch)
    torch.testing.assert_close(terms["loss"], want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        logits = torch.cat([model.teacher["head"](model.teacher["backbone"](v)) for v in batch["views"][:2]])
    torch.testing.assert_close(model.center, 0.9 * center + 0.1 * logits.mean(0, keepdim=True), rtol=1e-5, atol=1e-6)
    model.eval()
    model.loss_terms(batch)  # no centre update outside training
    torch.testing.assert_close(model.center, 0.9 * center + 0.1 * logits.mean(0, keepdim=True), rtol=1e-5, atol=1e-6)


def test_the_teacher_never_receives_gradients() -> None:
    model = DINO(tiny_vit(), head=HEAD)
    model.loss_terms(multicrop_batch())["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)
    names = [n for g in model.optimizer_recipe.groups(model, 1e-3) for n in g["names"]]
    assert names and not any(n.startswith("teacher") for n in names)


def test_schedules_update_the_teacher_once_per_step() -> None:
    model = DINO(tiny_vit(), head=HEAD, base_momentum=0.5, warmup_teacher_temp_epochs=1)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.teacher["backbone"].parameters()]
    model.update_schedules(0, 10, 4)
    model.update_schedules(0, 10, 4)  # a second micro-batch of the same step: no second EMA step
    for t, b, s in zip(model.teacher["backbone"].parameters(), before, model.backbone.parameters(), strict=True):
        torch.testing.assert_close(t, 0.5 * b + 0.5 * s)
    model.update_schedules(2, 10, 4)
    assert model.teacher_temp == pytest.approx(0.055) and model.last_layer_frozen
    assert model.momentum == pytest.approx(cosine_value(2, 0.5, 1.0, 10))
    model.update_schedules(4, 10, 4)
    assert model.teacher_temp == pytest.approx(0.07) and not model.last_layer_frozen


def multicrop_data(batch_size: int = 4, samples: int = 8) -> SyntheticDataModule:
    view = MultiCropViews(global_size=32, local_size=16, num_local=2, mean=(0.5,) * 3, std=(0.25,) * 3)
    return SyntheticDataModule(img_size=40, in_chans=3, num_samples=samples, batch_size=batch_size, view=view)


@pytest.mark.parametrize("freeze_epochs", [1.0, 0.0])
def test_fit_freezes_the_last_layer_and_follows_the_schedules(freeze_epochs: float, tmp_path: Path) -> None:
    torch.manual_seed(0)
    recipe = AdamWRecipe(base_lr=1e-2, weight_decay=0.04, weight_decay_end=0.4, warmup_fraction=0.0)
    model = DINO(tiny_vit(), head=HEAD, freeze_last_layer_epochs=freeze_epochs, optimizer=recipe,
                 base_momentum=0.9)
    last = model.head.last_layer.parametrizations.weight.original1.detach().clone()
    mlp = model.head.mlp[0].weight.detach().clone()
    teacher = model.teacher["backbone"].vit.blocks[0].attn.qkv.weight.detach().clone()
    trainer = cpu_trainer(max_epochs=1, default_root_dir=tmp_path, gradient_clip_val=3.0)
    trainer.fit(model, datamodule=multicrop_data())
    assert trainer.global_step == 2
    now = model.head.last_layer.parametrizations.weight.original1
    assert torch.equal(now, last) == (freeze_epochs == 1.0)
    assert not torch.equal(model.head.mlp[0].weight, mlp)
    moved = model.teacher["backbone"].vit.blocks[0].attn.qkv.weight
    assert not torch.equal(moved, teacher) and not torch.equal(moved, model.backbone.vit.blocks[0].attn.qkv.weight)
    decayed = [g for g in trainer.optimizers[0].param_groups if g["weight_decay"] > 0]
    assert decayed and all(g["weight_decay"] == pytest.approx(0.4) for g in decayed)  # cosine 0.04 -> 0.4 done
    assert model.teacher_temp == pytest.approx(0.04 + 0.03 * 1 / 60)  # step 1 of a 30-epoch (60-step) warm-up


def test_teacher_backbone_is_exported_by_default_and_the_student_on_request(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DINO(tiny_vit(), head=HEAD, base_momentum=0.5, optimizer=AdamWRecipe(base_lr=1e-2))
    trainer = cpu_trainer(max_steps=2, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=multicrop_data())
    ckpt = tmp_path / "dino.ckpt"
    trainer.save_checkpoint(ckpt)
    key = "blocks.0.attn.qkv.weight"
    teacher, student = model.teacher["backbone"].vit.state_dict()[key], model.backbone.vit.state_dict()[key]
    assert not torch.equal(teacher, student)
    assert torch.equal(load_backbone(ckpt).state_dict()[key], teacher)
    assert torch.equal(load_backbone(ckpt, branch="student").state_dict()[key], student)
    assert export_main([str(ckpt), str(tmp_path / "s.safetensors"), "--branch", "student"]) == 0
    assert torch.equal(load_backbone(tmp_path / "s.safetensors").state_dict()[key], student)
    assert export_main([str(ckpt), str(tmp_path / "t.safetensors")]) == 0
    assert torch.equal(load_backbone(tmp_path / "t.safetensors").state_dict()[key], teacher)
    with pytest.raises(VispreError, match="branch must be one of"):
        load_backbone(ckpt, branch="ema")


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(teacher_temp=0.0), r"DINO.teacher_temp must be > 0, got 0.0"),
    (dict(warmup_teacher_temp=-0.04), r"DINO.warmup_teacher_temp must be > 0"),
    (dict(student_temp=0.0), r"DINO.student_temp must be > 0"),
    (dict(num_global_crops=0), r"DINO.num_global_crops must be >= 1"),
    (dict(centering="mean"), r"DINO.centering must be one of"),
    (dict(head=partial(DINOHead, out_dim=1, hidden_dim=8, bottleneck_dim=4)), r"out_dim \(K prototypes\) must be >= 2"),
    (dict(head=lambda dim: torch.nn.Linear(dim, 1)), r"DINO.head must output K >= 2 prototypes"),  # no out_dim
])
def test_bad_arguments_are_refused_at_construction(kwargs: dict, message: str) -> None:
    kwargs.setdefault("head", HEAD)
    with pytest.raises(VispreError, match=message):
        DINO(tiny_vit(), **kwargs)


@pytest.mark.parametrize(("views", "message"), [
    ([(32, 32)], r"num_global_crops = 2 needs batches with at least 2 views"),
    ([(32, 32), (32, 32), (12, 12)], r"view 2: crop size 12x12 does not fit the backbone: .* patch size 8"),
    ([(32, 32), (24, 24)], r"global crops must share one size"),
])
def test_crops_that_do_not_fit_are_refused_at_the_first_batch(views: list, message: str) -> None:
    batch = {"views": [torch.randn(2, 3, *hw) for hw in views]}
    with pytest.raises(VispreError, match=message):
        DINO(tiny_vit(), head=HEAD).loss_terms(batch)


def test_one_global_crop_and_locals_and_sinkhorn_centring() -> None:
    model = DINO(tiny_vit(), head=HEAD, num_global_crops=1, centering="sinkhorn_knopp")
    terms = model.loss_terms(multicrop_batch())
    assert torch.isfinite(terms["loss"]) and torch.equal(model.center, torch.zeros_like(model.center))


# -- multi-crop data through the pipelines and the run configs ----------------------------------------------
FASHION_CONFIGS = ["dino/vit_tiny_fashion_mnist.yaml",  # ibot/vit_tiny_fashion_mnist.yaml: MAE + iBOT covers it
                   "dinov2/vit_tiny_fashion_mnist.yaml", "ibot/mae_ibot_vit_tiny_fashion_mnist.yaml"]


@pytest.mark.parametrize("config", FASHION_CONFIGS)
def test_fashion_mnist_configs_train_on_their_multicrop_views(config: str, tmp_path: Path) -> None:
    fake_fashion_mnist(tmp_path / "data", "train", 16)
    data = [f"--data.init_args.root={tmp_path / 'data'}", "--data.init_args.batch_size=8", "--data.init_args.num_workers=0"]
    built = build_run([CONFIGS / config], [*data, *CPU_TRAINER, "--trainer.fast_dev_run=true",
                                           "--trainer.enable_checkpointing=false"], tmp_path)
    assert built.trainer.gradient_clip_val == 3.0 and built.model.optimizer_recipe.weight_decay_end == 0.4
    built.datamodule.setup("fit")
    loaded = next(iter(built.datamodule.train_dataloader()))  # the configs make their crops on the batch:
    assert [(v.dtype, tuple(v.shape)) for v in loaded["views"]] == [(torch.uint8, (8, 1, 28, 28))]
    views = built.datamodule.on_after_batch_transfer(loaded, 0)["views"]
    assert [tuple(v.shape) for v in views] == [(8, 1, 28, 28)] * 2 + [(8, 1, 14, 14)] * 4
    built.trainer.fit(built.model, datamodule=built.datamodule)
    assert built.trainer.global_step == 1


def test_streaming_multicrop_batches_train_dino(tmp_path: Path) -> None:
    write_shard_set(tmp_path, 12, per_shard=6, side=28)
    view = MultiCropViews(global_size=28, local_size=14, num_local=3, mean=(0.5,), std=(0.25,))
    data = WebDatasetDataModule(str(tmp_path), batch_size=4, num_workers=0, view=view, in_chans=1, shuffle_buffer=4)
    data.trainer = SimpleNamespace(global_rank=0, world_size=1)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert [tuple(v.shape) for v in batch["views"]] == [(4, 1, 28, 28)] * 2 + [(4, 1, 14, 14)] * 3
    model = DINO(tiny_vit(img_size=28, patch_size=7, in_chans=1), head=HEAD)
    terms = model.loss_terms(batch)
    assert torch.isfinite(terms["loss"]) and terms["loss"] > 0


def test_eval_command_reads_the_teacher_unless_told() -> None:
    from vispre.commands.eval import parse_args

    assert parse_args(["run"]).branch == "teacher" and parse_args(["run", "--branch", "student"]).branch == "student"
    with pytest.raises(SystemExit):
        parse_args(["run", "--branch", "ema"])
