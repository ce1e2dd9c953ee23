"""The DC paper's cross-architecture table: sets condensed with one network, trained on another.

MNIST, 1 img/cls, DC. Rows: the architecture used for condensation; columns: the architecture
trained on the set under the 'dc' protocol (K fresh models each). Writes
``experiments/results/dc_cross_arch_<preset>.{json,md}`` with the paper's numbers beside ours.

    python -m experiments.dc_cross_arch --preset smoke
    python -m experiments.dc_cross_arch --preset cpu --data-dir /work/shared/data
    # add rows to a finished table (the cells already there are kept, each with its command):
    python -m experiments.dc_cross_arch --preset cpu --condense ConvNet MLP LeNet --resume --data-dir /work/shared/data
    python -m experiments.dc_cross_arch --preset paper --data-dir DATA   # a GPU
"""

from __future__ import annotations

import argparse
import time

import jax

from experiments.common import RESULTS, command_line, commands_markdown, pct, resumed_file_cells, write_json
from jaxdd import data, distill, evaluate, models
from jaxdd.methods import DistillRequest, config_to_dict, get_method, resolve_config

ARCHS = ("MLP", "ConvNet", "LeNet", "AlexNet", "VGG11", "ResNet18")
PAPER = {  # DC paper Table 2: rows condensed with, columns evaluated on
    "MLP": (70.5, 63.9, 77.3, 70.9, 53.2, 80.9),
    "ConvNet": (69.6, 91.7, 85.3, 85.1, 83.4, 90.0),
    "LeNet": (71.0, 90.3, 85.0, 84.7, 80.3, 89.0),
    "AlexNet": (72.1, 87.5, 84.0, 82.7, 81.2, 88.9),
    "VGG": (70.3, 90.1, 83.9, 83.4, 81.7, 89.1),
    "ResNet": (73.6, 91.6, 86.4, 85.4, 83.4, 89.4),
}
PAPER_ROW = dict(zip(ARCHS, PAPER.values()))

PRESETS: dict[str, dict] = {
    # Seconds on the embedded 8x8 digits (tests): two small networks.
    "smoke": {"dataset": "digits", "condense": ("ConvNet", "MLP"), "evaluate": ("ConvNet", "MLP"),
              "arch_kwargs": {"ConvNet": {"width": 16, "depth": 2}, "MLP": {"width": 32}},
              "models": 3, "epochs": 50, "test_size": None},
    # 2 CPU cores, about 15 minutes a row: the ConvNet (width 16), MLP and LeNet rows; 100
    # evaluation epochs, 5 models per cell, the first 1000 test images. The AlexNet-, VGG- and
    # ResNet-condensed rows are the paper preset's (DC through them is hours a row on a CPU).
    # MLP and LeNet condense with the reference's lr_img 0.1: DC's cpu preset's 1.0 was chosen on
    # ConvNet (instance norm) and, through these norm-free networks, grows the images to +-170
    # (MLP) and +-17 (LeNet) in 150 iterations, against +-9 and +-4 at 0.1 (real images: std 1).
    "cpu": {"dataset": "mnist", "condense": ("ConvNet", "MLP", "LeNet"), "evaluate": ARCHS,
            "arch_kwargs": {"ConvNet": {"width": 16}}, "models": 5, "epochs": 100, "test_size": 1000,
            "condense_overrides": {"MLP": {"lr_img": 0.1}, "LeNet": {"lr_img": 0.1}}},
    # The published protocol.
    "paper": {"dataset": "mnist", "condense": ARCHS, "evaluate": ARCHS, "arch_kwargs": {},
              "models": 100, "epochs": None, "test_size": None},
}


def resumed_cross_cells(path, seed: int, num_models: int) -> dict[tuple[str, str], dict]:
    """The cells of a results file by (condensed with, evaluated on), each naming its command.

    Row ``i`` of ``--condense`` is distilled with key ``fold_in(seed, i)``, so keep the rows
    already in the file first and in their order: a kept cell is then the one a single run
    would produce."""
    return resumed_file_cells(path, seed, num_models, key=lambda c: (c["condensed_with"], c["evaluated_on"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smoke", choices=sorted(PRESETS))
    parser.add_argument("--condense", nargs="+", default=None)
    parser.add_argument("--evaluate", nargs="+", default=None)
    parser.add_argument("--models", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--resume", action="store_true", help="keep the results file's cells (same seed and models)")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    condense = args.condense or preset["condense"]
    targets = args.evaluate or preset["evaluate"]
    num_models = args.models or preset["models"]

    dataset = data.load_dataset(preset["dataset"], data.resolve_data_dir(args.data_dir))
    info = dataset.info
    x_test, y_test = dataset.x_test, dataset.y_test
    if preset["test_size"]:
        x_test, y_test = x_test[: preset["test_size"]], y_test[: preset["test_size"]]
    protocol = evaluate.get_protocol("dc", preset["dataset"], epochs=preset["epochs"])
    key = jax.random.key(args.seed)

    def model_of(arch):
        return models.get_model(arch, info.image_shape, info.num_classes, **preset["arch_kwargs"].get(arch, {}))

    name = f"dc_cross_arch_{args.preset}"
    cells = resumed_cross_cells(RESULTS / f"{name}.json", args.seed, num_models) if args.resume else {}
    for i, source in enumerate(condense):
        if all((source, target) in cells for target in targets):
            continue
        started = time.perf_counter()
        overrides = preset.get("condense_overrides", {}).get(source, {})
        config = resolve_config(get_method("dc"), args.preset, 1, preset["dataset"], overrides, info.num_classes)
        request = DistillRequest(
            images=dataset.x_train, labels=dataset.y_train, num_classes=info.num_classes, model=model_of(source),
            ipc=1, preset=args.preset, key=jax.random.fold_in(key, i), dataset=preset["dataset"], arch=source,
            config=config,
        )
        method = get_method("dc").make(request)
        synset = method.to_synset(distill.run(method, jax.random.fold_in(key, 100 + i), progress=False))
        distill_time = time.perf_counter() - started
        for j, target in enumerate(targets):
            started = time.perf_counter()
            result = evaluate.evaluate_synset(
                jax.random.fold_in(key, 1000 + 10 * i + j), model_of(target), synset.images, synset.labels,
                x_test, y_test, protocol, num_models,
            )
            known = preset["dataset"] == "mnist" and source in PAPER_ROW and target in ARCHS
            paper = PAPER_ROW[source][ARCHS.index(target)] if known else None
            cells[source, target] = {
                "condensed_with": source, "evaluated_on": target, **result.as_dict(), "paper": paper,
                "distill_time_s": round(distill_time, 1), "eval_time_s": round(time.perf_counter() - started, 1),
                "condense_config": config_to_dict(config), "command": command_line()}
            print(f"{source} -> {target}: {pct(result.mean, result.std)} % (paper {paper})", flush=True)

    record = {"preset": args.preset, "preset_config": preset, "dataset": preset["dataset"], "protocol": protocol,
              "models": num_models, "seed": args.seed, "test_images": int(x_test.shape[0]),
              "cells": list(cells.values())}
    write_json(name, record)
    rows = list(dict.fromkeys(c["condensed_with"] for c in cells.values()))
    lines = [f"# DC cross-architecture, {preset['dataset']} 1 img/cls, preset `{args.preset}`", "",
             *commands_markdown(list(cells.values())), "",
             f"Accuracy in % over {num_models} models per cell (paper in brackets); rows condensed with, columns evaluated on.", "",
             "| condensed with | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
    for source in rows:
        row = []
        for target in targets:
            c = cells.get((source, target))
            if c is None:
                row.append("-")
                continue
            row.append(pct(c["mean"], c["std"]) + (f" ({c['paper']})" if c["paper"] is not None else ""))
        lines.append(f"| {source} | " + " | ".join(row) + " |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
