"""The DC paper's Table 1 (plus DSA and DM): dataset x img/cls x method, with the paper beside us.

Methods: random real, herding, k-center, forgetting (coresets on the features of the ConvNet
trained on the full data, whose own test accuracy is the "whole dataset" column), DC, DSA, DM.
Each set is evaluated by K fresh networks under the protocol of its paper ('dc' for DC and the
coresets, 'dsa' with the dataset's DSA strategy for DSA and DM); per-model accuracies, protocols,
configs, seeds, versions and wall times go to ``experiments/results/dc_table_<preset>.json``
(rewritten after every cell; ``--resume`` skips cells already there) and a markdown table to
``dc_table_<preset>.md``.

    python -m experiments.dc_table --preset smoke
    nice -n 10 python -m experiments.dc_table --preset cpu --data-dir /work/shared/data
    python -m experiments.dc_table --preset paper --data-dir DATA   # a GPU
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp

from experiments.common import RESULTS, command_line, commands_markdown, pct, resumed_cells, write_json
from jaxdd import augment, coreset, data, distill, evaluate, models
from jaxdd.methods import DistillRequest, IterativeMethod, get_method
from jaxdd.methods.coresets import FEATURE_EPOCHS

PAPER = {
    # Random / Herding / K-Center / Forgetting / DC (DC paper Table 1), DSA (DSA paper), DM: none.
    ("mnist", 1): {"random": 64.9, "herding": 89.2, "kcenter": 89.3, "forgetting": 35.5, "dc": 91.7, "dsa": 88.7},
    ("mnist", 10): {"random": 95.1, "herding": 93.7, "kcenter": 84.4, "forgetting": 68.1, "dc": 97.4, "dsa": 97.8},
    ("mnist", 50): {"random": 97.9, "herding": 94.9, "kcenter": 97.4, "forgetting": 88.2, "dc": 98.8, "dsa": 99.2},
    ("fashion_mnist", 1): {"random": 51.4, "herding": 67.0, "kcenter": 66.9, "forgetting": 42.0, "dc": 70.5, "dsa": 70.6},
    ("fashion_mnist", 10): {"random": 73.8, "herding": 71.1, "kcenter": 54.7, "forgetting": 53.9, "dc": 82.3, "dsa": 84.6},
    ("fashion_mnist", 50): {"random": 82.5, "herding": 71.9, "kcenter": 68.3, "forgetting": 55.0, "dc": 83.6, "dsa": 88.7},
    ("cifar10", 1): {"random": 14.4, "herding": 21.5, "kcenter": 21.5, "forgetting": 13.5, "dc": 28.3, "dsa": 28.8, "dm": 26.0},
    ("cifar10", 10): {"random": 26.0, "herding": 31.6, "kcenter": 14.7, "forgetting": 23.3, "dc": 44.9, "dsa": 52.1, "dm": 48.9},
    ("cifar10", 50): {"random": 43.4, "herding": 40.4, "kcenter": 27.0, "forgetting": 23.3, "dc": 53.9, "dsa": 60.6, "dm": 63.0},
}
WHOLE = {"mnist": 99.6, "fashion_mnist": 93.5, "cifar10": 84.8}

PRESETS: dict[str, dict] = {
    # Seconds on the embedded 8x8 digits (tests).
    "smoke": {
        "datasets": ("digits",), "ipcs": (1,), "methods": ("random", "dc", "dsa", "dm", "herding", "kcenter"),
        "arch": {"width": 16, "depth": 2}, "models": 3, "eval_epochs": {1: 50, 10: 20}, "test_size": None,
    },
    # About 1.5 hours on 2 CPU cores. Deviations from the papers: ConvNet width 16 (not 128);
    # 10 evaluation models (not 100); 300 evaluation epochs (the DC protocol's 1000 on MNIST);
    # the feature network of the coresets trained 1 epoch; the distillation presets 'cpu' of
    # jaxdd.methods.dc / dm (fewer iterations at 10 img/cls, smaller real batches, real init).
    "cpu": {
        "datasets": ("mnist", "fashion_mnist"), "ipcs": (1, 10),
        "methods": ("random", "dc", "dsa", "dm", "herding", "kcenter"),
        "arch": {"width": 16}, "models": 10, "eval_epochs": {1: 300, 10: 300}, "test_size": None,
    },
    # The published protocol (a GPU): width 128, 100 models (5 x 20), protocol epochs.
    "paper": {
        "datasets": ("mnist", "fashion_mnist", "cifar10"), "ipcs": (1, 10, 50),
        "methods": ("random", "herding", "kcenter", "forgetting", "dc", "dsa", "dm"),
        "arch": {"width": 128}, "models": 100, "eval_epochs": {}, "test_size": None,
    },
}

PROTOCOL_OF = {"dc": "dc", "dsa": "dsa", "dm": "dsa"}
METHOD_IDS = {"random": 0, "herding": 1, "kcenter": 2, "forgetting": 3, "dc": 4, "dsa": 5, "dm": 6}
PRESET_DATASETS = ("cifar10", "digits", "fashion_mnist", "mnist")
"""Key derivation: fold_in(seed key, dataset id), then ipc, then the method id."""


def protocol_for(method: str, dataset: str, ipc: int, preset: dict) -> evaluate.Protocol:
    """'dc' (with its MNIST augmentation) or 'dsa' with the dataset's DSA strategy."""
    name = PROTOCOL_OF.get(method, "dc")
    overrides = {"epochs": preset["eval_epochs"].get(ipc)}
    if name == "dsa":
        overrides["augment"] = "dsa_noflip" if "flip" not in augment.dsa_strategy(dataset) else "dsa"
    return evaluate.get_protocol(name, dataset, **overrides)


def load(path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smoke", choices=sorted(PRESETS))
    parser.add_argument("--datasets", nargs="+", default=None)
    parser.add_argument("--ipcs", type=int, nargs="+", default=None)
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--models", type=int, default=None, help="evaluation models per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--resume", action="store_true", help="keep the cells already in the results file")
    parser.add_argument("--name", default=None, help="results file stem (default dc_table_<preset>)")
    args = parser.parse_args()

    preset = dict(PRESETS[args.preset])
    datasets = args.datasets or preset["datasets"]
    ipcs = args.ipcs or preset["ipcs"]
    method_names = args.methods or preset["methods"]
    num_models = args.models or preset["models"]
    name = args.name or f"dc_table_{args.preset}"
    previous = load(RESULTS / f"{name}.json") if args.resume else {}
    cells = resumed_cells(previous)
    whole = dict(previous.get("whole_dataset", {}))
    key = jax.random.key(args.seed)

    def save():
        record = {
            "preset": args.preset, "preset_config": {k: (dict(v) if isinstance(v, dict) else v) for k, v in preset.items()},
            "seed": args.seed, "models": num_models, "whole_dataset": whole,
            "cells": sorted(cells.values(), key=lambda c: (c["dataset"], c["ipc"], c["method"])),
        }
        write_json(name, record)
        (RESULTS / f"{name}.md").write_text(markdown(record))

    loaded: dict = {}
    feature_cache: dict = {}

    def dataset_parts(dataset_name):
        if dataset_name not in loaded:
            dataset = data.load_dataset(dataset_name, data.resolve_data_dir(args.data_dir))
            x_test, y_test = dataset.x_test, dataset.y_test
            if preset["test_size"]:
                x_test, y_test = x_test[: preset["test_size"]], y_test[: preset["test_size"]]
            info = dataset.info
            model = models.get_model("ConvNet", info.image_shape, info.num_classes, **preset["arch"])
            loaded[dataset_name] = (dataset, x_test, y_test, model)
        return loaded[dataset_name]

    def trained_features(dataset_name, data_key):
        """Features and forgetting counts of the ConvNet trained on all data (once per dataset)."""
        if dataset_name not in feature_cache:
            dataset, x_test, y_test, model = dataset_parts(dataset_name)
            epochs = FEATURE_EPOCHS[args.preset]
            params, counts = jax.jit(coreset.train_and_count_forgetting, static_argnums=(1, 4))(
                jax.random.fold_in(data_key, 7), model, dataset.x_train, dataset.y_train, epochs
            )
            features = coreset.embed_all(model, params, dataset.x_train)
            acc = float(evaluate.accuracy(model, params, x_test, y_test))
            whole[dataset_name] = {"acc": acc, "epochs": epochs, "note": "the coresets' feature network",
                                   "command": command_line()}
            print(f"{dataset_name}: feature network ({epochs} epochs on all data) test {100 * acc:.1f} %", flush=True)
            feature_cache[dataset_name] = (features, counts)
        return feature_cache[dataset_name]

    for ipc in ipcs:
        for dataset_name in datasets:
            data_key = jax.random.fold_in(key, PRESET_DATASETS.index(dataset_name) if dataset_name in PRESET_DATASETS else 99)
            for method_name in method_names:
                if (dataset_name, ipc, method_name) in cells:
                    continue
                dataset, x_test, y_test, model = dataset_parts(dataset_name)
                info = dataset.info
                cell_key = jax.random.fold_in(jax.random.fold_in(data_key, ipc), METHOD_IDS[method_name])
                started = time.perf_counter()
                config: dict = {}
                if method_name in ("herding", "kcenter", "forgetting"):
                    features, counts = trained_features(dataset_name, data_key)
                    if method_name == "forgetting":
                        synset = coreset.forgetting(cell_key, counts, dataset.x_train, dataset.y_train, info.num_classes, ipc)
                    else:
                        select = coreset.herding if method_name == "herding" else coreset.kcenter
                        synset = select(features, dataset.x_train, dataset.y_train, info.num_classes, ipc)
                    config = {"feature_epochs": FEATURE_EPOCHS[args.preset]}
                elif method_name == "random":
                    synset = coreset.random_real(cell_key, dataset.x_train, dataset.y_train, info.num_classes, ipc)
                else:
                    request = DistillRequest(
                        images=dataset.x_train, labels=dataset.y_train, num_classes=info.num_classes, model=model,
                        ipc=ipc, preset=args.preset, key=cell_key, dataset=dataset_name, arch="ConvNet",
                    )
                    method = get_method(method_name).make(request)
                    assert isinstance(method, IterativeMethod)
                    state = distill.run(method, jax.random.fold_in(cell_key, 1), progress=False)
                    synset = method.to_synset(state)
                    config = method.config
                distill_time = time.perf_counter() - started
                protocol = protocol_for(method_name, dataset_name, ipc, preset)
                started = time.perf_counter()
                result = evaluate.evaluate_synset(
                    jax.random.fold_in(cell_key, 2), model, synset.images, synset.labels, x_test, y_test, protocol, num_models
                )
                eval_time = time.perf_counter() - started
                paper = PAPER.get((dataset_name, ipc), {}).get(method_name)
                cells[(dataset_name, ipc, method_name)] = {
                    "dataset": dataset_name, "ipc": ipc, "method": method_name, **result.as_dict(),
                    "paper": paper, "protocol": protocol, "config": config, "test_images": int(x_test.shape[0]),
                    "arch": {"name": "ConvNet", **preset["arch"]},
                    "distill_time_s": round(distill_time, 1), "eval_time_s": round(eval_time, 1),
                    "command": command_line(),
                    "finite": bool(jnp.all(jnp.isfinite(synset.images))),
                }
                print(
                    f"{dataset_name} ipc {ipc} {method_name:10s} {pct(result.mean, result.std)} % "
                    f"(paper {paper}) distil {distill_time:.0f} s eval {eval_time:.0f} s",
                    flush=True,
                )
                save()
    save()


def markdown(record: dict) -> str:
    """Table: rows dataset x ipc, columns methods, 'ours (paper)'."""
    cells = record["cells"]
    methods = [m for m in ("random", "herding", "kcenter", "forgetting", "dc", "dsa", "dm") if any(c["method"] == m for c in cells)]
    rows = sorted({(c["dataset"], c["ipc"]) for c in cells})
    lines = [
        f"# DC Table 1 at preset `{record['preset']}`",
        "",
        *commands_markdown(cells),
        "",
        f"Test accuracy in % (mean +- std over {record['models']} evaluation models; paper value in brackets).",
        "",
        "| dataset | img/cls | " + " | ".join(methods) + " | whole dataset |",
        "|---|---|" + "---|" * (len(methods) + 1),
    ]
    by_key = {(c["dataset"], c["ipc"], c["method"]): c for c in cells}
    for dataset_name, ipc in rows:
        entries = []
        for m in methods:
            c = by_key.get((dataset_name, ipc, m))
            if c is None:
                entries.append("-")
                continue
            paper = f" ({c['paper']})" if c["paper"] is not None else ""
            entries.append(f"{pct(c['mean'], c['std'])}{paper}")
        w = record["whole_dataset"].get(dataset_name)
        whole = f"{100 * w['acc']:.1f} ({w['epochs']} ep; paper {WHOLE.get(dataset_name, '-')})" if w else "-"
        lines.append(f"| {dataset_name} | {ipc} | " + " | ".join(entries) + f" | {whole} |")
    lines += ["", "Protocols per cell (epochs / augmentation / test images) and wall times are in the JSON file."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
