"""experiments/paper_cells.py: one tiny cell end to end, a stopped and resumed one (slow), the verdict, the report."""

import json

import numpy as np
import pytest

from experiments import common, paper_cells


def _run(tmp_path, *extra):
    return paper_cells.main(["--smoke", "--cells", "dd_fixed_1x3", "--runs-dir", str(tmp_path / "runs"), *extra])


def test_smoke_cell_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    assert _run(tmp_path) == 0

    record = json.loads((tmp_path / "paper_cells_smoke.json").read_text())
    assert record["preset"] == "smoke" and {"command", "versions", "machine"} <= set(record)
    (cell,) = record["cells"]
    assert cell["cell"] == "dd_fixed_1x3" and cell["method"] == "dd" and cell["dataset"] == "digits"
    assert [p["step"] for p in cell["curve"]] == [0, 4] and cell["curve"][0]["models"] == 1
    assert cell["models"] == len(cell["accs"]) == 1 and cell["mean"] == pytest.approx(np.mean(cell["accs"]), abs=0.01)
    assert cell["config"]["iterations"] == 4 and cell["config"]["init"] == "fixed"
    assert cell["protocol"]["name"] == "dd" and cell["data"]["holdout_per_class"] == 5
    assert cell["verdict"]["inside"] is None and cell["paper"] == "93.76" and cell["accuracy_before"] is not None
    assert set(cell["wall_s"]) == {"distill", "curve", "eval"} and cell["command"].startswith("python -m experiments.")
    assert cell["finite"] and (tmp_path / "runs" / "dd_fixed_1x3" / "checkpoint.npz").exists()
    assert cell["machine"]["device_kind"] == "cpu" and cell["machine"]["cpu_count"] >= 1  # each cell names its device
    table = (tmp_path / "paper_cells_smoke.md").read_text()
    assert "| dd_fixed_1x3 |" in table and f"| cpu, {cell['machine']['cpu_count']} cores |" in table
    with pytest.raises(SystemExit, match="--resume"):  # never silently restarts over a checkpoint
        _run(tmp_path)


@pytest.mark.slow
def test_stopped_and_resumed_cell_equals_uninterrupted(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    assert _run(tmp_path / "a") == 0
    first = json.loads((tmp_path / "paper_cells_smoke.json").read_text())["cells"][0]
    assert _run(tmp_path / "b", "--stop-at", "2") == 0  # as if killed after 2 of 4 outer iterations
    assert len(json.loads((tmp_path / "paper_cells_smoke.json").read_text())["cells"]) == 1  # nothing recorded
    assert _run(tmp_path / "b", "--resume") == 0
    second = json.loads((tmp_path / "paper_cells_smoke.json").read_text())["cells"][0]
    assert first["accs"] == second["accs"] and first["curve"] == second["curve"]  # each curve point once
    a, b = (np.load(tmp_path / run / "runs" / "dd_fixed_1x3" / "checkpoint.npz") for run in ("a", "b"))
    assert all(np.array_equal(a[k], b[k]) for k in a if k.startswith(("leaf_", "key_")))


def test_stop_after_ends_at_a_checkpoint_and_resumes_to_the_same_cell(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    assert _run(tmp_path / "a") == 0
    whole = json.loads((tmp_path / "paper_cells_smoke.json").read_text())["cells"][0]
    (tmp_path / "paper_cells_smoke.json").unlink()
    # a deadline already passed: the curve's step 0, then one segment to the first checkpoint (step 2 of 4)
    assert _run(tmp_path / "b", "--stop-after", "0") == 0
    assert not (tmp_path / "paper_cells_smoke.json").exists()
    folder = tmp_path / "b" / "runs" / "dd_fixed_1x3"
    assert paper_cells.checkpoint_step(folder / "checkpoint.npz") == 2
    progress = json.loads((folder / "progress.json").read_text())
    assert [p["step"] for p in progress["curve"]] == [0] and progress["distill_seconds"] > 0
    assert _run(tmp_path / "b", "--resume") == 0
    resumed = json.loads((tmp_path / "paper_cells_smoke.json").read_text())["cells"][0]
    assert resumed["accs"] == whole["accs"] and resumed["curve"] == whole["curve"]
    assert resumed["wall_s"]["distill"] >= progress["distill_seconds"]  # the stopped segment's time is kept
    with pytest.raises(SystemExit):
        paper_cells.main(["--smoke", "--stop-after", "-1"])

def test_a_second_seed_is_recorded_beside_the_first_and_pooled(tmp_path, monkeypatch):
    from experiments import report

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    assert _run(tmp_path) == 0 and _run(tmp_path, "--seed", "1") == 0
    record = json.loads((tmp_path / "paper_cells_smoke.json").read_text())
    assert [(c["cell"], c["seeds"]["seed"]) for c in record["cells"]] == [("dd_fixed_1x3", 0), ("dd_fixed_1x3", 1)]
    assert (tmp_path / "runs" / "dd_fixed_1x3_seed1" / "checkpoint.npz").exists()  # its own checkpoint
    accs = [a for c in record["cells"] for a in c["accs"]]
    (pooled,) = record["over_seeds"]
    assert pooled["seeds"] == [0, 1] and pooled["models"] == len(accs) == 2
    assert pooled["mean"] == pytest.approx(np.mean(accs), abs=0.01)
    assert pooled["std"] == pytest.approx(np.std(accs), abs=0.01)  # the spread over the two theta_0 draws
    assert "Over seeds" in (tmp_path / "paper_cells_smoke.md").read_text()
    ((_, ours),) = report.load_paper_cells(record, "paper_cells_smoke.json")  # the table counts the cell once
    assert ours.models == 2 and ours.seed == "0, 1" and ours.mean == pytest.approx(pooled["mean"])


def test_verdict_uses_the_error_bar_or_one_point():
    assert paper_cells.verdict(91.3, (91.7, 0.5))["inside"] is True
    assert paper_cells.verdict(91.1, (91.7, 0.5))["inside"] is False
    assert paper_cells.verdict(92.7, (93.76, None))["inside"] is False
    assert paper_cells.verdict(92.9, (93.76, None))["inside"] is True
    assert paper_cells.verdict(80.0, None)["inside"] is None
    assert paper_cells.curve_steps(1000, paper_cells.CURVE_AT) == [0, 100, 250, 500, 750, 1000]


def test_report_puts_paper_cells_first(tmp_path):
    from experiments import report

    results = tmp_path / "results"
    results.mkdir()
    cpu = {"dataset": "mnist", "ipc": 1, "method": "dc", "accs": [0.8] * 10, "mean": 0.8, "std": 0.0}
    (results / "dc_table_cpu.json").write_text(json.dumps({"preset": "cpu", "seed": 0, "command": "cpu run",
                                                            "models": 10, "cells": [cpu]}))
    cell = {"cell": "dc_mnist_1", "method": "dc", "dataset": "mnist", "ipc": 1, "models": 20, "accs": [91.0] * 20,
            "mean": 91.0, "std": 0.0, "paper": "91.7 +- 0.5", "verdict": {"inside": False, "rule": "r"},
            "protocol": {"name": "dc", "epochs": 1000}, "wall_s": {"distill": 7200.0, "eval": 600.0},
            "command": "python -m experiments.paper_cells --cells dc_mnist_1 --resume"}
    (results / "paper_cells.json").write_text(json.dumps({"preset": "paper", "seed": 0, "cells": [cell]}))
    text = report.generate(results, tmp_path / "bench", tmp_path / "RESULTS.md", tmp_path / "plots")
    assert text.index("## Headline cells at the papers' protocols") < text.index("## The seed papers' tables")
    assert "| dc_mnist_1 | 0 | **91.0 +- 0.0** | 91.7 +- 0.5 | no | 20 |" in text
    grid_row = next(line for line in text.splitlines() if line.startswith("| mnist / 1 |"))
    assert "**91.0** (91.7 +- 0.5)" in grid_row  # the paper-protocol run wins the cell over the cpu one
    detail = next(line for line in text.splitlines() if line.startswith("| mnist / 1 / dc |"))
    assert "| paper (2 runs" in detail and "protocol `paper`" in detail


def test_paper_presets_follow_the_references():
    from jaxdd.methods import dc, dd

    assert dc.default_config("paper", 1, "mnist").init == "noise"  # DC: noise
    assert dc.dsa_default_config("paper", 1, "mnist").init == "real"  # DSA's commands: real images
    assert dc.dsa_default_config("cpu", 1, "mnist") == dc.default_config("cpu", 1, "mnist", dsa=True)
    assert dd.default_config("paper", 10, "mnist").num_inits == 1  # the reference's n_nets
