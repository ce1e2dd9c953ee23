"""The DC paper's Table 3: DC against DD on DD's own architectures.

DC condenses and is evaluated with LeNet on MNIST and AlexCifarNet on CIFAR-10 (the networks of
DD's Table 1), at 1 and 10 img/cls, under the 'dc' protocol (K fresh networks of the same
architecture). DD's column is DD's own random-initialisation result (100 images, 10 steps x 3
epochs), which ``experiments.dd_table`` measures; RESULTS.md sets the two side by side. Writes
``experiments/results/dc_vs_dd_<preset>.{json,md}`` (rewritten after every cell; ``--resume``
keeps the cells already there).

    python -m experiments.dc_vs_dd --preset smoke
    python -m experiments.dc_vs_dd --preset cpu --data-dir /work/shared/data
    python -m experiments.dc_vs_dd --preset cpu --datasets mnist --ipcs 10 --resume --data-dir /work/shared/data
    python -m experiments.dc_vs_dd --preset paper --data-dir DATA   # a GPU
"""

from __future__ import annotations

import argparse
import time

import jax

from experiments.common import RESULTS, command_line, commands_markdown, pct, resumed_file_cells, write_json
from jaxdd import data, distill, evaluate, models
from jaxdd.methods import DistillRequest, config_to_dict, get_method, resolve_config

PAPER = {  # DC paper Table 3: (dataset, ipc) -> (DD, DC); whole dataset: LeNet 99.5, AlexCifarNet 83.1
    ("mnist", 1): (None, "85.0 +- 1.6"),
    ("mnist", 10): ("79.5 +- 8.1", "93.9 +- 0.6"),
    ("cifar10", 1): (None, "24.2 +- 0.9"),
    ("cifar10", 10): ("36.8 +- 1.2", "39.1 +- 1.2"),
}
ARCH_OF = {"digits": "LeNet", "mnist": "LeNet", "cifar10": "AlexCifarNet"}
"""DD's network for each dataset."""

PRESETS: dict[str, dict] = {
    # Seconds on the embedded 8x8 digits (tests).
    "smoke": {"datasets": ("digits",), "ipcs": (1,), "models": 3, "epochs": 30, "overrides": {}},
    # 2 CPU cores: DC's cpu preset, but the reference's image step 0.1 (the cpu preset's 1.0 was
    # chosen on ConvNet, whose instance norm absorbs the images' scale; through the norm-free
    # LeNet and AlexCifarNet it grows them tenfold: experiments/dc_cross_arch.py); 10 models,
    # 300 evaluation epochs.
    "cpu": {"datasets": ("mnist", "cifar10"), "ipcs": (1, 10), "models": 10, "epochs": 300,
            "overrides": {"lr_img": 0.1}},
    # The published protocol: DC's paper preset, protocol epochs, 100 models.
    "paper": {"datasets": ("mnist", "cifar10"), "ipcs": (1, 10), "models": 100, "epochs": None, "overrides": {}},
}
DATASET_IDS = ("digits", "mnist", "cifar10")
"""Cell key: fold_in(fold_in(seed key, dataset id), ipc)."""


def markdown(record: dict) -> str:
    cells = record["cells"]
    lines = [f"# DC against DD on DD's architectures (DC Table 3), preset `{record['preset']}`", "",
             *commands_markdown(cells), "",
             f"DC's test accuracy in % over {record['models']} models per cell. DD (paper) is DD's random-init number; "
             "jaxdd's own DD run is experiments/dd_table.py's random_10x3 part (RESULTS.md sets the two side by side).",
             "",
             "| dataset | network | img/cls | DC (ours) | DC (paper) | DD (paper) | distillation s |",
             "|---|---|---|---|---|---|---|"]
    for c in cells:
        dd_paper, dc_paper = PAPER.get((c["dataset"], c["ipc"]), (None, None))
        lines.append(f"| {c['dataset']} | {c['arch']} | {c['ipc']} | {pct(c['mean'], c['std'])} | {dc_paper or '-'} | "
                     f"{dd_paper or '-'} | {c['distill_time_s']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smoke", choices=sorted(PRESETS))
    parser.add_argument("--datasets", nargs="+", default=None, choices=sorted(ARCH_OF))
    parser.add_argument("--ipcs", type=int, nargs="+", default=None)
    parser.add_argument("--models", type=int, default=None, help="evaluation models per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--resume", action="store_true", help="keep the cells already in the results file")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    num_models = args.models or preset["models"]
    name = f"dc_vs_dd_{args.preset}"
    cells = resumed_file_cells(RESULTS / f"{name}.json", args.seed, num_models,
                               key=lambda c: (c["dataset"], c["ipc"])) if args.resume else {}
    key = jax.random.key(args.seed)
    spec = get_method("dc")

    for dataset_name in args.datasets or preset["datasets"]:
        dataset = data.load_dataset(dataset_name, data.resolve_data_dir(args.data_dir))
        info, arch = dataset.info, ARCH_OF[dataset_name]
        model = models.get_model(arch, info.image_shape, info.num_classes)
        protocol = evaluate.get_protocol("dc", dataset_name, epochs=preset["epochs"])
        for ipc in args.ipcs or preset["ipcs"]:
            if (dataset_name, ipc) in cells:
                continue
            cell_key = jax.random.fold_in(jax.random.fold_in(key, DATASET_IDS.index(dataset_name)), ipc)
            config = resolve_config(spec, args.preset, ipc, dataset_name, preset["overrides"], info.num_classes)
            request = DistillRequest(images=dataset.x_train, labels=dataset.y_train, num_classes=info.num_classes,
                                     model=model, ipc=ipc, preset=args.preset, key=cell_key, dataset=dataset_name,
                                     arch=arch, config=config)
            started = time.perf_counter()
            method = spec.make(request)
            synset = method.to_synset(distill.run(method, jax.random.fold_in(cell_key, 1), progress=False))
            distill_time = time.perf_counter() - started
            started = time.perf_counter()
            result = evaluate.evaluate_synset(jax.random.fold_in(cell_key, 2), model, synset.images, synset.labels,
                                              dataset.x_test, dataset.y_test, protocol, num_models)
            cells[dataset_name, ipc] = {
                "dataset": dataset_name, "arch": arch, "ipc": ipc, **result.as_dict(),
                "paper_dc": PAPER.get((dataset_name, ipc), (None, None))[1], "protocol": protocol,
                "config": config_to_dict(config), "distill_time_s": round(distill_time, 1),
                "eval_time_s": round(time.perf_counter() - started, 1), "command": command_line()}
            print(f"{dataset_name} {arch} ipc {ipc}: DC {pct(result.mean, result.std)} % "
                  f"(paper {cells[dataset_name, ipc]['paper_dc']}), distillation {distill_time:.0f} s", flush=True)
            record = {"preset": args.preset, "preset_config": preset, "models": num_models, "seed": args.seed,
                      "cells": sorted(cells.values(), key=lambda c: (DATASET_IDS.index(c["dataset"]), c["ipc"]))}
            write_json(name, record)
            (RESULTS / f"{name}.md").write_text(markdown(record))


if __name__ == "__main__":
    main()
