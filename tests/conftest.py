"""Shared fixtures: tiny ViTs / MAEs / CPU trainers (builders in tests/helpers.py), deterministic seeds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import REPO_ROOT, cpu_trainer, tiny_mae, tiny_vit
from vispre.backbones import MaskedViT

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_backbone() -> MaskedViT:
    return tiny_vit()


@pytest.fixture
def tiny_mae_model():
    return tiny_mae()


@pytest.fixture
def make_trainer():
    """The :func:`tests.helpers.cpu_trainer` builder (call it with Trainer overrides)."""
    return cpu_trainer


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
