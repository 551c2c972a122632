"""Streaming DataModule: exactly-once per epoch over workers x ranks, resampled epoch length, bad-sample
skipping/counting/limits, start-up errors."""

from __future__ import annotations

import io
from collections import Counter
import shutil
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.helpers import CONFIGS
from tests.helpers import write_shard_set as write_set
from vispre.data import BadSampleLimitError, RepeatViews, WebDatasetDataModule
from vispre.errors import VispreError


def module(urls: str | list[str], rank: int = 0, world: int = 1, **kwargs) -> WebDatasetDataModule:
    """A data module of a simulated rank: the trainer says the rank (epoch length); webdataset's split_by_node
    reads it from RANK / WORLD_SIZE (set them with :func:`as_rank` before the loader's first iteration)."""
    args = dict(batch_size=4, num_workers=0, view=RepeatViews(), in_chans=1, with_labels=True,
                shuffle_buffer=8, drop_last=False)
    dm = WebDatasetDataModule(urls, **{**args, **kwargs})
    dm.trainer = SimpleNamespace(global_rank=rank, world_size=world)
    return dm


def as_rank(monkeypatch: pytest.MonkeyPatch, rank: int, world: int) -> None:
    """Make webdataset see rank ``rank`` of ``world`` (torchrun's environment variables)."""
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))


def labels_of(loader) -> tuple[list[int], int]:
    labels, batches = [], 0
    for batch in loader:
        labels += batch["label"].tolist()
        batches += 1
    return labels, batches


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wds")
    write_set(folder, 53, per_shard=6)  # 9 shards: 8 x 6 + 5
    return folder


def test_every_sample_exactly_once_per_epoch_over_workers_and_ranks(shard_dir: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    loaders = [module(str(shard_dir), rank, 2, num_workers=2).train_dataloader() for rank in (0, 1)]
    for epoch in range(2):
        seen: list[int] = []
        for rank, loader in enumerate(loaders):
            as_rank(monkeypatch, rank, 2)  # read by the persistent workers when they start (epoch 0)
            labels, batches = labels_of(loader)
            assert batches == len(loader)  # the announced epoch length is exact
            seen += labels
        assert sorted(seen) == list(range(53)), f"epoch {epoch}"
    first = loaders[0]
    assert labels_of(first)[0] != labels_of(first)[0]  # a new order every epoch


def test_drop_last_length_and_views_shape(shard_dir: Path) -> None:
    loader = module(str(shard_dir), num_workers=2, drop_last=True, with_labels=False).train_dataloader()
    batches = list(loader)
    # worker 0 reads shards 0,2,4,6,8 (29 samples) -> 7 batches; worker 1: 24 samples -> 6 batches
    assert len(loader) == len(batches) == 13
    assert set(batches[0]) == {"views"} and batches[0]["views"][0].shape == (4, 1, 6, 6)


def test_resampled_mode_gives_every_rank_the_same_number_of_batches(shard_dir: Path) -> None:
    for rank in (0, 1):
        loader = module(str(shard_dir), rank, 2, num_workers=2, resampled=True, epoch_samples=40).train_dataloader()
        labels, batches = labels_of(loader)
        assert len(loader) == batches == 5 and len(labels) == 20 and set(labels) <= set(range(53))
    with pytest.raises(VispreError, match="resampled=True needs epoch_samples"):
        WebDatasetDataModule(str(shard_dir), resampled=True)


def test_pipe_urls_need_and_use_epoch_samples(shard_dir: Path) -> None:
    urls = f"pipe:cat {shard_dir}/shard-{{000000..000008}}.tar"
    with pytest.raises(VispreError, match="have no index.json with sample counts: set epoch_samples"):
        module(urls).setup()
    labels, batches = labels_of(module(urls, epoch_samples=1000).train_dataloader())
    assert sorted(labels) == list(range(53)) and batches == 14


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def broken_set(folder: Path, n_good: int) -> list[str]:
    """n_good good samples in 2 shards, plus a shard with a corrupt image and an image-less sample, plus
    a truncated copy of a good shard."""
    write_set(folder / "good", n_good, per_shard=(n_good + 1) // 2)
    good = sorted(str(p) for p in (folder / "good").glob("*.tar"))
    with tarfile.open(folder / "bad.tar", "w") as tar:
        add(tar, "corrupt.png", b"\x89PNG not really")
        add(tar, "corrupt.cls", b"1")
        add(tar, "noimage.cls", b"2")
    data = Path(good[0]).read_bytes()
    (folder / "truncated.tar").write_bytes(data[: len(data) // 2 + 100])
    return [*good, str(folder / "bad.tar"), str(folder / "truncated.tar")]


def test_bad_samples_are_skipped_counted_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    urls = broken_set(tmp_path, 20)
    loader = module(urls, max_bad_fraction=0.5, epoch_samples=1000, shuffle_shards=False,
                    shuffle_buffer=0).train_dataloader()
    labels, _ = labels_of(loader)
    # all 20 good samples plus the complete samples before the truncation point (a copy of shard 0: 0-9)
    extra = Counter(labels) - Counter(range(20))
    assert set(range(20)) <= set(labels) and 0 < extra.total() < 10 and set(extra) <= set(range(10))
    seen, bad = loader.stream.counter.totals()
    assert bad == 3 and seen == len(labels) + 3  # corrupt image, missing image, truncated shard
    assert "sample 'corrupt' in" in caplog.text and "skipped 3 bad of" in caplog.text
    assert loader.stream.counter.first_error().startswith(f"sample 'corrupt' in {urls[2]}: ")


def test_too_many_bad_samples_stop_with_clear_error(tmp_path: Path) -> None:
    urls = broken_set(tmp_path, 20)
    with pytest.raises(BadSampleLimitError, match=r"3 of \d+ samples read were bad \(\d+\.\d\d% > max_bad_fraction 1\.00%\)"):
        labels_of(module(urls, num_workers=2, epoch_samples=1000).train_dataloader())


def test_no_readable_sample_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.tar").write_bytes(b"not a tar at all" * 40)
    with pytest.raises(BadSampleLimitError, match=r"no readable sample in 1 shard\(s\)"):
        labels_of(module(str(tmp_path / "a.tar"), epoch_samples=8).train_dataloader())


def test_pattern_matching_nothing_fails_at_start_up(tmp_path: Path) -> None:
    pattern = str(tmp_path / "train-{000..009}.tar")
    with pytest.raises(FileNotFoundError) as err:
        WebDatasetDataModule(pattern)
    assert str(err.value) == f"shard pattern {pattern!r} matches no file"


def test_missing_shard_of_a_set_is_skipped_and_counted(tmp_path: Path) -> None:
    write_set(tmp_path, 12, per_shard=4)
    dm = module(str(tmp_path), max_bad_fraction=0.2)
    dm.setup()
    shutil.move(tmp_path / "shard-000001.tar", tmp_path / "gone.tar")
    labels, _ = labels_of(dm.train_dataloader())
    assert sorted(labels) == [0, 1, 2, 3, 8, 9, 10, 11] and dm.loader.stream.counter.totals() == (9, 1)


@pytest.mark.parametrize("name", ["fashion_mnist_wds", "imagenet_wds"])
def test_data_configs_build(name: str, shard_dir: Path) -> None:
    import jsonargparse
    import yaml
    from lightning import LightningDataModule

    parser = jsonargparse.ArgumentParser()
    parser.add_subclass_arguments(LightningDataModule, "data")
    config = yaml.safe_load((CONFIGS / "data" / f"{name}.yaml").read_text())
    config["data"]["init_args"]["urls"] = str(shard_dir)  # the real shards are not on the test machine
    dm = parser.instantiate_classes(parser.parse_object(config)).data
    assert isinstance(dm, WebDatasetDataModule) and dm.shards.counts == [6] * 8 + [5]
    assert dm.in_chans == (1 if name == "fashion_mnist_wds" else 3) and isinstance(dm.batch_size, int)


def test_stream_left_suspended_at_exit_does_not_abort_the_process(shard_dir: Path) -> None:
    """Resampled mode stops mid-stream; with num_workers=0 the generator is closed at interpreter exit, where
    its final count used to touch a tensor and abort (torch 2.14: 'terminate called ... THPVariable_clear')."""
    import subprocess
    import sys

    script = ("from vispre.data.streaming import ShardStream\nfrom vispre.data.synthetic import RepeatViews\n"
              f"it = iter(ShardStream([{str(shard_dir / 'shard-000000.tar')!r}], RepeatViews(), in_chans=1))\n"
              "next(it)\nprint('read one')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "read one" in done.stdout, done.stderr[-2000:]
    assert "terminate called" not in done.stderr
