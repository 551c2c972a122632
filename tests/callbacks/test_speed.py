"""Speed switchboard: compile with eager fallback, activation checkpointing, matmul precision."""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.helpers import cpu_trainer, tiny_mae
from vispre.callbacks.speed import (CompileFallbackWarning, SpeedSwitchboard, apply_switches, compile_with_fallback,
                                    enable_activation_checkpointing)
from vispre.data.synthetic import SyntheticDataModule
from vispre.errors import VispreError

def failing_backend(graph_module: torch.fx.GraphModule, example_inputs: list) -> None:
    raise RuntimeError("simulated compiler crash")


torch._dynamo.register_backend(failing_backend, name="vispre_test_failing")


def test_failed_compile_warns_once_and_runs_eagerly() -> None:
    model = tiny_mae()
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    expected = model.forward_loss(images, noise)[0]
    step = compile_with_fallback(model.forward_loss, "MAE.forward_loss", backend=failing_backend)
    with pytest.warns(CompileFallbackWarning, match=r"torch.compile of MAE.forward_loss failed "
                      r"\(BackendCompilerFailed: .*simulated compiler crash.*continuing without compilation"):
        loss = step(images, noise)[0]
    assert step.compile_failed
    torch.testing.assert_close(loss, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: later calls go straight to eager
        torch.testing.assert_close(step(images, noise)[0], expected)


def test_unknown_backend_is_reported_and_falls_back() -> None:
    with pytest.warns(CompileFallbackWarning, match="torch.compile of f failed"):
        step = compile_with_fallback(lambda x: x + 1, "f", backend="no_such_backend")
    assert step.compile_failed and step(1) == 2


def test_successful_compile_gives_the_eager_loss_and_gradients() -> None:
    model = tiny_mae()
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    eager = model.forward_loss(images, noise)[0]
    eager.backward()
    eager_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    step = compile_with_fallback(model.forward_loss, "MAE.forward_loss", backend="aot_eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        loss = step(images, noise)[0]
    loss.backward()
    assert not step.compile_failed
    torch.testing.assert_close(loss, eager)
    for got, want in zip([p.grad for p in model.parameters() if p.grad is not None], eager_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_activation_checkpointing_recomputes_blocks_and_keeps_gradients() -> None:
    model = tiny_mae()
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    model.forward_loss(images, noise)[0].backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    keys = list(model.state_dict())
    assert enable_activation_checkpointing(model) == 3  # 2 encoder blocks + 1 decoder block
    assert enable_activation_checkpointing(model) == 0  # idempotent
    assert list(model.state_dict()) == keys
    calls = []
    first = model.backbone.vit.blocks[0]
    first.attn.register_forward_hook(lambda *_: calls.append(1))
    model.forward_loss(images, noise)[0].backward()
    assert len(calls) == 2  # forward + recomputation in backward
    for name, param in model.named_parameters():
        if name in reference:
            torch.testing.assert_close(param.grad, reference[name], rtol=1e-5, atol=1e-7)
    calls.clear()
    with torch.no_grad():
        model.forward_loss(images, noise)
    assert len(calls) == 1  # no recomputation without grad
    assert model.backbone.vit.grad_checkpointing and model.decoder.grad_checkpointing  # timm's public switch
    model.backbone.vit.set_grad_checkpointing(False)
    model.forward_loss(images, noise)[0].backward()
    assert len(calls) == 2  # switched off: one forward, no recomputation


def test_switchboard_in_a_fit_falls_back_and_trains(tmp_path) -> None:
    model = tiny_mae()
    before = model.backbone.vit.patch_embed.proj.weight.detach().clone()
    board = SpeedSwitchboard(compile=True, compile_backend="vispre_test_failing", activation_checkpointing=True,
                             matmul_precision="highest")
    trainer = cpu_trainer(max_steps=2, callbacks=[board], default_root_dir=tmp_path)
    with pytest.warns(CompileFallbackWarning, match="torch.compile of MAE.loss_terms failed"):
        trainer.fit(model, datamodule=SyntheticDataModule(img_size=32, batch_size=4, num_samples=8))
    assert trainer.global_step == 2 and board.checkpointed_blocks == 3
    assert board.compile_failed
    assert "loss_terms" not in vars(model) and "forward" not in vars(model)  # no method replaced on the module
    assert torch.get_float32_matmul_precision() == "highest"
    assert not torch.equal(before, model.backbone.vit.patch_embed.proj.weight)


def test_compiled_module_gives_the_eager_loss_and_gradients() -> None:
    """SpeedSwitchboard(compile=True): nn.Module.compile of the objective, whose forward is its loss step."""
    model = tiny_mae()
    batch = {"views": [torch.randn(2, 3, 32, 32)]}
    torch.manual_seed(1)
    eager = model(batch)["loss"]
    eager.backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    board = SpeedSwitchboard(compile=True, compile_backend="aot_eager", matmul_precision=None)
    apply_switches(model, board)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        torch.manual_seed(1)  # the same random mask
        loss = model(batch)["loss"]
    loss.backward()
    assert not board.compile_failed and list(board.compiled_modules) == [id(model)]
    torch.testing.assert_close(loss, eager)
    for name, param in model.named_parameters():
        if name in eager_grads:
            torch.testing.assert_close(param.grad, eager_grads[name], rtol=1e-5, atol=1e-6)


def test_compile_needs_an_objective() -> None:
    with pytest.raises(VispreError, match="needs an objective with loss_terms"):
        apply_switches(torch.nn.Linear(2, 2), SpeedSwitchboard(compile=True, matmul_precision=None))


def test_bad_matmul_precision_is_refused() -> None:
    with pytest.raises(VispreError) as err:
        SpeedSwitchboard(matmul_precision="fast")
    assert str(err.value) == "matmul_precision must be one of highest, high, medium or null, got 'fast'"
