"""vispre.hub: export -> plain timm load, load_backbone from every supported file (run folder, Lightning
checkpoint, export, timm/MAE-style state dicts), the top-level ``vispre.load_backbone``, warm start from a config."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

import vispre
from tests.helpers import (QUICKSTART_CONFIG, assert_same_weights, backbone_args, build_run, cpu_trainer,
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
    backbone = perturbed(MaskedViT(**backbone_args(QUICKSTART_CONFIG)))
    torch.save({"model": backbone.vit.state_dict()}, tmp_path / "mae_style.pth")
    built = build_run([QUICKSTART_CONFIG], [*synthetic_data_args(QUICKSTART_CONFIG),
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


def test_export_target_must_be_safetensors(mae_run: tuple[MAE, Path], tmp_path: Path) -> None:
    _, run = mae_run
    with pytest.raises(vispre.VispreError, match="export target must end in .safetensors, got b.pt"):
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
