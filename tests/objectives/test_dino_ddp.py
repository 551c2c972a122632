"""Self-distillation under real DDP (2 gloo processes on CPU): the loss, every student gradient and the updated
centres equal those of one process on the concatenated batch, to 1e-6 relative to each tensor's largest entry
(the losses compute in float32 whatever the input dtype, so float32 rounding is the floor), for ``dino`` (EMA
centre over the global batch) and ``dinov2`` with KoLeo off (Sinkhorn-Knopp over the global batch, masks given per sample).
KoLeo's neighbours stay per rank by design (DINOv2): each rank's term equals a one-process KoLeo on its half."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from tests.helpers import run_on_gloo_ranks, tiny_vit
from vispre.heads import DINOHead
from vispre.objectives import DINO, DINOv2

WORLD, PER_RANK, N = 2, 3, 16
HEAD = partial(DINOHead, out_dim=16, hidden_dim=16, bottleneck_dim=8)
MODELS = {
    "dino": partial(DINO, head=HEAD),
    "dinov2": partial(DINOv2, head=HEAD, koleo_weight=0.0),
    "dinov2_koleo": partial(DINOv2, head=HEAD, koleo_weight=0.1),
}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = MODELS[name](tiny_vit()).double()
    with torch.no_grad():
        model.center.normal_()
        if hasattr(model, "mask_token"):
            model.mask_token.normal_()
    return model


def global_batch() -> dict:
    gen = torch.Generator().manual_seed(1)
    b = WORLD * PER_RANK
    views = [torch.randn(b, 3, 32, 32, generator=gen, dtype=torch.float64) for _ in range(2)]
    views += [torch.randn(b, 3, 16, 16, generator=gen, dtype=torch.float64) for _ in range(2)]
    return {"views": views, "masks": torch.rand(b, 2, N, generator=gen) < 0.4}


def rank_batch(batch: dict, rank: int) -> dict:
    part = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    return {"views": [v[part] for v in batch["views"]], "masks": batch["masks"][part]}


def run(model: torch.nn.Module, batch: dict) -> dict:
    """Loss terms, student gradients and centres after one forward/backward."""
    terms = model(batch)
    terms["loss"].backward()
    module = getattr(model, "module", model)
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}
    centres = {n: b.clone() for n, b in module.named_buffers() if n.endswith("center")}
    return {"terms": {k: v.detach() for k, v in terms.items()}, "grads": grads, "centres": centres}


def rank_results(rank: int) -> dict[str, dict]:
    """One rank's loss terms, gradients and centres per model (inside a gloo group: run_on_gloo_ranks)."""
    return {name: run(DistributedDataParallel(build(name)), rank_batch(global_batch(), rank)) for name in MODELS}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return run_on_gloo_ranks(rank_results, tmp_path_factory.mktemp("dino_ddp"), WORLD)


@pytest.mark.parametrize("name", ["dino", "dinov2"])
def test_two_ranks_equal_one_process_on_the_concatenated_batch(ranks: list[dict], name: str) -> None:
    torch.set_num_threads(1)
    single = run(build(name), global_batch())
    for key, value in single["terms"].items():  # equal per-rank batches: the global loss is the mean of theirs
        mean = sum(r[name]["terms"][key] for r in ranks) / WORLD
        torch.testing.assert_close(mean, value, rtol=0, atol=1e-6, msg=key)
    for rank in ranks:
        assert rank[name]["grads"].keys() == single["grads"].keys()
        for key, value in single["grads"].items():  # DDP's averaged gradient
            scale = max(1.0, value.abs().max().item())
            torch.testing.assert_close(rank[name]["grads"][key], value, rtol=0, atol=1e-6 * scale, msg=key)
        for key, value in single["centres"].items():
            torch.testing.assert_close(rank[name]["centres"][key], value, rtol=0, atol=1e-6, msg=key)
    # the comparison has power: one rank's half batch alone gives another loss
    half = run(build(name), rank_batch(global_batch(), 0))
    assert not torch.allclose(half["terms"]["dino_loss"], single["terms"]["dino_loss"], rtol=0, atol=1e-4)


def test_koleo_is_per_rank(ranks: list[dict]) -> None:
    torch.set_num_threads(1)
    whole = run(build("dinov2_koleo"), global_batch())["terms"]["koleo_loss"]
    for rank, result in enumerate(ranks):
        own = run(build("dinov2_koleo"), rank_batch(global_batch(), rank))["terms"]["koleo_loss"]
        torch.testing.assert_close(result["dinov2_koleo"]["terms"]["koleo_loss"], own, rtol=0, atol=1e-6)
        assert not torch.allclose(own, whole, rtol=0, atol=1e-4)
