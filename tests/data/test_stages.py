"""vispre's webdataset stages inside the real pipeline: duplicate members and broken shards count as bad
samples, the sample cut by a truncation is dropped, decode failures name key and URL, and webdataset's
split_by_node is checked against the rank the epoch length was computed for."""

from __future__ import annotations

import io
import itertools
import tarfile
from pathlib import Path

import pytest
import torch
from webdataset.tariterators import group_by_keys

from tests.helpers import random_images, write_shard_set
from vispre.data import BadSampleCounter, RepeatViews, ShardStream, decode_samples, encode_image, tar_member_expander


def tar_of(path: Path, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def read_all(urls: list[str], **kwargs) -> tuple[list[int], BadSampleCounter]:
    counter = BadSampleCounter(0)
    stream = ShardStream(urls, RepeatViews(), in_chans=1, with_labels=True, shuffle_shards=False,
                         shuffle_buffer=0, counter=counter, **kwargs)
    return [int(item["label"]) for item in stream], counter


def test_duplicate_member_counts_a_bad_sample(tmp_path: Path) -> None:
    """Regression: the second ``a.cls`` used to overwrite the first silently (label 9 instead of 1)."""
    png = encode_image(random_images(1)[0])
    url = tar_of(tmp_path / "dup.tar", [("a.png", png), ("a.cls", b"1"), ("a.cls", b"9"),
                                        ("b.png", png), ("b.cls", b"2")])
    labels, counter = read_all([url])
    assert labels == [1, 2]  # webdataset's group_by_keys keeps the first member
    assert counter.totals() == (3, 1)
    assert counter.first_error().startswith("ValueError: a.cls: duplicate file name in tar file cls")
    assert counter.first_error().endswith(f"(in {url})")


def test_truncated_shard_keeps_complete_samples_and_drops_the_cut_one(tmp_path: Path) -> None:
    write_shard_set(tmp_path / "set", 6, per_shard=6)
    data = (tmp_path / "set" / "shard-000000.tar").read_bytes()
    starts = [i for i in range(0, len(data), 512) if data[i + 257:i + 262] == b"ustar"]  # member headers
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:starts[-1] + 512 + 10])  # inside the data of the last member (sample 5's .png)
    labels, counter = read_all([str(cut)])
    assert labels == [0, 1, 2, 3, 4]  # sample 5 has its .cls but lost its image: dropped, not "no image"
    seen, bad = counter.totals()
    assert (seen, bad) == (6, 1) and counter.first_error().startswith(f"shard {cut}: TarFormatError: ")


def test_expander_marks_and_ends_every_shard(tmp_path: Path) -> None:
    good = tar_of(tmp_path / "g.tar", [("x.png", b"1"), ("x.cls", b"1")])
    (tmp_path / "junk.tar").write_bytes(b"not a tar" * 100)
    errors: list[Exception] = []
    records = list(tar_member_expander([{"url": good}, {"url": str(tmp_path / "junk.tar")}],
                                       handler=lambda e: errors.append(e) or True))
    assert [r.get("fname") for r in records] == ["x.png", "x.cls", None, None]  # {} after each shard
    assert len(errors) == 1 and "junk.tar" in str(errors[0])
    samples = list(group_by_keys(iter(records)))
    assert [s["__key__"] for s in samples] == ["x"]


def test_give_up_after_unreadable_shards_in_a_row(tmp_path: Path) -> None:
    missing = [{"url": str(tmp_path / f"gone-{i}.tar")} for i in range(100)]
    count = [0]
    out = list(tar_member_expander(iter(missing), handler=lambda e: count.__setitem__(0, count[0] + 1) or True,
                                   give_up_after=5))
    assert out == [{}] * 5 and count[0] == 5


def test_decode_failure_names_key_and_url() -> None:
    errors: list[Exception] = []

    def decode(sample: dict) -> dict:
        if sample["__key__"] == "bad":
            raise ValueError("broken")
        return {"ok": sample["__key__"]}

    samples = [{"__key__": "a", "__url__": "u"}, {"__key__": "bad", "__url__": "u2"}, {"__key__": "c", "__url__": "u"}]
    out = list(decode_samples(iter(samples), decode=decode, handler=lambda e: errors.append(e) or True))
    assert out == [{"ok": "a"}, {"ok": "c"}] and str(errors[0]) == "sample 'bad' in u2: ValueError: broken"
    stopped = list(decode_samples(iter(samples), decode=decode, handler=lambda e: False))
    assert stopped == [{"ok": "a"}]


def test_split_by_node_must_see_the_stream_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_shard_set(tmp_path, 8, per_shard=2)
    urls = sorted(str(p) for p in tmp_path.glob("*.tar"))
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(RuntimeError, match="set up for rank 1 of 2, but webdataset's split_by_node sees rank 0 of 1"):
        read_all(urls, rank=1, world_size=2)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert read_all(urls, rank=1, world_size=2)[0] == [2, 3, 6, 7]  # shards 1 and 3
    assert read_all(urls)[0] == list(range(8))  # world_size 1 (evaluation): no node split, every sample


def test_order_is_a_function_of_seed_and_epoch(tmp_path: Path) -> None:
    write_shard_set(tmp_path, 40, per_shard=5)
    urls = sorted(str(p) for p in tmp_path.glob("*.tar"))

    def order(seed: int, epoch: int, **kwargs) -> list[int]:
        counter = BadSampleCounter(0)
        counter.reset(epoch)
        stream = ShardStream(urls, RepeatViews(), in_chans=1, with_labels=True, shuffle_buffer=8, seed=seed,
                             counter=counter, **kwargs)
        return [int(item["label"]) for item in itertools.islice(stream, 40)]  # resampled: endless

    assert order(0, 0) == order(0, 0) and sorted(order(0, 0)) == list(range(40))
    assert order(0, 1) != order(0, 0) and order(1, 0) != order(0, 0)
    assert order(3, 2, resampled=True) == order(3, 2, resampled=True) != order(3, 1, resampled=True)
    assert torch.tensor(order(0, 0)).unique().numel() == 40


@pytest.mark.parametrize("name", ["a.jpg", "dir/a.jpg", "d1/d2/key.seg.PNG", "a", "dir/a", ".hidden", "dir/.hidden",
                                  "a.", "dir.x/a.cls", "dir.x/a", "a..b", "x/y/z.tar.gz", ""])
def test_split_member_name_is_webdatasets_base_plus_ext(name: str) -> None:
    """The key function given to group_by_keys splits every name exactly as webdataset's regex does."""
    from webdataset.tariterators import base_plus_ext

    from vispre.data.stages import split_member_name

    key, ext = split_member_name(name)
    want_key, want_ext = base_plus_ext(name)
    assert key == want_key
    if want_key is not None:
        assert ext == want_ext
