"""Self-distillation losses of DINO, iBOT and DINOv2 as pure functions, with the teacher's centring.

DINO: Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021 (arXiv
2104.14294), Alg. 1 and Sec. 3.1. iBOT: Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer",
ICLR 2022 (arXiv 2111.07832), Eq. 2. DINOv2: Oquab et al., "DINOv2: Learning Robust Visual Features without
Supervision", TMLR 2024 (arXiv 2304.07193), Sec. 4 (Sinkhorn-Knopp centring).

The teacher side (:func:`dino_teacher_probs`, :func:`update_center`, :func:`sinkhorn_knopp`) runs without
gradients and, under DDP, over the global batch: the batch statistics are all-reduced over ranks, so that a
2-process run gives the same probabilities as one process on the concatenated batch. The student side
(:func:`dino_loss`, :func:`ibot_patch_loss`) is a per-rank mean; DDP's gradient averaging then gives the
gradient of the global mean (equal per-rank batches). Every function computes in float32, whatever the
input dtype or an enclosing bf16/fp16 autocast.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from vispre.errors import VispreError
from vispre.losses.gather import distributed_ready
from vispre.losses.precision import autocast_off, to_fp32


def _check_temperature(name: str, value: float) -> None:
    if not float(value) > 0:
        raise VispreError(f"{name} must be > 0 (a softmax temperature), got {value}")


def _check_prototypes(name: str, x: Tensor) -> None:
    if x.shape[-1] < 2:
        raise VispreError(f"{name}: the number of prototypes K (last dim) must be >= 2, got shape {tuple(x.shape)}")


def _all_reduce_sum(x: Tensor) -> Tensor:
    if distributed_ready():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def dino_loss(student_logits: Tensor, teacher_probs: Tensor, student_temp: float = 0.1) -> Tensor:
    """DINO's multi-crop cross-entropy between teacher and student distributions (Caron et al. 2021, Alg. 1).

    The mean over all pairs (teacher view j, student view i) with i != j, of
    ``mean_b sum_k -teacher_probs[j, b, k] * log_softmax(student_logits[i, b] / student_temp)[k]``.
    The first Vt student views must be the global crops, in the teacher's order (pair i == j is the same crop
    and is skipped). ``teacher_probs`` is used as given: the caller passes it without gradient (the output of
    :func:`dino_teacher_probs` or :func:`sinkhorn_knopp` is).

    Args:
        student_logits: [Vs, B, K] raw student head outputs for every crop.
        teacher_probs: [Vt, B, K] centred and sharpened teacher probabilities of the Vt global crops, 1 <= Vt <= Vs.
        student_temp: student softmax temperature (> 0; DINO 0.1).

    Returns:
        Scalar float32 loss, mean over the Vt * Vs - Vt pairs and the B images.
    """
    if student_logits.ndim != 3 or teacher_probs.ndim != 3:
        raise VispreError(f"dino_loss: student_logits must be [Vs, B, K] and teacher_probs [Vt, B, K], got "
                          f"{tuple(student_logits.shape)} and {tuple(teacher_probs.shape)}")
    vs, b, k = student_logits.shape
    vt = teacher_probs.shape[0]
    if teacher_probs.shape[1:] != (b, k):
        raise VispreError(f"dino_loss: teacher_probs [Vt, B, K] must match student_logits [Vs, B, K] in B and K, "
                          f"got {tuple(teacher_probs.shape)} and {tuple(student_logits.shape)}")
    _check_prototypes("dino_loss", student_logits)
    if not 1 <= vt <= vs:
        raise VispreError(f"dino_loss: teacher views Vt must be in [1, Vs={vs}] (the global crops are the first "
                          f"student views), got Vt={vt}")
    if vt * vs - vt < 1:
        raise VispreError(f"dino_loss: needs at least one pair of different crops, i.e. Vs >= 2, got Vs={vs}")
    if b < 1:
        raise VispreError("dino_loss: batch size B must be >= 1, got 0")
    _check_temperature("student_temp", student_temp)
    with autocast_off(student_logits):
        log_p = F.log_softmax(to_fp32(student_logits) / student_temp, dim=-1)  # [Vs, B, K]
        t = to_fp32(teacher_probs)
        # sum over all (j, i) pairs = <sum_j t_j, sum_i log_p_i>, minus the same-crop pairs j == i.
        all_pairs = torch.sum(t.sum(0) * log_p.sum(0))
        same_crop = torch.sum(t * log_p[:vt])
        return -(all_pairs - same_crop) / (b * (vt * vs - vt))


@torch.no_grad()
def dino_teacher_probs(teacher_logits: Tensor, center: Tensor, teacher_temp: float) -> Tensor:
    """Centred, sharpened teacher distribution ``softmax((teacher_logits - center) / teacher_temp)`` (DINO Eq. 1).

    Runs without gradient: the result is a constant target.

    Args:
        teacher_logits: [..., K] teacher head outputs (e.g. [Vt, B, K] or [B, N, K] patch tokens).
        center: broadcastable to ``teacher_logits`` with K entries on the last dim (e.g. [K] or [1, K]).
        teacher_temp: teacher temperature (> 0; DINO 0.04 -> 0.07 warm-up).

    Returns:
        float32 tensor of ``teacher_logits``' shape whose last dim sums to 1.
    """
    _check_prototypes("dino_teacher_probs", teacher_logits)
    _check_temperature("teacher_temp", teacher_temp)
    if center.shape[-1] != teacher_logits.shape[-1]:
        raise VispreError(f"dino_teacher_probs: center must have K={teacher_logits.shape[-1]} entries on its last dim, "
                          f"got shape {tuple(center.shape)}")
    with autocast_off(teacher_logits):
        return F.softmax((to_fp32(teacher_logits) - to_fp32(center)) / teacher_temp, dim=-1)


@torch.no_grad()
def update_center(center: Tensor, teacher_logits: Tensor, momentum: float = 0.9) -> Tensor:
    """EMA of the teacher's batch mean: ``momentum * center + (1 - momentum) * mean(teacher_logits)`` (DINO Eq. 4).

    The mean is over every leading dim of ``teacher_logits`` (views and images, or images and patches) and,
    when torch.distributed is initialised with several processes, over every rank (one all_reduce of the sums
    and the row count). ``center`` is not modified: a new tensor is returned (store it back yourself).

    Args:
        center: [K] or any shape with K elements (e.g. [1, K], [1, 1, K]); the result keeps this shape.
        teacher_logits: [..., K] teacher head outputs, before centring.
        momentum: EMA momentum in [0, 1] (DINO 0.9).

    Returns:
        New float32 center, shape of ``center``.
    """
    _check_prototypes("update_center", teacher_logits)
    k = teacher_logits.shape[-1]
    if center.numel() != k:
        raise VispreError(f"update_center: center must have K={k} elements, got shape {tuple(center.shape)}")
    if not 0.0 <= float(momentum) <= 1.0:
        raise VispreError(f"update_center: momentum must be in [0, 1], got {momentum}")
    with autocast_off(teacher_logits):
        rows = to_fp32(teacher_logits).reshape(-1, k)
        stats = torch.cat([rows.sum(0), rows.new_tensor([rows.shape[0]])])  # sums and count, one collective
        stats = _all_reduce_sum(stats)
        batch_mean = (stats[:k] / stats[k]).reshape(center.shape)
        return to_fp32(center) * momentum + batch_mean * (1.0 - momentum)


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: Tensor, teacher_temp: float, n_iters: int = 3) -> Tensor:
    """DINOv2's Sinkhorn-Knopp centring of the teacher (Oquab et al. 2024, Sec. 4; SwAV's algorithm).

    Q = exp(teacher_logits / teacher_temp)^T [K, B], normalised to sum 1, then ``n_iters`` times: each
    prototype row to total 1 / K, each sample column to total 1 / B; returned times B and transposed, so every
    sample's distribution sums to 1 and each prototype gets ~B / K of the mass. Under DDP, B and the row and
    total sums are all-reduced, so B is the global batch (per-rank batches may differ in size, e.g. masked
    patch tokens). The logits are shifted by their global max first (a constant factor the normalisation
    removes) so that large logits cannot overflow. Runs without gradient, in float32.

    Args:
        teacher_logits: [B, K] teacher head outputs (flatten views or masked patches into B).
        teacher_temp: teacher temperature (> 0; DINOv2 0.04 -> 0.07).
        n_iters: Sinkhorn iterations (>= 1; DINOv2 3).

    Returns:
        [B, K] float32 assignments; each row sums to 1.
    """
    if teacher_logits.ndim != 2:
        raise VispreError(f"sinkhorn_knopp: teacher_logits must be [B, K], got {tuple(teacher_logits.shape)}")
    _check_prototypes("sinkhorn_knopp", teacher_logits)
    _check_temperature("teacher_temp", teacher_temp)
    if int(n_iters) < 1:
        raise VispreError(f"sinkhorn_knopp: n_iters must be >= 1, got {n_iters}")
    with autocast_off(teacher_logits):
        logits = to_fp32(teacher_logits) / teacher_temp
        k = logits.shape[1]
        top = logits.max() if logits.numel() else logits.new_full((), float("-inf"))  # a rank may hold no rows
        count = logits.new_tensor(float(logits.shape[0]))
        if distributed_ready():
            dist.all_reduce(top, op=dist.ReduceOp.MAX)
            dist.all_reduce(count, op=dist.ReduceOp.SUM)
        q = torch.exp(logits - top).t()  # [K, B]
        q = q / _all_reduce_sum(q.sum())
        for _ in range(int(n_iters)):
            q = q / _all_reduce_sum(q.sum(dim=1, keepdim=True)) / k
            q = q / q.sum(dim=0, keepdim=True) / count
        return (q * count).t()


def ibot_patch_loss(student_logits: Tensor, teacher_probs: Tensor, mask: Tensor, student_temp: float = 0.1) -> Tensor:
    """iBOT's masked-patch cross-entropy (Zhou et al. 2022, Eq. 2; DINOv2's iBOTPatchLoss).

    For image b with masked set M_b: ``l_b = (1 / |M_b|) sum_{n in M_b} sum_k -teacher_probs[b, n, k] *
    log_softmax(student_logits[b, n] / student_temp)[k]``; the loss is ``(1 / B) sum_b l_b``.
    An image with no masked patch (iBOT leaves about half of the images unmasked) has ``l_b = 0`` and still
    counts in the 1 / B, exactly as the iBOT and DINOv2 code (``mask.sum().clamp(min=1)``); this keeps the
    per-rank means of equal batches averaging to the global mean under DDP. A batch with no masked patch at
    all gives 0 with a graph attached (every parameter gets a zero gradient, so DDP does not stall).

    Args:
        student_logits: [B, N, K] student patch-head outputs on the masked crop.
        teacher_probs: [B, N, K] teacher patch probabilities on the unmasked crop (passed without gradient).
        mask: [B, N] bool, True where the student's patch was masked.
        student_temp: student temperature (> 0; iBOT 0.1).

    Returns:
        Scalar float32 loss.
    """
    if student_logits.ndim != 3 or teacher_probs.shape != student_logits.shape:
        raise VispreError(f"ibot_patch_loss: student_logits and teacher_probs must both be [B, N, K], got "
                          f"{tuple(student_logits.shape)} and {tuple(teacher_probs.shape)}")
    if mask.shape != student_logits.shape[:2] or mask.dtype != torch.bool:
        raise VispreError(f"ibot_patch_loss: mask must be a bool [B, N] = {tuple(student_logits.shape[:2])}, got "
                          f"{mask.dtype} {tuple(mask.shape)}")
    _check_prototypes("ibot_patch_loss", student_logits)
    _check_temperature("student_temp", student_temp)
    b = student_logits.shape[0]
    if b < 1:
        raise VispreError("ibot_patch_loss: batch size B must be >= 1, got 0")
    with autocast_off(student_logits):
        per_image = mask.sum(dim=1, keepdim=True).clamp(min=1).float()  # [B, 1] = max(|M_b|, 1)
        weight = (1.0 / per_image).expand(mask.shape)[mask]  # [M], 1/|M_b| for each masked patch
        log_p = F.log_softmax(to_fp32(student_logits[mask]) / student_temp, dim=-1)  # [M, K], masked rows only
        per_patch = -torch.sum(to_fp32(teacher_probs[mask]) * log_p, dim=-1)  # [M]
        return torch.sum(per_patch * weight) / b


__all__ = ["dino_loss", "dino_teacher_probs", "ibot_patch_loss", "sinkhorn_knopp", "update_center"]
