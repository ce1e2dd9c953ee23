"""Seconds per DC outer iteration: jaxdd (one jitted program) vs an eager PyTorch loop.

Both sides run the same algorithm (DC paper Algorithm 1, the reference's ``main.py``): a fresh
ConvNet (instance norm, 3x3 convs, the first padded by 3 for 28x28 inputs), ``outer_loop``
matching steps, each over the C classes (real batch ``batch_real`` per class, layer-wise cosine
distance ignoring 1-D parameters, SGD momentum 0.5 on the images) followed by ``inner_loop``
epochs of plain SGD on the synthetic set (except after the last step). The PyTorch side is the
reference's style: a Python loop over classes with ``torch.autograd.grad(create_graph=True)``
(:func:`benchmarks.torch_ref.dc_iteration`).
Each side is warmed up (compilation for JAX) with one iteration, then ``--iterations`` are timed.
PyTorch is a benchmark-only dependency (``pip install torch==2.13.0``); without it only the JAX
column is measured. Writes ``benchmarks/results/dc_speed-<host>-<date>.{json,md}``.

    python -m benchmarks.dc_speed --data-dir DATA                         # paper sizes (a GPU)
    nice -n 10 python -m benchmarks.dc_speed --data-dir DATA --batch-real 16 --outer-loop-10 2 --inner-loop-10 5
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jaxdd import data, models
from jaxdd.io import versions
from jaxdd.methods import dc

RESULTS = Path(__file__).resolve().parent / "results"


def jax_seconds(model, images, labels, config: dc.DCConfig, iterations: int) -> list[float]:
    """Wall seconds of each timed DC iteration in jaxdd (after one warm-up iteration)."""
    method = dc.build(model, images, labels, config)
    step = jax.jit(method.step, donate_argnums=(0,))
    state = method.init(jax.random.key(0))
    state, _ = step(state, method.real_data, jax.random.key(1))
    jax.block_until_ready(state)
    times = []
    for i in range(iterations):
        started = time.perf_counter()
        state, metrics = step(state, method.real_data, jax.random.key(2 + i))
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - started)
    return times


def torch_seconds(images: np.ndarray, labels: np.ndarray, config: dc.DCConfig, width: int, iterations: int, threads: int):
    """Wall seconds of each timed DC iteration in eager PyTorch (after one warm-up iteration)."""
    import torch

    from benchmarks import torch_ref

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    outer_loop, inner_loop = config.loops
    iteration = torch_ref.dc_iteration(
        images, labels, config.num_classes, config.ipc, outer_loop=outer_loop, inner_loop=inner_loop,
        batch_real=config.batch_real, width=width, lr_img=config.lr_img, momentum_img=config.momentum_img,
        lr_net=config.lr_net, batch_train=config.batch_train,
    )
    iteration()
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        iteration()
        times.append(time.perf_counter() - started)
    return times, torch.__version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--ipcs", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--batch-real", type=int, default=256)
    parser.add_argument("--outer-loop-10", type=int, default=None, help="outer_loop at 10 img/cls (default 10)")
    parser.add_argument("--inner-loop-10", type=int, default=None, help="inner_loop at 10 img/cls (default 50)")
    parser.add_argument("--iterations", type=int, default=2, help="timed iterations per side (after one warm-up)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="PyTorch threads (1 is the faster on a loaded 2-core CPU; benchmarks.run tries both)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    dataset = data.load_dataset(args.dataset, data.resolve_data_dir(args.data_dir))
    info = dataset.info
    model = models.get_model("ConvNet", info.image_shape, info.num_classes, width=args.width)
    images, labels = np.asarray(dataset.x_train), np.asarray(dataset.y_train)
    rows = []
    torch_version = None
    for ipc in args.ipcs:
        outer = args.outer_loop_10 if ipc >= 10 else None
        inner = args.inner_loop_10 if ipc >= 10 else None
        config = dc.DCConfig(
            num_classes=info.num_classes, ipc=ipc, batch_real=args.batch_real, outer_loop=outer, inner_loop=inner
        )
        row = {"ipc": ipc, "outer_loop": config.loops[0], "inner_loop": config.loops[1], "batch_real": args.batch_real}
        row["jax_s"] = jax_seconds(model, dataset.x_train, dataset.y_train, config, args.iterations)
        print(f"ipc {ipc}: jax {np.mean(row['jax_s']):.2f} s/iteration", flush=True)
        if not args.no_torch:
            try:
                row["torch_s"], torch_version = torch_seconds(images, labels, config, args.width, args.iterations, args.torch_threads)
                print(f"ipc {ipc}: torch {np.mean(row['torch_s']):.2f} s/iteration", flush=True)
            except ImportError:
                print("torch is not installed: only the JAX side was measured", flush=True)
        rows.append(row)

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M")
    name = f"dc_speed-{socket.gethostname()}-{stamp}"
    device = str(jax.devices()[0])
    record = {
        "command": "python -m benchmarks.dc_speed " + " ".join(sys.argv[1:]),
        "versions": {**versions(), "torch": torch_version}, "platform": platform.platform(), "device": device,
        "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()),
        "dataset": args.dataset, "width": args.width, "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"# DC seconds per outer iteration ({args.dataset}, ConvNet width {args.width}, device {device})",
        "",
        f"Command: `{record['command']}`; load average at the end {record['load_average']}.",
        "",
        "| img/cls | outer / inner loop | real batch | jaxdd (s) | eager PyTorch (s) | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        j = float(np.mean(row["jax_s"]))
        t = float(np.mean(row["torch_s"])) if "torch_s" in row else None
        lines.append(
            f"| {row['ipc']} | {row['outer_loop']} / {row['inner_loop']} | {row['batch_real']} | {j:.2f} | "
            + (f"{t:.2f} | {t / j:.1f}x |" if t else "- | - |")
        )
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
