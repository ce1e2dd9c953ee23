"""MTT and IDC beside DC / DSA / DM / random real at the DC table's wall-time budget (MGDD's table columns).

For each (dataset, img/cls) cell: the expert trajectories (shared by MTT and IDC, trained once and
kept under ``runs/experts/``), then each method's ``cpu`` preset, stopped early when its wall time
(its experts' training time included) would exceed the distillation time that DC took for the same
cell in ``experiments/results/dc_table_cpu.json`` (the budget); then ``--models`` fresh ConvNets
(width 16, as the DC table) trained 300 epochs under the 'dsa' protocol and tested once, at the
end. MTT's sets are evaluated with their learned step size as the learning rate (as the
reference does). Results go to ``experiments/results/mtt_idc_table_<preset>.json`` / ``.md``
(rewritten after every cell; ``--resume`` skips cells already there).

    nohup flock /tmp/lock python -m experiments.mtt_idc_table --preset cpu --data-dir DATA --datasets mnist --ipcs 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from experiments.common import RESULTS, command_line, pct, write_json
from jaxdd import augment, data, distill, evaluate, models
from jaxdd.methods import DistillRequest, get_method, request_config
from jaxdd.methods import idc, mtt

MGDD_TABLE = {
    # The MGDD poster's comparison (REFERENCE.md section 5; baselines re-run with a small step budget).
    ("mnist", 1): {"dc": 88.7, "dsa": 87.7, "idc": 76.1, "mtt": 73.1, "dm": 87.8, "mgdd": 87.8},
    ("fashion_mnist", 10): {"dc": 79.8, "dsa": 79.0, "idc": 82.9, "mtt": 80.1, "dm": 83.0, "mgdd": 83.4},
}
BASELINES = ("random", "dc", "dsa", "dm")
METHOD_IDS = {"mtt": 7, "idc": 8}
DATASET_IDS = {"mnist": 3, "fashion_mnist": 2, "digits": 1}


def baseline_cells() -> dict:
    """DC-table cells at the cpu preset, the re-evaluated MNIST 1 img/cls file overriding the first."""
    cells = {}
    for name in ("dc_table_cpu", "dc_table_cpu_m1_refeval"):
        path = RESULTS / f"{name}.json"
        if path.exists():
            for c in json.loads(path.read_text())["cells"]:
                cells[(c["dataset"], c["ipc"], c["method"])] = {**c, "source": name}
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", choices=("smoke", "cpu"))
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion_mnist"])
    parser.add_argument("--ipcs", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--methods", nargs="+", default=["mtt", "idc"], choices=("mtt", "idc"))
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--eval-epochs", type=int, default=300)
    parser.add_argument("--budget-s", type=float, default=None, help="override the wall-time budget per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    name = f"mtt_idc_table_{args.preset}"
    path = RESULTS / f"{name}.json"
    cells = {}
    if args.resume and path.exists():
        cells = {(c["dataset"], c["ipc"], c["method"]): c for c in json.loads(path.read_text())["cells"]}
    baselines = baseline_cells()
    key = jax.random.key(args.seed)

    def save():
        record = {"preset": args.preset, "models": args.models, "eval_epochs": args.eval_epochs,
                  "cells": sorted(cells.values(), key=lambda c: (c["dataset"], c["ipc"], c["method"]))}
        write_json(name, record)
        (RESULTS / f"{name}.md").write_text(markdown(record, baselines))

    for dataset_name in args.datasets:
        dataset = data.load_dataset(dataset_name, data.resolve_data_dir(args.data_dir))
        info = dataset.info
        model = models.get_model("ConvNet", info.image_shape, info.num_classes, width=16)
        for ipc in args.ipcs:
            for method_name in args.methods:
                if (dataset_name, ipc, method_name) in cells:
                    continue
                dc_cell = baselines.get((dataset_name, ipc, "dc"))
                budget = args.budget_s or (dc_cell["distill_time_s"] if dc_cell else None)
                cell_key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, DATASET_IDS.get(dataset_name, 0)), ipc),
                                              METHOD_IDS[method_name])
                spec = get_method(method_name)
                request = DistillRequest(images=dataset.x_train, labels=dataset.y_train, num_classes=info.num_classes,
                                         model=model, ipc=ipc, preset=args.preset, key=cell_key, dataset=dataset_name,
                                         arch="ConvNetW16")
                config = request_config(request, spec.default_config)
                started = time.perf_counter()
                trajectories = mtt.get_trajectories(model, dataset.x_train, dataset.y_train, config, dataset_name, "ConvNetW16")
                expert_s = float(trajectories.meta["seconds"])
                builder = mtt if method_name == "mtt" else idc
                if method_name == "mtt":
                    config = config._replace(dsa_strategy=augment.dsa_strategy(dataset_name))
                method = builder.build(model, dataset.x_train, dataset.y_train, trajectories, config)
                # the budget: time 5 steps (compilation included), then resume for as many as fit in what is left
                folder = Path("runs") / f"{name}-{dataset_name}-{ipc}-{method_name}"
                shutil.rmtree(folder, ignore_errors=True)
                probe_started = time.perf_counter()
                distill.run(method, jax.random.fold_in(cell_key, 1), checkpoint_dir=folder, progress=False, stop_at=5)
                per_step = (time.perf_counter() - probe_started) / 5
                steps = method.num_steps
                if budget is not None:
                    steps = max(5, min(steps, int((budget - expert_s - (time.perf_counter() - started)) / per_step) + 5))
                state = distill.run(method, jax.random.fold_in(cell_key, 1), checkpoint_dir=folder, resume=True,
                                    progress=False, stop_at=steps)
                synset = method.to_synset(state)
                distill_s = time.perf_counter() - started
                overrides = {"epochs": args.eval_epochs,
                             "augment": "dsa_noflip" if "flip" not in augment.dsa_strategy(dataset_name) else "dsa"}
                learned_lr = None
                if method_name == "mtt":
                    learned_lr = float(state.params.syn_lr)
                    if learned_lr > 0:
                        overrides["lr"] = learned_lr
                protocol = evaluate.get_protocol("dsa", dataset_name, **overrides)
                started = time.perf_counter()
                result = evaluate.evaluate_synset(jax.random.fold_in(cell_key, 2), model, synset.images, synset.labels,
                                                  dataset.x_test, dataset.y_test, protocol, args.models)
                eval_s = time.perf_counter() - started
                cells[(dataset_name, ipc, method_name)] = {
                    "dataset": dataset_name, "ipc": ipc, "method": method_name, **result.as_dict(),
                    "mgdd_table": MGDD_TABLE.get((dataset_name, ipc), {}).get(method_name),
                    "protocol": protocol, "config": dict(method.config), "steps_run": steps, "steps_preset": method.num_steps,
                    "budget_s": budget, "expert_train_s": round(expert_s, 1), "distill_time_s": round(distill_s, 1),
                    "eval_time_s": round(eval_s, 1), "learned_lr": learned_lr, "num_images": int(synset.images.shape[0]),
                    "arch": {"name": "ConvNet", "width": 16}, "finite": bool(jnp.all(jnp.isfinite(synset.images))),
                }
                print(f"{dataset_name} ipc {ipc} {method_name}: {pct(result.mean, result.std)} % ({steps}/{method.num_steps} steps, "
                      f"experts {expert_s:.0f} s, distil {distill_s:.0f} s of budget {budget}, eval {eval_s:.0f} s)", flush=True)
                save()
    save()


def markdown(record: dict, baselines: dict) -> str:
    """Rows dataset x img/cls; our MTT / IDC beside the DC table's random / DC / DSA / DM (distillation seconds)."""
    ours = {(c["dataset"], c["ipc"], c["method"]): c for c in record["cells"]}
    rows = sorted({(c["dataset"], c["ipc"]) for c in record["cells"]})
    cols = ("random",) + BASELINES[1:] + ("mtt", "idc")
    lines = [f"# MTT and IDC at preset `{record['preset']}`, beside the DC table", "",
             f"Command: `{command_line()}`", "",
             f"Test accuracy in % (mean +- std over {record['models']} ConvNet-16 models, {record['eval_epochs']} epochs); "
             "distillation wall seconds in brackets (MTT / IDC: experts included, stopped at DC's time); "
             "the MGDD table's value after 'MGDD:'. Times were measured while other jobs shared the 2 cores.", "",
             "| dataset | img/cls | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for dataset_name, ipc in rows:
        entries = []
        for m in cols:
            c = ours.get((dataset_name, ipc, m)) or baselines.get((dataset_name, ipc, m))
            if c is None:
                entries.append("-")
                continue
            t = f" ({c.get('distill_time_s', 0):.0f} s)" if m != "random" else ""
            mg = MGDD_TABLE.get((dataset_name, ipc), {}).get(m)
            entries.append(pct(c["mean"], c["std"]) + t + (f" MGDD: {mg}" if mg is not None else ""))
        lines.append(f"| {dataset_name} | {ipc} | " + " | ".join(entries) + " |")
    lines += ["", "Baselines from experiments/results/dc_table_cpu*.json (their own protocols: 'dc' for DC and random, "
              "'dsa' for DSA / DM). Steps run, budgets, learned step sizes and protocols per cell are in the JSON file."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
