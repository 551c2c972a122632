"""kNN (DINO protocol) on hand-built feature banks: cosine similarity, exp(sim / T) votes, several k at once."""

from __future__ import annotations

import math

import pytest
import torch

from vispre.eval.knn import knn_predict, knn_top1, standardize

# Unit-length directions (before the scaling below): cosine to the query [1, 0] is 1.0, 0.6, 0.6, -1.0.
BANK = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8], [-1.0, 0.0]])
BANK_LABELS = torch.tensor([1, 0, 0, 1])
SCALES = torch.tensor([[3.0], [5.0], [0.5], [2.0]])  # kNN must L2-normalise: the lengths must not matter


def hand_votes(sims: list[float], labels: list[int], k: int, temperature: float, num_classes: int) -> list[float]:
    """Class votes of the k most similar bank entries, written out (no tensors)."""
    order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
    votes = [0.0] * num_classes
    for i in order:
        votes[labels[i]] += math.exp(sims[i] / temperature)
    return votes


@pytest.mark.parametrize("temperature", [1.0, 0.07])
def test_weighted_votes_for_several_k_in_one_pass(temperature: float) -> None:
    sims = [1.0, 0.6, 0.6, -1.0]
    expected = {}
    for k in (1, 3, 4):
        votes = hand_votes(sims, BANK_LABELS.tolist(), k, temperature, 2)
        expected[k] = max(range(2), key=lambda c: votes[c])
    # T = 1: exp(1) = 2.72 < 2 exp(0.6) = 3.64, so two weaker class-0 neighbours outvote the nearest one at
    # k = 3; T = 0.07 sharpens the weights and the nearest neighbour wins at every k.
    assert expected == ({1: 1, 3: 0, 4: 0} if temperature == 1.0 else {1: 1, 3: 1, 4: 1})
    query = torch.tensor([[7.0, 0.0]])
    preds = knn_predict(BANK * SCALES, BANK_LABELS, query, num_classes=2, ks=(1, 3, 4), temperature=temperature)
    assert {k: int(p[0]) for k, p in preds.items()} == expected


def test_accuracy_on_a_hand_built_bank() -> None:
    # queries and their true labels; with T=1: q0 -> {k1: 1, k3: 0}, q1 = [0.6, 0.8] -> nearest b1 (label 0),
    # k3: b1 (1.0), b0 (0.6), b2 (-0.28) -> class 0 = e^1 + e^-0.28 = 3.47 vs class 1 = e^0.6 = 1.82 -> 0.
    queries = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    labels = torch.tensor([1, 1])
    acc = knn_top1(BANK * SCALES, BANK_LABELS, queries, labels, num_classes=2, ks=(1, 3), temperature=1.0)
    assert acc == {1: 0.5, 3: 0.0}
    acc = knn_top1(BANK * SCALES, BANK_LABELS, queries, torch.tensor([1, 0]), num_classes=2, ks=(1, 3),
                   temperature=1.0)
    assert acc == {1: 1.0, 3: 0.5}


def test_matches_a_loop_reference_on_random_banks_and_chunks() -> None:
    gen = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(50, 8, generator=gen), torch.randn(13, 8, generator=gen)
    labels = torch.randint(0, 4, (50,), generator=gen)
    ks = (1, 5, 20, 50)
    preds = knn_predict(bank, labels, queries, 4, ks, temperature=0.1, chunk_size=4)  # 4 chunks, last partial
    nb = bank / bank.norm(dim=1, keepdim=True)
    for i, q in enumerate(queries):
        sims = (nb @ (q / q.norm())).tolist()
        for k in ks:
            votes = hand_votes(sims, labels.tolist(), k, 0.1, 4)
            assert int(preds[k][i]) == max(range(4), key=lambda c: votes[c]), (i, k)


def test_k_larger_than_bank_and_label_count_mismatch_are_named() -> None:
    with pytest.raises(ValueError, match="k=5 exceeds the bank size 4"):
        knn_predict(BANK, BANK_LABELS, BANK, 2, ks=(1, 5))
    with pytest.raises(ValueError, match="bank has 4 features but 3 labels"):
        knn_predict(BANK, BANK_LABELS[:3], BANK, 2, ks=(1,))


def test_standardize_uses_the_bank_statistics_only() -> None:
    bank = torch.tensor([[1.0, 10.0], [3.0, 10.0], [5.0, 16.0]])  # column means 3, 12; stds 2, sqrt(12)
    query = torch.tensor([[3.0, 12.0], [7.0, 6.0]])
    zb, zq = standardize(bank, query)
    torch.testing.assert_close(zb.mean(0), torch.zeros(2))
    torch.testing.assert_close(zb.std(0), torch.ones(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(zq, torch.tensor([[0.0, 0.0], [2.0, -6.0 / 12 ** 0.5]]), atol=1e-5, rtol=0)


def test_standardize_recovers_a_class_signal_along_the_shared_direction() -> None:
    """Every feature is dominated by one shared direction (dim 0, offset 100) and the classes differ only in
    how far along it they lie (50 vs 150); dims 1-2 are unit noise. Cosine on the raw features sees almost
    the same direction everywhere and votes by the noise (measured 0.72); after z-scoring, dim 0 separates
    the classes and kNN is perfect."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 2
    along = 100 + 50 * (2 * labels - 1) + torch.randn(400, generator=gen)
    feats = torch.cat([along[:, None], torch.randn(400, 2, generator=gen)], dim=1)
    queries, query_labels, bank, bank_labels = feats[:100], labels[:100], feats[100:], labels[100:]
    raw = knn_top1(bank, bank_labels, queries, query_labels, 2, ks=(5,))[5]
    zbank, zqueries = standardize(bank, queries)
    assert raw < 0.8
    assert knn_top1(zbank, bank_labels, zqueries, query_labels, 2, ks=(5,))[5] == 1.0
