"""DINO / iBOT / DINOv2 losses and teacher centring against float64 loop references, closed forms, bad input,
and the global-batch statistics under a real 2-process gloo group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.helpers import free_port
from vispre.errors import VispreError
from vispre.losses.dino import dino_loss, dino_teacher_probs, ibot_patch_loss, sinkhorn_knopp, update_center


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _softmax(x: np.ndarray) -> np.ndarray:
    return np.exp(_log_softmax(x))


def ref_dino(s: np.ndarray, t: np.ndarray, temp: float) -> float:
    """Alg. 1 of DINO, as a loop over (teacher view j, student view i != j) and images."""
    total, pairs = 0.0, 0
    for j in range(t.shape[0]):
        for i in range(s.shape[0]):
            if i == j:
                continue
            lsm = _log_softmax(s[i] / temp)
            total += np.mean([-(t[j, b] * lsm[b]).sum() for b in range(s.shape[1])])
            pairs += 1
    return total / pairs


def ref_sinkhorn(logits: np.ndarray, temp: float, n_iters: int) -> np.ndarray:
    """DINOv2's sinkhorn_knopp_teacher, single process, float64."""
    q = np.exp(logits / temp).T
    big_b, k = q.shape[1], q.shape[0]
    q /= q.sum()
    for _ in range(n_iters):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= big_b
    return (q * big_b).T


def ref_ibot(s: np.ndarray, t: np.ndarray, mask: np.ndarray, temp: float) -> float:
    per_image = []
    for b in range(s.shape[0]):
        idx = np.flatnonzero(mask[b])
        if idx.size == 0:
            per_image.append(0.0)  # documented: an unmasked image contributes 0 and counts in the mean
            continue
        lsm = _log_softmax(s[b, idx] / temp)
        per_image.append(np.mean([-(t[b, n] * lsm[m]).sum() for m, n in enumerate(idx)]))
    return float(np.mean(per_image))


def _randn(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def _probs(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.softmax(_randn(*shape, seed=seed, scale=3.0), dim=-1)


# ---------------------------------------------------------------------------------------------- dino_loss

@pytest.mark.parametrize("vs,vt,b,k,temp", [(2, 2, 3, 5, 0.1), (4, 2, 2, 7, 0.1), (10, 2, 4, 3, 0.2),
                                            (3, 1, 5, 2, 1.0), (5, 3, 1, 11, 0.05)])
def test_dino_loss_matches_loop_reference(vs: int, vt: int, b: int, k: int, temp: float) -> None:
    s, t = _randn(vs, b, k, scale=2.0), _probs(vt, b, k)
    got = dino_loss(s, t, student_temp=temp)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref_dino(s.numpy(), t.numpy(), temp), rel=1e-5)


def test_dino_loss_gradient_matches_loop_and_reaches_the_student_only() -> None:
    s = _randn(4, 3, 6, scale=2.0).float().requires_grad_(True)
    t = _probs(2, 3, 6).float()
    dino_loss(s, t, 0.1).backward()
    assert t.grad is None and not t.requires_grad
    s_ref = s.detach().double().requires_grad_(True)
    loop = sum(-(t[j].double() * torch.log_softmax(s_ref[i] / 0.1, dim=-1)).sum(-1).mean()
               for j in range(2) for i in range(4) if i != j) / (2 * 4 - 2)
    loop.backward()
    torch.testing.assert_close(s.grad.double(), s_ref.grad, rtol=1e-5, atol=1e-7)


def test_dino_loss_vanishes_for_one_hot_teacher_and_matching_sharp_student() -> None:
    vs, vt, b, k = 4, 2, 5, 8
    target = torch.arange(b) % k
    one_hot = torch.nn.functional.one_hot(target, k).float()  # [B, K]
    teacher = one_hot.expand(vt, b, k)
    student = (50.0 * one_hot).expand(vs, b, k)  # argmax matches the teacher, margin 50 / 0.1 = 500
    assert dino_loss(student, teacher, 0.1).item() < 1e-6
    wrong = (50.0 * one_hot.roll(1, dims=1)).expand(vs, b, k)
    assert dino_loss(wrong, teacher, 0.1).item() == pytest.approx(500.0, rel=1e-4)


def test_dino_loss_is_fp32_under_bf16_inputs_and_autocast() -> None:
    s, t = _randn(4, 3, 16, scale=2.0).bfloat16(), _probs(2, 3, 16).bfloat16()
    expected = ref_dino(s.double().numpy(), t.double().numpy(), 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = dino_loss(s, t, 0.1)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("s_shape,t_shape,temp,words", [
    ((2, 3, 1), (2, 3, 1), 0.1, "K (last dim) must be >= 2"),
    ((2, 3, 4), (2, 3, 4), 0.0, "student_temp must be > 0"),
    ((2, 3, 4), (2, 3, 4), -1.0, "student_temp must be > 0"),
    ((4, 3, 4), (2, 2, 4), 0.1, "must match student_logits"),
    ((4, 3, 4), (2, 3, 5), 0.1, "must match student_logits"),
    ((2, 3, 4), (3, 3, 4), 0.1, "Vt must be in [1, Vs=2]"),
    ((1, 3, 4), (1, 3, 4), 0.1, "Vs >= 2"),
    ((3, 4), (3, 4), 0.1, "[Vs, B, K]"),
])
def test_dino_loss_refuses_bad_input(s_shape, t_shape, temp, words) -> None:
    with pytest.raises(VispreError) as err:
        dino_loss(torch.zeros(s_shape), torch.zeros(t_shape), student_temp=temp)
    assert words in str(err.value)


# ------------------------------------------------------------------------------------- teacher centring

@pytest.mark.parametrize("temp", [0.04, 0.07, 1.0])
def test_teacher_probs_are_the_centred_sharpened_softmax_without_gradient(temp: float) -> None:
    logits = _randn(2, 3, 6).float().requires_grad_(True)
    center = _randn(1, 6, seed=5).float()
    got = dino_teacher_probs(logits, center, temp)
    expected = _softmax((logits.detach().double().numpy() - center.double().numpy()) / temp)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-7)
    assert not got.requires_grad and got.dtype == torch.float32
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 3))


@pytest.mark.parametrize("temp,center,words", [(0.0, torch.zeros(6), "teacher_temp must be > 0"),
                                               (-0.04, torch.zeros(6), "teacher_temp must be > 0"),
                                               (0.04, torch.zeros(5), "K=6")])
def test_teacher_probs_refuse_bad_input(temp, center, words) -> None:
    with pytest.raises(VispreError, match=words.replace("[", r"\[")):
        dino_teacher_probs(torch.zeros(2, 3, 6), center, temp)


@pytest.mark.parametrize("shape,center_shape,momentum", [((3, 5), (5,), 0.9), ((2, 3, 5), (1, 5), 0.5),
                                                         ((2, 4, 5), (1, 1, 5), 0.0), ((3, 5), (1, 5), 1.0)])
def test_update_center_is_the_ema_of_the_mean_over_all_leading_dims(shape, center_shape, momentum) -> None:
    logits = _randn(*shape, seed=2).float()
    center = _randn(*center_shape, seed=3).float()
    before = center.clone()
    got = update_center(center, logits, momentum)
    mean = logits.double().numpy().reshape(-1, 5).mean(0).reshape(center_shape)
    np.testing.assert_allclose(got.numpy(), momentum * before.double().numpy() + (1 - momentum) * mean,
                               rtol=1e-6, atol=1e-7)
    assert got.shape == center_shape
    assert torch.equal(center, before)  # not updated in place


def test_update_center_refuses_bad_input() -> None:
    with pytest.raises(VispreError, match=r"momentum must be in \[0, 1\]"):
        update_center(torch.zeros(4), torch.zeros(3, 4), 1.5)
    with pytest.raises(VispreError, match="K=4 elements"):
        update_center(torch.zeros(3), torch.zeros(3, 4), 0.9)
    with pytest.raises(VispreError, match=">= 2"):
        update_center(torch.zeros(1), torch.zeros(3, 1), 0.9)


@pytest.mark.parametrize("b,k,temp,n_iters", [(8, 4, 0.05, 3), (3, 10, 0.1, 3), (16, 16, 0.04, 1),
                                              (5, 2, 1.0, 7)])
def test_sinkhorn_matches_dinov2_reference_and_rows_sum_to_one(b, k, temp, n_iters) -> None:
    logits = _randn(b, k, seed=4, scale=0.3)
    got = sinkhorn_knopp(logits.float(), temp, n_iters)
    np.testing.assert_allclose(got.numpy(), ref_sinkhorn(logits.numpy(), temp, n_iters), rtol=2e-4, atol=1e-6)
    torch.testing.assert_close(got.sum(1), torch.ones(b))
    assert got.dtype == torch.float32 and (got >= 0).all()


def test_sinkhorn_prototype_marginals_converge_to_b_over_k() -> None:
    b, k = 12, 6
    logits = _randn(b, k, seed=6, scale=0.5).float()
    errors = [(sinkhorn_knopp(logits, 0.1, n).sum(0) - b / k).abs().max().item() for n in (1, 3, 10, 100)]
    assert errors == sorted(errors, reverse=True) and errors[0] > 1e-2  # not trivially balanced
    assert errors[-1] < 1e-4 * b / k


def test_sinkhorn_does_not_overflow_on_large_logits() -> None:
    logits = _randn(6, 5, seed=7, scale=0.3).float()
    got = sinkhorn_knopp(logits + 100.0, 0.1)  # exp(100 / 0.1) overflows float32 without the shift
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, sinkhorn_knopp(logits, 0.1))


def test_sinkhorn_refuses_bad_input() -> None:
    with pytest.raises(VispreError, match=r"\[B, K\]"):
        sinkhorn_knopp(torch.zeros(2, 3, 4), 0.1)
    with pytest.raises(VispreError, match=">= 2"):
        sinkhorn_knopp(torch.zeros(3, 1), 0.1)
    with pytest.raises(VispreError, match="teacher_temp must be > 0"):
        sinkhorn_knopp(torch.zeros(3, 4), 0.0)
    with pytest.raises(VispreError, match="n_iters must be >= 1"):
        sinkhorn_knopp(torch.zeros(3, 4), 0.1, n_iters=0)


# ------------------------------------------------------------------------------------------- iBOT patch

@pytest.mark.parametrize("b,n,k,temp", [(3, 9, 5, 0.1), (4, 16, 3, 0.2), (1, 4, 2, 1.0)])
def test_ibot_patch_loss_matches_loop_reference(b, n, k, temp) -> None:
    s, t = _randn(b, n, k, scale=2.0), _probs(b, n, k)
    mask = torch.rand(b, n, generator=torch.Generator().manual_seed(8)) < 0.4
    mask[0] = False  # one image with no masked patch
    if b > 1:
        mask[1, 0] = True
    got = ibot_patch_loss(s, t, mask, temp)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref_ibot(s.numpy(), t.numpy(), mask.numpy(), temp), rel=1e-5, abs=1e-7)


def test_ibot_patch_loss_uses_masked_positions_only_and_unmasked_images_count_zero() -> None:
    s = _randn(2, 6, 4, scale=2.0).float().requires_grad_(True)
    t = _probs(2, 6, 4).float()
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, [1, 4]] = True  # image 1 unmasked
    loss = ibot_patch_loss(s, t, mask, 0.1)
    only_image0 = ibot_patch_loss(s[:1], t[:1], mask[:1], 0.1)
    assert loss.item() == pytest.approx(only_image0.item() / 2, rel=1e-6)  # mean over B = 2 images
    loss.backward()
    assert torch.equal(s.grad.abs().sum(-1) > 0, mask)  # gradient exactly at the masked patches


def test_ibot_patch_loss_without_masked_patches_is_zero_with_a_graph() -> None:
    s = _randn(2, 5, 3).float().requires_grad_(True)
    loss = ibot_patch_loss(s, _probs(2, 5, 3).float(), torch.zeros(2, 5, dtype=torch.bool), 0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_ibot_patch_loss_refuses_bad_input() -> None:
    s, t = torch.zeros(2, 5, 3), torch.zeros(2, 5, 3)
    with pytest.raises(VispreError, match="mask must be a bool"):
        ibot_patch_loss(s, t, torch.zeros(2, 5), 0.1)
    with pytest.raises(VispreError, match="mask must be a bool"):
        ibot_patch_loss(s, t, torch.zeros(2, 4, dtype=torch.bool), 0.1)
    with pytest.raises(VispreError, match=r"both be \[B, N, K\]"):
        ibot_patch_loss(s, torch.zeros(2, 5, 4), torch.zeros(2, 5, dtype=torch.bool), 0.1)
    with pytest.raises(VispreError, match="student_temp must be > 0"):
        ibot_patch_loss(s, t, torch.zeros(2, 5, dtype=torch.bool), 0.0)
    with pytest.raises(VispreError, match=">= 2"):
        ibot_patch_loss(s[..., :1], t[..., :1], torch.zeros(2, 5, dtype=torch.bool), 0.1)


# ------------------------------------------------------------------------- global batch under 2 processes

WORLD, K = 2, 6
ROWS = (5, 3)  # unequal per-rank batches: Sinkhorn's B must be the global count


def _ddp_inputs() -> torch.Tensor:
    return _randn(sum(ROWS), K, seed=9).float()



def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    logits = _ddp_inputs()
    start = sum(ROWS[:rank])
    local = logits[start:start + ROWS[rank]]
    out = {"sk": sinkhorn_knopp(local, 0.07, 3), "center": update_center(torch.zeros(1, K), local, 0.5)}
    torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_centre_and_sinkhorn_use_the_global_batch_under_gloo(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    logits = _ddp_inputs()
    torch.testing.assert_close(torch.cat([r["sk"] for r in ranks]), sinkhorn_knopp(logits, 0.07, 3),
                               rtol=1e-6, atol=1e-7)
    for r in ranks:  # the two ranks' means are weighted by their row counts
        torch.testing.assert_close(r["center"], update_center(torch.zeros(1, K), logits, 0.5), rtol=1e-6, atol=1e-7)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_autocast_matches_fp32_of_the_same_bf16_values() -> None:
    cuda = torch.device("cuda")
    s, t = _randn(4, 8, 64, scale=2.0).to(cuda, torch.bfloat16), _probs(2, 8, 64).to(cuda, torch.bfloat16)
    ps, pt = _randn(8, 49, 64, seed=2).to(cuda, torch.bfloat16), _probs(8, 49, 64).to(cuda, torch.bfloat16)
    mask = (torch.rand(8, 49, generator=torch.Generator().manual_seed(3)) < 0.3).to(cuda)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = [dino_loss(s, t), sinkhorn_knopp(s[0], 0.04), ibot_patch_loss(ps, pt, mask, 0.1)]
    want = [dino_loss(s.float(), t.float()), sinkhorn_knopp(s[0].float(), 0.04),
            ibot_patch_loss(ps.float(), pt.float(), mask, 0.1)]
    for g, w in zip(got, want):
        assert g.dtype == torch.float32 and torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
