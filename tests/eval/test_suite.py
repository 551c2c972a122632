"""Evaluation suite: backbone untouched, feature cache reused and keyed by the weights, image-folder and shard
tasks, every suite YAML under configs/eval/ loads (`vispre eval` end to end: tests/commands/test_eval.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.helpers import CONFIGS, REPO_ROOT, lightning_checkpoint, tiny_mae, tiny_vit
from vispre.data.shard_writer import write_shards
from vispre.data.transforms import EvalView
from vispre.eval import features as features_module
from vispre.eval.datasets import load_task_data, read_image_folder, read_shards
from vispre.eval.features import cached_features
from vispre.eval.suite import EvalTask, evaluate_task, load_tasks, run_suite
from vispre.errors import VispreError

FAST = dict(ks=(5, 20), report_k=20, lrs=(0.1, 1.0), weight_decays=(0.0,), epochs=3)


def fmnist_vit() -> torch.nn.Module:
    """A tiny ViT for 28x28 grey images (patch 7, dim 32, depth 2, heads 2)."""
    return tiny_vit(img_size=28, patch_size=7, in_chans=1)


def count_forwards(vit: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the backbone passes of feature extraction (``forward_intermediates`` calls)."""
    calls = [0]
    original = vit.forward_intermediates

    def counted(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(vit, "forward_intermediates", counted)
    return calls


def test_run_suite_leaves_the_backbone_bit_identical() -> None:
    vit = fmnist_vit().vit.train()  # training mode on purpose: the suite must restore it
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    report = run_suite(vit, [EvalTask(limit_train=600, limit_test=200, features=("cls", "grid2"), **FAST)], "tiny")
    assert vit.training
    after = vit.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    task = report["tasks"]["fashion_mnist"]
    assert report["backbone"] == "tiny"
    assert 0.1 < task["knn_top1"] <= 1.0 and 0.1 < task["linear_top1"] <= 1.0  # 10 classes: chance is 0.1
    # every feature x preprocessing; pooled is always evaluated
    assert set(task["knn"]) == {"pooled", "pooled+zscore", "cls", "cls+zscore", "grid2", "grid2+zscore"}
    assert task["knn_feature"] in task["knn"] and set(task["linear"]) == {"pooled", "cls", "grid2"}
    best_val = max(row["val_top1"] for row in task["knn"].values())
    assert task["knn"][task["knn_feature"]]["val_top1"] == best_val  # selected on val
    assert task["knn_top1"] == task["knn"][task["knn_feature"]]["k20"]
    assert task["linear_top1"] == task["linear"][task["linear_feature"]]["test_top1"]


def test_feature_cache_is_reused_and_keyed_by_weights_and_images(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    vit = fmnist_vit().vit
    calls = count_forwards(vit, monkeypatch)
    images = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    view = EvalView(28, mean=(0.5,), std=(0.25,))

    def extract(imgs: torch.Tensor) -> dict[str, torch.Tensor]:
        return cached_features(vit, imgs, view, tmp_path, ("demo", "train", view), ("cls", "mean"))

    first = extract(images)
    assert calls[0] == 1 and len(list(tmp_path.glob("*.safetensors"))) == 1
    second = extract(images)
    assert calls[0] == 1  # read from the cache: no backbone pass
    assert all(torch.equal(first[k], second[k]) for k in first)
    with torch.no_grad():
        vit.blocks[0].mlp.fc1.weight[0, 0] += 1e-3  # any weight change -> another key -> recomputed
    third = extract(images)
    assert calls[0] == 2 and len(list(tmp_path.glob("*.safetensors"))) == 2
    assert not torch.equal(first["cls"], third["cls"])
    extract(images[:5])  # other images (e.g. another limit_train) -> another key
    assert calls[0] == 3
    assert not list(tmp_path.glob("*.tmp*"))


def test_evaluate_task_twice_with_a_cache_runs_the_backbone_once(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    vit = fmnist_vit().vit
    calls = count_forwards(vit, monkeypatch)
    task = EvalTask(limit_train=300, limit_test=100, features=("cls",), **FAST)
    first = evaluate_task(vit, task, tmp_path)
    passes = calls[0]
    assert passes == 2  # one batch of train, one of test (batch_size 512)
    second = evaluate_task(vit, task, tmp_path)
    assert calls[0] == passes
    assert first["knn_top1"] == second["knn_top1"] and first["linear_top1"] == second["linear_top1"]


def write_png_folder(root: Path, split: str, per_class: int, seed: int) -> None:
    """Three classes of 20x24 grey PNGs (dark, bright, vertical stripes) with noise, one folder per class."""
    rng = np.random.default_rng(seed)
    stripes = np.tile(np.array([30, 220] * 12, dtype=np.float64), (20, 1))
    means = {"dark": np.full((20, 24), 40.0), "bright": np.full((20, 24), 210.0), "stripes": stripes}
    for name, base in means.items():
        (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img, mode="L").save(root / split / name / f"{i:03d}.png")


@pytest.fixture
def png_folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    write_png_folder(root, "train", 20, seed=0)
    write_png_folder(root, "val", 6, seed=1)
    return root


def test_image_folder_task(png_folder: Path) -> None:
    vit = fmnist_vit().vit
    data = load_task_data("image_folder", 28, 1, root=str(png_folder))
    assert data.train.images.shape == (60, 1, 28, 28) and data.train.images.dtype == torch.uint8
    assert data.test.images.shape == (18, 1, 28, 28) and data.num_classes == 3
    assert torch.bincount(data.train.labels).tolist() == [20, 20, 20]  # classes: bright, dark, stripes (sorted)
    assert data.train.images[data.train.labels == 1].float().mean() < 70 < data.train.images[data.train.labels == 0].float().mean()
    task = EvalTask(name="pngs", dataset="image_folder", root=str(png_folder), features=("cls", "mean"),
                    ks=(5, 10), report_k=5, lrs=(0.1, 1.0), weight_decays=(0.0,), epochs=20)
    result = run_suite(vit, [task], "tiny")["tasks"]["pngs"]
    assert result["knn_top1"] == 1.0 and result["linear_top1"] == 1.0  # three trivially distinct classes


def test_image_folder_rgb_and_resize_to_the_backbone(png_folder: Path) -> None:
    images, classes = read_image_folder(png_folder / "train", img_size=32, in_chans=3)
    assert classes == ["bright", "dark", "stripes"]
    assert images.images.shape == (60, 3, 32, 32)  # 20x24 -> shorter side 32, centre crop 32x32
    assert torch.equal(images.images[:, 0], images.images[:, 1])  # grey PNG -> equal RGB channels


def test_image_folder_errors_are_named(png_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="needs train/ and test/ \\(or val/\\) sub-folders"):
        load_task_data("image_folder", 28, 1, root=str(png_folder / "train"))
    (png_folder / "val" / "unknown").mkdir()
    Image.new("L", (8, 8)).save(png_folder / "val" / "unknown" / "x.png")
    with pytest.raises(ValueError, match=r"class folders \['unknown'\] are not among the train classes"):
        load_task_data("image_folder", 28, 1, root=str(png_folder))
    with pytest.raises(ValueError, match="dataset image_folder needs `root`"):
        EvalTask(dataset="image_folder")
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        EvalTask(dataset="cifar")
    with pytest.raises(ValueError, match="limit_train must be a positive number of images, got 0"):
        EvalTask(limit_train=0)


def test_shard_task_reads_the_same_images_as_the_folder(png_folder: Path, tmp_path: Path) -> None:
    for split in ("train", "val"):
        folder, _ = read_image_folder(png_folder / split, 28, 1)
        samples = [{"image": (png_folder / split / p.parent.name / p.name).read_bytes(), "ext": "png",
                    "label": int(label), "key": f"{split}_{i:04d}"}
                   for i, (p, label) in enumerate(zip(sorted((png_folder / split).rglob("*.png")), folder.labels))]
        write_shards(samples, tmp_path / "shards" / split, samples_per_shard=25, progress=False)
        shards = read_shards(str(tmp_path / "shards" / split), 28, 1)
        assert torch.equal(shards.images, folder.images) and torch.equal(shards.labels, folder.labels)
    task = EvalTask(name="shards", dataset="shards", train_urls=str(tmp_path / "shards" / "train"),
                    test_urls=str(tmp_path / "shards" / "val"), features=("mean",), ks=(5,), report_k=5,
                    lrs=(1.0,), weight_decays=(0.0,), epochs=20)
    assert run_suite(fmnist_vit().vit, [task], "tiny")["tasks"]["shards"]["knn_top1"] == 1.0
    with pytest.raises(ValueError, match="dataset shards needs `train_urls` and `test_urls`"):
        EvalTask(dataset="shards", train_urls="x")


def test_feature_extraction_matches_the_module_forward() -> None:
    """cls feature == the timm model's own normed cls token (no hidden transform in the extractor)."""
    vit = fmnist_vit().vit.eval()
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    view = EvalView(28, mean=(0.5,), std=(0.25,))
    feats = features_module.extract_features(vit, images, view, ("cls", "mean", "cls_mean", "patches"))
    with torch.no_grad():
        tokens = vit.forward_features(view(images)[0])
    torch.testing.assert_close(feats["cls"], tokens[:, 0])
    torch.testing.assert_close(feats["mean"], tokens[:, 1:].mean(1))
    torch.testing.assert_close(feats["patches"], tokens.flatten(1))  # [cls ; 16 patch tokens], row-major grid
    assert feats["cls_mean"].shape == (4, 64)


@pytest.mark.parametrize("config", sorted((CONFIGS / "eval").glob("*.yaml")), ids=lambda p: p.name)
def test_every_eval_config_parses(config: Path) -> None:
    tasks, cache_dir = load_tasks(config)
    assert tasks and all(isinstance(t, EvalTask) for t in tasks) and cache_dir


def test_suite_yaml_errors_are_named(tmp_path: Path) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"tasks": [{"name": "x"}], "cahce_dir": "c"}))
    with pytest.raises(VispreError, match=r"unknown keys \['cahce_dir'\]; expected 'tasks' and 'cache_dir'"):
        load_tasks(config)
    config.write_text(yaml.safe_dump({"tasks": [{"name": "x", "k": 5}]}))
    with pytest.raises(VispreError, match="bad task entry"):
        load_tasks(config)
    config.write_text(yaml.safe_dump({"cache_dir": "c"}))
    with pytest.raises(VispreError, match="lists no tasks"):
        load_tasks(config)
    with pytest.raises(FileNotFoundError, match="evaluation config .*nope.yaml does not exist"):
        load_tasks(tmp_path / "nope.yaml")


def _bench_probe_module():  # tools/ is not a package: load the script by path
    import importlib.util

    path = REPO_ROOT / "tools" / "bench_probe.py"
    spec = importlib.util.spec_from_file_location("bench_probe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_probe_augment_is_a_padded_crop_or_its_flip() -> None:
    bench = _bench_probe_module()
    images = torch.randint(1, 256, (64, 1, 28, 28), dtype=torch.uint8)
    out = bench.augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (4,) * 4)
    windows = [(dy, dx) for dy in range(9) for dx in range(9)]
    for i in range(8):
        candidates = [padded[i, :, dy:dy + 28, dx:dx + 28] for dy, dx in windows]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in candidates)
    assert not torch.equal(out, images)  # some crop moved or flipped


def test_bench_probe_runs_end_to_end_on_a_tiny_backbone(tmp_path: Path) -> None:
    from vispre.hub import export_backbone

    bench = _bench_probe_module()
    lightning_checkpoint(tiny_mae(fmnist_vit()), tmp_path / "a.ckpt")
    export = export_backbone(tmp_path / "a.ckpt", tmp_path / "a.safetensors")
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"cache_dir": str(tmp_path / "cache"), "tasks": [
        {"name": "fashion_mnist", "features": ["cls", "mean"], "lrs": [0.1], "weight_decays": [0.0], "epochs": 2}]}))
    out = tmp_path / "bench.json"
    assert bench.main(["--ckpt", str(export), "--config", str(config), "--limit-train", "300", "--limit-test", "100",
                       "--budget-factor", "0.01", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    # the sweep: pooled (always evaluated) + cls + mean, x 1 lr x 1 wd
    assert result["train_images"] == 300 and result["sweep"]["heads"] == 3 and result["sweep_cls"]["heads"] == 1
    assert result["sweep_cls"]["features"] == ["cls"] and "x the sweep's" in result["budget"]
    conventional = result["conventional"]
    assert conventional["epochs"] >= 1 and len(conventional["epoch_seconds"]) == len(conventional["curve"])
    assert conventional["test_top1"] == conventional["curve"][-1][1] and 0 <= conventional["test_top1"] <= 1
    assert "| vispre cached sweep |" in result["markdown"] and out.with_suffix(".png").stat().st_size > 10_000


def test_every_task_reports_the_pooled_row_selected_on_val() -> None:
    """`pooled` (the timm embedding) is evaluated even when `features` omits it, with the same selection rules."""
    vit = fmnist_vit().vit
    task = EvalTask(limit_train=600, limit_test=200, features=("cls",), few_shot_shots=(1, 5), few_shot_draws=2,
                    **FAST)
    assert task.features == ("pooled", "cls")
    entry = run_suite(vit, [task], "tiny")["tasks"]["fashion_mnist"]
    pooled = entry["pooled"]
    assert pooled["feature"] == "pooled" and pooled["global_pool"] == "token" and pooled["knn_k"] == 20
    variants = {k: v for k, v in entry["knn"].items() if k.startswith("pooled")}
    assert set(variants) == {"pooled", "pooled+zscore"}
    assert pooled["knn_variant"] == max(variants, key=lambda k: variants[k]["val_top1"])  # on val, not test
    assert pooled["knn_top1"] == variants[pooled["knn_variant"]]["k20"]
    assert pooled["linear_top1"] == entry["linear"]["pooled"]["test_top1"]
    assert (pooled["linear_lr"], pooled["linear_weight_decay"]) == (entry["linear"]["pooled"]["lr"],
                                                                    entry["linear"]["pooled"]["weight_decay"])
    assert set(entry["few_shot"]) == {"1", "5"} and entry["few_shot_feature"] == "pooled"
    assert entry["few_shot"]["5"]["draws"] == 2 and 0.0 <= entry["few_shot"]["5"]["linear_mean"] <= 1.0
    assert "fixed hyper-parameters" in entry["few_shot_protocol"]
    assert entry["_plot"]["class_names"][0] == "T-shirt/top"  # Fashion-MNIST's names reach the plots


def test_few_shot_can_be_disabled_or_use_another_feature() -> None:
    assert "few_shot" not in evaluate_task(fmnist_vit().vit, EvalTask(limit_train=300, limit_test=100,
                                                                      features=("cls",), few_shot_shots=(), **FAST))
    task = EvalTask(features=("mean",), few_shot_feature="cls", **FAST)
    assert task.features == ("pooled", "mean", "cls")  # the few-shot feature is extracted too
    with pytest.raises(VispreError, match="unknown few_shot_feature 'clss'"):
        EvalTask(few_shot_feature="clss")
    with pytest.raises(VispreError, match=r"few_shot_shots must be images per class >= 1 .* got \[0\] and 5"):
        EvalTask(few_shot_shots=[0])


@pytest.mark.parametrize("field, value, expected", [
    ("epochs", "abc", "epochs must be an integer, got 'abc' (str)"),
    ("ks", 5, "ks must be a list of integers, got 5 (int)"),
    ("lrs", ["a"], "lrs must be a list of numbers, got ['a'] (list)"),
    ("limit_train", 0.5, "limit_train must be an integer or null, got 0.5 (float)"),
    ("few_shot_shots", [1, "5"], "few_shot_shots must be a list of integers, got [1, '5'] (list)"),
    ("skip_bad_images", "yes", "skip_bad_images must be true or false, got 'yes' (str)"),
    ("root", 3, "root must be a string or null, got 3 (int)"),
])
def test_task_field_types_are_checked_when_the_yaml_is_read(tmp_path: Path, field: str, value: object,
                                                            expected: str) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"tasks": [{"name": "mine", field: value}]}))
    with pytest.raises(VispreError) as err:
        load_tasks(config)
    assert str(err.value) == f"task 'mine': {expected}"


def test_a_wrong_field_type_stops_vispre_eval_before_any_feature_extraction(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    from vispre.commands import main

    lightning_checkpoint(tiny_mae(fmnist_vit()), tmp_path / "a.ckpt")
    config = tmp_path / "eval.yaml"
    config.write_text("cache_dir: " + str(tmp_path / "cache") + "\ntasks:\n  - name: fm\n    epochs: abc\n")
    assert main(["eval", str(tmp_path / "a.ckpt"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "vispre eval: error: task 'fm': epochs must be an integer, got 'abc' (str)" in err
    assert "Traceback" not in err and not (tmp_path / "cache").exists()  # nothing extracted


def test_few_shot_counts_above_the_smallest_class_are_skipped_not_fatal() -> None:
    """A small image-folder-like set (4 images in some class) with the default shots: 1 runs, 5 and 10 are
    skipped and listed (the default must not stop an evaluation of a small set)."""
    from vispre.eval.suite import feasible_shots

    labels = torch.tensor([0] * 4 + [1] * 12 + [2] * 30)
    assert feasible_shots((1, 5, 10), labels, 3, "small") == [1]
    assert feasible_shots((1, 5, 10), torch.tensor([0] * 10 + [1] * 10), 2, "ok") == [1, 5, 10]
    entry = evaluate_task(fmnist_vit().vit, EvalTask(limit_train=40, limit_test=40, features=("cls",),
                                                     few_shot_shots=(1, 50), few_shot_draws=1, **FAST))
    assert set(entry["few_shot"]) == {"1"} and entry["few_shot_skipped"] == [50]
