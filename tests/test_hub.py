"""vispre.hub: export -> plain timm load, load_backbone from every supported file, clear mismatch errors,
refusal of pickled objects, pos-embed resampling for another image size, warm start of an objective."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from tests.conftest import tiny_vit
from tests.test_eval_probe import single_thread  # noqa: F401 (autouse fixture)
from vispre.backbones import MaskedViT
from vispre.backbones.vit import describe_vit
from vispre.hub import export_backbone, load_backbone, read_backbone
from vispre.objectives import MAE

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def perturbed(backbone: MaskedViT) -> MaskedViT:
    """Give every tensor (incl. the frozen sin-cos pos_embed) distinctive values, as after training."""
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return backbone.eval()


def lightning_checkpoint(module: torch.nn.Module, path: Path) -> Path:
    """What Lightning writes (state_dict + loops + our metadata), minus what the test does not need."""
    checkpoint = {"epoch": 0, "global_step": 1, "state_dict": module.state_dict(), "pytorch-lightning_version": "2"}
    module.on_save_checkpoint(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture
def mae_run(tmp_path: Path) -> tuple[MAE, Path]:
    """A tiny MAE objective and its run folder ``run/checkpoints/last.ckpt``."""
    mae = MAE(perturbed(tiny_vit()), decoder_dim=16, decoder_depth=1, decoder_num_heads=2)
    lightning_checkpoint(mae, tmp_path / "run" / "checkpoints" / "last.ckpt")
    return mae, tmp_path / "run"


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
    with pytest.raises(ValueError, match="records no architecture: pass create_vit arguments"):
        load_backbone(tmp_path / "weights.pth")
    vit = load_backbone(tmp_path / "weights.pth", **describe_vit(backbone.vit))
    assert_same_weights(vit, backbone.vit)


def test_avg_pool_backbone_keeps_its_fc_norm(tmp_path: Path) -> None:
    backbone = perturbed(tiny_vit(global_pool="avg"))
    assert "fc_norm.weight" in backbone.vit.state_dict()
    lightning_checkpoint(MAE(backbone, decoder_dim=16, decoder_depth=1, decoder_num_heads=2), tmp_path / "a.ckpt")
    vit = load_backbone(export_backbone(tmp_path / "a.ckpt", tmp_path / "a.safetensors"))
    assert_same_weights(vit, backbone.vit)


def _saved_state(tmp_path: Path, edit: str) -> Path:
    state = dict(perturbed(tiny_vit()).vit.state_dict())
    if edit == "extra":
        state["blocks.2.norm1.weight"] = torch.ones(32)
    elif edit == "missing":
        del state["norm.weight"]
    torch.save(state, tmp_path / "w.pt")
    return tmp_path / "w.pt"


@pytest.mark.parametrize("edit,overrides,message", [
    ("extra", {}, "backbone weights do not match the model: missing keys [], "
                  "unexpected keys ['blocks.2.norm1.weight']"),
    ("missing", {}, "backbone weights do not match the model: missing keys ['norm.weight'], unexpected keys []"),
    # first mismatch in file order: fc1 of block 0; both shapes named
    ("none", {"mlp_ratio": 2.0}, "shape mismatch at 'blocks.0.mlp.fc1.weight': checkpoint (128, 32) vs model (64, 32)"),
])
def test_mismatching_weights_give_the_documented_error(edit: str, overrides: dict, message: str,
                                                       tmp_path: Path) -> None:
    arch = {**describe_vit(tiny_vit().vit), **overrides}
    with pytest.raises(ValueError) as info:
        load_backbone(_saved_state(tmp_path, edit), **arch)
    assert str(info.value) == message


class Payload:
    """Unpickling it would run __setstate__: a stand-in for arbitrary code in a downloaded file."""

    ran = False

    def __setstate__(self, state: dict) -> None:
        Payload.ran = True


class TrickyDict(collections.OrderedDict):
    pass


@pytest.mark.parametrize("obj,culprit", [
    (lambda state: {"state_dict": state, "extra": Payload()}, "tests.test_hub.Payload"),
    (lambda state: TrickyDict(state), "tests.test_hub.TrickyDict"),
])
def test_pickled_objects_are_refused_without_running_them(obj, culprit: str, tmp_path: Path) -> None:
    torch.save(obj(tiny_vit().vit.state_dict()), tmp_path / "evil.ckpt")
    with pytest.raises(ValueError) as info:
        load_backbone(tmp_path / "evil.ckpt")
    assert str(info.value).startswith(f"refusing to load {tmp_path / 'evil.ckpt'}: it contains a pickled Python "
                                      f"object ({culprit}) that is unsafe to unpickle")
    assert not Payload.ran


def test_missing_files_and_folders_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint .*nope.ckpt does not exist"):
        load_backbone(tmp_path / "nope.ckpt")
    with pytest.raises(FileNotFoundError, match="is a folder without checkpoints/last.ckpt"):
        load_backbone(tmp_path)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt is not a readable torch checkpoint of plain tensors: "
                                         "Unsupported operand"):
        load_backbone(tmp_path / "garbage.pt")
    (tmp_path / "garbage.safetensors").write_bytes(b"not safetensors either")
    with pytest.raises(ValueError, match="garbage.safetensors is not a readable safetensors file"):
        load_backbone(tmp_path / "garbage.safetensors")


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
    state, args = read_backbone(run)
    assert args is not None and args["img_size"] == 32  # the recorded size is only overridden on request


def test_warm_start_loads_the_backbone_and_keeps_heads_fresh(mae_run: tuple[MAE, Path], tmp_path: Path) -> None:
    source, run = mae_run
    export = export_backbone(run, tmp_path / "b.safetensors")
    for init_from in (str(run), str(export)):
        torch.manual_seed(3)
        warm = MAE(tiny_vit(init_from=init_from), decoder_dim=16, decoder_depth=1, decoder_num_heads=2)
        torch.manual_seed(3)
        cold = MAE(tiny_vit(), decoder_dim=16, decoder_depth=1, decoder_num_heads=2)
        assert_same_weights(warm.backbone, source.backbone)
        assert_same_weights(warm.decoder, cold.decoder)  # fresh init, not the file's decoder
        assert not all(torch.equal(a, b) for a, b in zip(warm.decoder.parameters(), source.decoder.parameters()))
        assert not warm.backbone.vit.pos_embed.requires_grad  # still the frozen (now loaded) position table


def test_warm_start_of_another_architecture_is_refused(mae_run: tuple[MAE, Path]) -> None:
    _, run = mae_run
    with pytest.raises(ValueError) as info:
        tiny_vit(depth=3, init_from=str(run))
    assert str(info.value) == (f"cannot initialise the backbone from {run}: backbone weights do not match the "
                               f"model: missing keys ['blocks.2.attn.proj.bias', 'blocks.2.attn.proj.weight', "
                               f"'blocks.2.attn.qkv.bias', 'blocks.2.attn.qkv.weight', 'blocks.2.mlp.fc1.bias'], "
                               f"unexpected keys []")


def test_warm_start_from_a_config(tmp_path: Path) -> None:
    from tests.test_cli import QUICKSTART, backbone_args, build, synthetic_data_args

    backbone = perturbed(MaskedViT(**backbone_args(QUICKSTART)))
    torch.save({"model": backbone.vit.state_dict()}, tmp_path / "mae_style.pth")
    cli = build(["--config", str(QUICKSTART), *synthetic_data_args(QUICKSTART), "--trainer.accelerator=cpu",
                 "--trainer.logger=false", f"--model.backbone.init_args.init_from={tmp_path / 'mae_style.pth'}"],
                tmp_path)
    assert_same_weights(cli.model.backbone, backbone)


def test_load_backbone_from_a_real_lightning_checkpoint(tmp_path: Path) -> None:
    import lightning as L

    from vispre.data.synthetic import SyntheticDataModule

    mae = MAE(tiny_vit(), decoder_dim=16, decoder_depth=1, decoder_num_heads=2)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(mae, datamodule=SyntheticDataModule(img_size=32, num_samples=8, batch_size=4))
    trainer.save_checkpoint(tmp_path / "real.ckpt")
    vit = load_backbone(tmp_path / "real.ckpt")
    assert_same_weights(vit, mae.backbone.vit)
