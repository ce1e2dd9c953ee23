"""MTT and IDC beside random real and DC (DM on request) at the same distillation wall-time budget.

For each (dataset, img/cls) cell and each method, the method's own ``cpu`` (or ``smoke``) config
is run until its distillation wall time (compilation included) reaches the preset's budget: a
few steps are timed (after compilation) and the run resumed for as many steps as fit in what is
left (at least 8 steps), capped at the config's iterations. MTT and IDC read expert trajectories trained once per
dataset before the cells (2 ConvNet-16 experts x 3 epochs at ``cpu``, shared by both methods and
both sizes, kept under ``runs/experts/``): their training time is reported beside the table,
not charged to the budget. Every set, random real images included, is then evaluated the same
way: the preset's number of fresh ConvNet-16 networks (keys split from one key per cell) trained under
the 'dsa' protocol for the preset's epochs and tested once, at the end. An MTT set trains with
its learned step size as the learning rate (``jaxdd.methods.mtt.eval_overrides``, as the
reference does), and is evaluated a second time with the protocol's lr 0.01 for comparison.

Results: ``experiments/results/mtt_idc_<preset>.json`` / ``.md``, rewritten after every cell;
``--resume`` keeps the cells already there and runs only the others.

    flock /tmp/jaxdd-coord/heavy.lock nice -n 5 python -m experiments.mtt_idc_table --preset cpu --resume
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from experiments.common import RESULTS, command_line, commands_markdown, pct, resumed_cells, write_json
from jaxdd import data, distill, evaluate, models
from jaxdd.methods import DistillRequest, IterativeMethod, get_method
from jaxdd.methods import mtt

PRESETS = {
    # smoke: seconds on the 8x8 digits, for the test of the script.
    "smoke": dict(datasets=("digits",), ipcs=(1,), models=2, eval_epochs=20, budget_s=10.0),
    # cpu: about 20-25 minutes on 2 idle cores (MNIST experts ~2 min, 6 distillations of 90 s,
    # 10 evaluations; the 400 decoded images of IDC at 10 img/cls take the longest to evaluate).
    "cpu": dict(datasets=("mnist",), ipcs=(1, 10), models=10, eval_epochs=300, budget_s=90.0),
}
METHODS = ("random", "dc", "dm", "mtt", "idc")
"""Columns, in order; the presets run all but DM unless ``--methods`` names it."""
MGDD_TABLE = {
    # The MGDD poster's comparison (REFERENCE.md section 5; baselines re-run with a small step budget).
    ("mnist", 1): {"dc": 88.7, "dsa": 87.7, "idc": 76.1, "mtt": 73.1, "dm": 87.8, "mgdd": 87.8},
    ("fashion_mnist", 10): {"dc": 79.8, "dsa": 79.0, "idc": 82.9, "mtt": 80.1, "dm": 83.0, "mgdd": 83.4},
}
METHOD_IDS = {"random": 5, "dc": 6, "mtt": 7, "idc": 8, "dm": 9}
DATASET_IDS = {"mnist": 3, "fashion_mnist": 2, "digits": 1}
ARCH = {"name": "ConvNet", "width": 16}
PROBE_STEPS = (3, 8)
"""The budgeted run: steps 0-2 (compilation), then steps 3-7 timed for the rate."""


def run_within_budget(method: IterativeMethod, key, folder: Path, budget_s: float, started: float):
    """Runs ``method`` (checkpoints in ``folder``) until ``budget_s`` seconds after ``started``.

    Returns:
        (final state, steps run).
    """
    shutil.rmtree(folder, ignore_errors=True)
    first, timed = PROBE_STEPS
    distill.run(method, key, checkpoint_dir=folder, progress=False, stop_at=first)
    probe = time.perf_counter()
    distill.run(method, key, checkpoint_dir=folder, resume=True, progress=False, stop_at=timed)
    per_step = max(time.perf_counter() - probe, 1e-6) / (timed - first)
    left = budget_s - (time.perf_counter() - started)
    steps = min(method.num_steps, timed + max(0, int(left / per_step)))
    state = distill.run(method, key, checkpoint_dir=folder, resume=True, progress=False, stop_at=steps)
    return state, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", choices=tuple(PRESETS))
    parser.add_argument("--methods", nargs="+", default=["random", "dc", "mtt", "idc"], choices=METHODS)
    parser.add_argument("--datasets", nargs="+", default=None, help="instead of the preset's (e.g. fashion_mnist)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--resume", action="store_true", help="keep the cells already in the result file")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    name = f"mtt_idc_{args.preset}"
    path = RESULTS / f"{name}.json"
    previous = json.loads(path.read_text()) if args.resume and path.exists() else {}
    cells = resumed_cells(previous)
    expert_runs = dict(previous.get("experts", {}))
    key = jax.random.key(args.seed)

    def save():
        record = {"preset": args.preset, "preset_config": preset, "seed": args.seed, "arch": ARCH,
                  "budget_note": "distillation wall seconds per cell, compilation included; expert training not charged",
                  "experts": expert_runs,
                  "cells": sorted(cells.values(), key=lambda c: (c["dataset"], c["ipc"], METHODS.index(c["method"])))}
        write_json(name, record)
        (RESULTS / f"{name}.md").write_text(markdown(record))

    for dataset_name in args.datasets or preset["datasets"]:
        todo = [(ipc, m) for ipc in preset["ipcs"] for m in args.methods if (dataset_name, ipc, m) not in cells]
        if not todo:
            continue
        dataset = data.load_dataset(dataset_name, data.resolve_data_dir(args.data_dir))
        info = dataset.info
        model = models.get_model("ConvNet", info.image_shape, info.num_classes, width=ARCH["width"])
        protocol = evaluate.get_protocol("dsa", dataset_name, epochs=preset["eval_epochs"])
        if any(m in ("mtt", "idc") for _, m in todo):
            config = mtt.default_config(args.preset, 1, dataset_name)
            started = time.perf_counter()
            trajectories = mtt.get_trajectories(model, dataset.x_train, dataset.y_train, config, dataset_name, "ConvNetW16")
            expert_runs[dataset_name] = {"num_experts": config.num_experts, "epochs": config.expert_train_epochs,
                                         "train_seconds": round(float(trajectories.meta["seconds"]), 1),
                                         "wall_seconds_this_run": round(time.perf_counter() - started, 1),
                                         "protocol": trajectories.meta.get("protocol")}
        for ipc, method_name in todo:
            cell_key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, DATASET_IDS.get(dataset_name, 0)), ipc),
                                          METHOD_IDS[method_name])
            spec = get_method(method_name)
            request = DistillRequest(images=dataset.x_train, labels=dataset.y_train, num_classes=info.num_classes,
                                     model=model, ipc=ipc, preset=args.preset, key=cell_key, dataset=dataset_name,
                                     arch="ConvNetW16")
            load_before = os.getloadavg()[0]
            started = time.perf_counter()
            made = spec.make(request)
            steps = overrides = None
            if isinstance(made, IterativeMethod):
                folder = Path("runs") / f"{name}-{dataset_name}-{ipc}-{method_name}"
                try:
                    state, steps = run_within_budget(made, jax.random.fold_in(cell_key, 1), folder, preset["budget_s"], started)
                except distill.NonFiniteError as error:  # recorded as such; the other cells go on
                    cells[(dataset_name, ipc, method_name)] = {"dataset": dataset_name, "ipc": ipc, "method": method_name,
                                                               "error": str(error), "config": dict(made.config)}
                    print(f"{dataset_name} ipc {ipc} {method_name}: {error}", flush=True)
                    save()
                    continue
                synset = made.to_synset(state)
                extra = made.extra_arrays(state) if made.extra_arrays else {}
                overrides = spec.eval_overrides(extra) if spec.eval_overrides else {}
            else:
                synset = made
            distill_s = time.perf_counter() - started
            cell_protocol = evaluate.get_protocol("dsa", dataset_name, epochs=preset["eval_epochs"], **(overrides or {}))
            started = time.perf_counter()
            result = evaluate.evaluate_synset(jax.random.fold_in(cell_key, 2), model, synset.images, synset.labels,
                                              dataset.x_test, dataset.y_test, cell_protocol, preset["models"])
            eval_s = time.perf_counter() - started
            cell = {
                "dataset": dataset_name, "ipc": ipc, "method": method_name, **result.as_dict(),
                "mgdd_table": MGDD_TABLE.get((dataset_name, ipc), {}).get(method_name),
                "protocol": cell_protocol, "eval_overrides": overrides,
                "config": dict(made.config) if isinstance(made, IterativeMethod) else None,
                "steps_run": steps, "steps_preset": made.num_steps if isinstance(made, IterativeMethod) else None,
                "budget_s": preset["budget_s"] if steps is not None else None, "distill_time_s": round(distill_s, 1),
                "eval_time_s": round(eval_s, 1), "num_images": int(synset.images.shape[0]), "arch": ARCH,
                "finite": bool(jnp.all(jnp.isfinite(synset.images))), "load_average_1min": [load_before, os.getloadavg()[0]],
                "command": command_line(),
            }
            if overrides:
                plain = evaluate.evaluate_synset(jax.random.fold_in(cell_key, 2), model, synset.images, synset.labels,
                                                 dataset.x_test, dataset.y_test, protocol, preset["models"])
                cell["plain_protocol"] = {**plain.as_dict(), "protocol": protocol}
            cells[(dataset_name, ipc, method_name)] = cell
            print(f"{dataset_name} ipc {ipc} {method_name}: {pct(result.mean, result.std)} % ({steps}/{cell['steps_preset']} steps, "
                  f"distil {distill_s:.0f} s of budget {preset['budget_s']}, eval {eval_s:.0f} s, overrides {overrides})", flush=True)
            save()
    save()


def markdown(record: dict) -> str:
    """Rows dataset x img/cls, columns random / DC / MTT / IDC: accuracy, steps run and seconds."""
    preset = record["preset_config"]
    cells = {(c["dataset"], c["ipc"], c["method"]): c for c in record["cells"]}
    rows = sorted({(c["dataset"], c["ipc"]) for c in record["cells"]})
    columns = [m for m in METHODS if any(c["method"] == m for c in record["cells"])]
    lines = [f"# MTT and IDC beside random real and DC, preset `{record['preset']}`", "",
             *commands_markdown(record["cells"]), "",
             f"Test accuracy in % (mean +- population std over {preset['models']} fresh ConvNet-16 networks, protocol "
             f"'dsa': SGD lr 0.01, momentum 0.9, wd 5e-4, batch 256, {preset['eval_epochs']} epochs, lr x0.1 after half, "
             "DSA augmentation (no flip on digits); MTT with its learned lr). Every distillation ran its `"
             f"{record['preset']}` config until {preset['budget_s']:.0f} wall seconds had passed, compilation included, "
             f"and at least {PROBE_STEPS[1]} steps (steps run / the config's iterations and the seconds taken in brackets). "
             "On 2 CPU cores; the 1-minute load average at each cell's start and end is in the JSON.", "",
             "| dataset | img/cls | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for dataset_name, ipc in rows:
        entries = []
        for m in columns:
            c = cells.get((dataset_name, ipc, m))
            if c is None or "error" in c:
                entries.append("-" if c is None else "diverged (NaN/inf)")
                continue
            steps = f" ({c['steps_run']}/{c['steps_preset']} steps, {c['distill_time_s']:.0f} s)" if c["steps_run"] is not None else ""
            entries.append(pct(c["mean"], c["std"]) + steps)
        lines.append(f"| {dataset_name} | {ipc} | " + " | ".join(entries) + " |")
    lines += ["", "MTT's learned step size and its accuracy with the protocol's lr 0.01 instead:", "",
              "| dataset | img/cls | learned lr | with the learned lr | with lr 0.01 |", "|---|---|---|---|---|"]
    for (dataset_name, ipc, m), c in sorted(cells.items()):
        if m == "mtt" and "error" not in c:
            plain = c.get("plain_protocol")
            learned = (c["eval_overrides"] or {}).get("lr")
            lines.append(f"| {dataset_name} | {ipc} | {'not positive: unused' if learned is None else f'{learned:.4g}'} | "
                         f"{pct(c['mean'], c['std'])} | {pct(plain['mean'], plain['std']) if plain else '-'} |")
    lines += ["", "Expert trajectories (MTT's targets, IDC's pre-trained networks), trained once per dataset, not charged "
              "to the budget:", ""]
    for dataset_name, e in sorted(record["experts"].items()):
        lines.append(f"- {dataset_name}: {e['num_experts']} experts x {e['epochs']} epochs, {e['train_seconds']:.0f} s of training")
    mgdd = [f"{d} {k} img/cls: " + ", ".join(f"{m} {v}" for m, v in row.items()) for (d, k), row in MGDD_TABLE.items()]
    lines += ["", "The MGDD table's values (a GPU protocol with its own budgets, not comparable in absolute terms): "
              + "; ".join(mgdd) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
