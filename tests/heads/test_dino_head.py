"""DINOHead: shapes, unit-norm bottleneck, unit prototype norms (fixed or free), last-layer freeze, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vispre.errors import VispreError
from vispre.heads.dino_head import DINOHead


def _head(**kw) -> DINOHead:
    torch.manual_seed(0)
    args = dict(in_dim=12, out_dim=10, hidden_dim=16, bottleneck_dim=8, n_layers=3)
    args.update(kw)
    return DINOHead(**args)


def _row_norms(head: DINOHead) -> torch.Tensor:
    return head.last_layer.weight.detach().norm(dim=1)


@pytest.mark.parametrize("shape", [(5, 12), (2, 7, 12)])
@pytest.mark.parametrize("n_layers,use_bn", [(1, False), (2, False), (3, False), (3, True)])
def test_output_shape_and_unit_norm_bottleneck(shape, n_layers, use_bn) -> None:
    head = _head(n_layers=n_layers, use_bn=use_bn)
    x = torch.randn(*shape)
    assert head(x).shape == (*shape[:-1], 10)
    z = head.bottleneck(x)
    assert z.shape == (*shape[:-1], 8)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(shape[:-1]))
    torch.testing.assert_close(head(x), z @ head.last_layer.weight.T)  # last layer: no bias


def test_mlp_layout_is_gelu_mlp_to_the_bottleneck() -> None:
    head = _head(n_layers=3)
    kinds = [type(m) for m in head.mlp]
    assert kinds == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]
    assert [m.out_features for m in head.mlp if isinstance(m, nn.Linear)] == [16, 16, 8]


def test_last_layer_is_a_weight_norm_parametrization_with_unit_rows() -> None:
    head = _head()
    assert torch.nn.utils.parametrize.is_parametrized(head.last_layer, "weight")
    torch.testing.assert_close(_row_norms(head), torch.ones(10))
    magnitude = head.last_layer.parametrizations.weight.original0
    assert not magnitude.requires_grad  # norm_last_layer: g fixed at 1


def test_fixed_norm_stays_one_after_training_steps_and_free_norm_moves() -> None:
    for fixed in (True, False):
        head = _head(norm_last_layer=fixed)
        opt = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=0.5)
        for _ in range(3):
            opt.zero_grad()
            head(torch.randn(6, 12)).pow(2).sum().backward()
            opt.step()
        norms = _row_norms(head)
        if fixed:
            torch.testing.assert_close(norms, torch.ones(10))
        else:
            assert (norms - 1).abs().max().item() > 1e-3


def test_cancel_last_layer_grads_freezes_it_under_adamw_with_weight_decay() -> None:
    head = _head(norm_last_layer=False)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=0.5)
    last_before = [p.detach().clone() for p in head.last_layer.parameters()]
    mlp_before = [p.detach().clone() for p in head.mlp.parameters()]
    for _ in range(2):
        opt.zero_grad()
        head(torch.randn(6, 12)).pow(2).sum().backward()
        assert all(p.grad is not None for p in head.last_layer.parameters())
        head.cancel_last_layer_grads()
        opt.step()
    for before, p in zip(last_before, head.last_layer.parameters()):
        assert torch.equal(before, p.detach())  # untouched, weight decay included
    assert any(not torch.equal(before, p.detach()) for before, p in zip(mlp_before, head.mlp.parameters()))
    # after the freeze the last layer trains again
    opt.zero_grad()
    head(torch.randn(6, 12)).pow(2).sum().backward()
    opt.step()
    assert any(not torch.equal(b, p.detach()) for b, p in zip(last_before, head.last_layer.parameters()))


def test_last_layer_parameters_lists_only_trainable_ones() -> None:
    assert len(list(_head(norm_last_layer=True).last_layer_parameters())) == 1  # v only
    assert len(list(_head(norm_last_layer=False).last_layer_parameters())) == 2  # g and v


def test_bf16_autocast_forward_is_finite() -> None:
    head = _head()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(torch.randn(4, 12))
    assert torch.isfinite(out.float()).all() and out.shape == (4, 10)


@pytest.mark.parametrize("kw,words", [(dict(out_dim=1), "out_dim (K prototypes) must be >= 2"),
                                      (dict(out_dim=0), "out_dim (K prototypes) must be >= 2"),
                                      (dict(n_layers=0), "n_layers must be >= 1"),
                                      (dict(bottleneck_dim=0), "bottleneck_dim must be >= 1")])
def test_bad_sizes_are_refused(kw, words) -> None:
    with pytest.raises(VispreError) as err:
        _head(**kw)
    assert words in str(err.value)


def test_wrong_input_width_is_refused() -> None:
    with pytest.raises(VispreError, match=r"\[\.\.\., 12\]"):
        _head()(torch.randn(3, 11))


def test_deepcopy_and_state_dict_round_trip_for_the_ema_teacher() -> None:
    student = _head()
    teacher = copy.deepcopy(student)  # how an EMA teacher is built
    x = torch.randn(3, 12)
    torch.testing.assert_close(teacher(x), student(x))
    fresh = _head(out_dim=10)
    torch.manual_seed(1)
    fresh.load_state_dict(student.state_dict())
    torch.testing.assert_close(fresh(x), student(x))
    assert "last_layer.parametrizations.weight.original1" in student.state_dict()
