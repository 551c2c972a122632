"""Data: Fashion-MNIST reader, in-memory and streaming (webdataset) data modules, shard writer, view transforms.

Every public name is importable from here, so YAML class paths read ``vispre.data.FashionMNISTDataModule``,
``vispre.data.WebDatasetDataModule``, ``vispre.data.MAEView``, ... (docs/data.md). The names are imported on
first use (PEP 562), so ``python -m vispre.data.fashion_mnist --check`` and light users (the IDX reader, the
tar reader) do not pay for Lightning and webdataset.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {  # public name -> (module under vispre.data, attribute)
    "BadSample": ("bad_samples", "BadSample"),
    "BadSampleCounter": ("bad_samples", "BadSampleCounter"),
    "BadSampleLimitError": ("bad_samples", "BadSampleLimitError"),
    "BatchAugmentedViews": ("batch_views", "BatchAugmentedViews"),
    "BatchMultiCropViews": ("batch_views", "BatchMultiCropViews"),
    "BatchSimCLRViews": ("batch_views", "BatchSimCLRViews"),
    "BatchViewTransform": ("batch_views", "BatchViewTransform"),
    "BlockMaskSpec": ("block_mask", "BlockMaskSpec"),
    "BlockMasker": ("block_mask", "BlockMasker"),
    "CountingHandler": ("bad_samples", "CountingHandler"),
    "EvalView": ("transforms", "EvalView"),
    "FASHION_MNIST_CLASSES": ("fashion_mnist", "CLASSES"),
    "FASHION_MNIST_MEAN": ("fashion_mnist", "MEAN"),
    "FASHION_MNIST_STD": ("fashion_mnist", "STD"),
    "FashionMNISTDataModule": ("in_memory", "FashionMNISTDataModule"),
    "FolderItems": ("shard_writer", "FolderItems"),
    "IMAGENET_MEAN": ("transforms", "IMAGENET_MEAN"),
    "IMAGENET_STD": ("transforms", "IMAGENET_STD"),
    "INDEX_FORMAT": ("shard_list", "INDEX_FORMAT"),
    "INDEX_NAME": ("shard_list", "INDEX_NAME"),
    "LabelledImages": ("fashion_mnist", "LabelledImages"),
    "MAEView": ("transforms", "MAEView"),
    "MultiCropViews": ("transforms", "MultiCropViews"),
    "PreviewImages": ("preview", "PreviewImages"),
    "RepeatViews": ("synthetic", "RepeatViews"),
    "ShardList": ("shard_list", "ShardList"),
    "ShardCount": ("shard_counts", "ShardCount"),
    "ShardSample": ("shard_writer", "ShardSample"),
    "ShardStream": ("streaming", "ShardStream"),
    "ShardSummary": ("shard_writer", "ShardSummary"),
    "SimCLRViews": ("transforms", "SimCLRViews"),
    "StreamingLoader": ("streaming", "StreamingLoader"),
    "SyntheticDataModule": ("synthetic", "SyntheticDataModule"),
    "TarFormatError": ("tar_members", "TarFormatError"),
    "TarHeader": ("tar_members", "TarHeader"),
    "ViewDataset": ("in_memory", "ViewDataset"),
    "ViewTransform": ("transforms", "ViewTransform"),
    "WebDatasetDataModule": ("streaming", "WebDatasetDataModule"),
    "as_shard_sample": ("shard_writer", "as_shard_sample"),
    "batches_per_epoch": ("streaming", "batches_per_epoch"),
    "block_mask": ("block_mask", "block_mask"),
    "decode_samples": ("stages", "decode_samples"),
    "encode_image": ("shard_writer", "encode_image"),
    "ensure_fashion_mnist_shards": ("shard_writer", "ensure_fashion_mnist_shards"),
    "find_split_files": ("fashion_mnist", "find_split_files"),
    "folder_samples": ("shard_writer", "folder_samples"),
    "iter_tar_headers": ("tar_members", "iter_tar_headers"),
    "iter_tar_members": ("tar_members", "iter_tar_members"),
    "load_fashion_mnist": ("fashion_mnist", "load_fashion_mnist"),
    "load_index": ("shard_list", "load_index"),
    "read_idx": ("fashion_mnist", "read_idx"),
    "read_index": ("shard_list", "read_index"),
    "resize_center_crop": ("transforms", "resize_center_crop"),
    "resize_crop": ("preview", "resize_crop"),
    "resolve_shards": ("shard_list", "resolve_shards"),
    "shard_sample_counts": ("shard_counts", "shard_sample_counts"),
    "tar_member_expander": ("stages", "tar_member_expander"),
    "split_member_name": ("stages", "split_member_name"),
    "view_normalisation": ("preview", "view_normalisation"),
    "with_sample_counts": ("shard_counts", "with_sample_counts"),
    "write_folder_shards": ("shard_writer", "write_folder_shards"),
    "write_index": ("shard_writer", "write_index"),
    "write_shards": ("shard_writer", "write_shards"),
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vispre.data' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(f"vispre.data.{module}"), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
