"""Streamed extraction: equal to the in-memory pass, cache keys from the files (a hit reads no image, a change
invalidates), fp16 storage, workers and 2 gloo processes (Lightning Fabric, forked) bit-identical to one
process."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import tiny_vit
from vispre.data.shard_writer import write_shards
from vispre.data.transforms import EvalView
from vispre.eval import datasets as datasets_module
from vispre.eval.datasets import folder_source, read_all
from vispre.eval.extraction import extract_split, extract_with_fabric
from vispre.eval.features import extract_features
from vispre.eval.shard_source import shard_source

CHOICES = ("pooled", "cls", "grid2")
VIEW = EvalView(16, mean=(0.5,), std=(0.25,))


def grey_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_vit(img_size=16, patch_size=8, in_chans=1).vit


def write_folder(root: Path, per_class: int = 11, side: int = 20) -> Path:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8), mode="L").save(root / c / f"{i:02d}.png")
    return root


def write_shard_folder(root: Path, n: int = 22, per_shard: int = 5) -> Path:
    images = torch.randint(0, 256, (n, 1, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    write_shards(list(zip(images, [i % 3 for i in range(n)])), root, samples_per_shard=per_shard, progress=False)
    return root


def assert_same(a, b) -> None:
    assert a.features.keys() == b.features.keys()
    for k in a.features:
        assert torch.equal(a.features[k], b.features[k]), k
    assert torch.equal(a.labels, b.labels) and torch.equal(a.ok, b.ok)


def test_streamed_folder_features_equal_the_in_memory_pass(tmp_path: Path) -> None:
    vit = grey_vit()
    source = folder_source(write_folder(tmp_path / "f"), 16, 1)
    streamed = extract_split(vit, source, VIEW, CHOICES, batch_size=8)
    images = read_all(source)
    reference = extract_features(vit, images.images, VIEW, CHOICES, batch_size=8)
    assert streamed.features["cls"].shape == (22, 32) and streamed.bad == 0
    for k in CHOICES:
        assert torch.equal(streamed.features[k], reference[k]), k
    assert torch.equal(streamed.labels, images.labels) and streamed.labels.tolist() == [0] * 11 + [1] * 11


def test_cache_hit_reads_no_image_and_a_changed_file_invalidates(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    vit, folder, cache = grey_vit(), write_folder(tmp_path / "f"), tmp_path / "cache"
    decoded = [0]
    original = datasets_module.decode_image_file

    def counting(path: Path, mode: str) -> Image.Image:
        decoded[0] += 1
        return original(path, mode)

    monkeypatch.setattr(datasets_module, "decode_image_file", counting)
    first = extract_split(vit, folder_source(folder, 16, 1), VIEW, CHOICES, cache_dir=cache, batch_size=8)
    assert decoded[0] == 22 and len(list(cache.glob("*.safetensors"))) == 1
    again = extract_split(vit, folder_source(folder, 16, 1), VIEW, CHOICES, cache_dir=cache, batch_size=8)
    assert decoded[0] == 22  # a cache hit: no image opened
    assert_same(first, again)
    assert extract_split(vit, folder_source(folder, 16, 1).select(5), VIEW, CHOICES, cache_dir=cache).labels.shape == (5,)
    assert decoded[0] == 27  # another subset: another key
    target = folder / "b" / "03.png"
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8), mode="L").save(target)
    stamp = time.time() + 5
    os.utime(target, (stamp, stamp))  # a changed file: new content, size or mtime
    changed = extract_split(vit, folder_source(folder, 16, 1), VIEW, CHOICES, cache_dir=cache, batch_size=8)
    assert decoded[0] == 27 + 22
    assert not torch.equal(changed.features["cls"][14], first.features["cls"][14])
    assert torch.equal(changed.features["cls"][:14], first.features["cls"][:14])
    assert not list(cache.glob(".*"))  # no temp file or parts folder left


def test_shard_cache_key_follows_the_shard_files_and_fp16_storage(tmp_path: Path) -> None:
    vit, shards, cache = grey_vit(), write_shard_folder(tmp_path / "s"), tmp_path / "cache"
    full = extract_split(vit, shard_source(str(shards), 16, 1), VIEW, CHOICES, cache_dir=cache, batch_size=4)
    assert full.labels.tolist() == [i % 3 for i in range(22)]
    half = extract_split(vit, shard_source(str(shards), 16, 1), VIEW, CHOICES, cache_dir=cache, batch_size=4,
                         feature_dtype="float16")
    files = sorted(cache.glob("*.safetensors"), key=lambda p: p.stat().st_size)
    assert len(files) == 2 and files[0].stat().st_size < 0.6 * files[1].stat().st_size
    torch.testing.assert_close(half.features["cls"], full.features["cls"], rtol=1e-3, atol=1e-3)
    assert half.features["cls"].dtype == torch.float32 and torch.equal(half.labels, full.labels)
    shard = shards / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes())  # rewritten: a new mtime, the index.json still matches
    stamp = time.time() + 5
    os.utime(shard, (stamp, stamp))
    extract_split(vit, shard_source(str(shards), 16, 1), VIEW, CHOICES, cache_dir=cache, batch_size=4)
    assert len(list(cache.glob("*.safetensors"))) == 3


def test_shard_workers_and_limits_keep_the_sample_order(tmp_path: Path) -> None:
    vit, shards = grey_vit(), write_shard_folder(tmp_path / "s")
    one = extract_split(vit, shard_source(str(shards), 16, 1), VIEW, CHOICES, batch_size=4)
    two = extract_split(vit, shard_source(str(shards), 16, 1), VIEW, CHOICES, batch_size=4, num_workers=2)
    assert_same(one, two)
    part = extract_split(vit, shard_source(str(shards), 16, 1).select(7, seed=3), VIEW, CHOICES, batch_size=4)
    keep = datasets_module.subset_indices(22, 7, seed=3)
    assert torch.equal(part.labels, one.labels[keep])
    torch.testing.assert_close(part.features["cls"], one.features["cls"][keep], rtol=1e-5, atol=1e-6)


def _two_extractions(fabric, vit, folder, shards, cache: Path) -> dict:
    """Fabric worker: the folder through the shared cache folder, the shards through the process group."""
    out = {}
    for name, source, cache_dir in (("folder", folder, cache), ("shards", shards, None)):
        split = extract_split(vit, source, VIEW, CHOICES, cache_dir=cache_dir, batch_size=4)
        out[name] = {"labels": split.labels.numpy(), **{k: v.numpy() for k, v in split.features.items()}}
    return out


def test_two_fabric_processes_are_bit_identical_to_one(tmp_path: Path) -> None:
    """Rank r extracts its share (no padding: 22 images, batches of 4, uneven ranks); rank 0 assembles."""
    from lightning.fabric import Fabric

    vit = grey_vit()
    folder = folder_source(write_folder(tmp_path / "f"), 16, 1)
    shards = shard_source(str(write_shard_folder(tmp_path / "s")), 16, 1)
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp_fork")  # fork: no re-import in the children
    double = fabric.launch(_two_extractions, vit, folder, shards, tmp_path / "cache")
    for name, source in (("folder", folder), ("shards", shards)):
        single = extract_split(vit, source, VIEW, CHOICES, batch_size=4)
        assert double[name]["labels"].shape == (22,)
        assert np.array_equal(double[name]["labels"], single.labels.numpy())
        for k in CHOICES:
            assert np.array_equal(double[name][k], single.features[k].numpy()), (name, k)


def test_extract_with_fabric_returns_rank_zeros_split(tmp_path: Path) -> None:
    vit = grey_vit()
    source = folder_source(write_folder(tmp_path / "f"), 16, 1)
    double = extract_with_fabric(vit, source, VIEW, CHOICES, devices=2, accelerator="cpu", strategy="ddp_fork",
                                 batch_size=4)
    assert_same(extract_split(vit, source, VIEW, CHOICES, batch_size=4), double)


def _tool(name: str):  # tools/ is not a package: load the script by path
    import importlib.util

    from tests.helpers import REPO_ROOT

    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_knn_cost_fits_a_linear_model(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    bench = _tool("bench_knn_cost")
    assert bench.fit([1.0, 2.0, 3.0], [3.0, 5.0, 7.0]) == pytest.approx((1.0, 2.0))
    assert bench.main(["--sizes", "300", "600", "--queries", "10", "--classes", "5", "--dim", "16"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{\n"):])
    assert [r["n"] for r in result["rows"]] == [300, 600] and result["model"]["measured_full_size"] is False
    assert result["rows"][1]["bank_mb"] == pytest.approx(600 * 16 * 4 / 2**20, abs=0.1)


@pytest.mark.slow
def test_bench_eval_memory_tiny_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert _tool("bench_eval_memory").main(["--tiny", "--workers", "0"]) == 0
    assert '"ratio"' in capsys.readouterr().out


def test_chunk_sink_keeps_copies_not_views_of_the_token_tensor() -> None:
    """A cls feature is a view of [B, N, D] tokens: the sink must store a copy of the [B, D] rows, or every
    pending batch keeps its whole token tensor alive (peak memory growing with the number of images)."""
    import torch

    from vispre.eval.feature_cache import ChunkSink

    tokens = torch.randn(4, 50, 8)
    sink = ChunkSink(folder=None, dtype="float32", chunk_rows=10**6)
    sink.add({"cls": tokens[:, 0]}, torch.zeros(4, dtype=torch.long), torch.arange(4), torch.ones(4, dtype=torch.bool))
    stored = sink.pending[0]["cls"]
    assert stored.untyped_storage().nbytes() == 4 * 8 * 4  # its own [4, 8] float32 storage, not the 4x50x8 base
    torch.testing.assert_close(stored, tokens[:, 0])
