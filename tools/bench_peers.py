"""CPU side by side in ONE run: vispre's train step vs a peer built from lightly's blocks, on the same timm ViT,
heads, batch and AdamW; rounds are interleaved (A B C, A B C, ...) so machine-load drift hits every
implementation alike. Two modes:

    flock /tmp/vispre-heavy.lock .venv/bin/python tools/bench_peers.py [--batch_size 256 --rounds 5]
    .venv/bin/python tools/bench_peers.py --mode dino [--batch_size 256 --rounds 5 --out dino_peers.json]

MAE rows: vispre objective step (MAE.loss_terms + AdamW), vispre through the Lightning Trainer (what
``vispre fit`` runs), lightly 1.6 blocks (MaskedVisionTransformerTIMM + MAEDecoderTIMM, their MAE
example's step), bare loop (hand-written MAE on the timm modules). DINO rows (:func:`run_dino`):
vispre's ``dino`` objective of configs/dino/vit_tiny_fashion_mnist.yaml vs lightly's DINOLoss +
DINOProjectionHead on the same multi-crop batch. Needs requirements-bench.txt.
"""

from __future__ import annotations

import argparse
import json
import statistics
import copy
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader

from vispre.backbones import MaskedViT
from vispre.backbones.masking import patchify
from vispre.bench import synthetic_batch, time_steps
from vispre.commands.config import build_from_config
from vispre.io import atomic_write_text
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


# -- DINO: vispre's `dino` objective vs lightly's DINOLoss + DINOProjectionHead ---------------------------------
DINO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "dino" / "vit_tiny_fashion_mnist.yaml"
CLIP = 3.0  # the config's trainer.gradient_clip_val, applied by both (Lightning clips the same way)


def multicrop_batch(batch_size: int, num_global: int = 2, num_local: int = 4, global_size: int = 28,
                    local_size: int = 14) -> dict:
    """A fixed random multi-crop batch: ``num_global`` [B, 1, 28, 28] views then ``num_local`` [B, 1, 14, 14]."""
    gen = torch.Generator().manual_seed(0)
    sizes = [global_size] * num_global + [local_size] * num_local
    return {"views": [torch.randn(batch_size, 1, s, s, generator=gen) for s in sizes]}


def vispre_dino_step(batch: dict, config: Path = DINO_CONFIG, overrides: tuple[str, ...] = ()) -> tuple[callable, nn.Module]:
    """vispre's ``dino`` objective as the shipped config builds it: per step the EMA update + schedules
    (``update_schedules``, what ``on_train_batch_start`` calls), loss_terms, backward, clipping, AdamW."""
    model = build_from_config([config], list(overrides)).model.train()
    opt = model.optimizer_recipe.build(model, len(batch["views"][0]), 1000).optimizer
    counter = iter(range(10**9))

    def step() -> None:
        model.update_schedules(next(counter), 1000, 1000)
        model.loss_terms(batch)["loss"].backward()
        nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, model


def lightly_dino_step(batch: dict, model: nn.Module, per_view: bool) -> tuple[callable, nn.Module]:
    """DINO from lightly's blocks, sized like ``model`` (vispre's DINO: same timm ViT, head widths, K, crops,
    temperatures, EMA momentum, lr and weight decay): lightly's examples/pytorch/dino.py step.

    Args:
        batch: the multi-crop batch (global crops first). model: vispre's DINO, read for the sizes.
        per_view: one forward per crop, as lightly's example; else crops of one size batched (as vispre).

    Returns:
        (step closure, the student modules).
    """
    import timm
    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead, MaskedVisionTransformerTIMM
    from lightly.models.utils import deactivate_requires_grad, update_momentum

    vit, head = model.backbone.vit, model.head
    student_vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, dynamic_img_size=True,
                                    img_size=vit.patch_embed.img_size[0], patch_size=vit.patch_embed.patch_size[0],
                                    in_chans=vit.patch_embed.proj.in_channels, embed_dim=vit.embed_dim,
                                    depth=len(vit.blocks), num_heads=vit.blocks[0].attn.num_heads)
    backbone = MaskedVisionTransformerTIMM(vit=student_vit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm deprecation notice
        # two heads, as lightly's example (a weight_norm head cannot be deep-copied)
        projection, t_head = (DINOProjectionHead(vit.embed_dim, model.head.mlp[0].out_features, head.bottleneck_dim,
                                                 head.out_dim, batch_norm=False, norm_last_layer=head.norm_last_layer)
                              for _ in range(2))
    t_head.load_state_dict(projection.state_dict())
    t_backbone = copy.deepcopy(backbone)
    deactivate_requires_grad(t_backbone)
    deactivate_requires_grad(t_head)
    criterion = DINOLoss(output_dim=head.out_dim, warmup_teacher_temp=model.schedule.warmup_teacher_temp,
                         teacher_temp=model.schedule.teacher_temp, student_temp=model.student_temp,
                         center_momentum=model.center_momentum)
    student = nn.ModuleList([backbone, projection])
    recipe = model.optimizer_recipe
    opt = torch.optim.AdamW(student.parameters(), lr=recipe.base_lr, betas=recipe.betas, weight_decay=recipe.weight_decay)
    views, g = batch["views"], model.num_global_crops

    def step() -> None:
        update_momentum(backbone, t_backbone, m=model.schedule.base_momentum)
        update_momentum(projection, t_head, m=model.schedule.base_momentum)
        if per_view:
            teacher_out = [t_head(t_backbone(v)) for v in views[:g]]
            student_out = [projection(backbone(v)) for v in views]
        else:
            teacher_out = list(t_head(t_backbone(torch.cat(views[:g]))).chunk(g))
            student_out = [*projection(backbone(torch.cat(views[:g]))).chunk(g),
                           *projection(backbone(torch.cat(views[g:]))).chunk(len(views) - g)]
        criterion(teacher_out, student_out, teacher_temp=model.schedule.warmup_teacher_temp).backward()
        nn.utils.clip_grad_norm_(student.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, student


def student_size(modules: list[nn.Module]) -> int:
    """Parameters of the student (backbone + head), trainable or not: equal sizes mean equal work."""
    return sum(p.numel() for m in modules for p in m.parameters())


def dino_table(result: dict) -> str:
    """The rows of :func:`run_dino` as the markdown table of docs/ablation.md's DINO section."""
    lines = [f"{result['machine']}, batch {result['batch_size']}, crops {result['crops']}, K {result['prototypes']}", "",
             "| implementation | step ms | images/s | student params | lightly (per-view) / this |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['step_ms']} | {r['images_per_s']} | {r['student_params']:,} | {r['lightly_over_this']} |"
              for r in result["rows"]]
    return "\n".join(lines) + "\n"


def run_dino(batch_size: int, rounds: int, steps: int, out: Path | None) -> dict:
    """Time vispre's DINO and the two lightly variants, interleaved; print (and write) the JSON rows.

    Returns:
        ``{"machine", "batch_size", "crops", "rows": [{name, step_ms, images_per_s, student_params,
        lightly_over_this}]}``; ``lightly_over_this`` = lightly's median / this median (> 1: faster than
        lightly's example step).
    """
    import lightly

    torch.manual_seed(0)
    batch = multicrop_batch(batch_size)
    vispre, model = vispre_dino_step(batch)
    lightly_name = f"lightly {lightly.__version__} blocks (per-view forwards, their example)"
    peers = {lightly_name: lightly_dino_step(batch, model, per_view=True),
             f"lightly {lightly.__version__} blocks (crops batched by size)": lightly_dino_step(batch, model, per_view=False)}
    steps_by_name = {"vispre dino objective step": vispre, **{n: s for n, (s, _) in peers.items()}}
    sizes = {"vispre dino objective step": student_size([model.backbone, model.head]),
             **{n: student_size(list(m)) for n, (_, m) in peers.items()}}
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    cpu = torch.device("cpu")
    for _ in range(rounds):
        for name, step in steps_by_name.items():
            times[name] += time_steps(step, steps, 1, cpu)
    median = {name: statistics.median(t) for name, t in times.items()}
    rows = [dict(name=n, step_ms=round(1e3 * m, 1), images_per_s=round(batch_size / m, 1), student_params=sizes[n],
                 lightly_over_this=round(median[lightly_name] / m, 3), samples=len(times[n])) for n, m in median.items()]
    result = dict(machine=f"cpu, {torch.get_num_threads()} threads", batch_size=batch_size, torch=torch.__version__,
                  crops=" + ".join(f"{tuple(v.shape[1:])}" for v in batch["views"]), prototypes=model.head.out_dim, rows=rows)
    text = json.dumps(result, indent=1)
    print(text)
    print(dino_table(result))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text + "\n")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["mae", "dino"], default="mae")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per implementation per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="dino mode: also write the JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.mode == "dino":
        run_dino(args.batch_size, args.rounds, args.steps, args.out)
        return
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
