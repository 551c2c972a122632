"""Start-up checks of a run: what would otherwise fail minutes in, with a long traceback, fails before work starts.

:func:`check_data_matches_model`: the backbone's ``img_size`` / ``in_chans`` against the images the data
module's view makes (``vispre fit`` and ``vispre bench``). :func:`check_resume`: a checkpoint given as
``--ckpt_path`` against the model the config builds (the objective class, the backbone architecture, then
every other part's parameter names and shapes), naming the first part that differs instead of Lightning's
state-dict diff. :class:`~vispre.commands.config.VispreCLI` runs both before ``Trainer.fit``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from lightning.pytorch import LightningDataModule

from vispre.backbones.vit import describe_vit
from vispre.backbones.weights import safe_torch_load
from vispre.data.batch_views import BatchViewTransform
from vispre.errors import VispreError
from vispre.objectives.base import PretrainObjective, check_same_architecture

BACKBONE_KEY = "model.init_args.backbone.init_args"
"""Where a run config sets the backbone's sizes (``img_size``, ``in_chans``)."""
LIGHTNING_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")
"""``ckpt_path`` values Lightning resolves itself (not file paths)."""


class DataShape(NamedTuple):
    """The images a data module feeds the model.

    Attributes:
        size: (H, W) of the first view. channels: C. source: how it was found (for messages), e.g.
            ``"data.init_args.view (MAEView)"``.
    """

    size: tuple[int, int]
    channels: int
    source: str


def data_shape(datamodule: LightningDataModule, img_size: int) -> DataShape | None:
    """The first view's shape, from the data module's ``view`` run on a blank image (RNG state untouched),
    else from the first sample of a map-style ``dataset``; None when neither exists.

    Args:
        datamodule: the (not yet set-up) data module. img_size: side of the blank image fed to ``view``.

    Channels come from the data module's ``in_chans`` attribute, else from ``preview_images`` (the protocol
    every vispre data module implements).
    """
    view = getattr(datamodule, "view", None)
    if callable(view):
        channels = getattr(datamodule, "in_chans", None)
        if not isinstance(channels, int) and hasattr(datamodule, "preview_images"):
            channels = int(datamodule.preview_images(1, img_size).images.shape[1])
        if not isinstance(channels, int):
            return None
        with torch.random.fork_rng(devices=[]):  # random crops must not shift the run's random stream
            first = view(torch.zeros(channels, img_size, img_size, dtype=torch.uint8))[0]
            if isinstance(view, BatchViewTransform):  # the image it loads; the views come from the batch
                first = view.batch_views(first[None])[0][0]
        return DataShape((int(first.shape[-2]), int(first.shape[-1])), channels,
                         f"data.init_args.view ({type(view).__name__})")
    dataset = getattr(datamodule, "dataset", None)
    if dataset is not None and hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__") and len(dataset):
        with torch.random.fork_rng(devices=[]):
            first = dataset[0]["views"][0]
        return DataShape((int(first.shape[-2]), int(first.shape[-1])), int(first.shape[0]),
                         f"data ({type(datamodule).__name__})")
    return None


def check_data_matches_model(model: PretrainObjective, datamodule: LightningDataModule) -> None:
    """Refuse a backbone whose ``img_size`` or ``in_chans`` differs from the data's first view.

    Raises:
        VispreError: naming both values and the config keys to change, e.g. ``model.init_args.backbone.
            init_args.img_size is 32 but data.init_args.view (MAEView) makes 28x28 images``.
    """
    vit = model.backbone.vit
    img_size, in_chans = tuple(int(s) for s in vit.patch_embed.img_size), int(vit.patch_embed.proj.in_channels)
    shape = data_shape(datamodule, img_size[0])
    if shape is None:
        return
    if shape.channels != in_chans:
        if hasattr(datamodule, "in_chans"):
            data, fix = f"data.init_args.in_chans is {shape.channels}", "set both to the same channel count"
        else:
            data = f"the data ({type(datamodule).__name__}) has {shape.channels} channel(s)"
            fix = f"set it to {shape.channels}"
        raise VispreError(f"{BACKBONE_KEY}.in_chans is {in_chans} but {data}: {fix}")
    if shape.size != img_size:
        side = "x".join(map(str, shape.size))
        raise VispreError(f"{BACKBONE_KEY}.img_size is {img_size[0]} but {shape.source} makes {side} images: set "
                          f"both to the same size (the view's img_size / global_size, or the model's img_size)")


class CheckpointSummary(NamedTuple):
    """What a resume check needs from a checkpoint (read once at start-up, tensors not kept).

    Attributes:
        path: the file. meta: its ``checkpoint["vispre"]`` record (objective, backbone, growth).
        shapes: state-dict key -> shape.
    """

    path: Path
    meta: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]


def read_resume_checkpoint(ckpt_path: str | Path | None) -> CheckpointSummary | None:
    """Read a ``--ckpt_path`` safely (before Lightning unpickles it): names, shapes and vispre's record.

    Args:
        ckpt_path: the path, or None / a Lightning keyword such as ``last`` (nothing to read: None).

    Raises:
        FileNotFoundError: no such file. VispreError: not a torch checkpoint, a pickled Python object
            (:func:`vispre.backbones.weights.safe_torch_load`), or no ``state_dict``.
    """
    if ckpt_path is None or str(ckpt_path) in LIGHTNING_CKPT_KEYWORDS:
        return None
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (ckpt_path)")
    checkpoint = safe_torch_load(path, mmap=True)
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise VispreError(f"{path} has no 'state_dict': expected a Lightning checkpoint written by vispre fit")
    shapes = {key: tuple(value.shape) for key, value in state.items() if hasattr(value, "shape")}
    return CheckpointSummary(path, dict(checkpoint.get("vispre") or {}), shapes)


def check_resume(model: PretrainObjective, checkpoint: CheckpointSummary | None) -> None:
    """Refuse a checkpoint that the model the config builds cannot resume from, naming the first differing part.

    Checked in order: the objective class (recorded in ``checkpoint["vispre"]``), the backbone architecture,
    then every parameter/buffer name and shape, grouped by the model's top-level part (``decoder``,
    ``projector``...). A checkpoint written after a mid-run growth skips the backbone and shape checks (the
    objective regrows itself when it loads, see ``PretrainObjective.on_load_checkpoint``).

    Args:
        model: the objective built from the run config. checkpoint: :func:`read_resume_checkpoint`'s summary
            (None: nothing to check).

    Raises:
        VispreError: ``cannot resume from PATH: ...`` naming the first difference.
    """
    if checkpoint is None:
        return
    path, meta = checkpoint.path, checkpoint.meta
    current_class = f"{type(model).__module__}.{type(model).__qualname__}"
    # checkpoints record the class path ("objective_class"); older ones only the class name ("objective")
    saved = meta.get("objective_class") or meta.get("objective")
    if saved is not None and saved != (current_class if "objective_class" in meta else type(model).__name__):
        raise VispreError(f"cannot resume from {path}: it was saved by the objective {saved} but the config builds "
                          f"{current_class} (model.class_path); resume with the run's own config.yaml, or "
                          f"warm-start only the backbone with {BACKBONE_KEY}.init_from")
    if meta.get("growth"):
        return
    if meta.get("backbone") is not None:
        try:
            check_same_architecture(meta["backbone"], describe_vit(model.backbone.vit))
        except VispreError as err:
            raise VispreError(f"cannot resume from {path}: the backbone differs ({err}; config keys under "
                              f"{BACKBONE_KEY})") from None
    current = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    difference = first_state_difference(checkpoint.shapes, current)
    if difference is not None:
        raise VispreError(f"cannot resume from {path}: the model's {difference.part} differs from the checkpoint's "
                          f"({difference.detail}); resume with the run's own config.yaml")


class StateDifference(NamedTuple):
    """The first difference between two state dicts: the top-level part (e.g. ``decoder``) and what differs."""

    part: str
    detail: str


def first_state_difference(saved: dict[str, tuple[int, ...]],
                           current: dict[str, tuple[int, ...]]) -> StateDifference | None:
    """The first key (in the model's order, then the checkpoint's) missing on one side or of another shape.

    Args:
        saved: the checkpoint's state-dict key -> shape. current: the model's.

    Returns:
        None when both hold the same names with the same shapes.
    """
    for key, shape in current.items():
        if key not in saved:
            return StateDifference(_part(key), f"{key} is not in the checkpoint")
        if saved[key] != shape:
            return StateDifference(_part(key), f"{key}: checkpoint {saved[key]} vs model {shape}")
    for key in saved:
        if key not in current:
            return StateDifference(_part(key), f"the checkpoint has {key}, the model does not")
    return None


def _part(key: str) -> str:
    """``decoder.blocks.0.attn.qkv.weight`` -> ``decoder``; ``backbone.vit.x`` -> ``backbone``."""
    return key.split(".", 1)[0]


__all__ = ["BACKBONE_KEY", "CheckpointSummary", "DataShape", "StateDifference", "check_data_matches_model",
           "check_resume", "data_shape", "first_state_difference", "read_resume_checkpoint"]
