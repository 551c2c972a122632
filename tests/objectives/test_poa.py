"""POA's elastic student on DINO: the intact term is DINO's loss, the elastic term runs the sub-network on the
shared weights (against a reference built from the extracted ViT), the distillation term against a loop, POA's
weighted sub-network draws, gradients, bad input, a CPU fit and the ``export --subnet`` round trip."""

from __future__ import annotations

import json
from collections import Counter
from functools import partial
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import vispre
from tests.helpers import cpu_trainer, tiny_vit
from vispre.commands.main import main
from vispre.data.synthetic import SyntheticDataModule
from vispre.data.transforms import MultiCropViews
from vispre.errors import VispreError
from vispre.growth.subnet import SubnetSpec, extract_subnet, subnet_forward
from vispre.heads import DINOHead
from vispre.losses.dino import dino_loss, dino_teacher_probs
from vispre.objectives import DINO, OBJECTIVES, POA
from vispre.objectives.poa import elastic_distill_loss

HEAD = partial(DINOHead, out_dim=16, hidden_dim=16, bottleneck_dim=8)
ELASTIC = dict(elastic_widths=[16, 24, 32], elastic_depths=[2, 3, 4])


def backbone() -> vispre.backbones.MaskedViT:
    torch.manual_seed(0)
    return tiny_vit(depth=4, embed_dim=32, num_heads=4)


def poa(**kwargs: object) -> POA:
    return POA(backbone(), head=HEAD, **{**ELASTIC, **kwargs})


def batch(locals_: int = 2, b: int = 4) -> dict:
    gen = torch.Generator().manual_seed(3)
    views = [torch.randn(b, 3, 32, 32, generator=gen) for _ in range(2)]
    return {"views": views + [torch.randn(b, 3, 16, 16, generator=gen) for _ in range(locals_)]}


def test_registry_and_the_intact_term_is_dino() -> None:
    assert OBJECTIVES["poa"] is POA
    model = poa(lambda_ie=1.0)
    dino = DINO(backbone(), head=HEAD)
    dino.load_state_dict(model.state_dict())
    x = batch()
    ours, ref = model.loss_terms(x), dino.loss_terms(x)
    torch.testing.assert_close(ours["dino_loss"], ref["dino_loss"], rtol=0, atol=1e-6)
    torch.testing.assert_close(ours["loss"], ref["loss"], rtol=0, atol=1e-6)  # lambda_ie = 1: plain DINO
    ours["loss"].backward()
    ref["loss"].backward()
    for (name, p), q in zip(model.backbone.named_parameters(), dino.backbone.parameters(), strict=True):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-6, msg=name)


def test_elastic_term_equals_the_extracted_subnet_reference() -> None:
    model = poa()
    x = batch(locals_=0)  # the extracted ViT takes its own image size: global crops only
    spec = model.sample_subnet(0)
    assert spec != SubnetSpec(depth=4, embed_dim=32)
    with torch.no_grad():  # reference before the call: the centre is still zero
        t_logits = model.teacher["head"](model.teacher["backbone"](torch.cat(x["views"])))
        t_probs = dino_teacher_probs(t_logits, model.center, model.teacher_temp).reshape(2, 4, -1)
        small = extract_subnet(model.backbone, spec)
        d = spec.embed_dim
        first = model.head.mlp[0]
        f = small(torch.cat(x["views"]))
        h = F.linear(f * (32 / d), first.weight[:, :d], first.bias)  # POA's sliced first head layer
        z = F.normalize(model.head.mlp[1:](h), dim=-1)
        e_logits = model.head.last_layer(z).reshape(2, 4, -1)
        ref = dino_loss(e_logits, t_probs, model.student_temp)
    terms = model.loss_terms(x)
    assert (terms["elastic_depth"].item(), terms["elastic_embed_dim"].item()) == (spec.depth, spec.embed_dim)
    torch.testing.assert_close(terms["elastic_dino_loss"], ref, rtol=0, atol=1e-5)
    expected = 0.8 * terms["dino_loss"] + 0.2 * (terms["elastic_dino_loss"] + terms["elastic_distill_loss"])
    torch.testing.assert_close(terms["loss"], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("views", [2, 5])
def test_elastic_distill_loss_against_a_loop(views: int) -> None:
    gen = torch.Generator().manual_seed(0)
    e, i = torch.randn(views, 3, 7, generator=gen), torch.randn(views, 3, 7, generator=gen)
    ce = [[-(F.softmax(i[v, n] / 0.2, -1) * F.log_softmax(e[v, n] / 0.1, -1)).sum() for n in range(3)]
          for v in range(views)]
    glob = sum(sum(row) for row in ce[:2]) / 6
    loc = sum(sum(row) for row in ce[2:]) / (3 * (views - 2)) if views > 2 else 0.0
    torch.testing.assert_close(elastic_distill_loss(e, i, 2, 0.1, 0.2), glob + loc, rtol=0, atol=1e-6)
    e.requires_grad_(True)
    i.requires_grad_(True)
    elastic_distill_loss(e, i, 2).backward()
    assert e.grad.abs().sum() > 0 and i.grad is None  # no gradient into the intact side
    with pytest.raises(VispreError, match=r"both be \[V, B, K\]"):
        elastic_distill_loss(e[:, :2], i, 2)


def test_elastic_gradients_reach_only_the_shared_slices() -> None:
    model = poa(lambda_ie=0.0)  # only the elastic terms
    model.elastic_pool = [SubnetSpec(depth=2, embed_dim=16)]
    model.loss_terms(batch())["loss"].backward()
    blocks = model.backbone.vit.blocks
    kept = blocks[3].attn.qkv.weight.grad  # depth 2 of 4 keeps blocks 0 and 3
    assert kept[:16, :16].abs().sum() > 0 and kept[:, 16:].abs().sum() == 0 and kept[16:32].abs().sum() == 0
    for skipped in (blocks[1], blocks[2]):
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in skipped.parameters())
    head_in = model.head.mlp[0].weight.grad
    assert head_in[:, :16].abs().sum() > 0 and head_in[:, 16:].abs().sum() == 0
    assert all(p.grad is None for p in model.teacher.parameters())


def test_sub_network_draws_cycle_through_poas_weighted_pool() -> None:
    model, other = poa(), poa()
    n = len(model.elastic_pool)
    assert n == 35  # round(linspace(3, 1, 3) x linspace(3, 1, 3)) without the intact (32, 4)
    for cycle in range(2):
        drawn = [model.sample_subnet(s) for s in range(cycle * n, (cycle + 1) * n)]
        assert Counter(drawn) == Counter(model.elastic_pool)
    assert [model.sample_subnet(s) for s in range(50)] == [other.sample_subnet(s) for s in range(50)]
    assert [model.sample_subnet(s) for s in range(n)] != [model.sample_subnet(s) for s in range(n, 2 * n)]
    default = POA(backbone(), head=HEAD)  # widths >= half (16, 24, 32), depths >= half (2, 3, 4)
    assert {(s.embed_dim, s.depth) for s in default.elastic_pool} == {(w, d) for w in (16, 24, 32)
                                                                      for d in (2, 3, 4)} - {(32, 4)}


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(lambda_ie=1.5), r"POA.lambda_ie must lie in \[0, 1\]"),
    (dict(distill_temp=0.0), r"POA.distill_temp must be > 0"),
    (dict(elastic_widths=[16, 40]), r"embed_dim must be a multiple of head_dim 8 in \[8, 32\]"),
    (dict(elastic_widths=[12]), r"embed_dim must be a multiple of head_dim 8 in \[8, 32\]"),
    (dict(elastic_depths=[2, 6]), r"depth must be an integer in \[1, 4\]"),
    (dict(elastic_widths=[32], elastic_depths=[4]), "no sub-network smaller than the model"),
    (dict(select_scale=0.5), "select_scale must be >= 1"),
])
def test_bad_arguments_name_the_parameter_and_range(kwargs: dict, message: str) -> None:
    with pytest.raises(VispreError, match=message):
        poa(**kwargs)


def test_fit_then_export_subnet_round_trip(tmp_path: Path) -> None:
    model = poa()
    view = MultiCropViews(global_size=32, local_size=16, num_local=2, mean=(0.5,) * 3, std=(0.25,) * 3)
    data = SyntheticDataModule(img_size=40, in_chans=3, num_samples=8, batch_size=4, view=view)
    trainer = cpu_trainer(max_epochs=1, default_root_dir=tmp_path, enable_checkpointing=True)
    before = model.backbone.vit.blocks[0].mlp.fc1.weight.detach().clone()
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 2 and model.draw_step == 2
    assert not torch.equal(model.backbone.vit.blocks[0].mlp.fc1.weight, before)
    ckpt = next(tmp_path.rglob("*.ckpt"))
    out = tmp_path / "sub.safetensors"
    assert main(["export", str(ckpt), str(out), "--subnet", "depth=3,embed_dim=24"]) == 0
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = subnet_forward(vispre.load_backbone(ckpt), x, SubnetSpec(depth=3, embed_dim=24))
        teacher = subnet_forward(model.teacher["backbone"], x, SubnetSpec(depth=3, embed_dim=24))
        assert (ref - teacher).abs().max() <= 1e-6  # the EMA teacher's sub-network (DINO's export convention)
        args = json.loads(out.with_suffix(".json").read_text())
        plain = timm.create_model(args.pop("model_name"), pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(out)), **args).eval()
        for vit in (vispre.load_backbone(out), plain):
            assert (len(vit.blocks), vit.embed_dim) == (3, 24)
            assert (vit(x) - ref).abs().max() <= 1e-5
    student = tmp_path / "student_sub.safetensors"
    assert main(["export", str(ckpt), str(student), "--subnet", "depth=3,embed_dim=24", "--branch", "student"]) == 0
    with torch.no_grad():
        ref = subnet_forward(model.backbone, x, SubnetSpec(depth=3, embed_dim=24))
        assert (vispre.load_backbone(student)(x) - ref).abs().max() <= 1e-5


def test_composes_with_mae_through_multi_objective(tmp_path: Path) -> None:
    from tests.helpers import TINY_DECODER
    from vispre.objectives import MAE, MultiObjective

    shared = backbone()
    module = MultiObjective(shared, objectives=[partial(MAE, **TINY_DECODER), partial(POA, head=HEAD, **ELASTIC)],
                            weights=[1.0, 0.5], views=[[0], [0, 1, 2, 3]], names=["mae", "poa"])
    sub = module.objectives[1]
    assert sub.backbone is shared
    teacher = sub.teacher["backbone"].vit.blocks[0].attn.qkv.weight.detach().clone()
    view = MultiCropViews(global_size=32, local_size=16, num_local=2, mean=(0.5,) * 3, std=(0.25,) * 3)
    data = SyntheticDataModule(img_size=40, in_chans=3, num_samples=8, batch_size=4, view=view)
    trainer = cpu_trainer(max_epochs=1, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 2 and sub.draw_step == 2  # the schedules of step 1 drew step 1's sub-network
    assert not torch.equal(sub.teacher["backbone"].vit.blocks[0].attn.qkv.weight, teacher)  # EMA moved
    terms = module.loss_terms(batch())
    assert {"poa/dino_loss", "poa/elastic_dino_loss", "poa/elastic_distill_loss", "mae/loss"} <= set(terms)
    torch.testing.assert_close(terms["loss"], terms["mae/loss"] + 0.5 * terms["poa/loss"])
