"""Weighted k-nearest-neighbour classification on frozen features (DINO protocol).

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021 (arXiv 2104.14294),
Sec. 4.1 / `eval_knn.py`: cosine similarity, top-k neighbours vote with weight exp(sim / T), T = 0.07.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from vispre.errors import VispreError


def default_device() -> torch.device:
    """CUDA when a GPU is present, else the CPU (the kNN and probe fallback)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def knn_predict(bank: Tensor, bank_labels: Tensor, queries: Tensor, num_classes: int,
                ks: Sequence[int] = (10, 20, 100, 200), temperature: float = 0.07,
                chunk_size: int = 1024, device: str | torch.device | None = None,
                max_chunk_bytes: int = 2**30) -> dict[int, Tensor]:
    """Predict labels for every k in ``ks`` in one pass over the bank.

    Memory on ``device``: the normalised bank (N x D float32) plus one similarity block of at most
    ``min(chunk_size, max_chunk_bytes / (4 N))`` queries x N floats; time: M x N x D multiply-adds plus a
    top-k over N per query (the cost model in docs/eval.md).

    Args:
        bank: [N, D] reference features (L2-normalised here).
        bank_labels: [N] int64 labels in [0, num_classes).
        queries: [M, D] features to classify.
        num_classes: C.
        ks: neighbour counts; each must be <= N.
        temperature: T in the vote weight exp(sim / T).
        chunk_size: queries per similarity matmul (memory: chunk_size x N floats).
        device: where the similarities are computed (default: CUDA when present, else CPU).
        max_chunk_bytes: cap on one similarity block (fewer queries per chunk for large banks).

    Returns:
        {k: [M] int64 predicted labels} (on the CPU).
    """
    if bank.shape[0] != bank_labels.shape[0]:
        raise VispreError(f"bank has {bank.shape[0]} features but {bank_labels.shape[0]} labels")
    if max(ks) > bank.shape[0]:
        raise VispreError(f"k={max(ks)} exceeds the bank size {bank.shape[0]}")
    device = torch.device(device) if device is not None else default_device()
    bank = F.normalize(bank.to(device).float(), dim=1)
    bank_labels = bank_labels.to(device)
    k_max = max(ks)
    rows = max(1, min(chunk_size, max_chunk_bytes // (4 * bank.shape[0])))
    preds: dict[int, list[Tensor]] = {k: [] for k in ks}
    for start in range(0, queries.shape[0], rows):
        query = F.normalize(queries[start: start + rows].to(device).float(), dim=1)
        sims, idx = (query @ bank.T).topk(k_max, dim=1)  # sorted, descending
        weights = (sims / temperature).exp()
        one_hot = F.one_hot(bank_labels[idx], num_classes).to(weights.dtype)  # [m, k_max, C]
        votes = (weights.unsqueeze(-1) * one_hot).cumsum(dim=1)  # votes of the top-j for every j
        for k in ks:
            preds[k].append(votes[:, k - 1].argmax(dim=1).cpu())
    return {k: torch.cat(v) for k, v in preds.items()}


def standardize(bank: Tensor, *others: Tensor, eps: float = 1e-6) -> tuple[Tensor, ...]:
    """Z-score every feature dimension with the bank's statistics: (x - mean_bank) / (std_bank + eps).

    Frozen MAE features share a large common component, so raw cosine similarities crowd near 1; removing it
    (statistics from the bank only, never from the queries) lets the neighbours follow the class structure.

    Args:
        bank: [N, D] reference features. others: [M_i, D] query features.

    Returns:
        (bank', *others') with the same shapes.
    """
    mean, std = bank.mean(0), bank.std(0) + eps
    return tuple((x - mean) / std for x in (bank, *others))


def knn_top1(bank: Tensor, bank_labels: Tensor, queries: Tensor, query_labels: Tensor, num_classes: int,
             ks: Sequence[int] = (10, 20, 100, 200), temperature: float = 0.07,
             device: str | torch.device | None = None) -> dict[int, float]:
    """Top-1 accuracy of :func:`knn_predict` for every k: {k: accuracy in [0, 1]}."""
    preds = knn_predict(bank, bank_labels, queries, num_classes, ks, temperature, device=device)
    return {k: (p == query_labels).float().mean().item() for k, p in preds.items()}
