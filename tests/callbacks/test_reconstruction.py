"""ReconstructionFigure draws the run's data module's preview images (synthetic data here), or says why not."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.loggers import CSVLogger

from tests.helpers import cpu_trainer, tiny_mae
from vispre.callbacks.reconstruction import ReconstructionFigure
from vispre.data import PreviewImages, SyntheticDataModule


class RecordingData(SyntheticDataModule):
    """Synthetic data that records the preview requests."""

    requests: list[tuple[int, int]]

    def preview_images(self, count: int, img_size: int) -> PreviewImages:
        self.requests = [*getattr(self, "requests", []), (count, img_size)]
        return super().preview_images(count, img_size)


class NoPreviewData(L.LightningDataModule):
    """A data module without preview_images (its batches from SyntheticDataModule)."""

    def __init__(self) -> None:
        super().__init__()
        self.source, self.batch_size = SyntheticDataModule(img_size=32, num_samples=8, batch_size=4), 4

    def train_dataloader(self):
        return self.source.train_dataloader()


def fit(tmp_path: Path, data: L.LightningDataModule, **kwargs) -> Path:
    trainer = cpu_trainer(max_steps=1, logger=CSVLogger(tmp_path), callbacks=[ReconstructionFigure(**kwargs)])
    trainer.fit(tiny_mae(), datamodule=data)
    return Path(trainer.log_dir)


def test_figure_from_the_data_modules_preview(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = RecordingData(img_size=32, num_samples=8, batch_size=4)
    run = fit(tmp_path, data, num_images=3)
    assert data.requests == [(3, 32)]  # img_size from the backbone: patch 8 x grid 4
    png = run / "reconstructions.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"MAE reconstructions: {png}" in capsys.readouterr().out


def test_data_module_without_preview_is_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = fit(tmp_path, NoPreviewData())
    assert not (run / "reconstructions.png").exists()
    assert "MAE reconstructions: skipped (NoPreviewData has no preview_images)" in capsys.readouterr().out
