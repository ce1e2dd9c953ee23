"""The headline cells under the papers' own protocols (issue 18): one resumable command.

Each cell distils with its method's ``paper`` preset unchanged (the cell fixes only what the paper's
row names: DD's init, steps and epochs) through :func:`jaxdd.distill.run`, checkpointing into
``runs/paper_cells/<cell>/``; then tests fresh networks under the method's own protocol:

- ``dd_fixed_1x3``: DD, MNIST, LeNet, fixed init, 10 images, 1 GD step x 3 epochs (paper 93.76).
- ``dd_fixed_10x3``: DD, fixed init, 100 images, 10 steps x 3 epochs (paper 96.6).
- ``dd_random_10x3``: DD, random init, 100 images, 10 x 3, 200 fresh inits tested (paper 79.5 +- 8.1).
- ``dc_mnist_1`` / ``dc_fashion_mnist_1``: DC, ConvNet-128, 1 img/cls, noise init, 1000 iterations,
  real batch 256; protocol 'dc' (MNIST: 1000 epochs with the reference's augmentation), 20 models
  (the paper: 100) (paper 91.7 +- 0.5 / 70.5 +- 0.6).
- ``dsa_mnist_1``: DSA, 1 img/cls (paper 88.7); ``dm_mnist_1``: DM, 1 img/cls (its paper reports
  no MNIST number); protocol 'dsa', 20 models.

The distillation never sees ``HOLDOUT_PER_CLASS`` training images of every class (600 of MNIST's
60000; DD's 400 epochs of batches of 1024 stay 23600 iterations). At fractions ``CURVE_AT`` of the
run the set is tested on those held-out *training* images (fewer models than the final test): the
accuracy-against-iterations curve. Nothing is ever selected: the final set is the last iterate, and
the test set is used once, for the final number. A cell killed anywhere continues bit-exactly with
``--resume`` (the driver's step keys are ``fold_in(loop_key, step)``; finished curve points are kept);
``--stop-after MINUTES`` stops it cleanly at the first checkpoint after that much wall time, so that a
cell longer than a session can be carried on in a committed ``--runs-dir`` (docs/paper_cells.md).
``--seed N`` records another run of a cell beside the others (checkpoints in ``<cell>_seed<N>/``);
a cell with two or more seeds also gets its models pooled over the seeds (``over_seeds``).

Results: ``experiments/results/paper_cells.json`` (per cell: protocol, config, seeds, per-model
accuracies, wall times, the command, the paper's number and whether ours is inside its error bar,
or within 1 point where it gives none) and ``paper_cells.md``. ``--smoke`` runs the same pipeline
on the 8x8 digits with tiny budgets (``paper_cells_smoke.*``, ``runs/paper_cells_smoke/``).
``--time N`` only times N outer iterations of each cell at the real sizes and writes
``paper_cells_cost.md``.

    nice -n 10 python -m experiments.paper_cells --smoke
    flock /tmp/heavy.lock nice -n 5 python -m experiments.paper_cells --cells dc_mnist_1 --resume --data-dir DATA
    nice -n 5 python -m experiments.paper_cells --cells dd_fixed_10x3 --resume --stop-after 150 \
        --runs-dir experiments/checkpoints/paper_cells --data-dir DATA
    nice -n 10 python -m experiments.paper_cells --time 5 --data-dir DATA
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments.dc_table import protocol_for
from jaxdd import data, distill, evaluate, io, models
from jaxdd.methods import DistillRequest, get_method, resolve_config
from jaxdd.sampling import group_by_class, split_per_class

ROOT = Path(__file__).resolve().parent.parent


class Cell(NamedTuple):
    """One headline cell.

    Attributes:
        method, dataset, arch, ipc: what is distilled.
        options: config fields the paper's row fixes on top of the method's ``paper`` preset.
        models: networks trained for the final test (1 for DD's fixed init: its one theta_0).
        curve_models: networks per point of the held-out curve.
        paper: (mean, std or None) in %, or None where the paper reports no number.
        source: where the paper's number is.
        checkpoint_every: outer iterations between checkpoints (about 3 minutes of a 2-core CPU each).
    """

    method: str
    dataset: str
    arch: str
    ipc: int
    options: dict
    models: int
    curve_models: int
    paper: Optional[tuple]
    source: str
    checkpoint_every: int


CELLS: dict[str, Cell] = {
    "dd_fixed_1x3": Cell("dd", "mnist", "LeNet", 1, {"init": "fixed", "steps": 1, "epochs": 3}, 1, 1,
                         (93.76, None), "DD section 4 text: 12.90% -> 93.76%", 500),
    "dd_fixed_10x3": Cell("dd", "mnist", "LeNet", 10, {"init": "fixed", "steps": 10, "epochs": 3}, 1, 1,
                          (96.6, None), "DD Table 1, fixed init", 500),
    "dd_random_10x3": Cell("dd", "mnist", "LeNet", 10, {"init": "random", "steps": 10, "epochs": 3}, 200, 20,
                           (79.5, 8.1), "DD Table 1, random init", 500),
    "dc_mnist_1": Cell("dc", "mnist", "ConvNet", 1, {}, 20, 2, (91.7, 0.5), "DC Table 1", 20),
    "dc_fashion_mnist_1": Cell("dc", "fashion_mnist", "ConvNet", 1, {}, 20, 2, (70.5, 0.6), "DC Table 1", 20),
    "dsa_mnist_1": Cell("dsa", "mnist", "ConvNet", 1, {}, 20, 2, (88.7, None), "DSA Table 1", 20),
    "dm_mnist_1": Cell("dm", "mnist", "ConvNet", 1, {}, 20, 2, None, "the DM paper reports no MNIST number", 50),
}
"""The issue's cells (``paper_cells_cost.md`` gives their cost on a 2-core CPU: run the cheapest first)."""

HOLDOUT_PER_CLASS = 60
CURVE_AT = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
"""Fractions of the outer iterations at which the set is tested on the held-out training images."""

SMOKE = {
    "dataset": "digits", "holdout_per_class": 5, "arch": {"ConvNet": {"width": 16, "depth": 2}, "LeNet": {}},
    "options": {"dd": {"iterations": 4, "decay_every": 1000, "real_batch": 64},
                "dc": {"iterations": 4, "batch_real": 8}, "dsa": {"iterations": 4, "batch_real": 8},
                "dm": {"iterations": 4, "batch_real": 8}},
    "eval_epochs": 3, "models": 2, "curve_models": 1, "checkpoint_every": 2, "curve_at": (0.0, 1.0),
}
"""``--smoke``: the same pipeline in seconds (8x8 digits, a few iterations, 3 evaluation epochs)."""


def verdict(mean: float, paper: Optional[tuple]) -> dict:
    """Whether ``mean`` (%) is inside the paper's error bar (mean +- std), or within 1 point where it has none."""
    if paper is None:
        return {"inside": None, "rule": "no paper number"}
    paper_mean, paper_std = paper
    bar = 1.0 if paper_std is None else paper_std
    rule = "within 1 point (the paper gives no error bar)" if paper_std is None else "inside the paper's mean +- std"
    difference = mean - paper_mean
    return {"inside": bool(abs(difference) <= bar + 1e-9), "rule": rule, "difference": round(difference, 2)}


def format_paper(paper: Optional[tuple]) -> str:
    if paper is None:
        return "-"
    return f"{paper[0]}" + (f" +- {paper[1]}" if paper[1] is not None else "")


class Setup(NamedTuple):
    """A cell made concrete: data split, model, the method run, protocols and identity."""

    method: object
    model: models.Model
    x_hold: jax.Array
    y_hold: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    protocol: evaluate.Protocol
    preset: str
    arch_options: dict
    identity: dict


def as_arrays(table) -> tuple[jax.Array, jax.Array]:
    """A per-class table (:class:`jaxdd.sampling.RealByClass`, images stored class by class) as (images, labels)."""
    counts = np.sum(np.asarray(table.index) >= 0, axis=1)
    return table.images, jnp.asarray(np.repeat(np.arange(counts.size, dtype=np.int32), counts))


def build(name: str, cell: Cell, smoke: bool, data_dir, seed: int) -> Setup:
    """Loads the data, holds out training images, and builds the cell's method (nothing runs)."""
    dataset_name = SMOKE["dataset"] if smoke else cell.dataset
    holdout = SMOKE["holdout_per_class"] if smoke else HOLDOUT_PER_CLASS
    dataset = data.load_dataset(dataset_name, data.resolve_data_dir(data_dir))
    info = dataset.info
    key = jax.random.key(seed)
    real = group_by_class(dataset.x_train, dataset.y_train, info.num_classes)
    train, held = split_per_class(jax.random.fold_in(key, 3), real, int(real.index.shape[1]), holdout)
    (x_train, y_train), (x_hold, y_hold) = as_arrays(train), as_arrays(held)
    spec = get_method(cell.method)
    arch_options = dict(SMOKE["arch"][cell.arch]) if smoke else {}
    model = models.get_model(cell.arch, info.image_shape, info.num_classes, init=spec.model_init, **arch_options)
    preset = "smoke" if smoke else "paper"
    options = {**cell.options, **(SMOKE["options"][cell.method] if smoke else {})}
    config = resolve_config(spec, preset, cell.ipc, dataset_name, options, num_classes=info.num_classes)
    request = DistillRequest(images=x_train, labels=y_train, num_classes=info.num_classes, model=model, ipc=cell.ipc,
                             preset=preset, key=jax.random.fold_in(key, 0), config=config, dataset=dataset_name,
                             arch=cell.arch)
    method = spec.make(request)
    if cell.method == "dd":
        protocol = evaluate.get_protocol("dd")  # a DD set trains in its own step order with its step sizes
    else:
        protocol = protocol_for(cell.method, dataset_name, cell.ipc, {"eval_epochs": {}})
    if smoke and cell.method != "dd":
        protocol = evaluate.get_protocol(protocol.name, dataset_name, epochs=SMOKE["eval_epochs"],
                                         augment=protocol.augment)
    identity = {"cell": name, "dataset": dataset_name, "data": io.array_fingerprint(x_train, y_train),
                "arch": cell.arch, "arch_options": arch_options, "model_init": spec.model_init, "seed": seed,
                "holdout_per_class": holdout}
    return Setup(method, model, x_hold, y_hold, dataset.x_test, dataset.y_test, protocol, preset, arch_options,
                 identity)


def score_set(key, setup: Setup, state, x, y, num_models: int) -> evaluate.EvalResult:
    """Trains ``num_models`` networks on the state's set under the cell's protocol and tests them on (x, y)."""
    synset = setup.method.to_synset(state)
    kwargs = {}
    if getattr(state, "theta0", None) is not None:  # DD fixed init: the set works only from its theta_0
        kwargs = {"init_params": state.theta0, "step_sizes": synset.step_sizes}
    elif synset.step_sizes is not None:
        kwargs = {"step_sizes": synset.step_sizes}
    return evaluate.evaluate_synset(key, setup.model, synset.images, synset.labels, x, y, setup.protocol,
                                    num_models, **kwargs)


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint holds (0 where there is none)."""
    return int(io.read_npz(path)["__step__"]) if path.exists() else 0


def curve_steps(num_steps: int, fractions: tuple) -> list[int]:
    return sorted({int(round(f * num_steps)) for f in fractions})


def run_folder(name: str, seed: int) -> str:
    """A cell's checkpoint folder: ``<cell>`` for seed 0, ``<cell>_seed<N>`` for another seed."""
    return name if seed == 0 else f"{name}_seed{seed}"


def cell_seed(record: dict) -> int:
    return int(record["seeds"]["seed"])


def over_seeds(runs: dict, smoke: bool) -> list[dict]:
    """Every cell recorded from two or more seeds, its models pooled over the seeds.

    ``runs`` maps ``(cell, seed)`` to a record. For a fixed-init DD cell (one theta_0 a seed) the pooled
    mean +- std is the spread over theta_0 draws, which one run cannot show; the verdict is the pooled
    mean's against the paper's number.
    """
    pooled = []
    for name, cell in CELLS.items():
        records = [runs[key] for key in sorted(runs) if key[0] == name]
        if len(records) < 2:
            continue
        accs = [a for r in records for a in r["accs"]]
        mean = float(np.mean(accs))
        pooled.append({"cell": name, "seeds": [cell_seed(r) for r in records], "models": len(accs),
                       "mean": round(mean, 2), "std": round(float(np.std(accs)), 2),
                       "paper": format_paper(cell.paper), "verdict": verdict(mean, None if smoke else cell.paper)})
    return pooled


def run_cell(name: str, cell: Cell, args) -> Optional[dict]:
    """Distils (resumable, in segments ending at the curve points), draws the curve, tests; returns the
    record (None when ``args.stop_at`` or ``args.deadline`` stopped the distillation first)."""
    smoke = args.smoke
    folder = Path(args.runs_dir) / run_folder(name, args.seed)
    progress_path = folder / "progress.json"
    checkpoint = folder / distill.CHECKPOINT_FILE
    if checkpoint.exists() and not args.resume:
        if not args.overwrite:
            raise SystemExit(f"{folder} holds a checkpoint: pass --resume to continue it or --overwrite to start over")
        shutil.rmtree(folder)
    setup = build(name, cell, smoke, args.data_dir, args.seed)
    method = setup.method
    progress = io.read_json(progress_path) if args.resume and progress_path.exists() else {}
    if progress and progress.get("identity") != io.canonical(setup.identity):
        raise SystemExit(f"{progress_path} belongs to another run; use --overwrite to start over")
    progress.setdefault("identity", io.canonical(setup.identity))
    progress.setdefault("distill_seconds", 0.0)
    progress.setdefault("curve_seconds", 0.0)
    progress.setdefault("curve", [])
    key = jax.random.key(args.seed)
    distill_key = jax.random.fold_in(key, 0)
    curve_models = SMOKE["curve_models"] if smoke else cell.curve_models
    done = {point["step"] for point in progress["curve"]}

    def save_progress():
        io.write_file_atomically(progress_path, (json.dumps(progress, indent=1) + "\n").encode())

    every = SMOKE["checkpoint_every"] if smoke else cell.checkpoint_every

    def advance(to: int):
        """Distils up to outer iteration ``to`` and returns the state; with ``args.deadline``, in
        segments ending at checkpoints, returning None at the first one reached after the deadline."""
        while True:
            at = checkpoint_step(checkpoint)
            end = to if args.deadline is None else min(to, (at // every + 1) * every)
            started = time.perf_counter()
            reached = distill.run(method, distill_key, checkpoint_dir=folder, resume=True, stop_at=end,
                                  checkpoint_every=every, identity=setup.identity, progress=args.progress)
            jax.block_until_ready(reached)
            progress["distill_seconds"] += time.perf_counter() - started
            save_progress()
            if end == to:
                return reached
            if time.monotonic() >= args.deadline:
                return None

    def stopped(at: int, why: str) -> None:
        print(f"{name}: stopped at outer iteration {at} ({why}; continue with --resume)", flush=True)

    state = None
    for stop in curve_steps(method.num_steps, SMOKE["curve_at"] if smoke else CURVE_AT):
        if args.stop_at is not None and stop > args.stop_at:
            if advance(args.stop_at) is None:
                stopped(checkpoint_step(checkpoint), f"--stop-after {args.stop_after:g} min")
            else:
                stopped(args.stop_at, "--stop-at")
            return None
        state = advance(stop)
        if state is None:
            stopped(checkpoint_step(checkpoint), f"--stop-after {args.stop_after:g} min")
            return None
        if stop not in done:
            if checkpoint_step(checkpoint) != stop:
                raise SystemExit(f"{checkpoint} is past curve point {stop} that was never measured; use --overwrite")
            started = time.perf_counter()
            result = score_set(jax.random.fold_in(jax.random.fold_in(key, 1), stop), setup, state,
                              setup.x_hold, setup.y_hold, curve_models)
            progress["curve_seconds"] += time.perf_counter() - started
            progress["curve"].append({"step": stop, "mean": round(100 * result.mean, 2),
                                      "std": round(100 * result.std, 2), "models": curve_models})
            print(f"{name}: step {stop}/{method.num_steps} held-out training accuracy "
                  f"{common.pct(result.mean, result.std)} %", flush=True)
            save_progress()
    num_models = SMOKE["models"] if smoke and cell.models > 1 else cell.models
    started = time.perf_counter()
    result = score_set(jax.random.fold_in(key, 2), setup, state, setup.x_test, setup.y_test, num_models)
    eval_seconds = time.perf_counter() - started
    mean, std = 100 * result.mean, 100 * result.std
    theta0 = getattr(state, "theta0", None)
    before = None if theta0 is None else round(100 * float(evaluate.accuracy(setup.model, theta0, setup.x_test,
                                                                             setup.y_test)), 2)
    record = {
        "cell": name, "method": cell.method, "dataset": setup.identity["dataset"], "ipc": cell.ipc,
        "arch": {"name": cell.arch, **setup.arch_options},
        "model_init": setup.identity["model_init"] or "the architecture's default", "preset": setup.preset,
        "config": method.config,
        "protocol": setup.protocol, "models": num_models, "accs": [round(100 * float(a), 2) for a in result.accs],
        "mean": round(mean, 2), "std": round(std, 2), "accuracy_before": before,
        "paper": format_paper(cell.paper), "paper_source": cell.source,
        "verdict": verdict(mean, None if smoke else cell.paper),
        "seeds": {"seed": args.seed, "distill_key": "fold_in(key(seed), 0)",
                  "curve_key": "fold_in(fold_in(key(seed), 1), step)", "test_key": "fold_in(key(seed), 2)",
                  "holdout_key": "fold_in(key(seed), 3)"},
        "data": {"train_images": int(method.real_data[0].shape[0]) if cell.method == "dd" else
                 int(method.real_data.images.shape[0]), "holdout_per_class": setup.identity["holdout_per_class"],
                 "test_images": int(setup.x_test.shape[0]), "fingerprint": setup.identity["data"]},
        "curve": sorted(progress["curve"], key=lambda p: p["step"]),
        "curve_note": "accuracy on held-out training images (never the test set); nothing is selected on it",
        "wall_s": {"distill": round(progress["distill_seconds"], 1), "curve": round(progress["curve_seconds"], 1),
                   "eval": round(eval_seconds, 1)},
        "wall_note": "distillation seconds summed over completed segments (a killed segment's time is lost); "
                     "includes compilation",
        "command": common.command_line(), "machine": common.machine(),
        "checkpoint": str(checkpoint.relative_to(ROOT) if checkpoint.is_relative_to(ROOT) else checkpoint),
        "finite": bool(jnp.all(jnp.isfinite(method.to_synset(state).images))),
    }
    print(f"{name}: test {common.pct(result.mean, result.std)} % over {num_models} model(s), paper "
          f"{format_paper(cell.paper)}: {record['verdict']}", flush=True)
    return record


INSIDE = {True: "yes", False: "no", None: "-"}


def device_name(cell: dict) -> str:
    """The device a cell ran on, from its ``machine`` record (cells recorded before it have none)."""
    machine = cell.get("machine")
    if machine is None:
        return "not recorded per cell"
    kind = machine["device_kind"]
    return f"{kind}, {machine['cpu_count']} cores" if kind == "cpu" else kind


def markdown(record: dict) -> str:
    """The cells as a table: ours, the paper, the verdict, wall times, commands."""
    lines = [f"# Headline cells, protocol `{record['preset']}`", "",
             "Test accuracy in % (mean +- population std over the models; DD fixed init: its one theta_0). "
             "'inside': inside the paper's mean +- std, or within 1 point where the paper gives no std. "
             "Curve: accuracy on held-out *training* images at fractions of the outer iterations.", "",
             "| cell | seed | ours | models | paper | inside | curve (step: %) | distill / eval wall | device |",
             "|---|---|---|---|---|---|---|---|---|"]
    commands = []
    for c in record["cells"]:
        curve = ", ".join(f"{p['step']}: {p['mean']:.1f}" for p in c["curve"])
        lines.append(f"| {c['cell']} | {cell_seed(c)} | {c['mean']:.2f} +- {c['std']:.2f} | {c['models']} | "
                     f"{c['paper']} | {INSIDE[c['verdict']['inside']]} | {curve} | "
                     f"{c['wall_s']['distill']:.0f} s / {c['wall_s']['eval']:.0f} s | {device_name(c)} |")
        commands.append(f"- `{c['cell']}`, seed {cell_seed(c)}: `{c['command']}`")
    pooled = record.get("over_seeds", [])
    if pooled:
        lines += ["", "Over seeds (the models of every seed pooled; DD fixed init: the spread over theta_0 draws):", "",
                  "| cell | seeds | ours | models | paper | inside |", "|---|---|---|---|---|---|"]
        lines += [f"| {c['cell']} | {', '.join(map(str, c['seeds']))} | {c['mean']:.2f} +- {c['std']:.2f} | "
                  f"{c['models']} | {c['paper']} | {INSIDE[c['verdict']['inside']]} |" for c in pooled]
    return "\n".join(lines + ["", "Commands:", ""] + commands + [""])


def load(path: Path) -> dict:
    return io.read_json(path) if path.exists() else {}


EVAL_TIMING_EPOCHS = 20
"""``--time``: a DC / DSA / DM evaluation model is timed at this many epochs and scaled to the protocol's."""


def time_evaluation(setup: Setup, state, cell: Cell) -> dict:
    """Seconds per evaluation model at the cell's protocol, from one compiled (untimed) and one timed model.

    DD: the protocol itself (30 GD steps). Others: one model at ``EVAL_TIMING_EPOCHS`` epochs, minus
    the timed test pass, scaled per epoch to the protocol's epochs, plus the test pass.
    """
    model, x, y = setup.model, setup.x_test, setup.y_test
    params = model.init(jax.random.key(0))
    test_pass = jax.jit(evaluate.accuracy, static_argnums=0)  # compiled, as inside evaluate_synset
    jax.block_until_ready(test_pass(model, params, x, y))
    started = time.perf_counter()
    jax.block_until_ready(test_pass(model, params, x, y))
    test_s = time.perf_counter() - started
    short = setup._replace(protocol=setup.protocol if cell.method == "dd" else
                           dataclasses.replace(setup.protocol, epochs=EVAL_TIMING_EPOCHS))
    score_set(jax.random.key(1), short, state, x, y, 1)
    started = time.perf_counter()
    score_set(jax.random.key(2), short, state, x, y, 1)
    model_s = time.perf_counter() - started
    if cell.method != "dd":
        size = int(setup.method.to_synset(state).images.shape[0])
        per_step = max(model_s - test_s, 0.0) / short.protocol.total_steps(size)
        model_s = per_step * setup.protocol.total_steps(size) + test_s
    return {"test_pass_s": round(test_s, 2), "model_s": round(model_s, 2)}


def time_cells(names: list, args) -> dict:
    """Times ``args.time`` outer iterations and one evaluation model of each cell at its real sizes.

    Returns ``{cell: row}`` with the seconds per iteration and the projected hours.
    """
    rows = {}
    for name in names:
        cell = CELLS[name]
        setup = build(name, cell, args.smoke, args.data_dir, args.seed)
        stamps = []
        started = time.perf_counter()
        state = distill.run(setup.method, jax.random.fold_in(jax.random.key(args.seed), 0), progress=False,
                            stop_at=args.time, sync_every=1,
                            on_step=lambda step, metrics: stamps.append(time.perf_counter()))
        first = stamps[0] - started
        per = float(np.median(np.diff(stamps))) if len(stamps) > 1 else float("nan")
        timing = time_evaluation(setup, state, cell)
        curve_points = len(curve_steps(setup.method.num_steps, CURVE_AT))
        eval_models = cell.models + curve_points * cell.curve_models
        rows[name] = {"iterations": setup.method.num_steps, "timed": len(stamps), "first_s": round(first, 1),
                      "s_per_iteration": round(per, 3), "distill_h": round(per * setup.method.num_steps / 3600, 2),
                      **timing, "eval_models": eval_models,
                      "eval_h": round(eval_models * timing["model_s"] / 3600, 2),
                      "command": common.command_line(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                      "load_average": [round(v, 1) for v in os.getloadavg()]}
        row = rows[name]
        print(f"{name}: {row['timed']} iterations, first {first:.1f} s, {per:.3f} s/iteration -> "
              f"{row['distill_h']} h; eval model {row['model_s']} s x {eval_models} -> {row['eval_h']} h", flush=True)
    return rows


def cost_markdown(rows: dict) -> str:
    """``paper_cells_cost.md`` from the timing rows, cheapest cell first."""
    lines = ["# Cost of the headline cells on this machine", "",
             "Each row: `--time N` timed N outer iterations at the paper's sizes (the first includes compilation; "
             "s / iteration is the median of the others) and one evaluation model under the cell's protocol "
             f"(DC / DSA / DM: {EVAL_TIMING_EPOCHS} epochs scaled per training step to the protocol's, plus one "
             "pass over the test set). Evaluation counts the final models plus the curve's (each curve model "
             "costed with a full test pass: an upper bound). The machine (2 cores) was shared with other heavy "
             "jobs while this ran (load average in the row), so the times are upper bounds of an idle machine's.",
             "",
             "| cell | iterations | compile + first s | s / iteration | distillation h | s / eval model | eval models "
             "| evaluation h | total h | load | command |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in sorted(rows.items(), key=lambda item: item[1]["distill_h"] + item[1]["eval_h"]):
        lines.append(f"| {name} | {r['iterations']} | {r['first_s']} | {r['s_per_iteration']} | {r['distill_h']} | "
                     f"{r['model_s']} | {r['eval_models']} | {r['eval_h']} | {r['distill_h'] + r['eval_h']:.2f} | "
                     f"{r['load_average'][0]} | `{r['command']}` |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default=",".join(CELLS), help="comma-separated cells (default: all, in order)")
    parser.add_argument("--smoke", action="store_true", help="the 8x8 digits with tiny budgets (seconds)")
    parser.add_argument("--resume", action="store_true", help="continue the cells' checkpoints")
    parser.add_argument("--overwrite", action="store_true", help="start the cells over")
    parser.add_argument("--stop-at", type=int, default=None, metavar="N",
                        help="stop each cell after N outer iterations, as if killed there (continue with --resume)")
    parser.add_argument("--stop-after", type=float, default=None, metavar="MINUTES",
                        help="stop at the first checkpoint after this much wall time, its time kept (continue "
                             "with --resume); later cells do not start")
    parser.add_argument("--time", type=int, default=0, metavar="N", help="only time N outer iterations per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--runs-dir", default=None, help="checkpoints (default runs/paper_cells[_smoke])")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    args = parser.parse_args(argv)
    names = [n for n in args.cells.split(",") if n]
    unknown = [n for n in names if n not in CELLS]
    if unknown:
        parser.error(f"unknown cells {', '.join(unknown)}; known: {', '.join(CELLS)}")
    if args.stop_after is not None and (args.stop_after < 0 or args.time):
        parser.error("--stop-after takes minutes >= 0 and applies to runs, not to --time")
    args.deadline = None if args.stop_after is None else time.monotonic() + 60 * args.stop_after
    suffix = "_smoke" if args.smoke else ""
    args.runs_dir = args.runs_dir or str(ROOT / "runs" / f"paper_cells{suffix}")
    if args.time:
        path = common.RESULTS / f"paper_cells_cost{suffix}.json"
        rows = {**load(path), **time_cells(names, args)}
        io.write_file_atomically(path, (json.dumps(rows, indent=1) + "\n").encode())
        (common.RESULTS / f"paper_cells_cost{suffix}.md").write_text(cost_markdown(rows))
        return 0
    stem = f"paper_cells{suffix}"
    previous = load(common.RESULTS / f"{stem}.json")
    runs = {(c["cell"], cell_seed(c)): c for c in previous.get("cells", []) if c["cell"] in CELLS}
    order = list(CELLS)
    for name in names:
        result = run_cell(name, CELLS[name], args)
        if result is None:
            if args.deadline is not None and time.monotonic() >= args.deadline:
                break
            continue
        runs[(name, args.seed)] = result
        record = {"preset": "smoke" if args.smoke else "paper",
                  "cells": [runs[k] for k in sorted(runs, key=lambda k: (order.index(k[0]), k[1]))],
                  "over_seeds": over_seeds(runs, args.smoke)}
        common.write_json(stem, record)
        (common.RESULTS / f"{stem}.md").write_text(markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
