"""Builders shared by the test modules (import from here, never from another test module or conftest)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L

from vispre.backbones import MaskedViT

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"
MAE_CONFIG = CONFIGS / "mae/vit_tiny_fashion_mnist.yaml"
"""The MAE Fashion-MNIST run config (the quickstart until 2026-12-02): the full run config most tests build."""
TINY_DECODER = dict(decoder_dim=16, decoder_depth=1, decoder_num_heads=2)
"""Decoder sizes of the tiny MAE used across the tests."""


VIT_VARIANTS: dict[str, dict[str, Any]] = {
    "cls_qkvbias": dict(),
    "layerscale": dict(init_values=0.1),
    "avgpool_noqkvbias": dict(class_token=False, global_pool="avg", qkv_bias=False),
    "registers": dict(reg_tokens=2),
}
"""tiny_vit overrides covering the timm ViT features growth and shrinking handle (tests/growth)."""


def tiny_vit(**overrides: Any) -> MaskedViT:
    """A tiny MaskedViT (img 32, patch 8, dim 32, depth 2, heads 2); keyword arguments override."""
    args: dict[str, Any] = dict(model_name="vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=3,
                                embed_dim=32, depth=2, num_heads=2)
    args.update(overrides)
    return MaskedViT(**args)


def tiny_mae(backbone: MaskedViT | None = None, **overrides: Any) -> L.LightningModule:
    """A tiny MAE (a ``vispre.objectives.MAE``) on ``backbone`` or :func:`tiny_vit`, with the small decoder
    :data:`TINY_DECODER` (sized from the backbone); keyword arguments go to MAE."""
    from vispre.objectives import MAE

    return MAE(backbone=backbone or tiny_vit(), **{**TINY_DECODER, **overrides})


def cpu_trainer(**overrides: Any) -> L.Trainer:
    """A quiet single-process CPU Trainer (no logger, no progress bar, no checkpoints unless asked)."""
    args: dict[str, Any] = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                                enable_checkpointing=False, enable_model_summary=False)
    args.update(overrides)
    return L.Trainer(**args)


def write_idx(path: Path, array: Any, compress: bool = True) -> None:
    """Write a uint8 numpy array as an IDX file (gzip-compressed when ``compress``)."""
    import gzip
    import struct

    import numpy as np

    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + np.asarray(array).astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def fake_fashion_mnist(folder: Path, split: str, n: int, compress: bool = True) -> tuple[Any, Any]:
    """Write a random Fashion-MNIST-shaped ``split`` (n images 28x28, labels 0-9) as IDX files into
    ``folder``; returns (images [n, 28, 28], labels [n]) as numpy arrays (seeded by ``n``)."""
    import numpy as np

    from vispre.data.fashion_mnist import SPLIT_FILES

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    images, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
    img_name, lbl_name = SPLIT_FILES[split]
    suffix = ".gz" if compress else ""
    write_idx(folder / (img_name + suffix), images, compress)
    write_idx(folder / (lbl_name + suffix), labels, compress)
    return images, labels


def write_shard_set(folder: Path, n: int, per_shard: int, side: int = 6) -> None:
    """Shards of ``n`` random grey ``side`` px PNG images labelled 0..n-1, ``per_shard`` samples a shard."""
    import torch

    from vispre.data import write_shards

    imgs = torch.randint(0, 256, (n, 1, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    write_shards(list(zip(imgs, range(n))), folder, samples_per_shard=per_shard, progress=False)


# -- run configs (vispre.commands.config.build_from_config) -------------------------------------------------
CPU_TRAINER = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.num_nodes=1", "--trainer.strategy=auto",
               "--trainer.precision=32-true", "--trainer.logger=false", "--trainer.enable_progress_bar=false"]
"""Overrides that put any run config (also the multi-node GPU recipes) on one CPU process."""


def backbone_args(config: Path) -> dict[str, Any]:
    """The ``model.init_args.backbone.init_args`` of a run config YAML."""
    import yaml

    return yaml.safe_load(Path(config).read_text())["model"]["init_args"]["backbone"]["init_args"]


def synthetic_data_args(config: Path, *, img_size: int | None = None) -> list[str]:
    """Overrides swapping a config's data for 8 random images of its backbone's size (no files needed)."""
    bb = backbone_args(config)
    img_size = img_size or bb.get("img_size", 224)
    return ["--data=vispre.data.synthetic.SyntheticDataModule", f"--data.img_size={img_size}",
            f"--data.in_chans={bb.get('in_chans', 3)}", "--data.num_views=2", "--data.batch_size=4",
            "--data.num_samples=8", "--data.view=null"]  # null: a `view` of the config's own data is not kept


def build_run(configs: list[Path], overrides: list[str], runs_dir: Path, *, trainer: bool = True):
    """:func:`vispre.commands.config.build_from_config` with data (and by default the Trainer) under ``runs_dir``."""
    from vispre.commands.config import build_from_config

    return build_from_config(configs, [*overrides, f"--runs_dir={runs_dir}"], data=True, trainer=trainer)


@contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread for tiny tensors: faster, and free of the ~ms stalls per op that two threads suffer
    on a loaded 2-core machine (measured: 7 s vs 0.013 s for the same 20-epoch probe sweep)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- weight files ---------------------------------------------------------------------------------------------
def perturbed(backbone: MaskedViT) -> MaskedViT:
    """Give every tensor (incl. the frozen sin-cos pos_embed) distinctive values, as after training; eval mode."""
    import torch

    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return backbone.eval()


def lightning_checkpoint(module: L.LightningModule, path: Path) -> Path:
    """What Lightning writes for ``module`` (state_dict + loop counters + the objective's metadata), at ``path``."""
    import torch

    checkpoint = {"epoch": 0, "global_step": 1, "state_dict": module.state_dict(), "pytorch-lightning_version": "2"}
    module.on_save_checkpoint(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def random_images(n: int, side: int = 8, chans: int = 1):
    """uint8 [n, chans, side, side] random images, seeded by ``n``."""
    import torch

    return torch.randint(0, 256, (n, chans, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))


def tar_member_bytes(path: Path) -> dict[str, bytes]:
    """{member name: bytes} of a tar file, read with Python's tarfile (the reference reader)."""
    import tarfile

    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}  # type: ignore[union-attr]


def assert_same_weights(a: "torch.nn.Module", b: "torch.nn.Module") -> None:
    """Same state-dict keys and bit-identical tensors."""
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def tiny_mae_run(folder: Path) -> tuple[Any, Path]:
    """A tiny MAE with distinctive weights and its run folder ``folder/run`` (``checkpoints/last.ckpt``)."""
    mae = tiny_mae(perturbed(tiny_vit()))
    lightning_checkpoint(mae, folder / "run" / "checkpoints" / "last.ckpt")
    return mae, folder / "run"


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a test's gloo rendezvous."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gloo_rank(rank: int, fn: Any, port: int, world: int, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    # An exception propagates without tearing down (spawn reports it; destroying the group while the peer is
    # mid-collective could hang).
    torch.save(fn(rank), Path(out_dir) / f"rank{rank}.pt")
    # Both ranks reach the end before either tears down: without this barrier the rank that hosts the TCP store
    # could exit while the other was still destroying its group, which aborted it now and then ("terminate
    # called without an active exception", 1 of 3 full-suite runs on the CI machine).
    dist.barrier()
    dist.destroy_process_group()


def run_on_gloo_ranks(fn: Any, out_dir: Path, world: int = 2) -> list[Any]:
    """Run ``fn(rank)`` in ``world`` spawned CPU processes joined by a gloo process group (1 thread each) and
    return each rank's result (tensors, dicts and lists of them), in rank order. ``fn`` must be a module-level
    function (spawn pickles it by name)."""
    import torch
    import torch.multiprocessing as mp

    mp.spawn(_gloo_rank, args=(fn, free_port(), world, str(out_dir)), nprocs=world, join=True)
    return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=True) for r in range(world)]
