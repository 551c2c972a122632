"""Online linear probe: a stop-gradient linear head on the backbone's pooled (cls) feature, trained during
pretraining on labelled batches, so progress is visible live (as in solo-learn / lightly online
classifiers).

Each labelled training batch is split: the first ``1 - holdout_fraction`` of it trains the head (on
detached features; the backbone never sees its gradient) and the rest, never trained on at that step, is
scored first; ``probe/holdout_top1`` is the running top-1 on those held-out samples over the last
``window`` batches, ``probe/train_loss`` the head's cross-entropy. Batches without ``"label"`` are skipped.
"""

from __future__ import annotations

from collections import deque

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class OnlineLinearProbe(L.Callback):
    """Args:
        num_classes: C. lr: Adam learning rate of the head. holdout_fraction: part of each labelled batch
        held out for scoring (in (0, 1)). window: batches averaged in the logged top-1.
    """

    def __init__(self, num_classes: int, lr: float = 1e-3, holdout_fraction: float = 0.25,
                 window: int = 50) -> None:
        if num_classes < 2:
            raise ValueError(f"OnlineLinearProbe.num_classes must be >= 2, got {num_classes}")
        if not 0.0 < holdout_fraction < 1.0:
            raise ValueError(f"OnlineLinearProbe.holdout_fraction must lie in (0, 1), got {holdout_fraction}")
        self.num_classes, self.lr, self.holdout_fraction = num_classes, lr, holdout_fraction
        self.hits: deque[tuple[int, int]] = deque(maxlen=window)
        self.head: nn.Linear | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.head is None:
            dim = pl_module.backbone.embed_dim
            self.head = nn.Linear(dim, self.num_classes).to(pl_module.device)
            self.optimizer = torch.optim.Adam(self.head.parameters(), lr=self.lr)

    def step(self, features: Tensor, labels: Tensor) -> tuple[float, int, int]:
        """One probe update: score the held-out tail, train on the head. Returns (loss, hits, count)."""
        assert self.head is not None and self.optimizer is not None
        features, labels = features.detach().float().to(self.head.weight.device), labels.to(self.head.weight.device)
        cut = max(1, int(round(features.shape[0] * (1 - self.holdout_fraction))))
        with torch.no_grad():
            held = self.head(features[cut:]).argmax(dim=1) == labels[cut:]
        loss = F.cross_entropy(self.head(features[:cut]), labels[:cut])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss), int(held.sum()), int(held.numel())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object,
                           batch: dict, batch_idx: int) -> None:
        labels = batch.get("label") if isinstance(batch, dict) else None
        if labels is None:
            return
        with torch.no_grad():
            features = pl_module.backbone(batch["views"][0])
        with torch.enable_grad(), torch.autocast(features.device.type, enabled=False):
            loss, hits, count = self.step(features, labels)
        self.hits.append((hits, count))
        total = sum(c for _, c in self.hits)
        pl_module.log("probe/train_loss", loss, batch_size=labels.shape[0])
        if total:
            pl_module.log("probe/holdout_top1", sum(h for h, _ in self.hits) / total, prog_bar=True,
                          batch_size=labels.shape[0])

    def state_dict(self) -> dict:
        return {"head": None if self.head is None else self.head.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if self.head is not None and state_dict.get("head") is not None:
            self.head.load_state_dict(state_dict["head"])


__all__ = ["OnlineLinearProbe"]
