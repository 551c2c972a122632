"""Write webdataset shards (tar files of ``KEY.png|jpg`` + optional ``KEY.cls``) and their ``index.json``.

Shards are written by webdataset's ``ShardWriter`` into a hidden folder beside the output folder, then
``index.json`` (samples and bytes per shard, see :mod:`vispre.data.shard_list`), and the folder is swapped in
only when complete (:mod:`vispre.data.shard_folder`): an interrupted write never leaves a half set, and an
output folder that already holds a set is replaced only with ``force``. The command line is ``vispre shards``
(vispre/commands/shards.py).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import webdataset as wds
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from vispre.data.shard_folder import check_out_dir, recover_interrupted, staged_shard_folder
from vispre.data.shard_list import INDEX_FORMAT, INDEX_NAME, read_index
from vispre.errors import VispreError
from vispre.io import atomic_write_text

IMAGE_SUFFIXES = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp", ".bmp": "bmp"}
HEADER_BYTES = 1024  # tar header + padding per member, roughly: the ``max_bytes`` estimate adds it per sample


class ShardSample(NamedTuple):
    """One sample to write: ``key`` (unique, no dots), encoded image bytes with extension ``ext``
    ("png"/"jpg"/...), optional integer label."""

    key: str
    image: bytes
    ext: str
    label: int | None = None


class ShardSummary(NamedTuple):
    """What :func:`write_shards` wrote: shard file names, total samples, total bytes, index path."""

    shards: list[str]
    samples: int
    bytes: int
    index_path: Path


def encode_image(image: Tensor | np.ndarray | Image.Image, image_format: str = "png", quality: int = 95) -> bytes:
    """Encode a uint8 image as PNG (lossless) or JPEG.

    Args:
        image: [C, H, W] or [H, W] uint8 tensor/array (C in 1/3), or a PIL image.
        image_format: "png" or "jpg"/"jpeg". quality: JPEG quality.

    Returns:
        The encoded bytes.
    """
    if isinstance(image, Tensor):
        image = image.numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise VispreError(f"images to encode must be uint8, got {image.dtype}")
        if image.ndim == 3:
            image = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG")
    elif image_format in ("jpg", "jpeg"):
        image.save(buffer, format="JPEG", quality=quality)
    else:
        raise VispreError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    return buffer.getvalue()


def as_shard_sample(index: int, item: Any, image_format: str = "png", quality: int = 95) -> ShardSample:
    """Turn one dataset item into a :class:`ShardSample`.

    Args:
        index: position of the item (the default key, ``%08d``).
        item: a ShardSample; a dict with ``image`` (+ optional ``label``, ``key``, ``ext``); an
            ``(image, label)`` tuple; or a bare image. Images are encoded bytes (kept as they are, ``ext``
            from the dict or the format) or arrays/tensors/PIL (encoded with :func:`encode_image`).
        image_format, quality: encoding of non-bytes images.

    Returns:
        The ShardSample.
    """
    if isinstance(item, ShardSample):
        return item
    key, ext = f"{index:08d}", "jpg" if image_format == "jpeg" else image_format
    if isinstance(item, dict):
        image, label, key, ext = item["image"], item.get("label"), str(item.get("key", key)), item.get("ext", ext)
    elif isinstance(item, tuple) and len(item) == 2:
        image, label = item
    else:
        image, label = item, None
    if not isinstance(image, bytes):
        image = encode_image(image, image_format, quality)
    if "." in key:
        raise VispreError(f"sample key {key!r} contains a '.' (webdataset splits keys at the first dot)")
    return ShardSample(key, image, ext, None if label is None else int(label))


class _IndexedShardWriter:
    """webdataset's ShardWriter writing ``PREFIX-NNNNNN.tar`` into the (temp) folder ``out_dir``, with the
    sample count and size of every finished shard recorded for the index."""

    def __init__(self, out_dir: Path, prefix: str, samples_per_shard: int) -> None:
        self.out_dir, self.done = out_dir, []
        pattern = f"{out_dir}/{prefix}".replace("%", "%%") + "-%06d.tar"  # ShardWriter fills in %06d
        self.args = dict(pattern=pattern, maxcount=samples_per_shard, maxsize=float("inf"), post=self._finished,
                         verbose=0, encoder=False, mtime=0, user="", group="", format="PAX_FORMAT")
        self.writer: wds.ShardWriter | None = None
        self.count = self.size = 0  # of the shard being written

    def write(self, sample: ShardSample, max_bytes: int | None) -> None:
        """Add ``sample``; first start a new shard when it would take the current one past ``max_bytes``."""
        size = len(sample.image) + HEADER_BYTES
        if self.writer is None:
            self.writer = wds.ShardWriter(**self.args)
        elif self.count and max_bytes is not None and self.size + size > max_bytes:
            self.writer.next_stream()
        record = {"__key__": sample.key, sample.ext: sample.image}
        if sample.label is not None:
            record["cls"] = str(sample.label).encode()
        self.writer.write(record)
        self.count, self.size = self.count + 1, self.size + size

    def _finished(self, name: str) -> None:
        shard = Path(name)
        self.done.append({"name": shard.name, "samples": self.count, "bytes": shard.stat().st_size})
        self.count = self.size = 0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def abort(self) -> None:
        """Close the shard being written without finishing it (its folder is then removed)."""
        if self.writer is not None and getattr(self.writer, "tarstream", None) is not None:
            self.writer.tarstream.close()


def write_shards(samples: Iterable[Any], out_dir: str | Path, samples_per_shard: int = 10_000,
                 max_bytes: int | None = None, prefix: str = "shard", image_format: str = "png",
                 quality: int = 95, metadata: dict[str, Any] | None = None, progress: bool = True,
                 force: bool = False) -> ShardSummary:
    """Write samples (any iterable or map-style dataset; items as in :func:`as_shard_sample`) to shards.

    Args:
        samples: the items. out_dir: the set's folder (created if needed; other files in it are kept).
        samples_per_shard: at most this many samples per shard. max_bytes: also start a new shard before
            one would pass this size (approximate, image bytes + headers).
        prefix: shard names are ``PREFIX-000000.tar``... image_format, quality: encoding of non-bytes images.
        metadata: extra fields stored in the index JSON (e.g. the source and the class names).
        progress: show a tqdm bar. force: replace a shard set already in ``out_dir``.

    Returns:
        ShardSummary(shards, samples, bytes, index_path).

    Raises:
        VispreError: bad sizes or keys; ``out_dir`` holds a shard set and not ``force``.
    """
    if samples_per_shard < 1 or (max_bytes is not None and max_bytes < 1):
        raise VispreError(f"samples_per_shard and max_bytes must be >= 1, got {samples_per_shard}, {max_bytes}")
    total = len(samples) if hasattr(samples, "__len__") else None  # type: ignore[arg-type]
    items: Iterator[Any] = (samples[i] for i in range(total)) if hasattr(samples, "__getitem__") and total else iter(samples)
    with staged_shard_folder(out_dir, force) as staged:
        writer = _IndexedShardWriter(staged, prefix, samples_per_shard)
        try:
            for index, item in enumerate(tqdm(items, total=total, desc=f"shards -> {out_dir}", disable=not progress)):
                writer.write(as_shard_sample(index, item, image_format, quality), max_bytes)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        index = {"format": INDEX_FORMAT, "samples": sum(s["samples"] for s in writer.done),
                 "bytes": sum(s["bytes"] for s in writer.done), "shards": writer.done, **(metadata or {})}
        write_index(staged, index)
    out = Path(out_dir)
    return ShardSummary([s["name"] for s in writer.done], index["samples"], index["bytes"], out / INDEX_NAME)


def write_index(out_dir: Path, index: dict[str, Any]) -> None:
    """Write ``index.json`` atomically (temp file + rename)."""
    atomic_write_text(Path(out_dir) / INDEX_NAME, json.dumps(index, indent=1) + "\n")


def folder_samples(img_dir: str | Path, labels: bool = False) -> tuple[list[Path], list[str]]:
    """Image files under ``img_dir`` and its class names.

    Args:
        img_dir: the folder (searched recursively). labels: require every image inside a class sub-folder.

    Returns:
        (image files, sorted; class names: the first-level sub-folders, sorted).
    """
    root = Path(img_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise VispreError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
    classes = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    if labels and (not classes or any(len(p.relative_to(root).parts) < 2 for p in files)):
        raise VispreError(f"--labels needs every image of {root} inside a class sub-folder (CLASS/IMAGE)")
    return files, classes


class FolderItems:
    """Map-style view of image files for :func:`write_shards`: encoded bytes kept as they are (no
    re-encoding), key = relative path without suffix (dots become ``_``), label = class index or None.

    Args:
        root: the image folder. files: from :func:`folder_samples`. classes: class names (labels), or None.
    """

    def __init__(self, root: Path, files: list[Path], classes: list[str] | None) -> None:
        self.root, self.files, self.class_index = root, files, {c: i for i, c in enumerate(classes or [])}
        self.labels = classes is not None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rel = self.files[i].relative_to(self.root)
        key = rel.with_suffix("").as_posix().replace(".", "_")
        label = self.class_index[rel.parts[0]] if self.labels else None
        return {"image": self.files[i].read_bytes(), "key": key, "ext": IMAGE_SUFFIXES[rel.suffix.lower()],
                "label": label}


def write_folder_shards(img_dir: str | Path, out_dir: str | Path, labels: bool = False,
                        samples_per_shard: int = 10_000, max_bytes: int | None = None,
                        progress: bool = True, force: bool = False) -> ShardSummary:
    """Write an image folder as shards (bytes copied; labels from class sub-folders when ``labels``).

    Raises:
        VispreError: as :func:`folder_samples`; ``out_dir`` holds a shard set and not ``force``.
    """
    files, classes = folder_samples(img_dir, labels)
    items = FolderItems(Path(img_dir), files, classes if labels else None)
    return write_shards(items, out_dir, samples_per_shard, max_bytes,
                        metadata={"source": "folder", "classes": classes if labels else None}, progress=progress,
                        force=force)


def ensure_fashion_mnist_shards(out_dir: str | Path, split: str = "train", image_format: str = "png",
                                samples_per_shard: int = 10_000, root: str | None = None,
                                force: bool = False, progress: bool = True) -> ShardSummary | None:
    """Write Fashion-MNIST ``split`` as shards (labels included) unless ``out_dir`` already holds a
    complete set written with the same settings.

    Returns:
        The summary, or None when nothing was done.

    Raises:
        VispreError: ``out_dir`` holds a set written with other settings, or an incomplete or foreign set
            (and not ``force``).
    """
    from vispre.data.fashion_mnist import CLASSES, load_fashion_mnist

    settings = {"source": "fashion-mnist", "split": split, "image_format": image_format,
                "samples_per_shard": samples_per_shard}
    recover_interrupted(Path(out_dir).resolve())
    index = read_index(out_dir)
    if index is not None and not force:
        stored = {k: index.get(k) for k in settings}
        if stored == settings:
            return None
        raise VispreError(f"{out_dir} already holds shards written with {stored}, not {settings}; "
                          "pass --force to rewrite them")
    check_out_dir(Path(out_dir), force)  # before reading the data: an incomplete or foreign set is refused too
    data = load_fashion_mnist(split, root)
    items = ({"image": encode_image(img, image_format), "label": int(lbl), "key": f"{split}_{i:06d}"}
             for i, (img, lbl) in enumerate(zip(data.images, data.labels)))
    return write_shards(_Sized(items, len(data.labels)), out_dir, samples_per_shard, prefix=f"fmnist-{split}",
                        image_format=image_format, metadata={**settings, "classes": list(CLASSES)},
                        progress=progress, force=force)


class _Sized:
    """An iterable with a known length (for the progress bar)."""

    def __init__(self, items: Iterable[Any], length: int) -> None:
        self.items, self.length = items, length

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)

    def __len__(self) -> int:
        return self.length


__all__ = ["FolderItems", "IMAGE_SUFFIXES", "ShardSample", "ShardSummary", "as_shard_sample", "encode_image",
           "ensure_fashion_mnist_shards", "folder_samples", "write_folder_shards", "write_index", "write_shards"]
