"""build_from_config: every run config under configs/ builds and takes one optimizer step on CPU; the data
module is only built on request (no data files needed otherwise); the speed fragments merge into a model
config and build the intended Trainer pieces; a run's saved config.yaml reads back."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from tests.helpers import CONFIGS, CPU_TRAINER, MAE_CONFIG, backbone_args, build_run, synthetic_data_args
from vispre.callbacks.safety import AtomicCheckpointIO
from vispre.callbacks.speed import SpeedSwitchboard
from vispre.commands import main
from vispre.commands.config import ConfigError, build_from_config, read_config_files
from vispre.errors import VispreError
from vispre.io import read_yaml
from vispre.objectives.base import PretrainObjective

# Full run configs (model + data); the fragments under data/, speed/ and eval/ are merged into them instead.
FRAGMENT_DIRS = {"data", "speed", "eval", "ablation"}  # ablation/: tools/ablate_objectives.py's lists
RUN_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name not in FRAGMENT_DIRS)
SPEED = CONFIGS / "speed"
CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.num_nodes=1"]
# The ImageNet recipes keep their architecture (ViT-B/16 width, depth, heads; every head and loss) but are built
# at 32 px with heads at most HEAD_DIM wide: at 224 px with 8192-d projectors one step takes ~11 GB of RAM.
SMALL_IMG, HEAD_DIM = 32, 1024


def small_overrides(config: Path) -> list[str]:
    """Overrides that shrink a large recipe's image size and head widths (``*_dim`` > HEAD_DIM) for a CPU step."""
    if backbone_args(config).get("img_size", 224) <= 64:
        return []
    model = yaml.safe_load(config.read_text())["model"]
    overrides = [f"--model.init_args.backbone.init_args.img_size={SMALL_IMG}"]

    def walk(node: object, key_path: str) -> None:
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            if key == "backbone":
                continue
            if isinstance(value, int) and key.endswith("dim") and value > HEAD_DIM:
                overrides.append(f"--{key_path}.{key}={HEAD_DIM}")
            walk(value, f"{key_path}.{key}")

    walk(model, "model")
    return overrides


@pytest.fixture(autouse=True)
def _release_memory() -> Iterator[None]:
    yield
    gc.collect()  # the next parametrisation must not stack its model on this one's


@pytest.mark.parametrize("config", RUN_CONFIGS, ids=[str(p.relative_to(CONFIGS)) for p in RUN_CONFIGS])
def test_every_config_builds_and_takes_one_optimizer_step(config: Path, tmp_path: Path) -> None:
    small = small_overrides(config)
    img_size = SMALL_IMG if small else None
    built = build_run([config], [*small, *synthetic_data_args(config, img_size=img_size), *CPU_TRAINER,
                                 "--trainer.fast_dev_run=true", "--trainer.enable_checkpointing=false"], tmp_path)
    class_path = yaml.safe_load(config.read_text())["model"]["class_path"]
    assert isinstance(built.model, PretrainObjective) and type(built.model).__name__ == class_path.rsplit(".", 1)[1]
    before = {n: p.detach().clone() for n, p in built.model.backbone.named_parameters() if p.requires_grad}
    built.trainer.fit(built.model, datamodule=built.datamodule)
    assert built.trainer.global_step == 1
    after = dict(built.model.backbone.named_parameters())  # a growth config adds blocks: compare the old ones
    moved = [n for n, p in before.items() if not torch.equal(after[n], p)]
    assert moved, "one optimizer step must change the backbone"


def test_the_data_module_is_parsed_but_only_built_on_request(tmp_path: Path) -> None:
    """A shard config whose shards do not exist still gives its objective and its (overridden) batch size."""
    configs = [MAE_CONFIG, CONFIGS / "data/fashion_mnist_wds.yaml"]
    missing = f"--data.init_args.urls={tmp_path / 'no_shards_here'}"
    built = build_from_config(configs, [missing, "--data.init_args.batch_size=12"])
    assert isinstance(built.model, PretrainObjective) and built.datamodule is None and built.trainer is None
    assert built.config.data.init_args.batch_size == 12
    with pytest.raises(FileNotFoundError, match="no_shards_here"):
        build_from_config(configs, [missing], data=True)


def test_config_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        build_from_config([MAE_CONFIG], ["--model.init_args.decoder_dim=wide"])
    assert str(info.value).startswith('Parser key "model":') and "\n" not in str(info.value)
    assert "decoder_dim" in str(info.value)
    with pytest.raises(FileNotFoundError, match="config .*nope.yaml does not exist"):
        build_from_config([tmp_path / "nope.yaml"])


def test_ddp_config(tmp_path: Path) -> None:
    built = build_run([MAE_CONFIG, SPEED / "ddp.yaml"], [*CPU, "--trainer.precision=32-true"], tmp_path)
    assert isinstance(built.trainer.strategy, DDPStrategy)
    ddp = built.config.trainer.strategy.init_args
    assert ddp.static_graph is True and ddp.gradient_as_bucket_view is True and ddp.find_unused_parameters is False
    assert isinstance(built.trainer.strategy.checkpoint_io, AtomicCheckpointIO)  # the cli default plugin survives


def test_fsdp_config_builds_its_strategy(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        assert isinstance(build_run([MAE_CONFIG, SPEED / "fsdp.yaml"], [], tmp_path).trainer.strategy,
                          FSDPStrategy)
        return
    # no GPU for a Trainer: check that the YAML's strategy section builds the intended FSDPStrategy by itself
    from timm.models.vision_transformer import Block
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    trainer = build_from_config([MAE_CONFIG, SPEED / "fsdp.yaml"]).config.trainer
    assert trainer.strategy.class_path == "lightning.pytorch.strategies.FSDPStrategy"
    assert trainer.precision == "bf16-mixed" and trainer.devices == -1
    init_args = dict(vars(trainer.strategy.init_args))
    assert [Block] == [_as_class(c) for c in init_args["auto_wrap_policy"]]
    strategy = FSDPStrategy(**{**init_args, "auto_wrap_policy": {Block},
                               "activation_checkpointing_policy": {Block}})
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert isinstance(strategy.kwargs["auto_wrap_policy"], ModuleWrapPolicy)


def _as_class(value: object) -> type:
    if isinstance(value, str):
        module, name = value.rsplit(".", 1)
        return getattr(__import__(module, fromlist=[name]), name)
    return value  # type: ignore[return-value]


def test_bf16_compile_switchboard_config(tmp_path: Path) -> None:
    built = build_run([MAE_CONFIG, SPEED / "bf16_compile.yaml"], CPU, tmp_path)
    boards = [c for c in built.trainer.callbacks if isinstance(c, SpeedSwitchboard)]
    assert len(boards) == 1 and boards[0].compile and boards[0].matmul_precision == "high"
    assert built.trainer.precision == "bf16-mixed"


@pytest.mark.parametrize("text,message", [
    ("", "config {path} is empty (expected a YAML mapping of keys to values)"),
    ("model:\n  class_path: x\n   bad: [\n", "{path}:3:7: YAML syntax error: mapping values are not allowed here"),
    ("tasks:\n  - ks: [1, 2\n    epochs: 3\n", "{path}:3:11: YAML syntax error: expected ',' or ']', but got ':' "
                                              "(while parsing a flow sequence started at line 2)"),
    ("- a\n- b\n", "config {path} holds a YAML list, expected a mapping of keys to values"),
])
def test_read_yaml_names_the_file_and_line(text: str, message: str, tmp_path: Path) -> None:
    """Before: `Unexpected config:` (empty) or `... in "<unicode string>", line 3` (no file) from jsonargparse."""
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(VispreError) as info:
        read_yaml(path)
    assert str(info.value) == message.format(path=path)
    with pytest.raises(VispreError) as info:  # every run-config reader goes through it
        build_from_config([path])
    assert str(info.value) == message.format(path=path)


def test_read_config_files_reads_both_spellings_and_leaves_inline_yaml(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("x: 1\n")
    b.write_text("y: 2\n")
    args = ["--config", str(a), "--trainer.max_epochs=1", f"--config={b}", "--config", "{z: 3}"]
    assert read_config_files(args) == [{"x": 1}, {"y": 2}]


def test_fit_prints_the_yaml_error_once_without_usage(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert main(["fit", "--config", str(path)]) == 2
    assert capsys.readouterr().err.strip() == f"vispre fit: error: config {path} is empty (expected a YAML mapping " \
                                              "of keys to values)"
