"""vispre.hub: export -> plain timm load, load_backbone from every supported file (run folder, Lightning
checkpoint, export, timm/MAE-style state dicts), the top-level ``vispre.load_backbone``, warm start from a config."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

import vispre
from tests.helpers import (MAE_CONFIG, assert_same_weights, backbone_args, build_run, cpu_trainer,
                           lightning_checkpoint, one_thread, perturbed, synthetic_data_args, tiny_mae, tiny_mae_run,
                           tiny_vit)
from vispre.backbones import MaskedViT
from vispre.backbones.vit import describe_vit
from vispre.backbones.weights import read_backbone
from vispre.hub import export_backbone, load_backbone
from vispre.objectives import MAE

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture
def mae_run(tmp_path: Path) -> tuple[MAE, Path]:
    return tiny_mae_run(tmp_path)


def test_export_then_plain_timm_load_gives_the_same_features(mae_run: tuple[MAE, Path], tmp_path: Path) -> None:
    mae, run = mae_run
    out = export_backbone(run, tmp_path / "export" / "backbone.safetensors")
    args = json.loads(out.with_suffix(".json").read_text())
    plain = timm.create_model(args.pop("model_name"), pretrained=True, pretrained_cfg_overlay=dict(file=str(out)),
                              **args).eval()
    assert type(plain) is VisionTransformer
    with torch.no_grad():
        ours = mae.backbone.forward_features(X)
        diff = (plain.forward_features(X) - ours).abs().max().item()
        pooled_diff = (plain(X) - mae.backbone(X)).abs().max().item()
    assert diff <= 1e-6 and pooled_diff <= 1e-6
    assert not list(out.parent.glob("*.tmp*"))  # written atomically


def test_load_backbone_from_run_folder_checkpoint_and_export(mae_run: tuple[MAE, Path], tmp_path: Path) -> None:
    mae, run = mae_run
    for source in (run, run / "checkpoints" / "last.ckpt", export_backbone(run, tmp_path / "b.safetensors")):
        vit = load_backbone(source)
        assert not vit.training
        assert_same_weights(vit, mae.backbone.vit)


@pytest.mark.parametrize("layout", ["mae_model", "state_dict_backbone", "module_prefix", "timm_with_head"])
def test_load_backbone_from_timm_and_mae_style_state_dicts(layout: str, tmp_path: Path) -> None:
    backbone = perturbed(tiny_vit())
    own = backbone.vit.state_dict()
    if layout == "mae_model":  # official MAE pretrain checkpoint: encoder keys bare, decoder beside them
        extra = {"mask_token": torch.zeros(1, 1, 16), "decoder_embed.weight": torch.zeros(16, 32),
                 "decoder_blocks.0.norm1.weight": torch.ones(16), "decoder_pred.weight": torch.zeros(192, 16)}
        obj = {"model": {**own, **extra}, "epoch": 799}
    elif layout == "state_dict_backbone":
        obj = {"state_dict": {**{f"backbone.{k}": v for k, v in own.items()}, "head.weight": torch.zeros(10, 32),
                              "projector.layers.0.weight": torch.zeros(8, 32)}}
    elif layout == "module_prefix":  # DDP-wrapped
        obj = {f"module.{k}": v for k, v in own.items()}
    else:  # a timm classifier's state dict: the head is dropped
        obj = {**own, "head.weight": torch.zeros(1000, 32), "head.bias": torch.zeros(1000)}
    torch.save(obj, tmp_path / "weights.pth")
    with pytest.raises(vispre.VispreError, match="records no architecture: pass create_vit arguments"):
        load_backbone(tmp_path / "weights.pth")
    vit = load_backbone(tmp_path / "weights.pth", **describe_vit(backbone.vit))
    assert_same_weights(vit, backbone.vit)


def test_avg_pool_backbone_keeps_its_fc_norm(tmp_path: Path) -> None:
    backbone = perturbed(tiny_vit(global_pool="avg"))
    assert "fc_norm.weight" in backbone.vit.state_dict()
    lightning_checkpoint(tiny_mae(backbone), tmp_path / "a.ckpt")
    vit = load_backbone(export_backbone(tmp_path / "a.ckpt", tmp_path / "a.safetensors"))
    assert_same_weights(vit, backbone.vit)



def test_pos_embed_is_resampled_for_another_image_size(mae_run: tuple[MAE, Path], tmp_path: Path) -> None:
    mae, run = mae_run
    saved = mae.backbone.vit.pos_embed.detach()  # [1, 1 + 4*4, 32]
    vit = load_backbone(run, img_size=64)  # 8x8 patch grid
    assert vit.pos_embed.shape == (1, 1 + 64, 32)
    assert torch.equal(vit.pos_embed[:, :1], saved[:, :1])  # the cls position is kept as it is
    # reference: the 4x4 grid (row-major tokens) as a [1, D, 4, 4] image, bicubic to 8x8, back to tokens
    grid = saved[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(vit.pos_embed[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 64, 32))
    assert vit(torch.randn(2, 3, 64, 64)).shape == (2, 32)
    others = {k: v for k, v in vit.state_dict().items() if k != "pos_embed"}
    for key, value in others.items():
        assert torch.equal(value, mae.backbone.vit.state_dict()[key]), key
    state, args = read_backbone(run)  # the NamedTuple unpacks as (state_dict, architecture)
    assert args is not None and args["img_size"] == 32  # the recorded size is only overridden on request


def test_warm_start_from_a_config(tmp_path: Path) -> None:
    backbone = perturbed(MaskedViT(**backbone_args(MAE_CONFIG)))
    torch.save({"model": backbone.vit.state_dict()}, tmp_path / "mae_style.pth")
    built = build_run([MAE_CONFIG], [*synthetic_data_args(MAE_CONFIG),
                                            f"--model.backbone.init_args.init_from={tmp_path / 'mae_style.pth'}"],
                      tmp_path, trainer=False)
    assert_same_weights(built.model.backbone, backbone)


def test_top_level_api(mae_run: tuple[MAE, Path], tmp_path: Path) -> None:
    """`vispre.load_backbone(path)` / `vispre.export_backbone` are the hub's functions, loaded on first use."""
    mae, run = mae_run
    assert vispre.load_backbone is load_backbone and vispre.export_backbone is export_backbone
    assert_same_weights(vispre.load_backbone(run), mae.backbone.vit)
    assert "mae" in vispre.OBJECTIVES and issubclass(vispre.VispreError, ValueError)
    assert {"load_backbone", "export_backbone", "OBJECTIVES", "VispreError", "create_vit"} <= set(vispre.__all__)


def test_export_target_must_be_safetensors_or_a_folder(mae_run: tuple[MAE, Path], tmp_path: Path) -> None:
    _, run = mae_run
    with pytest.raises(vispre.VispreError, match=r"export target must end in .safetensors \(a file\) or have no "
                                                 r"suffix \(a timm / Hugging Face folder\), got b.pt"):
        export_backbone(run, tmp_path / "b.pt")
    assert not (tmp_path / "b.pt").exists()


def test_load_backbone_from_a_real_lightning_checkpoint(tmp_path: Path) -> None:
    from vispre.data.synthetic import SyntheticDataModule

    mae = tiny_mae()
    trainer = cpu_trainer(max_steps=2)
    trainer.fit(mae, datamodule=SyntheticDataModule(img_size=32, num_samples=8, batch_size=4))
    trainer.save_checkpoint(tmp_path / "real.ckpt")
    vit = load_backbone(tmp_path / "real.ckpt")
    assert_same_weights(vit, mae.backbone.vit)


def test_folder_export_loads_in_plain_timm_by_name_alone_without_warnings(
        mae_run: tuple[MAE, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mae, run = mae_run
    out = export_backbone(run, tmp_path / "exports" / "tiny")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    cfg = config["pretrained_cfg"]
    assert config["architecture"] == "vit_tiny_patch16_224" and config["num_classes"] == 0
    assert config["global_pool"] == "token" and config["model_args"]["embed_dim"] == 32
    assert cfg["input_size"] == [3, 32, 32] and cfg["num_classes"] == 0 and cfg["crop_pct"] == 1.0
    assert cfg["mean"] == [0.485, 0.456, 0.406] and "tag" not in cfg and "license" not in cfg  # no run config: ImageNet
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
        warnings.simplefilter("error")
        plain = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert type(plain) is VisionTransformer and plain.num_classes == 0
    ours = vispre.load_backbone(run)
    with torch.no_grad():
        assert (plain(X) - ours(X)).abs().max().item() <= 1e-6  # the pooled embedding
        assert (plain.forward_features(X) - ours.forward_features(X)).abs().max().item() <= 1e-6
    assert_same_weights(load_backbone(out), mae.backbone.vit)  # vispre reads the folder too
    assert not list(out.parent.glob(".*tmp*"))


def test_grey_folder_export_records_the_runs_normalisation_and_timm_reads_it(tmp_path: Path) -> None:
    backbone = perturbed(tiny_vit(img_size=28, patch_size=7, in_chans=1))
    run = tmp_path / "run"
    lightning_checkpoint(tiny_mae(backbone), run / "checkpoints" / "last.ckpt")
    (run / "config.yaml").write_text(
        "seed_everything: 0\ntrainer: {max_steps: 60}\n"
        "model: {class_path: vispre.objectives.MAE, init_args: {mask_ratio: 0.5}}\n"
        "data: {class_path: vispre.data.FashionMNISTDataModule, init_args: {batch_size: 256, view: null}}\n")
    (run / "report.json").write_text(json.dumps({"backbone": str(run), "tasks": {"fashion_mnist": {
        "pooled": {"feature": "pooled", "global_pool": "token", "knn_top1": 0.5, "knn_variant": "pooled", "knn_k": 20,
                   "linear_top1": 0.6, "linear_lr": 0.1, "linear_weight_decay": 0.0},
        "knn_top1": 0.7, "knn_feature": "patches", "knn_k": 20, "linear_top1": 0.8, "linear_feature": "patches",
        "linear_lr": 0.1, "linear_weight_decay": 0.0, "linear_optimizer": "sgd"}}}))
    out = export_backbone(run, tmp_path / "grey")
    cfg = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    assert cfg["input_size"] == [1, 28, 28] and cfg["mean"] == [0.286] and cfg["std"] == [0.353]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no channel-adaptation warning for a grey model
        plain = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    data_cfg = timm.data.resolve_data_config({}, model=plain)
    assert data_cfg["input_size"] == (1, 28, 28) and tuple(data_cfg["mean"]) == (0.286,)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert (plain(x) - backbone.vit.eval()(x)).abs().max().item() <= 1e-6
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: timm\n") and "Fashion-MNIST's (the data module of" in card
    assert "- objective: `MAE`" in card and "- data: `FashionMNISTDataModule`" in card
    assert "| fashion_mnist | pooled (timm embedding, global_pool=token) | 0.5000 |" in card  # the evaluation table
    assert f'timm.create_model("local-dir:{out}", pretrained=True)' in card


def test_folder_export_refuses_a_non_empty_folder_and_checks_the_normalisation(mae_run: tuple[MAE, Path],
                                                                               tmp_path: Path) -> None:
    _, run = mae_run
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(vispre.VispreError, match="export folder .*taken exists and is not empty: choose another folder "
                                                 "or pass --force"):
        export_backbone(run, out)
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(vispre.VispreError, match=r"mean \[0.5\] / std \[0.5\] \(given on the command line\) need one "
                                                 r"value per channel: the backbone has in_chans=3"):
        export_backbone(run, tmp_path / "new", mean=[0.5], std=[0.5])
    with pytest.raises(vispre.VispreError, match="give both mean and std"):
        export_backbone(run, tmp_path / "new", mean=[0.5, 0.5, 0.5])
    export_backbone(run, out, force=True, mean=[0.5] * 3, std=[0.25] * 3)
    assert not (out / "notes.txt").exists()
    assert json.loads((out / "config.json").read_text())["pretrained_cfg"]["std"] == [0.25] * 3


def test_subnet_folder_export_is_a_standalone_timm_model(tmp_path: Path) -> None:
    from vispre.growth.subnet import SubnetSpec, extract_subnet

    backbone = perturbed(tiny_vit(depth=4, embed_dim=64, num_heads=4))
    lightning_checkpoint(tiny_mae(backbone), tmp_path / "a.ckpt")
    out = export_backbone(tmp_path / "a.ckpt", tmp_path / "sub", subnet=SubnetSpec(depth=2, embed_dim=32))
    plain = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    small = extract_subnet(backbone.vit, SubnetSpec(depth=2, embed_dim=32)).eval()
    assert len(plain.blocks) == 2 and plain.embed_dim == 32
    with torch.no_grad():
        assert (plain(X) - small(X)).abs().max().item() <= 1e-6
