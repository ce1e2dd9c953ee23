"""Evaluation throughput: ``evaluate_synset`` (K models, one jitted program) vs a Python loop.

Both sides train the same networks (same keys, same set, same protocol) and must report the
same accuracies; the ratio of wall times is the speed-up. A third measurement trains a group
of ``--vmap-group`` models fully vmapped together, to show what a vmapped model axis costs on
this backend (on XLA:CPU a conv vmapped over weights becomes a slow grouped convolution, which is
why ``evaluate_synset`` maps models sequentially on CPU). Writes
``benchmarks/results/eval_vmap-<host>-<date>.{json,md}``.

    python -m benchmarks.eval_vmap --models 100 --ipc 10 --epochs 300
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import socket
import statistics
import time
from pathlib import Path

import jax

from jaxdd import coreset, data, evaluate, models
from jaxdd.io import versions
from jaxdd.train import accuracy, train_on_set

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--arch", default="ConvNet")
    parser.add_argument("--width", type=int, default=32, help="ConvNet width")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--vmap-group", type=int, default=10, help="models in the fully vmapped group")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    dataset = data.load_dataset(args.dataset, data.resolve_data_dir(args.data_dir))
    info = dataset.info
    model = models.get_model(args.arch, info.image_shape, info.num_classes, width=args.width)
    protocol = evaluate.get_protocol("dc", args.dataset, epochs=args.epochs)
    synset = coreset.random_real(jax.random.key(0), dataset.x_train, dataset.y_train, info.num_classes, args.ipc)
    key = jax.random.key(1)

    started = time.perf_counter()
    vmapped = evaluate.evaluate_synset(key, model, synset.images, synset.labels, dataset.x_test, dataset.y_test, protocol, args.models)
    vmapped_first = time.perf_counter() - started
    print(f"evaluate_synset: {vmapped_first:.1f} s with compilation", flush=True)
    group = args.vmap_group
    evaluate.evaluate_synset(key, model, synset.images, synset.labels, dataset.x_test, dataset.y_test, protocol, group, model_batch=group)
    started = time.perf_counter()
    evaluate.evaluate_synset(key, model, synset.images, synset.labels, dataset.x_test, dataset.y_test, protocol, group, model_batch=group)
    group_compiled = time.perf_counter() - started
    print(f"{group} models fully vmapped: {group_compiled:.1f} s compiled", flush=True)

    one = jax.jit(lambda k: accuracy(model, train_on_set(k, model, synset.images, synset.labels, protocol), dataset.x_test, dataset.y_test))
    per_model, accs = [], []
    started = time.perf_counter()
    for index, model_key in enumerate(jax.random.split(key, args.models)):
        tick = time.perf_counter()
        accs.append(float(one(model_key)))
        per_model.append(time.perf_counter() - tick)
        if index % 10 == 9:
            print(f"  one by one: {index + 1}/{args.models} models, {time.perf_counter() - started:.0f} s", flush=True)
    loop_total = time.perf_counter() - started
    count = int(dataset.y_test.shape[0])
    same = [round(a * count) for a in accs] == [round(a * count) for a in vmapped.accs]
    record = {
        "command": "python -m benchmarks.eval_vmap " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "host": socket.gethostname(),
        "machine": {"platform": platform.platform(), "cpus": jax.local_device_count(), "devices": [str(d) for d in jax.devices()]},
        "versions": versions(),
        "config": {**vars(args), "protocol": protocol.name, "steps_per_model": protocol.total_steps(int(synset.images.shape[0]))},
        "model_batch_default": evaluate.default_model_batch(args.models),
        "evaluate_s_with_compile": round(vmapped_first, 2),
        "loop_s_total_with_compile": round(loop_total, 2),
        "loop_s_per_model_median": round(statistics.median(per_model[1:] or per_model), 3),
        "vmapped_group_models": group,
        "vmapped_group_s_compiled": round(group_compiled, 2),
        "vmapped_group_s_per_model": round(group_compiled / group, 3),
        "speedup_evaluate_vs_loop": round(loop_total / vmapped_first, 2),
        "same_accuracies": same,
        "mean_acc": vmapped.mean,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"eval_vmap-{socket.gethostname()}-{datetime.date.today().isoformat()}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(
        f"# Vmapped evaluation vs one-by-one\n\n`{record['command']}`\n\n"
        f"{args.models} x {args.arch}(width {args.width}) on {args.ipc} img/cls of {args.dataset}, {args.epochs} epochs, CPU: {platform.processor() or platform.machine()}\n\n"
        "| | wall time (s) |\n|---|---|\n"
        f"| `evaluate_synset`, {args.models} models in one program (model batch {record['model_batch_default']}), incl. compilation | {vmapped_first:.1f} |\n"
        f"| Python loop of {args.models} jitted single-model trainings, incl. one compilation | {loop_total:.1f} |\n"
        f"| one by one, median per model | {record['loop_s_per_model_median']:.2f} |\n"
        f"| {group} models fully vmapped together, compiled, per model | {record['vmapped_group_s_per_model']:.2f} |\n\n"
        f"Ratio loop / evaluate_synset: {record['speedup_evaluate_vs_loop']}x. Same accuracies: {same}.\n"
    )
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
