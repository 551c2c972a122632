"""vispre.backbones.weights: clear mismatch errors, refusal of pickled objects (without running them, naming the
global), named missing files, non-checkpoint files named with what was expected, and the warm start of a
backbone (MaskedViT(init_from=...)) that keeps heads fresh."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

from tests.helpers import assert_same_weights, perturbed, tiny_mae, tiny_mae_run, tiny_vit
from vispre.backbones.vit import describe_vit
from vispre.backbones.weights import (EXPECTED_FILES, check_torch_file, load_into, read_backbone,
                                      resolve_checkpoint, safe_torch_load)
from vispre.errors import VispreError
from vispre.hub import export_backbone, load_backbone
from vispre.objectives import MAE


@pytest.fixture
def mae_run(tmp_path: Path) -> tuple[MAE, Path]:
    return tiny_mae_run(tmp_path)


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
    with pytest.raises(VispreError) as info:
        load_backbone(_saved_state(tmp_path, edit), **arch)
    assert str(info.value) == message


def test_load_into_leaves_the_model_unchanged_on_a_mismatch(tmp_path: Path) -> None:
    vit = tiny_vit().vit
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    state = read_backbone(_saved_state(tmp_path, "missing")).state_dict
    with pytest.raises(VispreError, match="missing keys \\['norm.weight'\\]"):
        load_into(vit, state)
    assert all(torch.equal(v, before[k]) for k, v in vit.state_dict().items())


class Payload:
    """Unpickling it would run __setstate__: a stand-in for arbitrary code in a downloaded file."""

    ran = False

    def __setstate__(self, state: dict) -> None:
        Payload.ran = True


class TrickyDict(collections.OrderedDict):
    pass


@pytest.mark.parametrize("obj,culprit", [
    (lambda state: {"state_dict": state, "extra": Payload()}, f"{__name__}.Payload"),
    (lambda state: TrickyDict(state), f"{__name__}.TrickyDict"),
])
def test_pickled_objects_are_refused_without_running_them(obj, culprit: str, tmp_path: Path) -> None:
    torch.save(obj(tiny_vit().vit.state_dict()), tmp_path / "evil.ckpt")
    with pytest.raises(VispreError) as info:
        load_backbone(tmp_path / "evil.ckpt")
    assert str(info.value).startswith(f"refusing to load {tmp_path / 'evil.ckpt'}: it is not a plain-tensor "
                                      f"checkpoint, it pickles the Python global {culprit} (unsafe to unpickle")
    assert "weights_only" not in str(info.value)  # not torch's hint that unsafe loading would work
    assert not Payload.ran


class SystemCall:
    """Pickles as a call of os.system (the case of issue 16: the refusal names ``posix.system``)."""

    def __reduce__(self) -> tuple:
        import os

        return (os.system, ("echo should-not-run",))


def test_an_os_system_payload_is_named(tmp_path: Path) -> None:
    torch.save({"state_dict": {}, "x": SystemCall()}, tmp_path / "evil.ckpt")
    with pytest.raises(VispreError, match=r"it pickles the Python global posix\.system \(unsafe"):
        safe_torch_load(tmp_path / "evil.ckpt")


@pytest.mark.parametrize("content,kind", [
    (b"hello\n", "a file starting with b'hell'"),
    (b"", "an empty file"),
])
def test_a_file_that_is_not_a_torch_file_names_what_was_expected(content: bytes, kind: str, tmp_path: Path) -> None:
    """A text file used to reach torch's unpickler and come out as `KeyError: 101`."""
    (tmp_path / "notes.txt").write_bytes(content)
    with pytest.raises(VispreError) as info:
        load_backbone(tmp_path / "notes.txt")
    assert str(info.value) == (f"{tmp_path / 'notes.txt'} is not a checkpoint ({kind}, not a torch.save file): "
                               f"expected {EXPECTED_FILES}")


def test_both_torch_formats_pass_the_file_check(tmp_path: Path) -> None:
    state = {"w": torch.arange(3.0)}
    torch.save(state, tmp_path / "zip.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert check_torch_file(tmp_path / "zip.pt") is True and check_torch_file(tmp_path / "legacy.pt") is False
    for name in ("zip.pt", "legacy.pt"):
        assert torch.equal(safe_torch_load(tmp_path / name, mmap=True)["w"], state["w"])


def test_missing_files_and_folders_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint .*nope.ckpt does not exist"):
        resolve_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(FileNotFoundError, match="is a folder without checkpoints/last.ckpt"):
        load_backbone(tmp_path)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(VispreError, match="garbage.pt is not a checkpoint .*: expected a Lightning checkpoint"):
        load_backbone(tmp_path / "garbage.pt")
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 cut short")  # a zip header, then nothing
    with pytest.raises(VispreError, match=r"cut.pt is not a readable torch checkpoint of plain tensors \(.+\): "
                                          "expected a Lightning checkpoint"):
        load_backbone(tmp_path / "cut.pt")
    (tmp_path / "garbage.safetensors").write_bytes(b"not safetensors either")
    with pytest.raises(VispreError, match="garbage.safetensors is not a readable safetensors file"):
        load_backbone(tmp_path / "garbage.safetensors")
    torch.save({"optimizer": {"lr": torch.ones(1)}}, tmp_path / "no_vit.pt")
    with pytest.raises(VispreError, match="no ViT backbone weights found"):
        read_backbone(tmp_path / "no_vit.pt")


def test_warm_start_loads_the_backbone_and_keeps_heads_fresh(mae_run: tuple[MAE, Path], tmp_path: Path) -> None:
    source, run = mae_run
    export = export_backbone(run, tmp_path / "b.safetensors")
    for init_from in (str(run), str(export)):
        torch.manual_seed(3)
        warm = tiny_mae(tiny_vit(init_from=init_from))
        torch.manual_seed(3)
        cold = tiny_mae(tiny_vit())
        assert_same_weights(warm.backbone, source.backbone)
        assert_same_weights(warm.decoder, cold.decoder)  # fresh init, not the file's decoder
        assert not all(torch.equal(a, b) for a, b in zip(warm.decoder.parameters(), source.decoder.parameters()))
        assert not warm.backbone.vit.pos_embed.requires_grad  # still the frozen (now loaded) position table


def test_warm_start_of_another_architecture_is_refused(mae_run: tuple[MAE, Path]) -> None:
    _, run = mae_run
    with pytest.raises(VispreError) as info:
        tiny_vit(depth=3, init_from=str(run))
    assert str(info.value) == (f"cannot initialise the backbone from {run}: backbone weights do not match the "
                               f"model: missing keys ['blocks.2.attn.proj.bias', 'blocks.2.attn.proj.weight', "
                               f"'blocks.2.attn.qkv.bias', 'blocks.2.attn.qkv.weight', 'blocks.2.mlp.fc1.bias'], "
                               f"unexpected keys []")
