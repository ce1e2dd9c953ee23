"""experiments/report.py on tiny synthetic result folders: paper cells, 'not run', speed, robustness."""

import json

from experiments import report


def _dc_table(accs):
    cell = {"dataset": "mnist", "ipc": 1, "method": "dc", "accs": accs, "mean": sum(accs) / len(accs), "std": 0.01,
            "arch": {"name": "ConvNet", "width": 16}, "protocol": {"epochs": 100}, "test_images": 1000,
            "distill_time_s": 268.2, "eval_time_s": 47.2}
    return {"command": "python -m experiments.dc_table --preset cpu", "machine": {"devices": ["cpu:0"]},
            "preset": "cpu", "seed": 0, "models": len(accs), "cells": [cell]}


def test_report_shows_paper_and_ours(tmp_path):
    results, bench = tmp_path / "results", tmp_path / "bench"
    results.mkdir()
    bench.mkdir()
    (results / "dc_table_cpu.json").write_text(json.dumps(_dc_table([0.82, 0.84])))
    (results / "dd_table_cpu_broken.json").write_text(json.dumps({"part": "fixed_1x3"}))  # no accuracy: skipped
    (results / "mgdd_cpu.json").write_text("{not json")
    speed = {"summary": {"jax_median_s": 0.5, "torch_median_s": 1.0, "ratio": 2.0, "goal": 1.0, "met": True},
             "unit": "step", "work": 1}
    (bench / "cpu-2core-2026-01-01.json").write_text(json.dumps({
        "command": "python -m benchmarks.run --quick", "repeats": 3, "benches": {"dc_ipc1": speed},
        "session": {"mode": "quick", "date": "2026-01-01", "devices": ["cpu:0"]}}))
    paper_bench = {"jax": {}, "torch": {}, "jax_median_s": 4.0, "torch_median_s": 5.0, "ratio": 1.25,
                   "memory_ratio": 3.0, "jax_peak_rss_bytes": 3 * 2**30, "torch_peak_rss_bytes": 2**30}
    (bench / "paper-sizes-cpu-2core-2026-01-02.json").write_text(json.dumps({  # benchmarks.paper's shape
        "command": "python -m benchmarks.paper", "sizes": "paper-cpu", "benches": {"dc_ipc10": paper_bench},
        "session": {"date": "2026-01-02", "devices": ["cpu:0"]}}))

    mtt_cell = {"dataset": "mnist", "ipc": 1, "method": "mtt", "mean": 0.475, "std": 0.058, "accs": [0.475] * 10,
                "steps_run": 150, "budget_s": 90.0, "arch": {"name": "ConvNet", "width": 16},
                "command": "python -m experiments.mtt_idc_table --preset cpu"}
    (results / "mtt_idc_cpu.json").write_text(json.dumps({  # its DC cell stays out of the MGDD table
        "preset": "cpu", "cells": [mtt_cell, {**mtt_cell, "method": "dc", "mean": 0.1}]}))

    continual = {"sequence": ["digits", "mnist"], "ipc": 10, "runs": [
        {"method": "dc", "kd": True, "stage_accs": [[0.90, 0.92], [0.80, 0.84]]}]}
    (results / "continual.json").write_text(json.dumps(continual))
    (results / "continual_full.json").write_text(json.dumps({
        **continual, "command": "first", "preset": "cpu", "run_commands": {"dc_kd1": "python -m experiments.dc_continual"}}))

    dd_random = {"part": "random_10x3", "accuracy": 35.1, "std": 1.5, "eval_models": 20, "distill_seconds": 900.0,
                 "steps": 10, "epochs": 3, "images": 100,
                 "provenance": {"command": "python -m experiments.dd_table --preset cpu_cifar10", "preset": "cpu_cifar10",
                                "preset_config": {"dataset": "cifar10"}, "devices": ["cpu:0"]}}
    (results / "dd_table_cpu_cifar10_random_10x3.json").write_text(json.dumps(dd_random))
    dc_lenet = {"dataset": "cifar10", "arch": "AlexCifarNet", "ipc": 10, "mean": 0.371, "std": 0.008, "accs": [0.371] * 10,
                "protocol": {"epochs": 300}, "distill_time_s": 1200.0, "eval_time_s": 80.0,
                "command": "python -m experiments.dc_vs_dd --preset cpu"}
    (results / "dc_vs_dd_cpu.json").write_text(json.dumps({"preset": "cpu", "seed": 0, "models": 10, "cells": [dc_lenet]}))

    text = report.generate(results, bench, tmp_path / "RESULTS.md", tmp_path / "plots")

    assert text == (tmp_path / "RESULTS.md").read_text()
    grid_row = next(line for line in text.splitlines() if line.startswith("| mnist / 1 |"))
    assert "**83.0 +- 1.0** (91.7 +- 0.5)" in grid_row  # ours beside DC Table 1's number
    assert "not run" in grid_row and "(64.9)" in grid_row  # random real: no result, paper shown
    detail = next(line for line in text.splitlines() if line.startswith("| mnist / 1 / dc |"))
    assert "cpu" in detail and "2 models, seed 0" in detail and "distill 268 s + eval 47 s" in detail
    assert "`python -m experiments.dc_table --preset cpu`" in text
    assert "dataset not available offline" in text  # a known reason (SVHN)
    assert "mgdd_cpu.json" in text.split("## Files that could not be read")[1]
    mgdd_row = next(line for line in text.split("### MGDD comparison")[1].splitlines() if line.startswith("| mnist / 1 |"))
    assert "**47.5 +- 5.8** (73.1)" in mgdd_row and "10.0" not in mgdd_row  # MTT beside the paper; not its DC
    assert "150 steps in a 90.0 s budget" in text
    dc_vs_dd = text.split("### DC Table 3")[1]
    row = next(line for line in dc_vs_dd.splitlines() if line.startswith("| cifar10 / 10 |"))
    assert row == "| cifar10 / 10 | **35.1 +- 1.5** (36.8 +- 1.2) | **37.1 +- 0.8** (39.1 +- 1.2) |"  # DD's run, DC's
    assert "experiments.dc_vs_dd --preset cpu --datasets mnist --ipcs 10" in dc_vs_dd  # how to fill the rest
    continual_row = next(line for line in text.splitlines() if line.startswith("| dc | yes |"))
    assert "| 91.0 +- 1.0 | 82.0 +- 2.0 |" in continual_row  # per stage: mean +- std over the 2 models
    cite = continual_row.split("[")[1].split("]")[0]
    assert f"- [{cite}] `python -m experiments.dc_continual`" in text  # the run's own command
    assert "| dc_ipc1 | 0.500 s/step | 1.000 s/step | 2.00x | >= 1x | yes |" in text
    assert "| dc_ipc10 | 4.000 | 5.000 | 1.25x | 3.00x |" in text
    assert (tmp_path / "plots" / "accuracy_vs_ipc_mnist.png").stat().st_size > 0
    assert (tmp_path / "plots" / "accuracy_vs_time.png").stat().st_size > 0
