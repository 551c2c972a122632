"""CPU side by side in ONE run: vispre's MAE train step vs a peer built from lightly's MAE blocks vs a bare
PyTorch loop, all on the same timm ViT size, decoder size, batch and AdamW; rounds are interleaved
(A B C D, A B C D, ...) so machine-load drift hits every implementation alike.

    flock /tmp/vispre-heavy.lock .venv/bin/python tools/bench_peers.py [--batch_size 256 --rounds 5]

Rows: vispre objective step (MAE.loss_terms + AdamW), vispre through the Lightning Trainer (what
``vispre fit`` runs), lightly 1.6 blocks (MaskedVisionTransformerTIMM + MAEDecoderTIMM, their MAE
example's step), bare loop (hand-written MAE on the timm modules). Needs requirements-bench.txt.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader

from vispre.backbones import MaskedViT
from vispre.backbones.masking import patchify
from vispre.bench import synthetic_batch, time_steps
from vispre.losses.masked_mse import normalize_patches
from vispre.objectives.mae import MAE

SIZES = dict(model_name="vit_tiny_patch16_224", img_size=28, patch_size=7, in_chans=1, embed_dim=192, depth=6,
             num_heads=3)
DECODER = dict(decoder_dim=128, decoder_depth=2, decoder_num_heads=4)


def vispre_step(batch: dict) -> tuple[callable, nn.Module]:
    model = MAE(MaskedViT(**SIZES), mask_ratio=0.75, **DECODER)
    opt = model.optimizer_recipe.build(model, len(batch["views"][0]), 1000).optimizer

    def step() -> None:
        model.loss_terms(batch)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, model


def lightly_step(batch: dict) -> callable:
    from lightly.models import utils
    from lightly.models.modules import MAEDecoderTIMM, MaskedVisionTransformerTIMM

    vit = MaskedViT(**SIZES).vit
    backbone = MaskedVisionTransformerTIMM(vit=vit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MAEDecoderTIMM deprecation notice
        decoder = MAEDecoderTIMM(num_patches=vit.patch_embed.num_patches, patch_size=SIZES["patch_size"],
                                 in_chans=1, embed_dim=SIZES["embed_dim"], decoder_embed_dim=DECODER["decoder_dim"],
                                 decoder_depth=DECODER["decoder_depth"],
                                 decoder_num_heads=DECODER["decoder_num_heads"])
    model = nn.ModuleList([backbone, decoder])
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    seq_len = backbone.sequence_length
    images = batch["views"][0]

    def step() -> None:  # lightly's examples/pytorch/mae.py training step, with norm_pix targets
        b = images.shape[0]
        idx_keep, idx_mask = utils.random_token_mask(size=(b, seq_len), mask_ratio=0.75, device=images.device)
        x_encoded = backbone.encode(images=images, idx_keep=idx_keep)
        x_decode = decoder.embed(x_encoded)
        x_masked = utils.repeat_token(decoder.mask_token, (b, seq_len))
        x_masked = utils.set_at_index(x_masked, idx_keep, x_decode.type_as(x_masked))
        x_pred = decoder.predict(utils.get_at_index(decoder.decode(x_masked), idx_mask))
        target = utils.get_at_index(utils.patchify(images, SIZES["patch_size"]), idx_mask - 1)
        nn.functional.mse_loss(x_pred, utils.normalize_mean_var(target, dim=-1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bare_step(batch: dict) -> callable:
    """The same math as vispre's MAE written out as a plain loop over the timm modules."""
    reference = MAE(MaskedViT(**SIZES), mask_ratio=0.75, **DECODER)  # borrow identically built modules
    vit, dec = reference.backbone.vit, reference.decoder
    opt = torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], lr=1.5e-4,
                            betas=(0.9, 0.95), weight_decay=0.05)
    images, p = batch["views"][0], SIZES["patch_size"]

    def step() -> None:
        x = vit.patch_embed(images) + vit.pos_embed[:, 1:]
        b, n, d = x.shape
        keep = int(n * 0.25)
        shuffle = torch.rand(b, n).argsort(1)
        restore = shuffle.argsort(1)
        x = torch.gather(x, 1, shuffle[:, :keep, None].expand(-1, -1, d))
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(b, -1, -1)
        x = vit.norm(vit.blocks(torch.cat([cls, x], 1)))
        y = dec.decoder_embed(x)
        y_cls, y = y[:, :1], torch.cat([y[:, 1:], dec.mask_token.expand(b, n - keep, -1)], 1)
        y = torch.gather(y, 1, restore[..., None].expand(-1, -1, y.shape[-1]))
        y = dec.pred(dec.norm(dec.blocks(torch.cat([y_cls, y], 1) + dec.pos_embed)))[:, 1:]
        mask = torch.ones(b, n)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, restore)
        per_patch = (y - normalize_patches(patchify(images, p))).pow(2).mean(-1)
        ((per_patch * mask).sum() / mask.sum()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


class _StepTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, *args: object) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, *args: object) -> None:
        self.times.append(time.perf_counter() - self.start)


def lightning_times(model: MAE, batch: dict, steps: int) -> list[float]:
    """Steps through ``L.Trainer.fit`` (logging every 10 steps as vispre's default); first step dropped."""
    batches = [{"views": batch["views"][:1]}] * (steps + 1)
    loader = DataLoader(batches, batch_size=None)  # yields the prebuilt batch as is

    class Data(L.LightningDataModule):
        batch_size = len(batch["views"][0])

        def train_dataloader(self) -> DataLoader:
            return loader

    timer = _StepTimer()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps + 1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                        log_every_n_steps=10)
    trainer.fit(model, datamodule=Data())
    return timer.times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per implementation per round")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import lightly

    cpu = torch.device("cpu")
    batch = synthetic_batch(MAE(MaskedViT(**SIZES), **DECODER), args.batch_size, 1, cpu)
    vispre, vispre_model = vispre_step(batch)
    steps = {"vispre objective step": vispre, f"lightly {lightly.__version__} blocks": lightly_step(batch),
             "bare PyTorch loop": bare_step(batch)}
    times: dict[str, list[float]] = {name: [] for name in [*steps, "vispre via Lightning Trainer"]}
    lightning_model = MAE(MaskedViT(**SIZES), **DECODER)
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name] += time_steps(step, args.steps, 1, cpu)
        times["vispre via Lightning Trainer"] += lightning_times(lightning_model, batch, args.steps)
    median = {name: statistics.median(t) for name, t in times.items()}
    bare = median["bare PyTorch loop"]
    lightly_name = f"lightly {lightly.__version__} blocks"
    rows = [dict(name=n, step_ms=round(1e3 * m, 1), images_per_s=round(args.batch_size / m, 1),
                 time_vs_bare=round(m / bare, 3), time_vs_lightly=round(m / median[lightly_name], 3),
                 samples=len(times[n])) for n, m in median.items()]
    print(json.dumps(dict(machine=f"cpu, {torch.get_num_threads()} threads", batch_size=args.batch_size,
                          torch=torch.__version__, rows=rows), indent=1))


if __name__ == "__main__":
    main()
