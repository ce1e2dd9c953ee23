"""DD's Table 1 (Wang et al. 2018): distilled sets against real-image baselines, MNIST / LeNet and
CIFAR-10 / AlexCifarNet.

Rows (each a separate ``--part`` so that runs can go one at a time on a small machine):

- ``fixed_1x3``: fixed init, 10 images, 1 GD step x 3 epochs (the paper: 12.90% -> 93.76%).
- ``fixed_10x3``: fixed init, 100 images, 10 steps x 3 epochs (the paper: 96.6).
- ``random_10x3``: random init, 100 images, 10 x 3 (the paper: 79.5 +- 8.1).
- ``baselines``: random real, optimized real, k-means, average real (all trained with the same
  10 x 3 GD steps from random inits, fixed step size chosen on held-out *training* images), and
  1-NN with random real / k-means images (the paper: 68.6, 73.0, 76.4, 77.1, 71.5, 92.2).

Usage::

    python -m experiments.dd_table --preset cpu --data-dir /work/shared/data --part fixed_1x3
    python -m experiments.dd_table --preset cpu_cifar10 --data-dir /work/shared/data   # DD's CIFAR-10 rows
    python -m experiments.dd_table --report        # markdown table from the saved JSON files
    # the same part at another outer-step budget: evidence of what the budget costs, not a cell
    python -m experiments.dd_table --preset cpu_cifar10 --part fixed_10x3 --iterations 300 --data-dir DATA

Results: ``experiments/results/dd_table_<preset>_<part>.json`` and ``dd_table_<preset>.md``; with
``--iterations N``, ``experiments/results/evidence/dd_table_<preset>_<part>_steps<N>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import coreset, data, distill, models
from jaxdd.evaluate import evaluate_synset, get_protocol
from jaxdd.io import versions
from jaxdd.methods import DistillRequest, get_method, resolve_config
from jaxdd.train import CycledGD, accuracy
from jaxdd.types import SynSet

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("fixed_1x3", "fixed_10x3", "random_10x3", "baselines")

PRESETS = {
    # seconds: the embedded 8x8 digits
    "smoke": dict(dataset="digits", arch="LeNet", iterations={"fixed_1x3": 30, "fixed_10x3": 10, "random_10x3": 10},
                  decay_every=1000, real_batch=128, num_inits=1, eval_models=4, baseline_sets=2,
                  optimized_candidates=5, optimized_keep=1, val_size=300, lr_grid=(0.1, 0.3)),
    # tens of minutes on 2 shared CPU cores: real MNIST, LeNet, far fewer outer steps than the paper
    "cpu": dict(dataset="mnist", arch="LeNet", iterations={"fixed_1x3": 500, "fixed_10x3": 200, "random_10x3": 200},
                decay_every=10**9, real_batch=256, num_inits=1, eval_models=40, baseline_sets=5,
                optimized_candidates=20, optimized_keep=4, val_size=5000, lr_grid=(0.03, 0.1, 0.3, 1.0)),
    # the reference: 400 epochs of real batches of 1024, lr halved every 40 epochs, 200 test nets
    "paper": dict(dataset="mnist", arch="LeNet", iterations=None, decay_every=None, real_batch=1024, num_inits=1,
                  eval_models=200, baseline_sets=10, optimized_candidates=50, optimized_keep=10, val_size=10000,
                  lr_grid=(0.01, 0.03, 0.1, 0.3, 1.0)),
    # DD's CIFAR-10 row (AlexCifarNet, 100 images, 10 steps x 3 epochs) on 2 CPU cores: 100 outer
    # steps of real batches of 256 (the paper: 400 epochs of batches of 1024, about 20000 steps)
    "cpu_cifar10": dict(dataset="cifar10", arch="AlexCifarNet", parts=("fixed_10x3", "random_10x3", "baselines"),
                        iterations={"fixed_10x3": 100, "random_10x3": 100}, decay_every=10**9, real_batch=256,
                        num_inits=1, eval_models=20, baseline_sets=5, optimized_candidates=20, optimized_keep=4,
                        val_size=5000, lr_grid=(0.01, 0.03, 0.1, 0.3)),
}

PAPER_CIFAR10 = {"fixed_10x3": 54.03, "random_10x3": "36.8 +- 1.2", "random_real": "21.3 +- 1.5",
                 "optimized_real": "23.4 +- 1.3", "kmeans": "22.5 +- 3.1", "average_real": "22.3 +- 0.7",
                 "knn_random_real": "18.8 +- 1.3", "knn_kmeans": "29.4 +- 0.3"}
PAPER = {"fixed_1x3": 93.76, "fixed_10x3": 96.6, "random_10x3": "79.5 +- 8.1", "random_real": "68.6 +- 9.8",
         "optimized_real": "73.0 +- 7.6", "kmeans": "76.4 +- 9.5", "average_real": "77.1 +- 2.7",
         "knn_random_real": "71.5 +- 2.1", "knn_kmeans": "92.2 +- 0.1"}

RUNS = {"fixed_1x3": ("fixed", 1, 3, 1), "fixed_10x3": ("fixed", 10, 3, 10), "random_10x3": ("random", 10, 3, 10)}
"""part -> (init, steps, epochs, ipc)."""


def setup(preset: dict, data_dir):
    """Dataset and DD's LeNet (xavier-normal weights, zero biases: DD's init)."""
    ds = data.load_dataset(preset["dataset"], data_dir)
    info = data.DATASETS[preset["dataset"]]
    model = models.get_model(preset["arch"], info.image_shape, info.num_classes, init="dd")
    return ds, info, model


def run_dd(ds, info, model, preset: dict, preset_name: str, init: str, steps: int, epochs: int, ipc: int,
           iterations, seed: int, images=None, labels=None, theta0=None, extra_options=None):
    """Distils one DD set with the library's method and driver; returns (method, state, seconds)."""
    options = {"init": init, "steps": steps, "epochs": epochs, "real_batch": preset["real_batch"],
               "num_inits": preset["num_inits"]}
    if iterations is not None:
        options["iterations"] = iterations
    if preset["decay_every"] is not None:
        options["decay_every"] = preset["decay_every"]
    options.update(extra_options or {})
    spec = get_method("dd")
    dd_preset = "paper" if preset_name == "paper" else "cpu"
    config = resolve_config(spec, dd_preset, ipc, info.name, options, num_classes=info.num_classes)
    request = DistillRequest(images=ds.x_train if images is None else images,
                             labels=ds.y_train if labels is None else labels,
                             num_classes=info.num_classes, model=model, ipc=ipc, preset=dd_preset,
                             key=jax.random.key(seed), config=config, dataset=info.name, arch=preset["arch"])
    method = spec.make(request)
    if theta0 is not None:  # a given theta_0 (domain adaptation: a pre-trained network)
        base_init = method.init
        method = method._replace(init=lambda key: base_init(key)._replace(theta0=jax.tree.map(jnp.copy, theta0)))
    started = time.perf_counter()
    def log(step, metrics):
        if step % 50 == 0 or step == method.num_steps - 1:
            print(f"  dd {init} {steps}x{epochs} step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()),
                  file=sys.stderr, flush=True)

    state = distill.run(method, jax.random.key(seed), progress=False, on_step=log)
    jax.block_until_ready(state)
    return method, state, time.perf_counter() - started


def paper_numbers(dataset: str) -> dict:
    """DD Table 1's row for ``dataset`` (MNIST's also for the smoke digits)."""
    return PAPER_CIFAR10 if dataset == "cifar10" else PAPER


def pct(x: float) -> float:
    return round(100.0 * float(x), 2)


def dd_part(part: str, preset_name: str, data_dir, seed: int, iterations=None) -> dict:
    """One DD row: distil with the preset (``iterations`` outer steps if given), then test."""
    preset = PRESETS[preset_name]
    ds, info, model = setup(preset, data_dir)
    init, steps, epochs, ipc = RUNS[part]
    if iterations is None and preset["iterations"] is not None:
        iterations = preset["iterations"][part]
    method, state, seconds = run_dd(ds, info, model, preset, preset_name, init, steps, epochs, ipc, iterations, seed)
    synset = method.to_synset(state)
    protocol = get_protocol("dd")
    out = {"part": part, "init": init, "steps": steps, "epochs": epochs, "images": int(synset.images.shape[0]),
           "distill_seconds": round(seconds, 1), "config": method.config,
           "learned_step_sizes": np.asarray(synset.step_sizes).round(4).tolist(),
           "paper": paper_numbers(preset["dataset"])[part]}
    if init == "fixed":
        before = accuracy(model, state.theta0, ds.x_test, ds.y_test)
        res = evaluate_synset(jax.random.key(seed + 1), model, synset.images, synset.labels, ds.x_test, ds.y_test,
                              protocol, num_models=1, init_params=state.theta0, step_sizes=synset.step_sizes)
        out.update(accuracy_before=pct(before), accuracy=pct(res.mean), std=0.0)
    else:
        res = evaluate_synset(jax.random.key(seed + 1), model, synset.images, synset.labels, ds.x_test, ds.y_test,
                              protocol, num_models=preset["eval_models"], step_sizes=synset.step_sizes)
        out.update(accuracy=pct(res.mean), std=pct(res.std), eval_models=preset["eval_models"],
                   per_model=[pct(a) for a in res.accs])
    out["protocol"] = dataclasses.asdict(protocol)
    return out


def _kmeans_set(key, ds, info, ipc):
    """Per-class k-means centroids (``jaxdd.coreset.kmeans`` run on each class's own images)."""
    x, y = np.asarray(ds.x_train), np.asarray(ds.y_train)
    parts = [coreset.kmeans(jax.random.fold_in(key, c), jnp.asarray(x[y == c]), jnp.zeros(int((y == c).sum()), jnp.int32),
                            1, ipc).images for c in range(info.num_classes)]
    return SynSet(jnp.concatenate(parts), coreset.class_sorted_labels(info.num_classes, ipc))


def baselines_part(preset_name: str, data_dir, seed: int) -> dict:
    """DD's baselines under the same 10 x 3 GD steps from random inits, and the kNN classifiers."""
    preset = PRESETS[preset_name]
    ds, info, model = setup(preset, data_dir)
    c, ipc, steps, epochs = info.num_classes, 10, 10, 3
    key = jax.random.key(seed)
    # held-out *training* images for every choice (step size, optimized real); never the test set
    perm = jax.random.permutation(jax.random.fold_in(key, 99), ds.x_train.shape[0])
    val_idx, pool_idx = perm[: preset["val_size"]], perm[preset["val_size"]:]
    x_val, y_val = ds.x_train[val_idx], ds.y_train[val_idx]
    x_pool, y_pool = ds.x_train[pool_idx], ds.y_train[pool_idx]
    m = preset["eval_models"] // preset["baseline_sets"]

    def protocol(lr):
        return get_protocol("dd", lr=lr, trainer=CycledGD(steps=steps), epochs=epochs)

    def random_set(i):
        return coreset.random_real(jax.random.fold_in(key, 1000 + i), x_pool, y_pool, c, ipc)

    # the fixed step size: best mean accuracy of random real sets on the held-out training images
    lr_scores = {}
    for lr in preset["lr_grid"]:
        accs = [evaluate_synset(jax.random.fold_in(key, 2000 + i), model, *random_set(i)[:2], x_val, y_val,
                                protocol(lr), num_models=m).mean for i in range(preset["baseline_sets"])]
        lr_scores[lr] = float(np.mean(accs))
    lr = max(lr_scores, key=lr_scores.get)
    out = {"part": "baselines", "steps": steps, "epochs": epochs, "ipc": ipc, "fixed_lr": lr,
           "lr_validation_accuracy": {str(k): pct(v) for k, v in lr_scores.items()},
           "protocol": dataclasses.asdict(protocol(lr)), "paper": {k: v for k, v in paper_numbers(preset["dataset"]).items() if "_" in k and
                                                                  not k.startswith(("fixed", "random_10"))}}

    def test_sets(sets, tag):
        accs = np.concatenate([evaluate_synset(jax.random.fold_in(key, 3000 + i), model, s.images, s.labels,
                                               ds.x_test, ds.y_test, protocol(lr), num_models=m).accs
                               for i, s in enumerate(sets)])
        out[tag] = {"accuracy": pct(accs.mean()), "std": pct(accs.std()), "models": int(accs.size),
                    "sets": len(sets)}

    test_sets([random_set(i) for i in range(preset["baseline_sets"])], "random_real")

    # optimized real: the best optimized_keep of optimized_candidates random sets, scored on training data
    candidates = [coreset.random_real(jax.random.fold_in(key, 4000 + i), x_pool, y_pool, c, ipc)
                  for i in range(preset["optimized_candidates"])]
    scores = [evaluate_synset(jax.random.fold_in(key, 5000 + i), model, s.images, s.labels, x_val, y_val,
                              protocol(lr), num_models=m).mean for i, s in enumerate(candidates)]
    best = np.argsort(scores)[::-1][: preset["optimized_keep"]]
    test_sets([candidates[i] for i in best], "optimized_real")
    out["optimized_real"]["selection"] = (f"best {preset['optimized_keep']} of {preset['optimized_candidates']} "
                                          f"random sets by accuracy on {preset['val_size']} held-out training images")

    avg = coreset.class_mean(ds.x_train, ds.y_train, c, ipc)  # every step sees the 10 class means
    test_sets([avg], "average_real")
    out["average_real"]["note"] = "one set (deterministic); std over models"

    knn = [coreset.knn_accuracy(s.images, s.labels, ds.x_test, ds.y_test)
           for s in (random_set(i) for i in range(preset["baseline_sets"]))]
    out["knn_random_real"] = {"accuracy": pct(np.mean(knn)), "std": pct(np.std(knn)), "sets": len(knn)}

    km = [_kmeans_set(jax.random.fold_in(key, 6000 + i), ds, info, ipc) for i in range(preset["baseline_sets"])]
    test_sets(km, "kmeans")
    knn = [coreset.knn_accuracy(s.images, s.labels, ds.x_test, ds.y_test) for s in km]
    out["knn_kmeans"] = {"accuracy": pct(np.mean(knn)), "std": pct(np.std(knn)), "sets": len(knn)}
    return out


def provenance(args) -> dict:
    return {"command": "python -m experiments.dd_table " + " ".join(sys.argv[1:]), "preset": args.preset,
            "preset_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in PRESETS[args.preset].items()},
            "seed": args.seed, "versions": versions(), "machine": platform.platform(),
            "devices": [str(d) for d in jax.devices()], "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def _cell(entry) -> str:
    if entry is None:
        return "not run"
    if "missing" in entry:
        return "missing"
    return f"{entry['accuracy']:.1f}" + (f" +- {entry['std']:.1f}" if entry.get("std") else "")


COLUMNS = (("Fixed init, 10 img (1x3)", "fixed_1x3"), ("Fixed init, 100 img (10x3)", "fixed_10x3"),
           ("Random init (10x3)", "random_10x3"), ("Random real", "random_real"), ("Optimized real", "optimized_real"),
           ("k-means", "kmeans"), ("Average real", "average_real"), ("kNN random real", "knn_random_real"),
           ("kNN k-means", "knn_kmeans"))
"""(column title, part or baseline key) of the markdown table."""


def report(preset_name: str) -> str:
    """Markdown table from ``dd_table_<preset>_<part>.json``."""
    found = {}
    for part in PARTS:
        path = RESULTS / f"dd_table_{preset_name}_{part}.json"
        if path.exists():
            found[part] = json.loads(path.read_text())
    b = found.get("baselines", {})
    preset = PRESETS[preset_name]
    paper = paper_numbers(preset["dataset"])
    cols = [(title, found.get(part) if part in PARTS else b.get(part), paper[part]) for title, part in COLUMNS
            if part in paper]
    title = {"mnist": "MNIST", "cifar10": "CIFAR-10"}.get(preset["dataset"], preset["dataset"])
    lines = [f"{title}, {preset['arch']}, preset `{preset_name}` (test accuracy %, mean +- std over models)",
             "",
             "| | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|",
             "| jaxdd | " + " | ".join(_cell(c[1]) for c in cols) + " |",
             "| paper | " + " | ".join(str(c[2]) for c in cols) + " |", ""]
    for part, entry in found.items():
        lines.append(f"- `{part}`: `{entry['provenance']['command']}`"
                     + (f", {entry['distill_seconds']} s distillation" if "distill_seconds" in entry else "")
                     + (f", before training {entry['accuracy_before']}%" if "accuracy_before" in entry else "")
                     + (f", fixed baseline step size {entry['fixed_lr']}" if "fixed_lr" in entry else ""))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--part", choices=PARTS + ("all",), default="all")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", action="store_true", help="only write the markdown table")
    parser.add_argument("--iterations", type=int, default=None,
                        help="outer steps instead of the preset's (written under results/evidence/, not the table)")
    args = parser.parse_args(argv)
    if args.iterations is not None and (args.iterations < 1 or args.part in ("all", "baselines")):
        parser.error("--iterations takes a positive count and one distillation --part")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.report:
        for part in (PRESETS[args.preset].get("parts", PARTS) if args.part == "all" else (args.part,)):
            result = baselines_part(args.preset, args.data_dir, args.seed) if part == "baselines" else \
                dd_part(part, args.preset, args.data_dir, args.seed, args.iterations)
            result["provenance"] = provenance(args)
            path = RESULTS / f"dd_table_{args.preset}_{part}.json"
            if args.iterations is not None:
                path = RESULTS / "evidence" / f"dd_table_{args.preset}_{part}_steps{args.iterations}.json"
                path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps(result, indent=1, default=str))
            print(json.dumps({k: v for k, v in result.items() if k not in ("per_model", "config", "protocol",
                                                                          "provenance")}, default=str))
    if args.iterations is None:  # the table holds the preset's runs only
        table = report(args.preset)
        (RESULTS / f"dd_table_{args.preset}.md").write_text(table)
        print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
