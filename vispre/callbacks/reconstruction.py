"""Writes a PNG grid of MAE reconstructions (original / masked / reconstruction) into the run folder."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from vispre.data.fashion_mnist import MEAN, STD, load_fashion_mnist
from vispre.data.transforms import EvalView


def save_reconstruction_grid(rows: list[Tensor], path: Path, titles: tuple[str, ...]) -> Path:
    """Save images as a grid: one column per entry of ``rows`` ([N, C, H, W] each, values in [0, 1]).

    Written to a temporary name first, then renamed (no half-written PNG).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = rows[0].shape[0]
    fig, axes = plt.subplots(n, len(rows), figsize=(1.4 * len(rows), 1.4 * n), squeeze=False)
    for col, images in enumerate(rows):
        for row in range(n):
            ax = axes[row][col]
            img = images[row].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
            ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col], fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


class ReconstructionFigure(L.Callback):
    """At the end of fit, reconstruct ``num_images`` Fashion-MNIST test images with the MAE being trained.

    Args:
        num_images: rows of the grid. img_size: input size of the backbone. filename: PNG name in the run dir.
    """

    def __init__(self, num_images: int = 8, img_size: int = 28, filename: str = "reconstructions.png") -> None:
        self.num_images, self.img_size, self.filename = num_images, img_size, filename

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # No run folder to write into (logger off, e.g. fast_dev_run) or not an MAE: nothing to draw.
        if not trainer.is_global_zero or not hasattr(pl_module, "reconstruct") or trainer.log_dir is None:
            return
        data = load_fashion_mnist("test")
        view = EvalView(self.img_size, mean=MEAN, std=STD)
        images = torch.stack([view(img)[0] for img in data.images[: self.num_images]]).to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        rec = pl_module.reconstruct(images)
        pl_module.train(was_training)
        mean, std = torch.tensor(MEAN).view(1, -1, 1, 1), torch.tensor(STD).view(1, -1, 1, 1)
        rows = [(t.float().cpu() * std + mean) for t in rec]
        path = save_reconstruction_grid(rows, Path(trainer.log_dir) / self.filename,
                                        ("original", "masked", "reconstruction"))
        print(f"MAE reconstructions: {path}")
