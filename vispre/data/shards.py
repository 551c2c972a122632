"""Write webdataset shards (tar files of ``KEY.png|jpg`` + optional ``KEY.cls``) and their index JSON.

Each shard is written under a temporary name and renamed when complete, and ``index.json`` (sample
counts per shard) is written last, so a folder with an index is a complete shard set and an interrupted
write never leaves a shard that looks finished. Format: https://github.com/webdataset/webdataset.

    vispre shards fashion-mnist OUT_DIR [--split train] [--format png]
    vispre shards folder IMG_DIR OUT_DIR [--labels] [--samples-per-shard N] [--max-bytes B]
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from braceexpand import braceexpand
from tqdm import tqdm

INDEX_NAME = "index.json"
INDEX_FORMAT = "vispre-shards/1"
IMAGE_SUFFIXES = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp", ".bmp": "bmp"}


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
    """Encode a uint8 image ([C, H, W] or [H, W] tensor/array, C in 1/3, or PIL) as PNG (lossless) or JPEG."""
    if isinstance(image, Tensor):
        image = image.numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"images to encode must be uint8, got {image.dtype}")
        if image.ndim == 3:
            image = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG")
    elif image_format in ("jpg", "jpeg"):
        image.save(buffer, format="JPEG", quality=quality)
    else:
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    return buffer.getvalue()


def as_shard_sample(index: int, item: Any, image_format: str = "png", quality: int = 95) -> ShardSample:
    """Turn one dataset item into a :class:`ShardSample`. Accepted items: a ShardSample; a dict with
    ``image`` (+ optional ``label``, ``key``); an ``(image, label)`` tuple; a bare image. Images are
    encoded bytes (kept as they are, ``ext`` from the dict or "jpg") or arrays/tensors/PIL (encoded)."""
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
        raise ValueError(f"sample key {key!r} contains a '.' (webdataset splits keys at the first dot)")
    return ShardSample(key, image, ext, None if label is None else int(label))


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o444, 0
    tar.addfile(info, io.BytesIO(data))


class _ShardWriter:
    """Writes numbered shards, each to ``.NAME.tmp`` first and renamed to ``NAME`` when closed."""

    def __init__(self, out_dir: Path, prefix: str) -> None:
        self.out_dir, self.prefix = out_dir, prefix
        self.done: list[dict[str, Any]] = []
        self.tar: tarfile.TarFile | None = None
        self.count = self.size = 0

    def open(self) -> None:
        name = f"{self.prefix}-{len(self.done):06d}.tar"
        self.name, self.tmp = name, self.out_dir / f".{name}.tmp"
        self.tar, self.count, self.size = tarfile.open(self.tmp, "w"), 0, 0

    def add(self, sample: ShardSample) -> None:
        assert self.tar is not None
        _add_member(self.tar, f"{sample.key}.{sample.ext}", sample.image)
        if sample.label is not None:
            _add_member(self.tar, f"{sample.key}.cls", str(sample.label).encode())
        self.count += 1
        self.size += len(sample.image) + 1024  # + tar headers (512 B each), approximate

    def close(self) -> None:
        if self.tar is None:
            return
        self.tar.close()
        os.replace(self.tmp, self.out_dir / self.name)
        self.done.append({"name": self.name, "samples": self.count, "bytes": (self.out_dir / self.name).stat().st_size})
        self.tar = None

    def abort(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tmp.unlink(missing_ok=True)


def write_shards(samples: Iterable[Any], out_dir: str | Path, samples_per_shard: int = 10_000,
                 max_bytes: int | None = None, prefix: str = "shard", image_format: str = "png",
                 quality: int = 95, metadata: dict[str, Any] | None = None, progress: bool = True) -> ShardSummary:
    """Write samples (any iterable or map-style dataset; items as in :func:`as_shard_sample`) to shards.

    Args:
        samples: the items. out_dir: created if needed; existing ``PREFIX-*.tar`` and the index are replaced.
        samples_per_shard: at most this many samples per shard. max_bytes: also start a new shard before
            one would pass this size (approximate, image bytes + headers).
        prefix: shard names are ``PREFIX-000000.tar``... image_format, quality: encoding of non-bytes images.
        metadata: extra fields stored in the index JSON (e.g. the source and the class names).
        progress: show a tqdm bar.

    Returns:
        ShardSummary(shards, samples, bytes, index_path).
    """
    if samples_per_shard < 1 or (max_bytes is not None and max_bytes < 1):
        raise ValueError(f"samples_per_shard and max_bytes must be >= 1, got {samples_per_shard}, {max_bytes}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX_NAME).unlink(missing_ok=True)  # the set is incomplete until the new index is written
    for old in out.glob(f"{prefix}-*.tar"):
        old.unlink()
    writer = _ShardWriter(out, prefix)
    total = len(samples) if hasattr(samples, "__len__") else None  # type: ignore[arg-type]
    items: Iterator[Any] = (samples[i] for i in range(total)) if hasattr(samples, "__getitem__") and total else iter(samples)
    try:
        for index, item in enumerate(tqdm(items, total=total, desc=f"shards -> {out}", disable=not progress)):
            sample = as_shard_sample(index, item, image_format, quality)
            full = writer.tar is not None and (writer.count >= samples_per_shard or (
                max_bytes is not None and writer.size + len(sample.image) + 1024 > max_bytes))
            if full:
                writer.close()
            if writer.tar is None:
                writer.open()
            writer.add(sample)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    index = {"format": INDEX_FORMAT, "samples": sum(s["samples"] for s in writer.done),
             "bytes": sum(s["bytes"] for s in writer.done), "shards": writer.done, **(metadata or {})}
    write_index(out, index)
    return ShardSummary([s["name"] for s in writer.done], index["samples"], index["bytes"], out / INDEX_NAME)


def write_index(out_dir: Path, index: dict[str, Any]) -> None:
    """Write ``index.json`` atomically (temp file + rename)."""
    tmp = out_dir / f".{INDEX_NAME}.tmp"
    tmp.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(tmp, out_dir / INDEX_NAME)


def read_index(out_dir: str | Path) -> dict[str, Any] | None:
    """The index of a complete shard set in ``out_dir``, or None when it is missing, from another tool,
    or any listed shard is missing or has another size."""
    path = Path(out_dir) / INDEX_NAME
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        return None
    for shard in index.get("shards", []):
        file = Path(out_dir) / shard["name"]
        if not file.is_file() or file.stat().st_size != shard["bytes"]:
            return None
    return index


def folder_samples(img_dir: str | Path, labels: bool = False) -> tuple[list[Path], list[str]]:
    """Image files under ``img_dir`` (recursive, sorted) and the class names (first-level sub-folders,
    sorted; used as labels when ``labels``). Returns lazy items for :func:`write_shards`."""
    root = Path(img_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
    classes = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    if labels and (not classes or any(len(p.relative_to(root).parts) < 2 for p in files)):
        raise ValueError(f"--labels needs every image of {root} inside a class sub-folder (CLASS/IMAGE)")
    return files, classes


class _FolderItems:
    """Map-style view of image files: encoded bytes kept as they are (no re-encoding)."""

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


def ensure_fashion_mnist_shards(out_dir: str | Path, split: str = "train", image_format: str = "png",
                                samples_per_shard: int = 10_000, root: str | None = None,
                                force: bool = False, progress: bool = True) -> ShardSummary | None:
    """Write Fashion-MNIST ``split`` as shards (labels included) unless ``out_dir`` already holds a
    complete set written with the same settings. Returns the summary, or None when nothing was done."""
    from vispre.data.fashion_mnist import CLASSES, load_fashion_mnist

    settings = {"source": "fashion-mnist", "split": split, "image_format": image_format,
                "samples_per_shard": samples_per_shard}
    index = read_index(out_dir)
    if index is not None and not force:
        stored = {k: index.get(k) for k in settings}
        if stored == settings:
            return None
        raise ValueError(f"{out_dir} already holds shards written with {stored}, not {settings}; "
                         "pass --force to rewrite them")
    data = load_fashion_mnist(split, root)
    items = ({"image": encode_image(img, image_format), "label": int(lbl), "key": f"{split}_{i:06d}"}
             for i, (img, lbl) in enumerate(zip(data.images, data.labels)))
    return write_shards(_Sized(items, len(data.labels)), out_dir, samples_per_shard, prefix=f"fmnist-{split}",
                        image_format=image_format, metadata={**settings, "classes": list(CLASSES)},
                        progress=progress)


class _Sized:
    """An iterable with a known length (for the progress bar)."""

    def __init__(self, items: Iterable[Any], length: int) -> None:
        self.items, self.length = items, length

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)

    def __len__(self) -> int:
        return self.length


def _print_summary(summary: ShardSummary | None, out_dir: str) -> None:
    if summary is None:
        print(f"{out_dir}: complete shard set already there (index.json); nothing to do (--force rewrites)")
    else:
        print(f"wrote {len(summary.shards)} shards, {summary.samples} samples, {summary.bytes / 1e6:.1f} MB "
              f"to {out_dir} (index: {summary.index_path})")


def main(argv: list[str]) -> int:
    """``vispre shards fashion-mnist|folder ...`` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="vispre shards", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="source", required=True)
    fm = sub.add_parser("fashion-mnist", help="Fashion-MNIST IDX files -> shards (labels included)")
    fm.add_argument("out_dir")
    fm.add_argument("--split", default="train", choices=["train", "test"])
    fm.add_argument("--format", default="png", choices=["png", "jpg"], help="png is lossless")
    fm.add_argument("--root", default=None, help="folder with the IDX files (default: searched)")
    fm.add_argument("--force", action="store_true", help="rewrite even when a complete set is there")
    folder = sub.add_parser("folder", help="image folder -> shards (image bytes copied as they are)")
    folder.add_argument("img_dir")
    folder.add_argument("out_dir")
    folder.add_argument("--labels", action="store_true", help="label = index of the sorted class sub-folder")
    folder.add_argument("--max-bytes", type=int, default=None)
    for p in (fm, folder):
        p.add_argument("--samples-per-shard", type=int, default=10_000)
        p.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.source == "fashion-mnist":
        summary = ensure_fashion_mnist_shards(args.out_dir, args.split, args.format, args.samples_per_shard,
                                              args.root, args.force, not args.no_progress)
    else:
        files, classes = folder_samples(args.img_dir, args.labels)
        items = _FolderItems(Path(args.img_dir), files, classes if args.labels else None)
        summary = write_shards(items, args.out_dir, args.samples_per_shard, args.max_bytes,
                               metadata={"source": "folder", "classes": classes if args.labels else None},
                               progress=not args.no_progress)
    _print_summary(summary, args.out_dir)
    return 0


class ShardList(NamedTuple):
    """Resolved shard URLs and, when every shard is listed in an ``index.json`` beside it, their sample
    counts (else None)."""

    urls: list[str]
    counts: list[int] | None


def _is_remote(url: str) -> bool:
    return url.startswith("pipe:") or ("://" in url and not url.startswith("file://"))


def _expand_local(pattern: str) -> list[Path]:
    path = Path(pattern.removeprefix("file://"))
    if path.is_dir():
        index = read_index(path)
        return [path / s["name"] for s in index["shards"]] if index else sorted(path.glob("*.tar"))
    found: list[Path] = []
    for name in braceexpand(str(path)):
        if any(c in name for c in "*?["):
            found += sorted(Path(p) for p in glob.glob(name))
        elif Path(name).is_file():
            found.append(Path(name))
    return found


def resolve_shards(urls: str | list[str]) -> ShardList:
    """Expand shard URL patterns: brace patterns (``shard-{000000..000099}.tar``), globs, a folder of
    shards, ``pipe:`` commands and remote URLs (passed through; their existence is checked when read).

    Raises:
        FileNotFoundError: naming a local pattern that matches no file.
        ValueError: when no pattern is given.
    """
    patterns = [urls] if isinstance(urls, str) else list(urls)
    if not patterns:
        raise ValueError("no shard URLs given (expected a pattern such as data/shards/shard-{000000..000009}.tar)")
    resolved: list[str] = []
    counts: list[int] | None = []
    indexes: dict[Path, dict[str, int]] = {}
    for pattern in patterns:
        if _is_remote(pattern):
            resolved += list(braceexpand(pattern))
            counts = None
            continue
        files = _expand_local(pattern)
        if not files:
            raise FileNotFoundError(f"shard pattern {pattern!r} matches no file")
        resolved += [str(f) for f in files]
        for file in files:
            if file.parent not in indexes:
                index = read_index(file.parent) or {"shards": []}
                indexes[file.parent] = {s["name"]: s["samples"] for s in index["shards"]}
            if counts is not None and file.name in indexes[file.parent]:
                counts.append(indexes[file.parent][file.name])
            else:
                counts = None
    return ShardList(resolved, counts)
