"""Few-shot evaluation on cached features: ``shots`` labelled train images per class, several seeded draws.

The low-label protocol of e.g. Assran et al., "Masked Siamese Networks for Label-Efficient Learning" (MSN,
arXiv 2204.07141, Sec. 5: 1 / 2 / 5 images per class, mean and std over draws), on frozen features:

    features     z-scored per dimension with the statistics of the whole train split's features (images only:
                 the labels of the undrawn images are never used), as the suite's ``+zscore`` kNN variant
    draw d       ``shots`` train images of every class, drawn without replacement with seed ``seed + d``
                 (balanced: exactly ``shots`` per class; a class with fewer images is an error)
    kNN          cosine similarity, vote weight exp(sim / 0.07) (DINO, as :mod:`vispre.eval.knn`), k = ``shots``
                 neighbours (1-NN at 1-shot); the bank is the drawn images only
    linear       a softmax-regression head on the drawn images (:func:`vispre.eval.linear_probe.train_linear_heads`:
                 standardised again with the drawn images' statistics, momentum-SGD 0.9, zero init), full batch,
                 lr 0.1 with a cosine decay over 100 steps, weight decay 0
    reported     top-1 on the whole test split per draw; mean and std (population std, 0 for one draw) over draws

The hyper-parameters are fixed (:data:`FEW_SHOT_PROTOCOL`): with k images per class there is no labelled data
to select them on, so nothing is tuned, and the test split is never used to choose anything. They were set once
on a train-only split (Fashion-MNIST, 4,200 / 1,800 of the train images, a 60-step MAE's pooled feature): the linear
head is flat within 0.01 for lr 0.03-0.1 and 100-300 steps; z-scoring lifts 5-shot kNN from 0.30 to 0.40.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from vispre.errors import VispreError
from vispre.eval.knn import knn_top1, standardize
from vispre.eval.linear_probe import train_linear_heads

KNN_TEMPERATURE = 0.07
LINEAR_LR = 0.1
LINEAR_WEIGHT_DECAY = 0.0
LINEAR_STEPS = 100
FEW_SHOT_PROTOCOL = (f"balanced draws of k train images per class; features z-scored with the whole train split's "
                     f"feature statistics (no labels); kNN: cosine, k = shots, T = {KNN_TEMPERATURE}; "
                     f"linear: softmax regression on standardised features, full-batch momentum-SGD (0.9), "
                     f"lr {LINEAR_LR} cosine over {LINEAR_STEPS} steps, weight decay {LINEAR_WEIGHT_DECAY}; "
                     f"fixed hyper-parameters (no selection); top-1 on test, mean and population std over draws")
"""The fixed few-shot protocol, as written into report.json."""


class FewShotResult(NamedTuple):
    """The draws of one shot count: test top-1 of every draw and their mean / population std."""

    shots: int
    knn_top1: list[float]
    linear_top1: list[float]

    def summary(self) -> dict[str, float | int]:
        """The report.json entry: ``knn_mean``, ``knn_std``, ``linear_mean``, ``linear_std``, ``draws``."""
        knn, linear = torch.tensor(self.knn_top1), torch.tensor(self.linear_top1)
        return {"knn_mean": knn.mean().item(), "knn_std": knn.std(correction=0).item(),
                "linear_mean": linear.mean().item(), "linear_std": linear.std(correction=0).item(),
                "draws": len(self.knn_top1)}


def draw_shots(labels: Tensor, shots: int, num_classes: int, seed: int,
               class_names: Sequence[str] | None = None) -> Tensor:
    """Indices of ``shots`` samples of every class, drawn without replacement (class 0's first, then class 1's...).

    Args:
        labels: [N] int64 labels in [0, num_classes). shots: images per class (>= 1).
        num_classes: C. seed: the draw's seed. class_names: optional, to name a class in the error.

    Returns:
        [C * shots] int64 indices into ``labels``.

    Raises:
        VispreError: ``shots`` < 1, or a class with fewer than ``shots`` samples (naming the class and its count).
    """
    if shots < 1:
        raise VispreError(f"few-shot: shots must be >= 1 image per class, got {shots}")
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        if members.numel() < shots:
            name = f" ({class_names[c]})" if class_names is not None else ""
            raise VispreError(f"few-shot: {shots}-shot needs {shots} train images of every class, but class {c}{name} "
                              f"has {members.numel()}; lower few_shot_shots (largest possible here: "
                              f"{int(torch.bincount(labels, minlength=num_classes).min())})")
        picks.append(members[torch.randperm(members.numel(), generator=gen)[:shots]])
    return torch.cat(picks)


def few_shot_eval(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
                  shots: Sequence[int] = (1, 5, 10), draws: int = 5, seed: int = 0,
                  class_names: Sequence[str] | None = None) -> dict[int, FewShotResult]:
    """kNN and a linear head trained on ``shots`` images per class, for every shot count and ``draws`` draws.

    Args:
        train_x: [N, D] features of the train split (the pool the shots are drawn from); train_y: [N] labels.
        test_x: [M, D] test features; test_y: [M] labels. num_classes: C.
        shots: images per class to evaluate (each is its own set of draws). draws: seeded draws per shot count.
        seed: draw ``d`` uses seed ``seed + d`` (the same seed gives the same draws and numbers).
        class_names: optional C names, used in error messages.

    Returns:
        {shots: FewShotResult} in the order of ``shots``.

    Raises:
        VispreError: ``draws`` < 1, or a shot count larger than some class's number of train images.
    """
    if draws < 1:
        raise VispreError(f"few-shot: draws must be >= 1, got {draws}")
    train_x, test_x = standardize(train_x, test_x)
    results: dict[int, FewShotResult] = {}
    for k in shots:
        knn, linear = [], []
        for d in range(draws):
            idx = draw_shots(train_y, k, num_classes, seed + d, class_names)
            bank, bank_y = train_x[idx], train_y[idx]
            knn.append(knn_top1(bank, bank_y, test_x, test_y, num_classes, (k,), KNN_TEMPERATURE)[k])
            heads = train_linear_heads({"x": bank}, bank_y, num_classes, torch.tensor([LINEAR_LR]),
                                       torch.tensor([LINEAR_WEIGHT_DECAY]), epochs=LINEAR_STEPS,
                                       batch_size=idx.numel(), seed=seed + d, progress=False)
            linear.append((heads["x"].predict(test_x)[0] == test_y).float().mean().item())
        results[k] = FewShotResult(k, knn, linear)
    return results


def few_shot_report(results: dict[int, FewShotResult], feature: str) -> dict[str, Any]:
    """A task's report.json keys: ``few_shot`` (``{"<shots>": FewShotResult.summary()}``), ``few_shot_feature``
    and ``few_shot_protocol`` (:data:`FEW_SHOT_PROTOCOL`)."""
    return {"few_shot": {str(k): r.summary() for k, r in results.items()}, "few_shot_feature": feature,
            "few_shot_protocol": FEW_SHOT_PROTOCOL}


__all__ = ["FEW_SHOT_PROTOCOL", "FewShotResult", "draw_shots", "few_shot_eval", "few_shot_report"]
