"""Evaluation data layer: 16-bit images, class names and counts, and each bad-input case's message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import tiny_vit
from vispre.data.fashion_mnist import CLASSES as FMNIST_CLASSES
from vispre.data.shard_writer import write_shards
from vispre.eval.datasets import open_task, read_image_folder, to_eight_bit
from vispre.eval.shard_source import shard_source
from vispre.eval.suite import EvalTask, evaluate_task
from vispre.errors import VispreError

FAST = dict(features=("mean",), ks=(1,), report_k=1, lrs=(0.1,), weight_decays=(0.0,), epochs=2, num_workers=0,
            few_shot_shots=())


def grey_vit() -> torch.nn.Module:
    return tiny_vit(img_size=16, patch_size=8, in_chans=1).vit


def write_folder(root: Path, counts: dict[str, dict[str, int]], side: int = 16) -> None:
    """``root/SPLIT/CLASS/i.png`` grey images, class c filled with value 60 c + noise."""
    rng = np.random.default_rng(0)
    for split, per_class in counts.items():
        for c, (name, n) in enumerate(per_class.items()):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.clip(60 * c + 20 + rng.normal(0, 5, (side, side)), 0, 255).astype(np.uint8)
                Image.fromarray(img, mode="L").save(root / split / name / f"{i:03d}.png")


def test_sixteen_bit_grey_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    gradient = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)  # 0 .. 65535
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    Image.fromarray(gradient).save(folder / "g.png")
    with Image.open(folder / "g.png") as img:
        assert img.mode == "I;16"
        assert len(np.unique(np.asarray(img.convert("L")))) <= 2  # what PIL's convert("L") alone gives
        assert np.array_equal(np.asarray(to_eight_bit(img)), (gradient >> 8).astype(np.uint8))
    images, _ = read_image_folder(tmp_path / "train", img_size=16, in_chans=1)  # same size: no resampling
    assert torch.equal(images.images[0, 0], torch.from_numpy((gradient >> 8).astype(np.uint8)))
    assert images.images.max() == 255 and len(images.images.unique()) == 256


def test_class_names_of_every_dataset(tmp_path: Path) -> None:
    write_folder(tmp_path / "f", {"train": {"cat": 2, "dog": 2}, "test": {"cat": 1, "dog": 1}})
    assert open_task("image_folder", 16, 1, root=str(tmp_path / "f")).class_names == ["cat", "dog"]
    assert open_task("fashion_mnist", 28, 1).class_names == list(FMNIST_CLASSES)
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    write_shards(list(zip(images, [0, 1, 2, 1])), tmp_path / "s", samples_per_shard=2, progress=False)
    assert shard_source(str(tmp_path / "s"), 8, 1).class_names is None
    (tmp_path / "s" / "classes.json").write_text(json.dumps(["zero", "one", "two"]))
    assert shard_source(str(tmp_path / "s"), 8, 1).class_names == ["zero", "one", "two"]
    (tmp_path / "s" / "classes.json").write_text('{"names": 3}')
    with pytest.raises(VispreError, match=r"classes.json: expected a JSON list of class names"):
        shard_source(str(tmp_path / "s"), 8, 1)


def test_missing_test_class_warns_and_counts_are_reported(tmp_path: Path) -> None:
    write_folder(tmp_path, {"train": {"a": 4, "b": 3, "c": 2}, "test": {"a": 2, "b": 1}})
    task = EvalTask(name="t", dataset="image_folder", root=str(tmp_path), **FAST)
    with pytest.warns(UserWarning, match=r"task 't': classes \['c'\] have train images but no test image"):
        result = evaluate_task(grey_vit(), task)
    assert result["class_counts"] == {"train": {"a": 4, "b": 3, "c": 2}, "test": {"a": 2, "b": 1, "c": 0}}
    assert result["unread_images"] == {"train": 0, "test": 0}


def test_test_class_absent_from_train_is_named(tmp_path: Path) -> None:
    write_folder(tmp_path, {"train": {"a": 2}, "test": {"a": 1, "zebra": 1}})
    with pytest.raises(VispreError, match=r"class folders \['zebra'\] are not among the train classes \['a'\] "
                                          r"\(every test class needs a train folder"):
        open_task("image_folder", 16, 1, root=str(tmp_path))


def test_unreadable_images_stop_the_task_unless_skipped(tmp_path: Path) -> None:
    write_folder(tmp_path, {"train": {"a": 3, "b": 3}, "test": {"a": 2, "b": 2}})
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"not a png at all")
    (tmp_path / "train" / "b" / "cut.png").write_bytes((tmp_path / "train" / "b" / "000.png").read_bytes()[:40])
    task = EvalTask(name="t", dataset="image_folder", root=str(tmp_path), **FAST)
    with pytest.raises(VispreError, match=r"task 't' train .*: 2 image\(s\) could not be read, so no numbers are "
                                          r"reported; first: .*broken.png: UnidentifiedImageError.*cut.png.*"
                                          r"skip_bad_images: true"):
        evaluate_task(grey_vit(), task)
    skipped = evaluate_task(grey_vit(), EvalTask(name="t", dataset="image_folder", root=str(tmp_path),
                                                 skip_bad_images=True, **FAST))
    assert skipped["unread_images"] == {"train": 2, "test": 0}
    assert skipped["class_counts"]["train"] == {"a": 3, "b": 3}  # the read ones only


def test_shards_without_labels_name_the_shard_and_key(tmp_path: Path) -> None:
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    write_shards(list(images), tmp_path / "s", samples_per_shard=2, progress=False)  # no labels
    task = EvalTask(name="t", dataset="shards", train_urls=str(tmp_path / "s"), test_urls=str(tmp_path / "s"),
                    **FAST)
    with pytest.raises(VispreError, match=r"sample '00000000' in shard .*s/shard-000000.tar has no .cls label"):
        evaluate_task(tiny_vit(img_size=8, patch_size=4, in_chans=1).vit, task)


def test_unwritable_cache_folder_is_named(tmp_path: Path) -> None:
    write_folder(tmp_path / "f", {"train": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1}})
    (tmp_path / "file").write_text("x")
    task = EvalTask(name="t", dataset="image_folder", root=str(tmp_path / "f"), **FAST)
    with pytest.raises(VispreError, match=r"feature cache folder .*file/cache is not writable .*set `cache_dir:`"):
        evaluate_task(grey_vit(), task, cache_dir=tmp_path / "file" / "cache")


def test_bad_feature_dtype_is_named() -> None:
    with pytest.raises(VispreError, match=r"feature_dtype must be one of \['float16', 'float32'\], got 'int8'"):
        EvalTask(feature_dtype="int8")
