"""The DC paper's continual-learning experiment: domain- or class-incremental with small memories.

Two modes share one loop (:mod:`jaxdd.continual`): a memory of ``ipc`` images per class of each
task, built by a registered method (random, herding, DM, DC, ...), networks with one head over all
classes trained on all memories so far, with and without distillation (KD) from the previous
stage's network.

- ``--mode domain`` (default): the sequence digits (scikit-learn, 28x28) -> MNIST -> USPS (the
  paper: SVHN -> MNIST -> USPS); reported after each stage: the mean over the domains seen so far
  of the accuracy on each domain's test set. Writes
  ``experiments/results/continual[_<tag>].{json,md,png}``.
- ``--mode class``: one dataset's classes split into stages of ``--classes-per-stage`` classes in
  label order (CIFAR-10: 0-1, 2-3, ..., 8-9), the class-incremental setting of the DC authors'
  later ``CL_DM.py``; each stage's memory is built from that stage's classes only; reported after
  each stage: the accuracy on the union of the test images of all classes seen so far (as
  ``CL_DM.py``, which tests once on all seen classes' images). Writes
  ``experiments/results/continual_class_<tag>.{json,md,png}``.

``--fresh-start`` trains a fresh network at every stage (as ``CL_DM.py``) instead of training the
previous stage's network on (E2E's one network through the stages). Finished memories and runs are
cached in ``experiments/results/continual_cache/`` so a restarted job skips them; ``--resume``
keeps the results file's runs of the methods not named in ``--methods``, so a method can join a
finished table (each run records its command).

    python -m experiments.dc_continual --preset smoke --data-dir /work/shared/data
    python -m experiments.dc_continual --preset cpu --data-dir /work/shared/data
    # The paper's sequence (SVHN has no offline copy here; tensorflow-datasets downloads it,
    # ConvNet on 32x32x3: MNIST and USPS are resized and repeated to three channels):
    python -m experiments.dc_continual --preset paper --sequence svhn_cropped,mnist,usps --data-dir DATA
    # Class-incremental: embedded 8x8 digits in seconds; CIFAR-10 in 5 stages of 2 classes.
    python -m experiments.dc_continual --mode class --preset smoke
    python -m experiments.dc_continual --mode class --preset cpu --data-dir /work/shared/data
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import RESULTS, command_line, commands_markdown, write_json
from jaxdd import continual, data, distill, evaluate, models
from jaxdd.methods import DistillRequest, IterativeMethod, get_method, resolve_config
from jaxdd.types import SynSet

CACHE = RESULTS / "continual_cache"

PRESETS: dict[str, dict] = {
    # Seconds to minutes: 2 img/cls, 2 models, 600 train / 200 test images per domain.
    "smoke": {"ipc": 2, "models": 2, "epochs": 20, "width": 8, "train_size": 600, "test_size": 200,
              "methods": ("random", "herding"), "method_preset": "smoke",
              "overrides": {"dc": {"outer_loop": 2, "inner_loop": 2}}},
    # 2 shared CPU cores: ConvNet width 32 (paper 128), 60 evaluation epochs per stage (paper
    # 300 + 1), no augmentation, 5 models per point; DM 200 iterations and DC 20 (their cpu
    # presets: 1000 / 100); full train and test splits.
    "cpu": {"ipc": 10, "models": 5, "epochs": 60, "width": 32, "train_size": None, "test_size": None,
            "methods": ("random", "herding", "dm", "dc"), "method_preset": "cpu",
            "overrides": {"dm": {"iterations": 200}, "dc": {"iterations": 20}}},
    # The published protocol (a GPU): ConvNet width 128, 300 epochs, 10 models.
    "paper": {"ipc": 10, "models": 10, "epochs": 300, "width": 128, "train_size": None, "test_size": None,
              "methods": ("random", "herding", "dm", "dc"), "method_preset": "paper", "overrides": {}},
}
CLASS_PRESETS: dict[str, dict] = {
    # Seconds: the embedded 8x8 digits in 5 stages of 2 classes, 2 img/cls, 2 models.
    "smoke": {"dataset": "digits", "classes_per_stage": 2, "ipc": 2, "models": 2, "epochs": 20, "width": 8,
              "methods": ("random", "herding"), "method_preset": "smoke", "overrides": {}},
    # CIFAR-10 in 5 stages of 2 classes on 2 shared CPU cores: as the domain cpu preset (ConvNet
    # width 32, 60 epochs per stage, no augmentation, 5 models per point, 10 img/cls); DM
    # 200 iterations per stage (its cpu preset: 1000).
    "cpu": {"dataset": "cifar10", "classes_per_stage": 2, "ipc": 10, "models": 5, "epochs": 60, "width": 32,
            "methods": ("random", "herding", "dm"), "method_preset": "cpu",
            "overrides": {"dm": {"iterations": 200}}},
}
KD = {"temperature": 2.0, "kd_weight": 1.0}
"""E2E's distillation temperature; the two terms weighted equally."""

DSA_DOMAIN = {"digits28": "digits", "svhn_cropped": "svhn"}
"""Registry name -> the name the methods' per-dataset defaults know (DSA strategy without flips)."""


def load_domain(name: str, shape: tuple, data_dir, train_size, test_size) -> continual.Task:
    """A domain as a :class:`~jaxdd.continual.Task`, resized / channel-repeated to ``shape``."""
    ds = data.load_dataset(name, data_dir)

    def fit(x):
        if x.shape[1:3] != shape[:2]:
            x = jax.image.resize(x, (x.shape[0], *shape[:2], x.shape[3]), "linear")
        if x.shape[3] != shape[2]:
            x = jnp.repeat(x, shape[2], axis=3)
        return x

    def first(x, y, n):
        return (x, y) if n is None else (x[:n], y[:n])

    x_tr, y_tr = first(ds.x_train, ds.y_train, train_size)
    x_te, y_te = first(ds.x_test, ds.y_test, test_size)
    return continual.Task(name, fit(x_tr), y_tr, fit(x_te), y_te)


def registry_builder(method: str, preset: str, model, dataset: str, overrides: dict) -> continual.MemoryBuilder:
    """A memory builder that runs the registered ``method`` (its ``preset`` defaults + ``overrides``)."""
    spec = get_method(method)

    def build(key, images, labels, num_classes, ipc):
        config = resolve_config(spec, preset, ipc, DSA_DOMAIN.get(dataset, dataset), overrides, num_classes)
        request = DistillRequest(images=images, labels=labels, num_classes=num_classes, model=model, ipc=ipc,
                                 preset=preset, key=key, config=config, dataset=dataset)
        made = spec.make(request)
        if isinstance(made, IterativeMethod):
            synset = made.to_synset(distill.run(made, jax.random.fold_in(key, 1), progress=False))
        else:
            synset = made if isinstance(made, SynSet) else made[0]  # a SynSet or (SynSet, run dict)
        return synset.images, synset.labels

    return build


def class_tasks(name: str, data_dir, classes_per_stage: int) -> list[continual.Task]:
    """``name``'s classes in label order, ``classes_per_stage`` per task (:func:`~jaxdd.continual.class_split_tasks`)."""
    ds = data.load_dataset(name, data_dir)
    num_classes = data.DATASETS[name].num_classes
    if num_classes % classes_per_stage:
        raise SystemExit(f"{name} has {num_classes} classes, not a multiple of --classes-per-stage {classes_per_stage}")
    splits = [tuple(range(c, c + classes_per_stage)) for c in range(0, num_classes, classes_per_stage)]
    return continual.class_split_tasks(ds.x_train, ds.y_train, ds.x_test, ds.y_test, splits)


def seen_accuracy(task_accs: np.ndarray, test_sizes) -> np.ndarray:
    """(S, K) accuracy on the union of the test sets of tasks 0..s after stage s.

    The test-size-weighted mean of ``task_accs`` (S, S, K) over the seen tasks, which counts every
    seen test image once (``CL_DM.py``'s measure; the unweighted mean where all tasks have as many
    test images, as CIFAR-10's 2-class tasks).
    """
    seen = np.tril(np.ones((len(test_sizes),) * 2)) * np.asarray(test_sizes, float)
    return np.einsum("st,stk->sk", seen, np.nan_to_num(task_accs)) / seen.sum(1)[:, None]


def memories_for(method, tasks, datasets, preset, model, tag, seed) -> list[continual.Memory]:
    """The method's memory of every task, read from / written to the cache; ``datasets``: the
    registry name of each task's data (per-dataset method defaults)."""
    key = jax.random.fold_in(jax.random.key(seed), 0)  # as continual.build_memories
    out = []
    for s, (task, dataset) in enumerate(zip(tasks, datasets)):
        path = CACHE / f"{tag}_{method}_stage{s}.npz"
        if path.is_file():
            with np.load(path) as f:
                out.append(continual.Memory(jnp.asarray(f["images"]), jnp.asarray(f["labels"])))
            continue
        started = time.perf_counter()
        build = registry_builder(method, preset["method_preset"], model, dataset, preset["overrides"].get(method, {}))
        memory = continual.build_task_memory(jax.random.fold_in(key, s), build, task, preset["ipc"])
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez(path.with_suffix(".tmp.npz"), images=np.asarray(memory.images), labels=np.asarray(memory.labels),
                 seconds=time.perf_counter() - started)
        path.with_suffix(".tmp.npz").rename(path)
        print(f"{method} memory of {task.name}: {time.perf_counter() - started:.0f} s", flush=True)
        out.append(memory)
    return out


def resumed_runs(path: Path, args, num_models: int, methods: list[str]) -> list[dict]:
    """The runs of ``path`` (a ``_full`` results file) of methods not in ``methods``, each with the
    command that ran it; a ``SystemExit`` naming both when that file was made with another preset,
    seed or number of models. Every method's memory and networks depend only on the seed, so a
    run kept is the one a single invocation with all methods would have produced."""
    if not path.is_file():
        return []
    previous = json.loads(path.read_text())
    made = (previous.get("preset"), previous.get("seed"), previous.get("continual", {}).get("num_models"))
    if made != (args.preset, args.seed, num_models):
        raise SystemExit(f"--resume: {path} was made with preset, seed, models = {made}, not "
                         f"{(args.preset, args.seed, num_models)}; run without --resume to replace it")
    commands = previous.get("run_commands", {})
    return [{**run, "command": commands.get(f"{run['method']}_kd{int(run['kd'])}", previous["command"]),
             "task_accs": previous["task_accs"][f"{run['method']}_kd{int(run['kd'])}"]}
            for run in previous["runs"] if run["method"] not in methods]


def plot(runs: list[dict], sequence: list[str], ylabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(sequence)), 4))
    stages = np.arange(1, len(sequence) + 1)
    for i, method in enumerate(dict.fromkeys(r["method"] for r in runs)):
        for run in (r for r in runs if r["method"] == method):
            acc = 100 * np.asarray(run["stage_accs"])
            ax.errorbar(stages, acc.mean(1), acc.std(1), color=f"C{i}", ls="-" if run["kd"] else "--", marker="o",
                        capsize=3, label=f"{method} {'w/ KD' if run['kd'] else 'w/o KD'}")
    ax.set_xticks(stages, [f"T{s}\n{n}" for s, n in zip(stages, sequence)])
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(runs: list[dict], sequence: list[str]) -> str:
    head = " | ".join(f"T{s + 1} ({n})" for s, n in enumerate(sequence))
    lines = [f"| memory | KD | {head} |", "|---|---|" + "---|" * len(sequence)]
    for run in runs:
        acc = 100 * np.asarray(run["stage_accs"])
        cells = " | ".join(f"{m:.1f} +- {s:.1f}" for m, s in zip(acc.mean(1), acc.std(1)))
        lines.append(f"| {run['method']} | {'yes' if run['kd'] else 'no'} | {cells} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="domain", choices=("domain", "class"),
                        help="domain: a sequence of datasets; class: one dataset's classes split into stages")
    parser.add_argument("--preset", default="smoke", choices=sorted(PRESETS))
    parser.add_argument("--sequence", default=None,
                        help="domain: comma-separated registry names (default digits28,mnist,usps); "
                             "class: one registry name (default: the preset's)")
    parser.add_argument("--classes-per-stage", type=int, default=None, help="class mode (default: the preset's)")
    parser.add_argument("--methods", default=None, help="comma-separated registered methods (default: the preset's)")
    parser.add_argument("--models", type=int, default=None)
    parser.add_argument("--fresh-start", action="store_true",
                        help="a fresh network at every stage (CL_DM.py) instead of training on the previous one")
    parser.add_argument("--kd-on", default="all", choices=("all", "old"),
                        help="the images the KD term acts on: every image of the batch, or the earlier "
                             "stages' memories only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--resume", action="store_true",
                        help="keep the other methods' runs of the results file (same preset, seed and models)")
    args = parser.parse_args(argv)
    if args.mode == "domain":
        preset = PRESETS[args.preset]
        names = (args.sequence or "digits28,mnist,usps").split(",")
        shape = data.DATASETS[names[0]].image_shape
        tasks = [load_domain(n, shape, args.data_dir, preset["train_size"], preset["test_size"]) for n in names]
        datasets, sequence = names, [n.replace("digits28", "digits") for n in names]
        tag = f"{args.preset}_{'-'.join(names)}_ipc{preset['ipc']}_seed{args.seed}"
        ylabel, title = "mean test accuracy on seen domains (%)", " -> ".join(sequence)
        measure = "Mean over the domains seen after each stage of the test accuracy (%) on each domain"
    else:
        if args.preset not in CLASS_PRESETS:
            parser.error(f"--mode class has presets {', '.join(CLASS_PRESETS)}")
        preset = CLASS_PRESETS[args.preset]
        dataset = args.sequence or preset["dataset"]
        if dataset not in data.DATASETS:
            parser.error(f"--mode class takes one registered dataset, got {dataset!r}")
        per_stage = args.classes_per_stage or preset["classes_per_stage"]
        shape = data.DATASETS[dataset].image_shape
        tasks = class_tasks(dataset, args.data_dir, per_stage)
        datasets, sequence = [dataset] * len(tasks), [t.name for t in tasks]
        tag = f"class_{args.preset}_{dataset}_{len(tasks)}x{per_stage}_ipc{preset['ipc']}_seed{args.seed}"
        ylabel, title = "test accuracy on seen classes (%)", f"{dataset}, {len(tasks)} stages of {per_stage} classes"
        measure = "Test accuracy (%) on the test images of all classes seen after each stage (one head over all classes)"
    memory_tag = tag  # memories do not depend on how the networks are trained
    tag += ("_fresh" if args.fresh_start else "") + ("_kdold" if args.kd_on == "old" else "")
    methods = args.methods.split(",") if args.methods else list(preset["methods"])
    num_models = args.models or preset["models"]
    model = models.get_model("ConvNet", shape, 10, width=preset["width"])
    protocol = evaluate.get_protocol("dc", epochs=preset["epochs"])
    test_sizes = [int(t.x_test.shape[0]) for t in tasks]
    default = args.mode == "domain" and args.preset == "cpu" and names == ["digits28", "mnist", "usps"]
    name = "continual" if default and not args.fresh_start and args.kd_on == "all" else f"continual_{tag}"
    kept = resumed_runs(RESULTS / f"{name}_full.json", args, num_models, methods) if args.resume else []
    runs = []
    for method in methods:
        memories = memories_for(method, tasks, datasets, preset, model, memory_tag, args.seed)
        for kd in (False, True):
            path = CACHE / f"{tag}_{method}_kd{int(kd)}_m{num_models}.json"
            if path.is_file():
                runs.append(json.loads(path.read_text()))
                continue
            started = time.perf_counter()
            config = continual.ContinualConfig(num_models=num_models, kd=kd, warm_start=not args.fresh_start,
                                               kd_old_only=args.kd_on == "old", **KD)
            result = continual.train_sequence(jax.random.key(args.seed), model, tasks, memories, protocol, config)
            stage_accs = result.stage_accs if args.mode == "domain" else seen_accuracy(result.task_accs, test_sizes)
            run = {"method": method, "kd": kd, "command": command_line(), "stage_accs": stage_accs.tolist(),
                   "task_accs": np.where(np.isnan(result.task_accs), None, result.task_accs).tolist(),
                   "seconds": round(time.perf_counter() - started, 1)}
            path.write_text(json.dumps(run) + "\n")
            runs.append(run)
            final = 100 * stage_accs[-1]
            print(f"{method} kd={kd}: final {final.mean():.1f} +- {final.std():.1f} % ({run['seconds']} s)", flush=True)
    runs = kept + runs
    summary = {"mode": args.mode, "sequence": sequence, "ipc": preset["ipc"], "measure": measure,
               "runs": [{"method": r["method"], "kd": r["kd"], "stage_accs": r["stage_accs"]} for r in runs]}
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_json(f"{name}_full", {
        **summary, "test_sizes": test_sizes,
        "task_accs": {f"{r['method']}_kd{int(r['kd'])}": r["task_accs"] for r in runs},
        "run_commands": {f"{r['method']}_kd{int(r['kd'])}": r["command"] for r in runs},
        "protocol": protocol, "network": {"arch": "ConvNet", "width": preset["width"]},
        "continual": {**KD, "num_models": num_models, "warm_start": not args.fresh_start, "kd_on": args.kd_on},
        "preset": args.preset, "method_overrides": preset["overrides"], "seed": args.seed,
    })
    text = (f"# Continual learning ({title}, {preset['ipc']} img/cls, preset {args.preset})\n\n"
            f"{measure}, mean +- std over {num_models} models.\n\n{table(runs, sequence)}\n\n"
            + "\n".join(commands_markdown(runs)) + "\n")
    (RESULTS / f"{name}.md").write_text(text)
    plot(runs, sequence, ylabel, RESULTS / f"{name}.png")
    print(text)


if __name__ == "__main__":
    main()
