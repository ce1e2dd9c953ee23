"""Peak memory of a DC outer iteration for CIFAR-100 at 10 img/cls (issue 14: it must fit 24 GB).

The reference's sizes: ConvNet-128 (depth 3, instance norm) on 32x32x3 images, 100 classes,
10 synthetic images and a real batch of 256 images per class, noise initialisation. The real
images are random normal (memory does not depend on pixel values; there is no offline CIFAR-100
here). The outer iteration runs with ``--outer-loop 2 --inner-loop 1`` by default instead of the
reference's 10 x 50: the ``lax.scan`` body (one matching step over all classes, then the inner
training) is the same program whatever the loop counts, so its peak memory is too, and two
matching steps already take minutes on 2 CPU cores.

    python -m benchmarks.cifar100_memory                     # class_chunk from the memory budget
    python -m benchmarks.cifar100_memory --class-chunk 100   # all classes at once, for comparison

Writes ``benchmarks/results/cifar100_dc_memory-<machine>-<date>.json`` and ``.md`` (a run with a
different ``--class-chunk`` adds its row to that day's file).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
NUM_CLASSES, IMAGE_SHAPE = 100, (32, 32, 3)


def measure(ipc: int, batch_real: int, outer_loop: int, inner_loop: int, class_chunk) -> dict:
    """Builds and runs one DC outer iteration; its chunk, times and this process's peak RSS."""
    import jax
    import jax.numpy as jnp

    from jaxdd import models
    from jaxdd.methods import dc

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((NUM_CLASSES * batch_real,) + IMAGE_SHAPE, dtype=np.float32))
    y = jnp.asarray(np.repeat(np.arange(NUM_CLASSES, dtype=np.int32), batch_real))
    convnet = models.get_model("ConvNet", IMAGE_SHAPE, NUM_CLASSES, width=128)
    config = dc.DCConfig(num_classes=NUM_CLASSES, ipc=ipc, batch_real=batch_real, init="noise",
                         outer_loop=outer_loop, inner_loop=inner_loop, class_chunk=class_chunk)
    method = dc.build(convnet, x, y, config)
    chunk = dc.class_chunk(convnet, (NUM_CLASSES, ipc) + IMAGE_SHAPE, (NUM_CLASSES, batch_real) + IMAGE_SHAPE, config)
    state = method.init(jax.random.key(0))
    started = time.perf_counter()
    compiled = jax.jit(method.step, donate_argnums=0).lower(state, method.real_data, jax.random.key(1)).compile()
    compile_s = time.perf_counter() - started
    started = time.perf_counter()
    state, metrics = compiled(state, method.real_data, jax.random.key(1))
    jax.block_until_ready((state, metrics))
    return {"class_chunk": chunk, "class_chunk_flag": class_chunk, "compile_s": round(compile_s, 1),
            "iteration_s": round(time.perf_counter() - started, 1),
            "finite": bool(np.isfinite(np.asarray(state.images)).all()),
            "rss_before_bytes": rss_before, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def markdown(record: dict) -> str:
    lines = [f"# DC outer iteration, CIFAR-100 sizes: {record['machine']}, {record['date']}", "",
             f"ConvNet-128 on 32x32x3, 100 classes, {record['ipc']} img/cls, real batch {record['batch_real']} "
             f"per class, outer_loop {record['outer_loop']}, inner_loop {record['inner_loop']} (the scan body of "
             "the reference's 10 x 50 iteration; its peak memory does not depend on the loop counts); random "
             f"normal inputs; {record['cpu_count']} CPUs, {record['host_memory_bytes'] / 2**30:.0f} GiB host "
             "memory. Peak RSS = `ru_maxrss` of the process (imports and the 25,600 real images included).", "",
             "| class_chunk (flag -> used) | peak RSS (GiB) | compile (s) | iteration (s) | images finite | command |",
             "|---|---|---|---|---|---|"]
    for run in record["runs"]:
        flag = "auto" if run["class_chunk_flag"] is None else run["class_chunk_flag"]
        lines.append(f"| {flag} -> {run['class_chunk']} | {run['peak_rss_bytes'] / 2**30:.2f} | {run['compile_s']} | "
                     f"{run['iteration_s']} | {run['finite']} | `{run['command']}` |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--batch-real", type=int, default=256)
    parser.add_argument("--outer-loop", type=int, default=2)
    parser.add_argument("--inner-loop", type=int, default=1)
    parser.add_argument("--class-chunk", type=int, default=None, help="default: from the memory budget")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import jax
    import psutil

    from benchmarks.run import machine_tag

    command = "python -m benchmarks.cifar100_memory" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if k != "out" and v != parser.get_default(k))
    run = {**measure(args.ipc, args.batch_real, args.outer_loop, args.inner_loop, args.class_chunk), "command": command}
    machine, date = machine_tag(jax.devices(), jax.default_backend()), datetime.date.today().isoformat()
    path = args.out / f"cifar100_dc_memory-{machine}-{date}.json"
    sizes = {"ipc": args.ipc, "batch_real": args.batch_real, "outer_loop": args.outer_loop, "inner_loop": args.inner_loop}
    record = {"machine": machine, "date": date, "cpu_count": os.cpu_count(),
              "host_memory_bytes": psutil.virtual_memory().total, **sizes, "runs": []}
    if path.exists():
        previous = json.loads(path.read_text())
        if all(previous.get(k) == v for k, v in sizes.items()):
            record["runs"] = [r for r in previous["runs"] if r["class_chunk_flag"] != args.class_chunk]
    record["runs"].append(run)
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    path.with_suffix(".md").write_text(markdown(record))
    print(markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
