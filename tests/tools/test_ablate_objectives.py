"""tools/ablate_objectives.py (+ ablation_runs / ablation_results) and tools/poa_subnets.py: budget -> steps,
calibration import and checks, result summaries from fake files, and tiny end-to-end runs (a few steps,
a few hundred fake Fashion-MNIST images)."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest

from tests.helpers import REPO_ROOT, fake_fashion_mnist

sys.path.insert(0, str(REPO_ROOT / "tools"))  # tools/ is not a package: its scripts import their siblings

import ablate_objectives  # noqa: E402
import poa_subnets  # noqa: E402
from ablation_results import (append_note, base_table, feature_summary, replace_section,  # noqa: E402
                              results_table)
from ablation_runs import (MachineLoad, Objective, calibration_for, config_epochs, epoch_plan,  # noqa: E402
                           import_calibration, load_objectives, parse_seeds, plan_steps, quiet_enough, select)
from vispre.errors import VispreError  # noqa: E402

TINY = ["data.init_args.batch_size=16", "data.init_args.num_workers=0"]
TINY_EVAL = """tasks:
  - {name: fashion_mnist, dataset: fashion_mnist, features: [pooled, cls], ks: [10, 20], report_k: 20,
     lrs: [0.1], weight_decays: [0.0], epochs: 2}
"""


def test_budget_becomes_steps_and_epochs_keep_their_share() -> None:
    assert plan_steps(300, 0.663) == 452
    assert plan_steps(1.0, 10.0) == 1  # at least one step
    with pytest.raises(VispreError, match=r"calibrated step time \(0.0 s\) must both be > 0"):
        plan_steps(300, 0.0)
    assert epoch_plan(452, 2, 234) == (452, 2, 226)  # 2 epochs as the config, each shortened
    assert epoch_plan(1000, 2, 234) == (1000, 5, 200)  # more epochs only when the data is too short
    assert epoch_plan(3, 2, None) == (3, 2, 2)  # unknown loader length: no cap
    assert epoch_plan(2, 2, 18) == (2, 1, 2)  # no 1-batch epochs
    assert config_epochs(["configs/dino/vit_tiny_fashion_mnist.yaml"], []) == 2
    assert config_epochs(["configs/dino/vit_tiny_fashion_mnist.yaml"], ["--trainer.max_epochs=5"]) == 5


def test_objective_list_selection_and_seeds() -> None:
    objectives = load_objectives()
    default = [o.name for o in select(objectives, None)]
    assert default[:2] == ["random_init", "mae"] and "mae_ibot" not in default and "poa" in default
    assert [o.name for o in select(objectives, "dino, mae_ibot")] == ["dino", "mae_ibot"]
    assert objectives["amcl_simclr_paper"].overrides == ["--model.init_args.loss.init_args.form=paper"]
    assert objectives["amcl_barlow_twins_stable"].base == "barlow_twins"
    for obj in objectives.values():
        assert all((REPO_ROOT / c).is_file() for c in obj.configs), obj
    with pytest.raises(VispreError, match=r"--only: unknown objectives \['dinoo'\]"):
        select(objectives, "dinoo")
    assert parse_seeds("0,1") == [0, 1]
    with pytest.raises(VispreError, match="--seeds must be comma-separated integers"):
        parse_seeds("0;1")


def test_shipped_eval_configs() -> None:
    from vispre.eval.suite import load_tasks

    quick, full = (load_tasks(p).tasks[0] for p in (ablate_objectives.QUICK_EVAL, ablate_objectives.FULL_EVAL))
    assert (quick.limit_train, quick.limit_test, list(quick.features)) == (10000, None, ["pooled", "cls", "grid2", "patches"])
    assert full.limit_train is None and list(full.features) == ["pooled", "max", "patches"]


def test_quiet_check_refuses_warns_or_passes() -> None:
    busy = MachineLoad(3.0, 2.0, 1.0, 1.4)
    with pytest.raises(VispreError, match=r"machine busy: 1.40 cores used by other processes \(limit 0.3\)"):
        quiet_enough(busy, 0.3, force=False)
    assert "recorded anyway" in quiet_enough(busy, 0.3, force=True)
    assert quiet_enough(MachineLoad(0.1, 0.1, 0.1, 0.05), 0.3, force=False) is None
    assert quiet_enough(MachineLoad(*[math.nan] * 4), 0.3, force=False) is None  # no /proc: not gated


def test_import_of_bench_rows_and_calibration_checks(tmp_path) -> None:
    bench = {"step_ms_median": 663.1, "step_ms_min": 635.4, "steps": 8, "batch_size": 256, "device": "cpu"}
    (tmp_path / "mae_vit_tiny_fashion_mnist.json").write_text(json.dumps([bench]))
    (tmp_path / "simclr_vit_tiny_fashion_mnist.json").write_text(json.dumps([{**bench, "step_ms_median": 4159.0}]))
    (tmp_path / "amcl_simclr_vit_tiny_fashion_mnist.json").write_text(json.dumps([bench]))
    (tmp_path / "load.txt").write_text(" 00:00:01 up  2:57,  0 user,  load average: 0.16, 0.68, 0.80\n")
    rows = import_calibration(tmp_path, load_objectives())
    assert sorted(rows) == ["mae", "simclr"]  # AMCL entries carry a form override: not what was measured
    assert rows["mae"]["step_s"] == pytest.approx(0.6631) and rows["mae"]["warning"] is None
    assert rows["mae"]["load_before"] == {"load1": 0.16, "load5": 0.68, "load15": 0.8}
    assert rows["simclr"]["warning"] == "noisy: median 4.159 s vs min 0.635 s"
    mae = load_objectives()["mae"]
    assert calibration_for(rows, mae, [])["step_s"] == pytest.approx(0.6631)
    with pytest.raises(VispreError, match=r"measured with overrides \[\], this run uses \['--x=1'\]: recalibrate"):
        calibration_for(rows, mae, ["--x=1"])
    with pytest.raises(VispreError, match="no calibration for 'dino': run `calibrate --only dino`"):
        calibration_for(rows, load_objectives()["dino"], [])


def _task(pooled_knn: float, pooled_linear: float, best: float, own_pooled: dict | None = None) -> dict:
    task = {"knn_top1": best, "knn_feature": "patches", "knn_k": 20, "linear_top1": best, "linear_feature": "patches",
            "knn": {"pooled": {"val_top1": 0.5, "k20": 0.1}, "pooled+zscore": {"val_top1": 0.6, "k20": pooled_knn},
                    "patches": {"val_top1": 0.9, "k20": best}},
            "linear": {"pooled": {"val_top1": 0.55, "test_top1": pooled_linear}, "patches": {"val_top1": 0.9, "test_top1": best}}}
    if own_pooled is not None:
        task["pooled"] = own_pooled
    return task


def test_feature_summary_picks_the_val_selected_pooled_variant() -> None:
    summary = feature_summary(_task(0.8, 0.82, 0.9))
    assert summary["pooled"] == {"knn_top1": 0.8, "knn_val": 0.6, "knn_feature": "pooled+zscore",
                                 "linear_top1": 0.82, "linear_val": 0.55}
    assert summary["best"]["knn_feature"] == "patches" and summary["best"]["linear_val"] == 0.9
    own = feature_summary(_task(0.8, 0.82, 0.9, {"feature": "pooled", "knn_top1": 0.81, "linear_top1": 0.83}))
    assert (own["pooled"]["knn_top1"], own["pooled"]["linear_top1"]) == (0.81, 0.83)  # the suite's row wins


def _fake_result(folder, name: str, seed: int, pooled: tuple[float, float], best: float = 0.9) -> None:
    result = {"objective": name, "seed": seed, "budget_s": 300.0, "steps": 100 + seed, "train_seconds": 300.0,
              "tasks": {"fashion_mnist": feature_summary(_task(*pooled, best))}}
    path = folder / "results" / "quick" / f"{name}__seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))


def test_summary_tables_from_fake_result_files(tmp_path) -> None:
    _fake_result(tmp_path, "simclr", 0, (0.70, 0.80))
    _fake_result(tmp_path, "mae", 0, (0.80, 0.82))
    _fake_result(tmp_path, "mae", 1, (0.82, 0.84))
    _fake_result(tmp_path, "amcl_simclr_stable", 0, (0.72, 0.79))
    results = ablate_objectives.load_results(tmp_path, "quick")
    table = results_table(results)
    lines = table.splitlines()
    assert lines[0].startswith("| objective | budget s | steps | train s | pooled kNN | pooled linear | best kNN (feature)")
    assert lines[2] == ("| mae | 300 | 100 | 300 | 0.8100 +- 0.0100 | 0.8300 +- 0.0100 | 0.9000 +- 0.0000 (patches) | "
                        "0.9000 +- 0.0000 (patches) | 2 |")  # best first: mean of pooled kNN and linear
    assert [line.split(" | ")[0] for line in lines[3:]] == ["| amcl_simclr_stable", "| simclr"]
    amcl = base_table(results, load_objectives()).splitlines()
    assert amcl[2] == "| amcl_simclr_stable | simclr | +0.0200 | -0.0100 | 1 / 1 |"
    doc = "# x\n<!-- ablate:quick:start -->\nold\n<!-- ablate:quick:end -->\ntail\n"
    assert replace_section(doc, "ablate:quick", table) == f"# x\n<!-- ablate:quick:start -->\n{table}<!-- ablate:quick:end -->\ntail\n"
    with pytest.raises(VispreError, match="no '<!-- ablate:full:start -->'"):
        replace_section(doc, "ablate:full", table)


def test_note_appends_a_what_moved_it_row(tmp_path) -> None:
    _fake_result(tmp_path, "mae", 0, (0.80, 0.82))
    doc = tmp_path / "doc.md"
    doc.write_text("| date | change |\n<!-- ablate:notes:end -->\n")
    row = append_note(doc, "mask 0.75 -> 0.5", "0.8563", str(tmp_path / "results/quick/mae__seed0.json"), None, None)
    assert row.endswith("| mask 0.75 -> 0.5 | val pooled kNN / linear | 0.8563 | 0.6000 / 0.5500 | mae seed 0 |")
    assert doc.read_text().endswith(row + "\n<!-- ablate:notes:end -->\n")
    with pytest.raises(VispreError, match="'nope.json' is neither a number nor a result file"):
        append_note(doc, "x", "nope.json", "1", None, None)
    pair = append_note(doc, "pooling", "0.735 / 0.79", "0.7391/0.808", "val kNN / linear", "e")
    assert pair.endswith("| pooling | val kNN / linear | 0.7350 / 0.7900 | 0.7391 / 0.8080 | e |")


@pytest.fixture
def tiny_data(tmp_path, monkeypatch):
    """300 train / 200 test fake Fashion-MNIST images (VISPRE_DATA_DIR) and a tiny eval suite."""
    fake_fashion_mnist(tmp_path / "fmnist", "train", 300)
    fake_fashion_mnist(tmp_path / "fmnist", "test", 200)
    monkeypatch.setenv("VISPRE_DATA_DIR", str(tmp_path / "fmnist"))
    (tmp_path / "eval.yaml").write_text(TINY_EVAL)
    return tmp_path


def _calibrate(folder, objectives: list[Objective], extra: list[str]) -> None:
    rows = {o.name: {"overrides": [*o.overrides, *extra], "step_s": 1.0} for o in objectives}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "calibration.json").write_text(json.dumps(rows))


def test_tiny_end_to_end_calibrate_run_skip_summarize(tiny_data, capsys) -> None:
    out, sets = tiny_data / "abl", [a for s in TINY for a in ("--set", s)]
    common = ["--out", str(out), "--eval-config", str(tiny_data / "eval.yaml"), *sets]
    assert ablate_objectives.main(["calibrate", "--only", "mae", "--warmup", "1", "--steps", "1", "--force",
                                   *common]) == 0
    row = json.loads((out / "calibration.json").read_text())["mae"]
    assert row["timed_steps"] == 1 and row["step_s"] > 0 and row["overrides"] == ["--" + s for s in TINY]
    _calibrate(out, [load_objectives()["mae"]], ["--" + s for s in TINY])  # a known step time: budget 2 s = 2 steps
    assert ablate_objectives.main(["run", "--only", "random_init,mae", "--budget", "2", *common]) == 0
    result = json.loads((out / "results/quick/mae__seed0.json").read_text())
    assert result["steps"] == 2 and result["epoch_plan"] == {"steps": 2, "max_epochs": 1, "limit_train_batches": 2}
    assert result["tasks"]["fashion_mnist"]["pooled"]["knn_feature"].startswith("pooled")
    assert os.path.isfile(result["checkpoint"])
    stamp = (out / "results/quick/mae__seed0.json").stat().st_mtime_ns
    capsys.readouterr()
    assert ablate_objectives.main(["run", "--only", "mae", "--budget", "2", *common]) == 0
    assert "mae seed 0: done, skipped" in capsys.readouterr().out
    assert (out / "results/quick/mae__seed0.json").stat().st_mtime_ns == stamp
    assert ablate_objectives.main(["summarize", *common]) == 0
    printed = capsys.readouterr().out
    assert "| mae | 2 | 2 |" in printed and "| random_init | - | 0 |" in printed  # budget s, steps


@pytest.mark.slow  # ~100 CPU-s: two DINO-style fits, three evaluations and an export
def test_poa_subnets_tiny_end_to_end(tiny_data, capsys) -> None:
    out, sets = tiny_data / "abl", [a for s in TINY for a in ("--set", s)]
    common = ["--out", str(out), "--eval-config", str(tiny_data / "eval.yaml"), "--sizes", "3x64", *sets]
    objectives = load_objectives()
    solo = poa_subnets.dino_alone(objectives["dino"], poa_subnets.Size(3, 64))
    assert solo.name == "dino_d3_e64" and solo.overrides[-1] == "--model.init_args.backbone.init_args.num_heads=1"
    _calibrate(out, [objectives["poa"], solo], ["--" + s for s in TINY])
    assert poa_subnets.main(["run", "--budget", "2", *common]) == 0
    subnet = json.loads((out / "results/subnet/poa_d3_e64__seed0.json").read_text())
    assert subnet["size"] == {"depth": 3, "embed_dim": 64} and subnet["steps"] == 2
    assert json.loads((out / "results/quick/dino_d3_e64__seed0.json").read_text())["steps"] == 2
    capsys.readouterr()
    assert poa_subnets.main(["summarize", *common]) == 0
    line = capsys.readouterr().out.splitlines()[2]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:2] == ["3 x 64", f"{subnet['params'] / 1e6:.2f}"] and cells[6] == "2" and cells[-1] == "1 / 1"
    with pytest.raises(VispreError, match="--sizes: expected comma-separated DEPTHxWIDTH"):
        poa_subnets.parse_sizes("3-64")
