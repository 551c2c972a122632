"""vispre's own webdataset pipeline stages: the fast tar-member reader and the sample decoder.

A webdataset stage is a function ``stage(source_iterator, **options) -> iterator``. These two slot into a
``wds.DataPipeline`` next to webdataset's own stages (see :class:`vispre.data.streaming.ShardStream`):

* :func:`tar_member_expander` replaces ``url_opener`` + ``tar_file_expander``: it opens each shard URL with
  webdataset's ``gopen`` and reads it with :func:`vispre.data.tar_members.iter_tar_members` instead of
  ``tar_file_iterator`` (``tarfile``'s header decoding, ~50 us a member: ``tools/bench_loader.py`` times both),
  yielding the same ``{"fname", "data", "__url__"}`` records plus the end-of-shard marker ``{}`` that
  ``group_by_keys`` expects.
* :func:`split_member_name` is the key function given to webdataset's ``group_by_keys``.
* :func:`decode_samples` maps grouped samples to training items, routing every failure to the handler
  with the sample's key and URL (``wds.map`` would add ``__key__`` to each item).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext

from vispre.data.bad_samples import BadSample
from vispre.data.tar_members import iter_tar_members

Handler = Callable[[Exception], bool]


def tar_member_expander(sources: Iterable[dict[str, Any]], handler: Handler,
                        give_up_after: int | None = None) -> Iterator[dict[str, Any]]:
    """Open shards and expand them into their members (a drop-in for webdataset's ``url_opener`` +
    ``tar_file_expander``).

    A shard that cannot be opened or breaks (missing, truncated, corrupt header, read error) is reported to
    ``handler`` once as ``BadSample("shard URL: ...")``; the members read before the break are kept, except the sample being
    read at the break, which is marked ``__bad__`` so that ``group_by_keys`` drops it (it may be incomplete).

    Args:
        sources: ``{"url"}`` records (webdataset's shard lists: ``SimpleShardList``, ``ResampledShards``).
        handler: webdataset exception handler (True: continue with the next shard; False: stop).
        give_up_after: stop after this many shards in a row without a readable member (resampled mode
            would otherwise spin forever on a set of only unreadable shards); None: never.

    Yields:
        ``{"fname", "data", "__url__", "url"}`` per regular tar member (``url``: group_by_keys appends it to
        its errors, e.g. a duplicate member, so the handler can name the shard), and ``{}`` after each shard.
    """
    empty_in_a_row = 0
    for source in sources:
        url, names = source["url"], []
        try:
            with gopen(url, "rb") as stream:
                for name, data in iter_tar_members(stream):
                    names.append(name)
                    yield {"fname": name, "data": data, "__url__": url, "url": url}
        except Exception as err:  # noqa: BLE001 - any unreadable/truncated shard is skipped and counted
            prefix = next((p for p in (split_member_name(n)[0] for n in reversed(names)) if p), None)
            if prefix is not None:  # the sample being grouped when the shard broke: group_by_keys drops it
                yield {"fname": f"{prefix}.__bad__", "data": True, "__url__": url, "url": url}
            if not handler(BadSample(f"shard {url}: {type(err).__name__}: {err}")):
                return
        yield {}
        empty_in_a_row = 0 if names else empty_in_a_row + 1
        if give_up_after is not None and empty_in_a_row >= give_up_after:
            return


def split_member_name(name: str) -> tuple[str | None, str]:
    """webdataset's naming rule, ``base_plus_ext``, without its regex: ``dir/key.ext1.ext2`` -> (``dir/key``,
    ``ext1.ext2``); a base name without a dot has no key (None: the member is skipped).

    Passed to ``group_by_keys(keys=...)``: a third of its cost per sample (``tools/bench_loader.py``).
    """
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not stem:  # ".hidden" style names: the regex's own (odd) answer, e.g. "dir/.x" -> ("dir/", "x")
        return base_plus_ext(name)
    if not dot:
        return None, ""
    return (f"{folder}/{stem}" if folder else stem), ext


def decode_samples(samples: Iterable[dict[str, Any]], decode: Callable[[dict[str, Any]], dict[str, Any]],
                   handler: Handler) -> Iterator[dict[str, Any]]:
    """Map grouped samples through ``decode``; a failure goes to ``handler`` as
    ``BadSample("sample KEY in URL: Type: message")`` and the sample is skipped (False: stop).

    Args:
        samples: ``{"__key__", "__url__", EXT: bytes, ...}`` from ``group_by_keys``.
        decode: sample -> training item. handler: webdataset exception handler.

    Yields:
        The decoded items.
    """
    for sample in samples:
        try:
            item = decode(sample)
        except Exception as err:  # noqa: BLE001 - a bad sample is skipped and counted
            key, url = sample.get("__key__"), sample.get("__url__")
            if handler(BadSample(f"sample {key!r} in {url}: {type(err).__name__}: {err}")):
                continue
            return
        yield item


__all__ = ["decode_samples", "split_member_name", "tar_member_expander"]
