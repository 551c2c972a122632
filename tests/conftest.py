"""Shared fixtures: tiny ViTs on CPU (img 32, patch 8, dim 32, depth 2, heads 2), deterministic seeds."""

from __future__ import annotations

import pytest
import torch

from vispre.backbones import MaskedViT

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def tiny_vit(**overrides: object) -> MaskedViT:
    """A tiny MaskedViT; keyword arguments override the sizes/features."""
    args = dict(model_name="vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=3, embed_dim=32,
                depth=2, num_heads=2)
    args.update(overrides)
    return MaskedViT(**args)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_backbone() -> MaskedViT:
    return tiny_vit()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
