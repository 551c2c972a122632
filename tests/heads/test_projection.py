"""Projection MLPs and MultiProjectionHead: layer structure, shapes, per-head inputs, argument checks."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from vispre.heads import MultiProjectionHead, ProjectionMLP, num_outputs


def test_projection_mlp_layers_follow_the_papers() -> None:
    simclr = ProjectionMLP(32, hidden_dim=16, out_dim=8)  # Linear-BN-ReLU-Linear
    assert [type(m) for m in simclr.net] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert simclr.net[0].bias is None and simclr.net[-1].bias is not None  # BN follows the hidden Linear
    moco = ProjectionMLP(32, hidden_dim=16, out_dim=8, num_layers=3, last_batch_norm=True)
    assert [type(m) for m in moco.net].count(nn.Linear) == 3
    last = moco.net[-1]
    assert isinstance(last, nn.BatchNorm1d) and not last.affine and moco.net[-2].bias is None
    plain = ProjectionMLP(32, out_dim=8, num_layers=1, batch_norm=False)
    assert len(plain.net) == 1 and plain(torch.randn(5, 32)).shape == (5, 8)
    assert (moco.hidden_dim, moco.out_dim) == (16, 8)


def test_multi_projection_head_heads_are_independent_and_take_per_head_inputs() -> None:
    head = MultiProjectionHead(32, num_heads=3, hidden_dim=16, out_dim=8)
    assert len(head) == 3 and num_outputs(head) == 3 and num_outputs(ProjectionMLP(32)) == 1
    x = torch.randn(6, 32)
    outs = head(x)
    assert [o.shape for o in outs] == [(6, 8)] * 3
    assert not torch.allclose(outs[0], outs[1])  # separately initialised
    for c, sub in enumerate(head.heads):
        torch.testing.assert_close(outs[c], sub(x))
    inputs = [torch.randn(6, 32) for _ in range(3)]
    for c, (out, sub) in enumerate(zip(head(inputs), head.heads)):
        torch.testing.assert_close(out, sub(inputs[c]))


def test_a_head_factory_is_the_class_without_its_input_width() -> None:
    factory = partial(MultiProjectionHead, num_heads=2, hidden_dim=16, out_dim=4, num_layers=3,
                      last_batch_norm=True)
    head = factory(24)
    assert head.heads[1].net[0].in_features == 24 and head.out_dim == 4


def test_bad_head_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="ProjectionMLP.num_layers must be >= 1, got 0"):
        ProjectionMLP(8, num_layers=0)
    with pytest.raises(ValueError, match="MultiProjectionHead.num_heads must be >= 1, got 0"):
        MultiProjectionHead(8, num_heads=0)
    with pytest.raises(ValueError, match="MultiProjectionHead has 2 heads but got 3 inputs"):
        MultiProjectionHead(8, num_heads=2)([torch.randn(4, 8)] * 3)
