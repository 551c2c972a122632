"""The README.md model card of a timm / Hugging Face folder export (:func:`vispre.hub.export_backbone`).

It states what the folder holds (architecture, pooling, input size, normalisation and where it came from), how
to load it with plain timm (``local-dir:`` now, ``hf-hub:`` after an upload), how the backbone was trained (the
run's config.yaml: objective, backbone, data, schedule; the full file folded in) and, when ``vispre eval`` wrote a
report.json for the run, its evaluation table (:func:`vispre.eval.report.markdown_table`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def _short(class_path: object) -> str:
    return str(class_path).rsplit(".", 1)[-1] if class_path else "?"


def _training_lines(config_path: Path) -> list[str]:
    config = yaml.safe_load(config_path.read_text()) or {}
    model = config.get("model") or {}
    init = model.get("init_args") or {}
    backbone = init.get("backbone") or {}
    data = config.get("data") or {}
    trainer = config.get("trainer") or {}
    data_args = {k: v for k, v in (data.get("init_args") or {}).items() if k != "view"}
    view = (data.get("init_args") or {}).get("view") or {}
    lines = [f"- objective: `{_short(model.get('class_path'))}` ({model.get('class_path', '?')})",
             f"- backbone: `{_short(backbone.get('class_path'))}` {json.dumps(backbone.get('init_args') or {})}",
             f"- data: `{_short(data.get('class_path'))}` {json.dumps(data_args)}",
             f"- view: `{_short(view.get('class_path'))}`" if isinstance(view, dict) and view else
             "- view: the data module's default",
             f"- schedule: max_epochs {trainer.get('max_epochs')}, max_steps {trainer.get('max_steps')}, "
             f"precision {trainer.get('precision')}, seed {config.get('seed_everything')}"]
    return [*lines, "", "<details><summary>the run's full config.yaml</summary>", "", "```yaml",
            config_path.read_text().rstrip(), "```", "", "</details>"]


def model_card(config: dict[str, Any], *, source: str | Path, normalisation_origin: str,
               run_config: Path | None, report: Path | None, folder: Path) -> str:
    """The README.md text of an exported folder.

    Args:
        config: the folder's config.json (timm's: architecture, model_args, pretrained_cfg, global_pool...).
        source: the run folder / checkpoint it was exported from. normalisation_origin: where mean / std came from.
        run_config: the run's config.yaml, if found. report: a report.json of ``vispre eval`` for the run, if found.
        folder: the folder (its name is the model's title and the suggested Hub repo name).

    Returns:
        Markdown with a Hugging Face metadata header (``library_name: timm``).
    """
    from vispre.eval.report import markdown_table

    cfg, args = config["pretrained_cfg"], config.get("model_args", {})
    pool = config.get("global_pool", args.get("global_pool", "?"))
    folder_name = folder.name
    lines = ["---", "library_name: timm", "pipeline_tag: image-feature-extraction",
             "tags: [image-feature-extraction, timm, vispre, self-supervised]", "---", "",
             f"# {folder_name}", "",
             f"A self-supervised ViT backbone trained with vispre, exported from `{source}`. It is headless "
             f"(`num_classes=0`): the model returns its pooled embedding (`global_pool={pool}`, "
             f"{config.get('num_features')} dims), i.e. `forward_head(forward_features(x), pre_logits=True)`.", "",
             "## Use", "", "```python", "import timm", "",
             f'model = timm.create_model("local-dir:{folder}", pretrained=True).eval()  '
             f'# after an upload: "hf-hub:USER/{folder_name}"',
             "cfg = timm.data.resolve_data_config({}, model=model)   # input size, mean, std below",
             "transform = timm.data.create_transform(**cfg)",
             "embedding = model(transform(image).unsqueeze(0))       # [1, num_features]", "```", "",
             "## Model", "", "| | |", "|---|---|",
             f"| architecture | `{config['architecture']}` with {json.dumps(args)} |",
             f"| input size | {list(cfg['input_size'])} (channels, height, width) |",
             f"| mean / std | {list(cfg['mean'])} / {list(cfg['std'])} ({normalisation_origin}) |",
             f"| resize | shorter side to the input size ({cfg.get('interpolation')}), centre crop, "
             f"crop_pct {cfg.get('crop_pct')} |", "", "## Training", ""]
    if run_config is not None:
        lines += _training_lines(run_config)
    else:
        lines.append(f"No run config.yaml was found beside `{source}`.")
    lines += ["", "## Evaluation", ""]
    if report is not None:
        lines += [f"Frozen-feature evaluation by `vispre eval` ({report.name} of the run; kNN and linear probe, "
                  f"selection on a validation split of train, numbers on test):", "",
                  markdown_table(json.loads(report.read_text())).rstrip()]
    else:
        lines.append("No report.json of `vispre eval` was found for this run: run `vispre eval RUN` before exporting "
                     "to include the evaluation table.")
    return "\n".join(lines) + "\n"


__all__ = ["model_card"]
