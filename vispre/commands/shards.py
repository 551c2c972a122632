"""``vispre shards``: write webdataset shards and their index (writer: vispre/data/shard_writer.py).

    vispre shards fashion-mnist OUT_DIR [--split train] [--format png] [--root DIR] [--force]
    vispre shards folder IMG_DIR OUT_DIR [--labels] [--samples-per-shard N] [--max-bytes B] [--force]

Both refuse an OUT_DIR that already holds a shard set unless ``--force``; a forced rewrite builds the new set
beside the old one and swaps it in when complete (vispre/data/shard_folder.py).
"""

from __future__ import annotations

import argparse

from vispre.data.shard_writer import ShardSummary, ensure_fashion_mnist_shards, write_folder_shards


def build_parser() -> argparse.ArgumentParser:
    """The ``vispre shards`` argument parser (sub-commands ``fashion-mnist`` and ``folder``)."""
    parser = argparse.ArgumentParser(prog="vispre shards", description="Write webdataset shards + index.json.")
    sub = parser.add_subparsers(dest="source", required=True)
    fm = sub.add_parser("fashion-mnist", help="Fashion-MNIST IDX files -> shards (labels included)")
    fm.add_argument("out_dir")
    fm.add_argument("--split", default="train", choices=["train", "test"])
    fm.add_argument("--format", default="png", choices=["png", "jpg"], help="png is lossless")
    fm.add_argument("--root", default=None, help="folder with the IDX files (default: searched)")
    folder = sub.add_parser("folder", help="image folder -> shards (image bytes copied as they are)")
    folder.add_argument("img_dir")
    folder.add_argument("out_dir")
    folder.add_argument("--labels", action="store_true", help="label = index of the sorted class sub-folder")
    folder.add_argument("--max-bytes", type=int, default=None)
    for p in (fm, folder):
        p.add_argument("--samples-per-shard", type=int, default=10_000)
        p.add_argument("--force", action="store_true",
                       help="replace a shard set already in OUT_DIR (the old set stays until the new one is complete)")
        p.add_argument("--no-progress", action="store_true")
    return parser


def summary_line(summary: ShardSummary | None, out_dir: str) -> str:
    """What was written (or that a complete set was already there)."""
    if summary is None:
        return f"{out_dir}: complete shard set already there (index.json); nothing to do (--force rewrites)"
    return (f"wrote {len(summary.shards)} shards, {summary.samples} samples, {summary.bytes / 1e6:.1f} MB "
            f"to {out_dir} (index: {summary.index_path})")


def main(argv: list[str]) -> int:
    """Run ``vispre shards ARGV``; returns the exit code (bad input raises VispreError/FileNotFoundError)."""
    args = build_parser().parse_args(argv)
    if args.source == "fashion-mnist":
        summary = ensure_fashion_mnist_shards(args.out_dir, split=args.split, image_format=args.format,
                                              samples_per_shard=args.samples_per_shard, root=args.root,
                                              force=args.force, progress=not args.no_progress)
    else:
        summary = write_folder_shards(args.img_dir, args.out_dir, labels=args.labels,
                                      samples_per_shard=args.samples_per_shard, max_bytes=args.max_bytes,
                                      progress=not args.no_progress, force=args.force)
    print(summary_line(summary, args.out_dir))
    return 0
