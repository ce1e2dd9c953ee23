"""MGDD against DC / DM / random real under the same step budget, time-to-distill, unseen sizes.

The seed's comparison "under the same number of training/adaptation steps" (Liu & Wang,
NeurIPS 2023; REFERENCE section 5): a generator meta-trained on a source dataset is adapted to a
target for ``budget`` steps; DC and DM distil from scratch for ``budget`` outer iterations. All
sets are trained on by fresh networks under one protocol (SGD, the DC evaluation family; the
soft analytic labels of MGDD use soft cross-entropy, hard labels plain cross-entropy).

Three measurements, one JSON file each cell (``experiments/results/mgdd_<preset>.json``):

* ``table``: per (source -> target, img/cls): random real, random real + analytic labels,
  MGDD, DC, DM — accuracy and distillation wall time;
* ``speedup``: DC from scratch, evaluated at growing iteration counts, against MGDD's time
  (adaptation + deployment; pre-training reported apart, it is paid once per source);
* ``unseen``: a generator adapted at sizes ``adapt_sizes`` deployed at other sizes.

Run: ``python -m experiments.mgdd_table --preset cpu --data-dir ../shared/data``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
import zlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import coreset
from jaxdd.data import load_dataset, resolve_data_dir
from jaxdd.evaluate import evaluate_synset
from jaxdd.methods import DistillRequest, get_method, mgdd
from jaxdd.models import get_model
from jaxdd.train import Protocol
from jaxdd.types import SynSet
from jaxdd.io import versions

from experiments.common import command_line, machine


class Preset(NamedTuple):
    pairs: tuple  # ((source, target), ...)
    ipcs: tuple
    arch: str
    arch_kwargs: dict
    mgdd_preset: str
    pretrain_steps: int
    budget: int  # adaptation steps = DC / DM outer iterations
    baselines: dict  # method -> img/cls it is run at
    baseline_options: dict  # method -> options
    eval_models: int
    eval_epochs: tuple  # ((max_set_size, epochs), ...)
    speedup_ipc: int
    speedup_iterations: tuple
    adapt_sizes: tuple
    deploy_sizes: tuple


PRESETS = {
    "smoke": Preset(
        pairs=(("digits", "digits"),), ipcs=(1, 5), arch="ConvNet", arch_kwargs={"width": 16, "depth": 2},
        mgdd_preset="smoke", pretrain_steps=10, budget=20, baselines={"dm": (1, 5)}, baseline_options={"dm": {}},
        eval_models=2, eval_epochs=((10**9, 100),), speedup_ipc=1, speedup_iterations=(5, 20),
        adapt_sizes=(5,), deploy_sizes=(1, 3),
    ),
    "cpu": Preset(
        pairs=(("mnist", "fashion_mnist"), ("fashion_mnist", "mnist")), ipcs=(1, 10, 50), arch="ConvNetW32",
        arch_kwargs={}, mgdd_preset="cpu", pretrain_steps=20, budget=50, baselines={"dc": (1, 10), "dm": (1, 10, 50), "frepo": (1, 10)},
        baseline_options={"dc": {"batch_real": 32}, "dm": {"batch_real": 64}, "frepo": {}}, eval_models=2,
        eval_epochs=((10, 200), (100, 100), (10**9, 30)), speedup_ipc=1, speedup_iterations=(5, 10),
        adapt_sizes=(10, 50), deploy_sizes=(1, 20),
    ),
}


def protocol_for(preset: Preset, set_size: int, loss: str) -> Protocol:
    """DC's evaluation (SGD 0.01, momentum 0.9, wd 5e-4, batch 256, lr x0.1 at half), fewer epochs.

    ``loss`` is 'ce' for hard labels and 'mse' for soft analytic labels (they have negative
    entries, for which soft cross-entropy is unbounded below; FRePo and KIP train with MSE).
    """
    epochs = next(e for limit, e in preset.eval_epochs if set_size <= limit)
    return Protocol(name=f"dc-{loss}-{epochs}ep", epochs=epochs, loss=loss)


def drive(method, key, snapshots=()):
    """Runs an IterativeMethod like ``jaxdd.distill.run`` (one jitted step, keys ``fold_in``).

    Returns ``(state, seconds, {step: (synset, seconds)})``; times exclude evaluation and
    include compilation (which every real run pays).
    """
    step = jax.jit(method.step)
    init_key, loop_key = jax.random.split(key)
    start = time.perf_counter()
    state = method.init(init_key)
    taken = {}
    for i in range(method.num_steps):
        state, metrics = step(state, method.real_data, jax.random.fold_in(loop_key, i))
        if i + 1 in snapshots:
            jax.block_until_ready(state)
            taken[i + 1] = (method.to_synset(state), time.perf_counter() - start)
    synset = method.to_synset(state)
    jax.block_until_ready(synset)
    return state, synset, time.perf_counter() - start, taken


def evaluate(preset, model, synset, ds, key, loss=None):
    loss = loss or ("mse" if synset.labels.ndim == 2 else "ce")
    protocol = protocol_for(preset, int(synset.images.shape[0]), loss)
    result = evaluate_synset(key, model, synset.images, synset.labels, ds.x_test, ds.y_test, protocol, preset.eval_models)
    return {**result.as_dict(), "protocol": dataclasses.asdict(protocol)}


class Recorder:
    """Appends rows to a JSON file after every cell (a killed run keeps what it measured)."""

    def __init__(self, path: str, header: dict):
        self.path = path
        self.data = {"header": header, "table": [], "speedup": [], "unseen": [], "pretrain": []}
        if os.path.exists(path):
            with open(path) as f:
                old = json.load(f)
            for k in ("table", "speedup", "unseen", "pretrain"):
                self.data[k] = old.get(k, [])

    def done(self, section: str, **match) -> bool:
        return any(all(row.get(k) == v for k, v in match.items()) for row in self.data[section])

    def add(self, section: str, row: dict) -> None:
        self.data[section].append(row)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)
        print(json.dumps({section: {k: v for k, v in row.items() if k not in ("accs", "protocol")}}), flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="smoke", choices=sorted(PRESETS))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=None, help="results JSON (default experiments/results/mgdd_<preset>.json)")
    parser.add_argument("--generators", default=None, help="where generators are kept (default runs/mgdd_generators)")
    parser.add_argument("--sections", default="table,unseen,speedup")
    parser.add_argument("--pairs", default=None, help="e.g. mnist:fashion_mnist (default: the preset's)")
    parser.add_argument("--ipcs", default=None, help="e.g. 1,10 (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    pairs = tuple(tuple(p.split(":")) for p in args.pairs.split(",")) if args.pairs else preset.pairs
    sections = args.sections.split(",")
    out = args.out or os.path.join("experiments", "results", f"mgdd_{args.preset}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    header = {
        "experiment": "mgdd_table", "preset": args.preset, "preset_config": preset._asdict(), "seed": args.seed,
        "mgdd_config": mgdd.get_config(preset.mgdd_preset, pretrain_steps=preset.pretrain_steps)._asdict(),
        "command": command_line(), "versions": versions(), "machine": machine(),
    }
    rec = Recorder(out, header)
    data_dir = resolve_data_dir(args.data_dir)
    gen_root = args.generators or os.path.join("runs", "mgdd_generators")
    key = jax.random.key(args.seed)
    datasets = {}

    def dataset(name):
        if name not in datasets:
            datasets[name] = load_dataset(name, data_dir=data_dir)
        return datasets[name]

    def feature_model(ds):
        info = ds.info
        return get_model(preset.arch, info.image_shape, info.num_classes, **preset.arch_kwargs)

    def generator_dir(source):
        path = os.path.join(gen_root, f"{args.preset}-{source}-seed{args.seed}")
        if not os.path.isdir(path):
            ds = dataset(source)
            config = mgdd.get_config(preset.mgdd_preset, pretrain_steps=preset.pretrain_steps)
            gen = mgdd.make_generator(ds.info.image_shape[-1], config.gen_width, config.gen_dilations)
            start = time.perf_counter()
            params, history = mgdd.pretrain(jax.random.fold_in(key, 7), gen, feature_model(ds), ds.x_train, ds.y_train,
                                            ds.info.num_classes, config, log_every=50)
            wall = time.perf_counter() - start
            mgdd.save_generator(path, params, {
                "generator": {"channels": ds.info.image_shape[-1], "width": config.gen_width, "dilations": list(config.gen_dilations)},
                "source": source, "preset": preset.mgdd_preset, "arch": preset.arch, "pretrain_steps": config.pretrain_steps,
                "wall_seconds": wall, "history": history,
            })
            rec.add("pretrain", {"source": source, "steps": config.pretrain_steps, "seconds": wall, "history": history})
        return path

    def request(ds, ipc, k, options):
        return DistillRequest(images=ds.x_train, labels=ds.y_train, num_classes=ds.info.num_classes, model=feature_model(ds),
                              ipc=ipc, preset=preset.mgdd_preset, key=k, options=options, dataset=ds.info.name, arch=preset.arch)

    def run_mgdd(source, ds, ipc, adapt_ipcs, k, steps=None):
        method = mgdd.make(request(ds, ipc, k, {"generator": generator_dir(source), "adapt_steps": steps or preset.budget,
                                                "adapt_ipcs": ",".join(map(str, adapt_ipcs))}))
        start = time.perf_counter()
        state, synset, seconds, _ = drive(method, jax.random.fold_in(k, 1))
        return method, state, synset, seconds, start

    for source, target in pairs:
        ds = dataset(target)
        model = feature_model(ds)
        ipcs = tuple(int(v) for v in args.ipcs.split(",")) if args.ipcs else preset.ipcs
        for ipc in ipcs if "table" in sections else ():
            cell = {"source": source, "target": target, "ipc": ipc}
            k = jax.random.fold_in(jax.random.fold_in(key, ipc), zlib.crc32(target.encode()) % 1000)
            k_eval = jax.random.fold_in(k, 99)
            if not rec.done("table", **cell, method="mgdd"):
                generator_dir(source)
                method, state, synset, seconds, _ = run_mgdd(source, ds, ipc, (ipc,), k)
                x_init = method.real_data.pools[0][0][0]
                hard = coreset.class_sorted_labels(ds.info.num_classes, ipc)
                rows = {
                    "random": (SynSet(x_init, hard), 0.0),
                    "random+analytic": (SynSet(x_init, synset.labels), 0.0),
                    "mgdd": (synset, seconds),
                }
                rows["random (mse)"] = rows["random"]
                for name, (s, secs) in rows.items():
                    loss = "mse" if name == "random (mse)" else None
                    rec.add("table", {**cell, "method": name, "steps": preset.budget if name == "mgdd" else 0,
                                      "seconds": secs, **evaluate(preset, model, s, ds, k_eval, loss)})
            for baseline, baseline_ipcs in preset.baselines.items():
                if ipc not in baseline_ipcs or rec.done("table", **cell, method=baseline):
                    continue
                options = {"iterations": preset.budget, **preset.baseline_options[baseline]}
                made = get_method(baseline).make(request(ds, ipc, k, options))
                _, synset, seconds, _ = drive(made, jax.random.fold_in(k, 1))
                rec.add("table", {**cell, "method": baseline, "steps": preset.budget, "seconds": seconds,
                                  **evaluate(preset, model, synset, ds, k_eval)})

        if "speedup" in sections and not rec.done("speedup", source=source, target=target):
            ipc = preset.speedup_ipc
            k = jax.random.fold_in(jax.random.fold_in(key, ipc), zlib.crc32(target.encode()) % 1000)
            k_eval = jax.random.fold_in(k, 99)
            name = "dc" if "dc" in preset.baselines else next(iter(preset.baselines))
            options = {"iterations": max(preset.speedup_iterations), **preset.baseline_options[name]}
            made = get_method(name).make(request(ds, ipc, k, options))
            _, _, _, snaps = drive(made, jax.random.fold_in(k, 1), snapshots=set(preset.speedup_iterations))
            for it, (synset, seconds) in sorted(snaps.items()):
                rec.add("speedup", {"source": source, "target": target, "ipc": ipc, "method": name,
                                    "iterations": it, "seconds": seconds, **evaluate(preset, model, synset, ds, k_eval)})
        if "unseen" in sections and not rec.done("unseen", source=source, target=target):
            k = jax.random.fold_in(key, 555)
            method, state, _, seconds, _ = run_mgdd(source, ds, preset.adapt_sizes[0], preset.adapt_sizes, k)
            for size in preset.deploy_sizes:
                k_dep = jax.random.fold_in(k, size)
                start = time.perf_counter()
                generator = mgdd.load_generator(generator_dir(source))[0]  # the adapted generator's architecture
                synset = mgdd.generate(generator, state.params, model, method.real_data, k_dep, size)
                jax.block_until_ready(synset)
                deploy_s = time.perf_counter() - start
                x_init = mgdd.initial_set(k_dep, method.real_data.by_class, size)
                hard = coreset.class_sorted_labels(ds.info.num_classes, size)
                k_eval = jax.random.fold_in(k, 1000 + size)
                for name, s in (("mgdd", synset), ("random", SynSet(x_init, hard))):
                    rec.add("unseen", {"source": source, "target": target, "adapt_sizes": list(preset.adapt_sizes), "deploy_ipc": size,
                                       "seen": size in preset.adapt_sizes, "method": name, "adapt_seconds": seconds,
                                       "deploy_seconds": deploy_s if name == "mgdd" else 0.0, **evaluate(preset, model, s, ds, k_eval)})

    write_markdown(rec.data, out[: -len(".json")] + ".md", command_line())


def _acc(row):
    return f"{100 * row['mean']:.1f} ± {100 * row['std']:.1f}"


def write_markdown(data: dict, path: str, command: str) -> None:
    """Tables of the JSON results (accuracy mean ± population std over the evaluation models, %)."""
    header = data["header"]
    epochs = header["preset_config"]["eval_epochs"]
    lines = [f"# MGDD results ({header['preset']} preset)", "", f"Command: `{command}`", "",
             f"Accuracy (%) on the real test set, mean ± population std over {header['preset_config']['eval_models']} "
             f"fresh {header['preset_config']['arch']} networks; SGD lr 0.01, momentum 0.9, wd 5e-4, batch 256, lr x0.1 at "
             f"half; epochs by set size {epochs}. Hard-label sets train with cross-entropy; soft-label sets (mgdd, "
             "random+analytic, frepo) and 'random (mse)' with MSE. Seconds: distillation wall time including compilation.", ""]
    table = data["table"]
    if table:
        methods = list(dict.fromkeys(r["method"] for r in table))
        lines += ["## Same step budget", "", "| source -> target | img/cls | " + " | ".join(methods) + " |",
                  "|---|---|" + "---|" * len(methods)]
        for cell in dict.fromkeys((r["source"], r["target"], r["ipc"]) for r in table):
            rows = {r["method"]: r for r in table if (r["source"], r["target"], r["ipc"]) == cell}
            vals = [f"{_acc(rows[m])} ({rows[m]['seconds']:.0f} s)" if m in rows else "-" for m in methods]
            lines.append(f"| {cell[0]} -> {cell[1]} | {cell[2]} | " + " | ".join(vals) + " |")
        lines.append("")
    if data["speedup"]:
        lines += ["## DC from scratch against MGDD (time to similar accuracy)", "",
                  "| target | img/cls | method | iterations | seconds | accuracy |", "|---|---|---|---|---|---|"]
        for r in data["speedup"]:
            lines.append(f"| {r['target']} | {r['ipc']} | {r['method']} | {r['iterations']} | {r['seconds']:.0f} | {_acc(r)} |")
        lines.append("")
        for target, ipc in dict.fromkeys((r["target"], r["ipc"]) for r in data["speedup"]):
            ours = [r for r in table if r["target"] == target and r["ipc"] == ipc and r["method"] == "mgdd"]
            if not ours:
                continue
            ours = ours[0]
            runs = sorted((r for r in data["speedup"] if r["target"] == target and r["ipc"] == ipc), key=lambda r: r["iterations"])
            reached = next((r for r in runs if r["mean"] >= ours["mean"]), None)
            text = (f"MGDD on {target} at {ipc} img/cls: {_acc(ours)} in {ours['seconds']:.0f} s. ")
            if reached is None:
                text += "DC from scratch did not reach it within the snapshots."
            else:
                text += (f"DC from scratch first matches it at {reached['iterations']} iterations ({reached['seconds']:.0f} s): "
                         f"speed-up {reached['seconds'] / ours['seconds']:.2f}x (the paper claims about 22x).")
            lines += [text, ""]
    if data["unseen"]:
        lines += ["## Deployment at sizes not seen in adaptation", "",
                  "| source -> target | adapted at | deployed at | seen | MGDD | random real |", "|---|---|---|---|---|---|"]
        for cell in dict.fromkeys((r["source"], r["target"], r["deploy_ipc"]) for r in data["unseen"]):
            rows = {r["method"]: r for r in data["unseen"] if (r["source"], r["target"], r["deploy_ipc"]) == cell}
            any_row = next(iter(rows.values()))
            lines.append(f"| {cell[0]} -> {cell[1]} | {any_row['adapt_sizes']} | {cell[2]} | {any_row['seen']} | "
                         f"{_acc(rows['mgdd']) if 'mgdd' in rows else '-'} | {_acc(rows['random']) if 'random' in rows else '-'} |")
        lines.append("")
    for r in data["pretrain"]:
        lines.append(f"Pre-training on {r['source']}: {r['steps']} meta-iterations, {r['seconds']:.0f} s.")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
