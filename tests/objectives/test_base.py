"""What every objective shares: keyword-only parts, two_views, build_loss, and minimal YAMLs that build
with the paper defaults (heads and losses by class_path, their sizes derived from the backbone)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import tiny_vit
from vispre.heads import MultiProjectionHead, ProjectionMLP
from vispre.losses import AMCLNTXentLoss, NTXentLoss
from vispre.objectives import SimCLR, build_loss, two_views
from vispre.optim import AdamWRecipe

BACKBONE = """\
    backbone:
      class_path: vispre.backbones.MaskedViT
      init_args: {model_name: vit_tiny_patch16_224, img_size: 32, patch_size: 8, in_chans: 3, embed_dim: 32,
                  depth: 2, num_heads: 2}
"""


def test_two_views_names_the_objective_when_a_batch_has_one_view() -> None:
    one = {"views": [torch.randn(4, 3, 32, 32)]}
    with pytest.raises(ValueError, match="SimCLR needs batches with at least 2 views .* got 1"):
        SimCLR(tiny_vit(), projector=partial(ProjectionMLP, hidden_dim=16, out_dim=8)).loss_terms(one)
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    assert two_views({"views": [a, b, a]}, "X") == (a, b)


def test_build_loss_uses_a_module_as_is_and_sizes_a_factory_by_its_head() -> None:
    head = MultiProjectionHead(16, num_heads=4, hidden_dim=8, out_dim=6)
    given = NTXentLoss(temperature=0.5)
    assert build_loss(given, head, default=NTXentLoss) is given
    assert isinstance(build_loss(None, head, default=NTXentLoss), NTXentLoss)
    sized = build_loss(AMCLNTXentLoss, head, default=NTXentLoss)
    assert sized.num_heads == 4 and sized.temperature_net.dim == 6
    seen = []
    build_loss(lambda n, d: seen.append((n, d)) or nn.Identity(), ProjectionMLP(16, out_dim=5), default=NTXentLoss)
    assert seen == [(1, 5)]


def test_parts_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        SimCLR(tiny_vit(), partial(ProjectionMLP, out_dim=8))  # type: ignore[misc]


def build_yaml(tmp_path: Path, model: str):
    from vispre.commands.config import build_from_config

    config = tmp_path / "run.yaml"
    config.write_text(model)
    return build_from_config([config]).model


def test_a_minimal_yaml_builds_with_the_paper_defaults(tmp_path: Path) -> None:
    model = build_yaml(tmp_path, "model:\n  class_path: vispre.objectives.SimCLR\n  init_args:\n" + BACKBONE)
    assert isinstance(model, SimCLR) and isinstance(model.loss, NTXentLoss) and model.loss.temperature == 0.1
    first, last = model.projector.net[0], model.projector.net[-1]
    assert (first.in_features, first.out_features, last.out_features) == (32, 2048, 128)
    assert isinstance(model.optimizer_recipe, AdamWRecipe)


def test_yaml_heads_and_losses_get_their_sizes_from_the_model(tmp_path: Path) -> None:
    model = build_yaml(tmp_path, "model:\n  class_path: vispre.objectives.SimCLR\n  init_args:\n" + BACKBONE + """\
    projector:
      class_path: vispre.heads.MultiProjectionHead
      init_args: {num_heads: 2, hidden_dim: 16, out_dim: 8}
    loss:
      class_path: vispre.losses.AMCLNTXentLoss
      init_args: {temperature: 0.2, tau_hidden_dim: 4}
    optimizer:
      class_path: vispre.optim.AdamWRecipe
      init_args: {base_lr: 1.0e-3}
""")
    assert [h.net[0].in_features for h in model.projector.heads] == [32, 32]  # the backbone's width
    assert isinstance(model.loss, AMCLNTXentLoss) and model.loss.temperature == 0.2
    assert (model.loss.num_heads, model.loss.temperature_net.dim) == (2, 8)  # sized by the head
    assert model.optimizer_recipe.base_lr == 1e-3
