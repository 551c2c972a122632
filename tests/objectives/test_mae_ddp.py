"""DDP on CPU (2 gloo processes, Lightning strategy "ddp") gives the parameters of the single-process run
on the concatenated batch. The mask noise travels with each sample, so both runs draw identical masks.

Also runnable as a script (Lightning's ddp launcher re-executes it for rank 1):
    python tests/objectives/test_mae_ddp.py DEVICES BATCH_SIZE STEPS OUT.pt
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers import TINY_DECODER, cpu_trainer, free_port, tiny_vit  # noqa: E402
from vispre.objectives.mae import MAE  # noqa: E402

NUM_SAMPLES, NUM_PATCHES = 48, 16


class NoiseMAE(MAE):
    """MAE whose mask noise comes with the batch (``batch["noise"]`` [B, L])."""

    def loss_terms(self, batch: dict) -> dict:
        return {"loss": self.forward_loss(batch["views"][0], noise=batch["noise"]).loss}


class NoiseImages(Dataset):
    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(1)
        self.images = torch.randn(NUM_SAMPLES, 3, 32, 32, generator=gen)
        self.noise = torch.rand(NUM_SAMPLES, NUM_PATCHES, generator=gen)

    def __len__(self) -> int:
        return NUM_SAMPLES

    def __getitem__(self, i: int) -> dict:
        return {"views": [self.images[i]], "noise": self.noise[i]}


class NoiseData(L.LightningDataModule):
    """Unshuffled: rank r of W gets samples r, r+W, ... so the rank batches k together are the W*B-batch k.

    The split is explicit (the Trainer runs with ``use_distributed_sampler=False``): Lightning's own
    DistributedSampler shuffles here even though the loader does not.
    """

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        indices = list(range(rank, NUM_SAMPLES, world))
        return DataLoader(Subset(NoiseImages(), indices), batch_size=self.batch_size, shuffle=False, drop_last=True)


def train(devices: int, batch_size: int, steps: int) -> tuple[L.Trainer, NoiseMAE]:
    L.seed_everything(0, verbose=False)
    torch.set_num_threads(1 if devices > 1 else 2)
    model = NoiseMAE(tiny_vit(), **TINY_DECODER)
    trainer = cpu_trainer(devices=devices, strategy="ddp" if devices > 1 else "auto", max_steps=steps,
                          precision="32-true", use_distributed_sampler=False)
    trainer.fit(model, datamodule=NoiseData(batch_size))
    return trainer, model



def test_ddp_two_processes_match_single_process_on_concatenated_batch(tmp_path: Path) -> None:
    steps, per_rank = 3, 4
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "PYTHONPATH": str(ROOT)}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, __file__, "2", str(per_rank), str(steps), str(out)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)
    assert ddp["world_size"] == 2 and ddp["global_step"] == steps
    trainer, single = train(devices=1, batch_size=2 * per_rank, steps=steps)
    assert trainer.global_step == steps
    reference = single.state_dict()
    assert ddp["state_dict"].keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(ddp["state_dict"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    # the comparison has power: the single-process run on one rank's half-batch ends elsewhere
    _, half = train(devices=1, batch_size=per_rank, steps=steps)
    weight = "backbone.vit.blocks.0.attn.qkv.weight"
    assert not torch.allclose(half.state_dict()[weight], reference[weight], rtol=1e-4, atol=1e-5)
    assert ddp["lr"] == trainer.optimizers[0].param_groups[0]["lr"]  # lr scaled by the same global batch


if __name__ == "__main__":
    devices, batch_size, steps, out_path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    trained, model = train(devices, batch_size, steps)
    if trained.global_rank == 0:
        torch.save({"state_dict": model.state_dict(), "world_size": trained.world_size,
                    "global_step": trained.global_step, "lr": trained.optimizers[0].param_groups[0]["lr"]},
                   out_path)
