"""POA's extracted sub-networks vs the same sizes trained alone with DINO, at equal wall-clock (issue 12).

POA (configs/poa/vit_tiny_fashion_mnist.yaml, the ablation's ``poa`` entry) trains once for the budget; each
size of ``--sizes`` (depth x width, inside the config's elastic ranges: widths {64, 128, 192} x depths
{3..6}) is exported from its EMA teacher with ``export_backbone(subnet=...)`` (what ``vispre export --subnet``
writes) and evaluated; DINO (configs/dino/vit_tiny_fashion_mnist.yaml) is trained alone at each size for the
same budget, calibrated the same way (a smaller ViT steps faster, so it gets more steps). Everything lives
in the ablation's output folder (tools/ablate_objectives.py): the POA run and the full-size DINO run are
the ablation's own ``poa`` / ``dino`` results when present.

    python tools/poa_subnets.py calibrate [--sizes 6x192,4x128,3x64]   # poa + dino_d4_e128, ... step times
    python tools/poa_subnets.py run [--seeds 0]                        # trains what is missing, evaluates
    python tools/poa_subnets.py summarize [--docs docs/ablation.md]    # the side-by-side table
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablate_objectives import QUICK_EVAL, calibrate_all, common_args, run_all  # noqa: E402
from ablation_results import (aggregate, evaluate_vit, load_results, mean_spread, result_path,  # noqa: E402
                              write_sections)
from ablation_runs import REPO, Objective, load_objectives, now, parse_seeds, read_json, write_json  # noqa: E402
from vispre.errors import VispreError  # noqa: E402
from vispre.growth.subnet import SubnetSpec  # noqa: E402
from vispre.hub import export_backbone, load_backbone  # noqa: E402


class Size(NamedTuple):
    """A sub-network size: ``depth`` blocks of width ``embed_dim``."""

    depth: int
    embed_dim: int

    @property
    def tag(self) -> str:
        return f"d{self.depth}_e{self.embed_dim}"


def parse_sizes(text: str) -> list[Size]:
    """``"6x192,4x128"`` -> [Size(6, 192), Size(4, 128)]; VispreError on other text."""
    sizes = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        depth, sep, width = item.partition("x")
        if not sep or not depth.isdigit() or not width.isdigit():
            raise VispreError(f"--sizes: expected comma-separated DEPTHxWIDTH, e.g. 6x192,4x128; got {item!r}")
        sizes.append(Size(int(depth), int(width)))
    if not sizes:
        raise VispreError(f"--sizes lists no size: {text!r}")
    return sizes


def backbone_args(obj: Objective) -> dict:
    """The backbone ``init_args`` of the last config of ``obj`` that sets them."""
    found = {}
    for config in obj.configs:
        model = (yaml.safe_load((REPO / config).read_text()) or {}).get("model") or {}
        found = ((model.get("init_args") or {}).get("backbone") or {}).get("init_args") or found
    return found


def dino_alone(dino: Objective, size: Size) -> Objective:
    """DINO at ``size`` (the ablation's own ``dino`` entry at its config's size); heads of the config's head_dim."""
    args = backbone_args(dino)
    if (args.get("depth"), args.get("embed_dim")) == size:
        return dino
    head_dim = args["embed_dim"] // args["num_heads"]
    if size.embed_dim % head_dim:
        raise VispreError(f"--sizes: width {size.embed_dim} is not a multiple of head_dim {head_dim}")
    key = "--model.init_args.backbone.init_args"
    return dino._replace(name=f"dino_{size.tag}", default=False, base=None, overrides=[
        *dino.overrides, f"{key}.depth={size.depth}", f"{key}.embed_dim={size.embed_dim}",
        f"{key}.num_heads={size.embed_dim // head_dim}"])


def evaluate_subnet(poa: Objective, size: Size, seed: int, out: Path, eval_config: Path) -> dict:
    """Export POA's (teacher) sub-network of ``size`` from the trained run and evaluate it; writes
    ``results/subnet/poa_<tag>__seed<seed>.json``."""
    trained = read_json(result_path(out, "quick", poa.name, seed))
    if trained is None or not trained.get("checkpoint"):
        raise VispreError(f"no trained {poa.name} seed {seed} under {out}: `run` trains it first")
    export = export_backbone(trained["checkpoint"], out / "subnets" / f"{poa.name}_{size.tag}_seed{seed}.safetensors",
                             subnet=SubnetSpec(depth=size.depth, embed_dim=size.embed_dim))
    vit = load_backbone(export)
    result = {**{k: trained[k] for k in ("seed", "configs", "overrides", "budget_s", "steps", "train_seconds",
                                         "checkpoint", "machine")},
              "objective": f"{poa.name}_{size.tag}", "kind": "subnet", "size": size._asdict(), "export": str(export),
              "params": sum(p.numel() for p in vit.parameters()), **evaluate_vit(vit, f"{poa.name} {size.tag}", eval_config),
              "finished_at": now()}
    write_json(result_path(out, "subnet", result["objective"], seed), result)
    return result


def subnet_table(out: Path, sizes: Sequence[Size], dino: Objective, poa_name: str = "poa",
                 task: str = "fashion_mnist") -> str:
    """Markdown: per size, POA's sub-network and DINO alone (pooled kNN / linear, best feature, steps)."""
    subnets = aggregate(load_results(out, "subnet"), task)
    alone = aggregate(load_results(out, "quick"), task)
    params = {r["objective"]: r["params"] for r in load_results(out, "subnet")}

    def cells(row: dict | None) -> list[str]:
        if row is None:
            return ["-"] * 4
        m = row["metrics"]
        return [mean_spread(m[k]) if k in m else "-" for k in
                ("pooled_knn_top1", "pooled_linear_top1", "best_knn_top1", "best_linear_top1")]

    lines = ["| size (depth x width) | params (M) | POA sub-net pooled kNN | pooled linear | best kNN | best linear | "
             "DINO alone steps | pooled kNN | pooled linear | best kNN | best linear | seeds (POA / DINO) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for size in sizes:
        name, solo = f"{poa_name}_{size.tag}", alone.get(dino_alone(dino, size).name)
        n_params = f"{params[name] / 1e6:.2f}" if name in params else "-"
        steps = str(round(sum(solo["steps"]) / len(solo["steps"]))) if solo else "-"
        seeds = f"{len(subnets[name]['seeds']) if name in subnets else 0} / {len(solo['seeds']) if solo else 0}"
        lines.append(f"| {size.depth} x {size.embed_dim} | {n_params} | " + " | ".join(cells(subnets.get(name)))
                     + f" | {steps} | " + " | ".join(cells(solo)) + f" | {seeds} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("calibrate", "run", "summarize"):
        p = sub.add_parser(name)
        common_args(p)
        p.add_argument("--sizes", default="6x192,4x128,3x64", help="DEPTHxWIDTH sub-network sizes")
        p.add_argument("--poa", default="poa", help="the POA entry of the objective list")
        p.add_argument("--dino", default="dino", help="the DINO entry trained alone at each size")
    args = parser.parse_args(argv)
    try:
        objectives = load_objectives(args.objectives)
        missing = [n for n in (args.poa, args.dino) if n not in objectives]
        if missing:
            raise VispreError(f"no objective {missing[0]!r} in {args.objectives}; expected one of {list(objectives)}")
        poa, dino = objectives[args.poa], objectives[args.dino]
        sizes = parse_sizes(args.sizes)
        solo = list({o.name: o for o in (dino_alone(dino, s) for s in sizes)}.values())
        if args.command == "calibrate":
            calibrate_all([poa, *solo], args)
        elif args.command == "run":
            run_all([poa, *solo], args)
            for seed in parse_seeds(args.seeds):
                for size in sizes:
                    if result_path(args.out, "subnet", f"{poa.name}_{size.tag}", seed).exists():
                        print(f"{poa.name} {size.tag} seed {seed}: done, skipped", flush=True)
                        continue
                    r = evaluate_subnet(poa, size, seed, args.out, args.eval_config or QUICK_EVAL)
                    print(f"{r['objective']} seed {seed}: {r['tasks']}", flush=True)
        else:
            table = subnet_table(args.out, sizes, dino, poa.name)
            print(table)
            if args.docs:
                write_sections(args.docs, {"ablate:subnets": table})
    except (VispreError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
