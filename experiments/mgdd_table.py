"""MGDD against its ablations and DC / DM / FRePo at one step budget; speed-up; unseen sizes.

The seed's comparison "under the same number of training/adaptation steps" (Liu & Wang,
NeurIPS 2023; REFERENCE section 5), leave-one-out over the one-channel 28x28 family: the
generator for target T is meta-trained by ``jaxdd pretrain-generator`` on the other datasets plus
CIFAR-10 in grayscale (``cifar10_gray28``); T's images never enter pre-training.

Sections (``--sections``, resumable: rows already in the JSON are skipped):

* ``validate``: the ridge of the analytic labels chosen on held-out *training* images of the
  target (random real + analytic labels at 10 img/cls, accuracy on 5000 held-out train images);
* ``pretrain``: runs ``jaxdd pretrain-generator`` for every target (``--resume``);
* ``table``: per (target, img/cls): mgdd, mgdd_unpretrained (same adaptation), analytic_random
  (the same initial images and analytic labels, no generator), random (the same images, hard
  labels), dc, dm, frepo (``budget`` outer iterations from real images); the
  ``snapshot_methods`` (cpu: MGDD, DC, DM, FRePo at 1 and 10 img/cls) are also evaluated at the
  ``snapshots`` iterations (the accuracy-against-time curves and DC's time to reach MGDD's
  accuracy); the ``baseline_max_ipc`` limits are stated in the results (cpu: no DC at 50 img/cls);
* ``unseen``: a generator adapted at ``adapt_sizes`` deployed at ``deploy_sizes``.

Every cell: ``eval_models`` fresh networks; hard labels train with cross-entropy, soft labels with
MSE (analytic labels can be negative); seconds are wall time of the distillation (MGDD: adaptation
including the label solves and the deployment pass; compilation included; pre-training apart).
Results: ``experiments/results/mgdd_<preset>.json`` (all rows), ``mgdd_summary.json`` (the fixed
shape), ``mgdd_<preset>.md`` and ``mgdd_<preset>_time.png``.

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

from jaxdd import methods
from jaxdd.data import load_dataset, resolve_data_dir
from jaxdd.evaluate import evaluate_synset
from jaxdd.io import versions
from jaxdd.methods import DistillRequest, get_method, mgdd
from jaxdd.models import get_model
from jaxdd.train import Protocol
from jaxdd.types import SynSet

from experiments.common import command_line, machine

SOURCES = {"mnist": ("fashion_mnist", "usps", "cifar10_gray28"), "fashion_mnist": ("mnist", "usps", "cifar10_gray28"),
           "digits": ("digits",)}
METHOD_ORDER = ("mgdd", "mgdd_unpretrained", "analytic_random", "random", "dm", "frepo", "dc")


class Preset(NamedTuple):
    targets: tuple
    ipcs: tuple
    arch: str
    arch_options: dict
    mgdd_preset: str
    budget: int  # adaptation steps = DC / DM / FRePo outer iterations
    snapshots: tuple  # iterations at which the snapshot methods are also evaluated (time curves)
    snapshot_methods: tuple  # methods evaluated at the snapshots (each snapshot costs one evaluation)
    snapshot_max_ipc: int  # snapshots only for cells up to this img/cls (the time curves are asked at 1 and 10)
    baselines: tuple
    baseline_overrides: dict
    baseline_max_ipc: dict  # baselines run only up to this img/cls (cost on 2 CPU cores); absent: every size
    eval_models: int
    eval_epochs: tuple  # ((max_set_size, epochs), ...)
    adapt_sizes: tuple
    deploy_sizes: tuple
    regs: tuple  # ridge candidates of the validation section
    val_holdout: int  # held-out training images of the validation section


PRESETS = {
    "smoke": Preset(
        targets=("digits",), ipcs=(1,), arch="ConvNet", arch_options={"width": 16, "depth": 2}, mgdd_preset="smoke",
        budget=10, snapshots=(5,), snapshot_methods=("mgdd", "dm"), snapshot_max_ipc=10, baselines=("dm",),
        baseline_overrides={"dm": {}}, baseline_max_ipc={}, eval_models=2,
        eval_epochs=((10**9, 100),), adapt_sizes=(2,), deploy_sizes=(1,), regs=(1e-3, 1e-2), val_holdout=300,
    ),
    "cpu": Preset(
        targets=("mnist", "fashion_mnist"), ipcs=(1, 10, 50), arch="ConvNetW32", arch_options={}, mgdd_preset="cpu",
        budget=50, snapshots=(10, 25), snapshot_methods=("mgdd", "dc", "dm", "frepo"), snapshot_max_ipc=10,
        baselines=("dm", "frepo", "dc"), baseline_overrides={"dc": {"batch_real": 32}, "dm": {"batch_real": 64}, "frepo": {}},
        baseline_max_ipc={"dc": 10}, eval_models=10,
        eval_epochs=((10, 200), (100, 100), (10**9, 30)), adapt_sizes=(10, 50), deploy_sizes=(1, 20),
        regs=(1e-3, 1e-2, 1e-1), val_holdout=5000,
    ),
}


def protocol_for(preset: Preset, set_size: int, loss: str) -> Protocol:
    """DC's evaluation (SGD 0.01, momentum 0.9, wd 5e-4, batch 256, lr x0.1 at half), fewer epochs.

    ``loss``: 'ce' for hard labels, 'mse' for soft analytic labels (they can be negative, for which
    soft cross-entropy is unbounded below; FRePo and KIP train with MSE).
    """
    epochs = next(e for limit, e in preset.eval_epochs if set_size <= limit)
    return Protocol(name=f"dc-{loss}-{epochs}ep", epochs=epochs, loss=loss)


def drive(method, key, snapshots=()):
    """Runs an IterativeMethod as ``jaxdd.distill.run`` does (one jitted step, keys ``fold_in``).

    Returns ``(state, synset, seconds, {step: (synset, seconds)})``; seconds include compilation
    and the method's ``make`` is timed by the caller.
    """
    step = jax.jit(method.step)
    init_key, loop_key = jax.random.split(key)
    start = time.perf_counter()
    state = method.init(init_key)
    taken = {}
    for i in range(method.num_steps):
        state, _ = step(state, method.real_data, jax.random.fold_in(loop_key, i))
        if i + 1 in snapshots:
            synset = method.to_synset(state)
            jax.block_until_ready(synset)
            taken[i + 1] = (synset, time.perf_counter() - start)
    synset = method.to_synset(state)
    jax.block_until_ready(synset)
    return state, synset, time.perf_counter() - start, taken


class Recorder:
    """Rows in a JSON file, rewritten atomically after every row (a killed run keeps what it measured)."""

    SECTIONS = ("validate", "pretrain", "table", "unseen")

    def __init__(self, path: str, header: dict):
        self.path = path
        self.data = {"header": header, **{k: [] for k in self.SECTIONS}}
        if os.path.exists(path):
            with open(path) as f:
                old = json.load(f)
            for k in self.SECTIONS:
                self.data[k] = old.get(k, [])

    def done(self, section: str, **match) -> bool:
        return any(all(row.get(k) == v for k, v in match.items()) for row in self.data[section])

    def add(self, section: str, row: dict) -> None:
        self.data[section].append(row)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)
        print(json.dumps({section: {k: v for k, v in row.items() if k not in ("accs", "protocol", "snapshots")}}), flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="smoke", choices=sorted(PRESETS))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=None, help="results JSON (default experiments/results/mgdd_<preset>.json)")
    parser.add_argument("--generators", default=os.path.join("runs", "mgdd_generators"))
    parser.add_argument("--sections", default="validate,pretrain,table,unseen")
    parser.add_argument("--targets", default=None, help="e.g. mnist (default: the preset's)")
    parser.add_argument("--ipcs", default=None, help="e.g. 1,10 (default: the preset's)")
    parser.add_argument("--methods", default=None, help="subset of " + ",".join(METHOD_ORDER))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    targets = tuple(args.targets.split(",")) if args.targets else preset.targets
    ipcs = tuple(int(v) for v in args.ipcs.split(",")) if args.ipcs else preset.ipcs
    wanted = tuple(args.methods.split(",")) if args.methods else METHOD_ORDER
    sections = args.sections.split(",")
    out = args.out or os.path.join("experiments", "results", f"mgdd_{args.preset}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    header = {"experiment": "mgdd_table", "preset": args.preset, "preset_config": preset._asdict(), "seed": args.seed,
              "mgdd_config": methods.config_to_dict(mgdd.default_config(preset.mgdd_preset, 1, "")),
              "pretrain_config": methods.config_to_dict(mgdd.default_pretrain_config(preset.mgdd_preset)),
              "command": command_line(), "versions": versions(), "machine": machine()}
    rec = Recorder(out, header)
    data_dir = resolve_data_dir(args.data_dir)
    key = jax.random.key(args.seed)

    for target in targets:
        ds = load_dataset(target, data_dir=data_dir)
        info = ds.info
        model = get_model(preset.arch, info.image_shape, info.num_classes, **preset.arch_options)
        gen_dir = os.path.join(args.generators, f"{args.preset}-for-{target}")

        def evaluate(synset, k_eval, loss=None, test=(ds.x_test, ds.y_test)):
            loss = loss or ("mse" if synset.labels.ndim == 2 else "ce")
            protocol = protocol_for(preset, int(synset.images.shape[0]), loss)
            result = evaluate_synset(k_eval, model, synset.images, synset.labels, test[0], test[1], protocol, preset.eval_models)
            return {**result.as_dict(), "protocol": dataclasses.asdict(protocol)}

        def mgdd_config(ipc, **changes):
            return mgdd.default_config(preset.mgdd_preset, ipc, target)._replace(**{"reg": chosen_reg(), **changes})

        def chosen_reg():
            rows = [r for r in rec.data["validate"] if r["target"] == target]
            return max(rows, key=lambda r: r["mean"])["reg"] if rows else mgdd.default_config(preset.mgdd_preset, 1, target).reg

        def request(ipc, k, config, images=ds.x_train, labels=ds.y_train):
            return DistillRequest(images=images, labels=labels, num_classes=info.num_classes, model=model, ipc=ipc,
                                  preset=preset.mgdd_preset, key=k, config=config, dataset=target, arch=preset.arch)

        if "validate" in sections:
            # Held-out *training* images: the last val_holdout of a fixed permutation of the train split.
            perm = jax.random.permutation(jax.random.fold_in(key, 77), ds.x_train.shape[0])
            fit, held = perm[: -preset.val_holdout], perm[-preset.val_holdout:]
            for reg in preset.regs:
                if rec.done("validate", target=target, reg=reg):
                    continue
                k = jax.random.fold_in(key, 31)
                method = mgdd.make(request(10, k, mgdd_config(10, reg=reg, adapt_steps=0), ds.x_train[fit], ds.y_train[fit]))
                x_init = method.real_data.pools[0][0][0]
                synset = SynSet(x_init, method.to_synset(method.init(k)).labels)
                rec.add("validate", {"target": target, "reg": reg, "ipc": 10, "method": "analytic_random",
                                     "split": f"{preset.val_holdout} held-out training images",
                                     **evaluate(synset, jax.random.fold_in(k, 1), test=(ds.x_train[held], ds.y_train[held]))})

        if "pretrain" in sections and not rec.done("pretrain", target=target):
            from jaxdd.cli import main as jaxdd_main

            argv = ["pretrain-generator", "--sources", ",".join(SOURCES[target]), "--preset", preset.mgdd_preset,
                    "--out", gen_dir, "--resume", "--no-progress", "--seed", str(args.seed)]
            if args.data_dir:
                argv += ["--data-dir", args.data_dir]
            if jaxdd_main(argv) != 0:
                raise SystemExit(f"pre-training for {target} failed")
        if os.path.isfile(os.path.join(gen_dir, mgdd.PRETRAIN_CURVE)) and not rec.done("pretrain", target=target):
            with open(os.path.join(gen_dir, "generator.json")) as f:
                gmeta = json.load(f)
            rec.add("pretrain", {"target": target, "sources": gmeta.get("sources"), "generator_dir": gen_dir,
                                 **gmeta["pretrain_result"], "command": "jaxdd pretrain-generator --sources "
                                 f"{','.join(SOURCES[target])} --preset {preset.mgdd_preset} --out {gen_dir} --resume"})

        for ipc in ipcs if "table" in sections else ():
            cell = {"target": target, "ipc": ipc}
            k = jax.random.fold_in(jax.random.fold_in(key, ipc), zlib.crc32(target.encode()) % 1000)
            k_eval = jax.random.fold_in(k, 99)
            snaps = tuple(s for s in preset.snapshots if s < preset.budget) if ipc <= preset.snapshot_max_ipc else ()

            def add_iterative(name, made, make_seconds, extra=None):
                _, synset, seconds, taken = drive(made, jax.random.fold_in(k, 1), snaps if name in preset.snapshot_methods else ())
                snapshots = [{"iterations": it, "seconds": secs + make_seconds, **evaluate(s, k_eval)} for it, (s, secs) in sorted(taken.items())]
                rec.add("table", {**cell, "method": name, "steps": preset.budget, "seconds": seconds + make_seconds,
                                  "snapshots": snapshots, **(extra or {}), **evaluate(synset, k_eval)})
                return synset

            for name, generator in (("mgdd", gen_dir), ("mgdd_unpretrained", "")):
                if name not in wanted or rec.done("table", **cell, method=name):
                    continue
                if generator and not os.path.isfile(os.path.join(generator, "generator.json")):
                    print(f"skipping {name} {cell}: no generator at {generator}", flush=True)
                    continue
                start = time.perf_counter()
                made = mgdd.make(request(ipc, k, mgdd_config(ipc, generator=generator, adapt_steps=preset.budget)))
                jax.block_until_ready(made.real_data)
                synset = add_iterative(name, made, time.perf_counter() - start, {"reg": chosen_reg()})
                if name == "mgdd":
                    x_init = made.real_data.pools[0][0][0]  # the deployed set's initial images
                    for base, s in (("analytic_random", SynSet(x_init, synset.labels)),
                                    ("random", SynSet(x_init, jnp.repeat(jnp.arange(info.num_classes), ipc)))):
                        if base in wanted and not rec.done("table", **cell, method=base):
                            rec.add("table", {**cell, "method": base, "steps": 0, "seconds": 0.0, **evaluate(s, k_eval)})
            for name in preset.baselines:
                if name not in wanted or rec.done("table", **cell, method=name) or ipc > preset.baseline_max_ipc.get(name, ipc):
                    continue
                spec = get_method(name)
                config = methods.resolve_config(spec, preset.mgdd_preset, ipc, target,
                                                {"iterations": preset.budget, **preset.baseline_overrides[name]},
                                                num_classes=info.num_classes)
                start = time.perf_counter()
                made = spec.make(request(ipc, k, config))
                add_iterative(name, made, time.perf_counter() - start)
            write_outputs(rec.data, out)

        if "unseen" in sections and not rec.done("unseen", target=target) and os.path.isfile(os.path.join(gen_dir, "generator.json")):
            k = jax.random.fold_in(key, 555)
            start = time.perf_counter()
            made = mgdd.make(request(preset.adapt_sizes[0], k, mgdd_config(preset.adapt_sizes[0], generator=gen_dir,
                                                                          adapt_steps=preset.budget, adapt_ipcs=preset.adapt_sizes)))
            state, _, _, _ = drive(made, jax.random.fold_in(k, 1))
            seconds = time.perf_counter() - start  # label solves + adaptation
            generator = mgdd.load_generator(gen_dir)[0]
            for size in preset.deploy_sizes:
                k_dep = jax.random.fold_in(k, size)
                t0 = time.perf_counter()
                synset = mgdd.generate(generator, state.params, model, made.real_data, k_dep, size)
                jax.block_until_ready(synset)
                deploy_s = time.perf_counter() - t0
                x_init = mgdd.initial_set(k_dep, made.real_data.pool, size)
                k_eval = jax.random.fold_in(k, 1000 + size)
                for name, s in (("mgdd", synset), ("analytic_random", SynSet(x_init, synset.labels))):
                    rec.add("unseen", {"target": target, "adapt_sizes": list(preset.adapt_sizes), "deploy_ipc": size,
                                       "seen": size in preset.adapt_sizes, "method": name, "adapt_seconds": seconds,
                                       "deploy_seconds": deploy_s if name == "mgdd" else 0.0, **evaluate(s, k_eval)})
    write_outputs(rec.data, out)


def speedups(data: dict) -> dict:
    """``{"<target>/<ipc>": DC seconds to reach MGDD's mean accuracy / MGDD seconds}`` (None: DC never did)."""
    out = {}
    rows = data["table"]
    for r in rows:
        if r["method"] != "mgdd":
            continue
        dc = [d for d in rows if d["method"] == "dc" and d["target"] == r["target"] and d["ipc"] == r["ipc"]]
        if not dc:
            continue
        points = sorted([(s["iterations"], s["seconds"], s["mean"]) for s in dc[0]["snapshots"]] + [(dc[0]["steps"], dc[0]["seconds"], dc[0]["mean"])])
        reached = next((secs for _, secs, mean in points if mean >= r["mean"]), None)
        out[f"{r['target']}/{r['ipc']}"] = None if reached is None else reached / r["seconds"]
    return out


def summary(data: dict) -> dict:
    """The fixed-shape summary: pretrain figures per target, one row per cell, speed-ups."""
    return {
        "pretrain": {r["target"]: {"heldout_loss_start": r["heldout_loss_start"], "heldout_loss_end": r["heldout_loss_end"],
                                   "iterations": r["iterations"], "seconds": r["seconds"]} for r in data["pretrain"]},
        "cells": [{"target": r["target"], "ipc": r["ipc"], "method": r["method"], "accs": r["accs"], "seconds": r["seconds"],
                   "protocol": f"{r['protocol']['name']} ({'MSE on soft labels' if r['protocol']['loss'] == 'mse' else 'cross-entropy on hard labels'}), "
                               f"{len(r['accs'])} fresh {data['header']['preset_config']['arch']}"} for r in data["table"]],
        "speedup": speedups(data),
    }


def _acc(row):
    return f"{100 * row['mean']:.1f} ± {100 * row['std']:.1f}"


def write_outputs(data: dict, out: str) -> None:
    """``mgdd_summary.json`` (beside ``out``), the Markdown tables and the accuracy-against-time PNG."""
    folder = os.path.dirname(out)
    stem = out[: -len(".json")]
    with open(os.path.join(folder, "mgdd_summary.json" if data["header"]["preset"] == "cpu" else f"mgdd_summary_{data['header']['preset']}.json"), "w") as f:
        json.dump(summary(data), f, indent=1)
    header = data["header"]
    lines = [f"# MGDD results ({header['preset']} preset)", "", f"Command: `{header['command']}`", "",
             f"Accuracy (%) on the real test set, mean ± population std over {header['preset_config']['eval_models']} fresh "
             f"{header['preset_config']['arch']} networks; SGD lr 0.01, momentum 0.9, wd 5e-4, batch 256, lr x0.1 at half; "
             f"epochs by set size {header['preset_config']['eval_epochs']}. Hard labels: cross-entropy; soft labels (mgdd, "
             "mgdd_unpretrained, analytic_random, frepo): MSE. Seconds: distillation wall time (MGDD: adaptation with label "
             "solves and deployment), compilation included, on 2 CPU cores shared with other jobs.", ""]
    if data["validate"]:
        lines += ["## Ridge chosen on held-out training images", "", "| target | reg | accuracy (held-out train) |", "|---|---|---|"]
        lines += [f"| {r['target']} | {r['reg']:g} | {_acc(r)} |" for r in data["validate"]] + [""]
    for r in data["pretrain"]:
        lines.append(f"Pre-training for {r['target']} on {'+'.join(r['sources'] or [])}: {r['iterations']} meta-iterations, "
                     f"{r['seconds']:.0f} s; held-out meta-loss {r['heldout_loss_start']:.4f} -> {r['heldout_loss_end']:.4f} "
                     f"(no generator {r['identity_loss']:.4f}).")
    table = data["table"]
    if table:
        present = [m for m in METHOD_ORDER if any(r["method"] == m for r in table)]
        lines += ["", "## Same step budget", "", "| target | img/cls | " + " | ".join(present) + " |", "|---|---|" + "---|" * len(present)]
        for cell in dict.fromkeys((r["target"], r["ipc"]) for r in table):
            rows = {r["method"]: r for r in table if (r["target"], r["ipc"]) == cell}
            vals = [f"{_acc(rows[m])} ({rows[m]['seconds']:.0f} s)" if m in rows else "-" for m in present]
            lines.append(f"| {cell[0]} | {cell[1]} | " + " | ".join(vals) + " |")
        lines += ["", "Speed-up at equal accuracy (DC seconds to reach MGDD's mean / MGDD seconds): "
                  + json.dumps(speedups(data)), ""]
    if data["unseen"]:
        lines += ["## Deployment at sizes not seen in adaptation", "", "| target | adapted at | deployed at | mgdd | analytic_random |", "|---|---|---|---|---|"]
        for cell in dict.fromkeys((r["target"], r["deploy_ipc"]) for r in data["unseen"]):
            rows = {r["method"]: r for r in data["unseen"] if (r["target"], r["deploy_ipc"]) == cell}
            any_row = next(iter(rows.values()))
            lines.append(f"| {cell[0]} | {any_row['adapt_sizes']} | {cell[1]} | "
                         f"{_acc(rows['mgdd']) if 'mgdd' in rows else '-'} | {_acc(rows['analytic_random']) if 'analytic_random' in rows else '-'} |")
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    _plot_time(table, stem + "_time.png")


def _plot_time(table: list, path: str) -> None:
    """Accuracy against wall time for the iterative methods, one panel per (target, img/cls)."""
    cells = list(dict.fromkeys((r["target"], r["ipc"]) for r in table))
    if not cells:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cells), figsize=(4 * len(cells), 3.2), squeeze=False)
    for ax, cell in zip(axes[0], cells):
        for r in table:
            if (r["target"], r["ipc"]) != cell or "snapshots" not in r:
                continue
            pts = [(s["seconds"], s["mean"]) for s in r["snapshots"]] + [(r["seconds"], r["mean"])]
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=r["method"])
        for r in table:
            if (r["target"], r["ipc"]) == cell and r["method"] == "analytic_random":
                ax.axhline(100 * r["mean"], color="gray", linestyle="--", label="analytic_random")
        ax.set_xscale("log")
        ax.set_xlabel("wall seconds (log)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{cell[0]}, {cell[1]} img/cls", fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
