"""What every section of ``tools/gpu_check.py`` shares: the repository path (on ``sys.path``, so a bare checkout
runs), the Fashion-MNIST config of every objective, the model-size overrides, the JSON report and the error text."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a bare checkout (the GPU machine has no editable install)
    sys.path.insert(0, str(REPO))

from vispre.io import atomic_write_text  # noqa: E402

CONFIGS = {name: f"configs/{name}/vit_tiny_fashion_mnist.yaml"
           for name in ("mae", "simclr", "moco_v3", "dino", "barlow_twins", "ibot", "dinov2", "poa")}
CONFIGS.update({"multi": "configs/multi/mae_simclr_vit_tiny_fashion_mnist.yaml",
                **{f"amcl_{v}": f"configs/amcl/{v}_vit_tiny_fashion_mnist.yaml"
                   for v in ("simclr", "moco_v3", "barlow_twins")}})
"""Registry name -> its Fashion-MNIST config, in check order (families first: the compile pass may run out of time)."""
BB = "--model.init_args.backbone.init_args."
SMALL = [f"{BB}depth=2"]
"""GPU correctness size: the config's ViT at depth 2."""
TINY = [f"{BB}img_size=32", f"{BB}patch_size=8", f"{BB}embed_dim=32", f"{BB}depth=2", f"{BB}num_heads=2"]
"""``--tiny`` size (every section): img 32, patch 8, dim 32, depth 2, 2 heads."""
EXTRA = {"small": {"poa": ["--model.init_args.elastic_depths=[1,2]"]},
         "tiny": {"poa": ["--model.init_args.elastic_widths=[16,32]", "--model.init_args.elastic_depths=[1,2]"]}}
"""Per-objective overrides a size needs on top of :data:`SMALL` / :data:`TINY` (POA's elastic sub-networks)."""


class Report:
    """The JSON document, written atomically to ``path`` by :meth:`save`."""

    def __init__(self, path: Path, head: dict[str, Any]) -> None:
        self.path, self.data = path, {**head, "sections": {}}

    def section(self, name: str) -> dict[str, Any]:
        """The (created on first use) JSON object of section ``name``, ``{"status": "running"}`` when new."""
        return self.data["sections"].setdefault(name, {"status": "running"})

    def save(self) -> None:
        """Write the whole document to ``path`` (temp file + rename: a killed run leaves the last complete one)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.data, indent=2, default=str) + "\n")


def error_text(err: BaseException) -> str:
    """``Type: message`` of an exception plus the last traceback line, for the JSON."""
    tail = traceback.format_exception(err)[-2].strip().splitlines()[0] if err.__traceback__ else ""
    return f"{type(err).__name__}: {str(err).strip()[:600]} [{tail}]"
