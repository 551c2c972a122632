"""Sample counts of shards from other writers: tar-header counts grouped as the stream groups, the count cache,
img2dataset stats, remote shards; and shards written by webdataset's own ShardWriter train (every valid image
once per epoch, a corrupt one skipped and counted)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import webdataset as wds

from tests.helpers import random_images
from vispre.data import RepeatViews, WebDatasetDataModule, encode_image
from vispre.data.shard_counts import (ShardCount, cached_count, count_tar_samples, default_cache_dir,
                                      shard_sample_counts)
from vispre.errors import VispreError


def wds_shards(folder: Path, n: int, per_shard: int, corrupt: int | None = None) -> list[Path]:
    """``n`` PNG + cls samples written by ``wds.ShardWriter`` (no index.json); sample ``corrupt`` is not a PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    images = random_images(n, side=6)
    with wds.ShardWriter(str(folder / "part-%05d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i in range(n):
            png = b"\x89PNG broken" if i == corrupt else encode_image(images[i])
            sink.write({"__key__": f"s{i:05d}", "png": png, "cls": str(i).encode()})
    return sorted(folder.glob("*.tar"))


def test_header_count_groups_members_as_the_stream_does(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ["a/1.jpg", "a/1.cls", "a/1.json", "README", "a/2.JPG", "a/3.jpg", "a/3.txt", "dir/b.c.jpg",
                     "a/1.png"]:  # README has no key: ignored; a key seen again later starts a new sample
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    (tmp_path / "x.tar").write_bytes(buffer.getvalue())
    assert count_tar_samples(tmp_path / "x.tar") == ShardCount(5, "headers", None)
    groups = wds.DataPipeline(wds.SimpleShardList([str(tmp_path / "x.tar")]), wds.tarfile_to_samples())
    assert len(list(groups)) == 5  # webdataset's own reader agrees


def test_cut_shard_is_counted_up_to_the_break(tmp_path: Path) -> None:
    shard = wds_shards(tmp_path, 5, per_shard=5)[0]
    data = shard.read_bytes()
    end = data.index(b"s00003.")  # in the header of sample 3's first member
    shard.write_bytes(data[: end - end % 512])  # cut where that header begins: samples 0-2 complete
    count = count_tar_samples(shard)
    assert count.samples == 2 and "no end-of-archive block" in count.error  # the stream drops sample 2 too
    assert count_tar_samples(tmp_path / "none.tar").error.startswith("FileNotFoundError")


def test_counts_are_cached_by_path_size_and_mtime(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shard = wds_shards(tmp_path / "wds", 7, per_shard=7)[0]
    cache = tmp_path / "cache"
    assert cached_count(shard, cache) == ShardCount(7, "headers", None)
    assert cached_count(shard, cache) == ShardCount(7, "cache", None)
    (entry,) = cache.glob("*.json")
    stored = json.loads(entry.read_text())
    assert stored["samples"] == 7 and stored["path"] == str(shard.resolve()) and stored["bytes"] == shard.stat().st_size
    wds_shards(tmp_path / "wds", 4, per_shard=7)  # rewritten in place: another size and mtime
    assert cached_count(shard, cache) == ShardCount(4, "headers", None)
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert cached_count(shard, blocked / "sub") == ShardCount(4, "headers", None)
    assert "cannot cache the sample count of" in caplog.text


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VISPRE_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "shard_counts"
    monkeypatch.delenv("VISPRE_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "vispre" / "shard_counts"


def test_img2dataset_stats_index_and_remote(tmp_path: Path) -> None:
    shards = wds_shards(tmp_path / "wds", 6, per_shard=3)
    shards[1].with_name("part-00001_stats.json").write_text(json.dumps({"count": 5, "successes": 2}))
    counts = shard_sample_counts([str(s) for s in shards], cache_dir=tmp_path / "cache")
    assert counts == [ShardCount(3, "headers", None), ShardCount(2, "stats", None)]
    with pytest.raises(VispreError, match=r"the shards pipe:cat a\.tar \(1 remote\) have no index\.json with sample "
                                          r"counts: set epoch_samples .*local shards are counted from their tar "
                                          r"headers"):
        shard_sample_counts([str(shards[0]), "pipe:cat a.tar"], cache_dir=tmp_path / "cache")


def test_shards_from_webdatasets_writer_train_every_image_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("VISPRE_CACHE", str(tmp_path / "cache"))
    wds_shards(tmp_path / "wds", 23, per_shard=5, corrupt=7)
    assert not (tmp_path / "wds" / "index.json").exists()
    dm = WebDatasetDataModule(str(tmp_path / "wds"), batch_size=4, num_workers=0, view=RepeatViews(), in_chans=1,
                              with_labels=True, shuffle_buffer=8, drop_last=False, max_bad_fraction=0.1)
    dm.trainer = SimpleNamespace(global_rank=0, world_size=1)
    loader = dm.train_dataloader()
    assert dm.shards.counts == [5, 5, 5, 5, 3] and len(loader) == 6  # one reader: ceil(23 / 4)
    assert len(list((tmp_path / "cache" / "shard_counts").glob("*.json"))) == 5
    for _ in range(2):
        labels = [label for batch in loader for label in batch["label"].tolist()]
        assert sorted(labels) == [i for i in range(23) if i != 7]
        assert loader.stream.counter.totals() == (23, 1)
    assert "sample 's00007' in" in caplog.text and "skipped 1 bad of 23" in caplog.text
    assert "differ from their recorded counts" not in caplog.text  # the one missing sample is the bad one
    os.utime(tmp_path / "wds" / "part-00000.tar")  # a new mtime: counted again, the others come from the cache
    dm2 = WebDatasetDataModule(str(tmp_path / "wds"), batch_size=4, num_workers=0, view=RepeatViews(), in_chans=1)
    dm2.trainer = SimpleNamespace(global_rank=0, world_size=1)
    dm2.setup()
    assert dm2.shards.counts == [5, 5, 5, 5, 3] and len(list((tmp_path / "cache" / "shard_counts").glob("*"))) == 6


def test_count_mismatch_while_streaming_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from vispre.data import write_shards

    write_shards(random_images(12), tmp_path / "set", samples_per_shard=4, progress=False)
    dm = WebDatasetDataModule(str(tmp_path / "set"), batch_size=2, num_workers=0, view=RepeatViews(), in_chans=1,
                              shuffle_buffer=0, drop_last=False)
    dm.trainer = SimpleNamespace(global_rank=0, world_size=1)
    loader = dm.train_dataloader()
    assert len(loader) == 6
    wds_shards(tmp_path / "other", 2, per_shard=2)[0].replace(tmp_path / "set" / "shard-000001.tar")  # 4 -> 2 samples
    assert sum(1 for _ in loader) == 5
    assert ("epoch 0: read 5 batches where the shards' sample counts (index.json or tar headers) give 6: the shards "
            "differ from their recorded counts") in caplog.text
