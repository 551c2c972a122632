"""Writes a PNG grid of MAE reconstructions (original / masked / reconstruction) into the run folder."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from torch import Tensor

from vispre.io import atomic_writer


def save_reconstruction_grid(rows: list[Tensor], path: Path, titles: tuple[str, ...]) -> Path:
    """Save images as a grid: one column per entry of ``rows`` ([N, C, H, W] each, values in [0, 1]).

    Written atomically (:func:`vispre.io.atomic_writer`: no half-written PNG).
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
    try:
        with atomic_writer(path) as fh:
            fig.savefig(fh, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path


class ReconstructionFigure(L.Callback):
    """At the end of fit, reconstruct ``num_images`` un-augmented images of the run's data module with the
    MAE being trained (original / masked / reconstruction, in pixel space).

    The images come from the data module's ``preview_images(count, img_size)`` (vispre.data.preview: e.g.
    the Fashion-MNIST test split for FashionMNISTDataModule, the first samples in shard order for
    WebDatasetDataModule), normalised as its views normalise them.

    Args:
        num_images: rows of the grid. img_size: input size of the backbone (None: patch size x grid size of
            ``pl_module.backbone``). filename: PNG name in the run dir.
    """

    def __init__(self, num_images: int = 8, img_size: int | None = None,
                 filename: str = "reconstructions.png") -> None:
        self.num_images, self.img_size, self.filename = num_images, img_size, filename

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # No run folder to write into (logger off, e.g. fast_dev_run) or not an MAE: nothing to draw.
        if not trainer.is_global_zero or not hasattr(pl_module, "reconstruct") or trainer.log_dir is None:
            return
        datamodule = getattr(trainer, "datamodule", None)
        if not callable(getattr(datamodule, "preview_images", None)):
            print(f"MAE reconstructions: skipped ({type(datamodule).__name__} has no preview_images)")
            return
        preview = datamodule.preview_images(self.num_images, self.img_size or _input_size(pl_module))
        was_training = pl_module.training
        pl_module.eval()
        rec = pl_module.reconstruct(preview.normalised().to(pl_module.device))
        pl_module.train(was_training)
        rows = [preview.to_pixels(t) for t in rec]
        path = save_reconstruction_grid(rows, Path(trainer.log_dir) / self.filename,
                                        ("original", "masked", "reconstruction"))
        print(f"MAE reconstructions: {path}")


def _input_size(pl_module: L.LightningModule) -> int:
    backbone = pl_module.backbone
    grid = backbone.grid_size
    return int(backbone.patch_size * (grid[0] if isinstance(grid, (tuple, list)) else grid))


__all__ = ["ReconstructionFigure", "save_reconstruction_grid"]
