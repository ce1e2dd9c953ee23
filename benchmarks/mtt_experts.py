"""Expert-training throughput (experts x epochs per second): N experts vmapped vs one by one.

All ways run :func:`jaxdd.experts.epoch_fn` (one epoch of SGD with DSA for a stack of experts,
jitted once): *vmapped* trains the N experts as one stacked pytree vmapped together
(``model_batch=N``) in one call per epoch; *sequential in one program* maps over the same stack
one expert at a time inside that one call (``model_batch=1``, jaxdd's default on CPU); *one by
one* calls the program with a stack of 1, N times per epoch. Compilation is excluded (one
warm-up epoch each); the figure is the median over ``--epochs`` timed epochs.

Setting (small, for a CPU): random 28x28x1 images (accuracy is not measured), ConvNet width 16,
batch 256, SGD 0.01, DSA without flip.

Usage::

    python -m benchmarks.mtt_experts         # benchmarks/results/mtt_experts.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per way (after one warm-up epoch)")
    args = parser.parse_args(argv)
    import jax
    import jax.numpy as jnp

    from jaxdd import experts
    from jaxdd.models import get_model

    model = get_model("ConvNet", (28, 28, 1), 10, width=args.width)
    protocol = experts.expert_protocol("dsa_noflip")
    x = jax.random.normal(jax.random.key(0), (args.images, 28, 28, 1))
    y = jnp.arange(args.images, dtype=jnp.int32) % 10
    keys = jax.random.split(jax.random.key(1), args.experts)
    vmapped_step = experts.epoch_fn(model, protocol, args.experts)
    sequential_step = experts.epoch_fn(model, protocol, 1)

    def vmapped(params, epoch):
        return jax.block_until_ready(vmapped_step(keys, params, epoch, x, y))

    def sequential(params, epoch):
        return jax.block_until_ready(sequential_step(keys, params, epoch, x, y))

    def one_by_one(params, epoch):
        out = [vmapped_step(keys[i:i + 1], jax.tree.map(lambda a: a[i:i + 1], params), epoch, x, y) for i in range(args.experts)]
        return jax.block_until_ready(jax.tree.map(lambda *a: jnp.concatenate(a), *out))

    rows = {}
    load_before = round(os.getloadavg()[0], 2)
    for name, run in (("vmapped", vmapped), ("sequential_in_one_program", sequential), ("one_by_one", one_by_one)):
        params = jax.vmap(model.init)(keys)
        params = run(params, 0)  # compile + warm-up
        times = []
        for epoch in range(1, args.epochs + 1):
            started = time.perf_counter()
            params = run(params, epoch)
            times.append(time.perf_counter() - started)
        median = statistics.median(times)
        rows[name] = {"seconds_per_epoch_all_experts": round(median, 3), "epoch_times_s": [round(t, 3) for t in times],
                      "expert_epochs_per_s": round(args.experts / median, 4)}
        print(name, json.dumps(rows[name]), flush=True)
    result = {
        **rows,
        "speedup_vmapped_over_one_by_one": round(rows["vmapped"]["expert_epochs_per_s"] / rows["one_by_one"]["expert_epochs_per_s"], 3),
        "speedup_sequential_in_one_program_over_one_by_one": round(
            rows["sequential_in_one_program"]["expert_epochs_per_s"] / rows["one_by_one"]["expert_epochs_per_s"], 3),
        "setting": {"experts": args.experts, "images": args.images, "arch": f"ConvNet width {args.width}",
                    "batch": protocol.batch_size, "augment": protocol.augment},
        "command": ("python -m benchmarks.mtt_experts " + " ".join(sys.argv[1:])).strip(),
        "machine": platform.platform(), "devices": [str(d) for d in jax.devices()],
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "load_average_1min": [load_before, round(os.getloadavg()[0], 2)],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mtt_experts.json").write_text(json.dumps(result, indent=1))
    md = (f"Expert training, {args.experts} experts, {args.images} images 28x28x1, ConvNet width {args.width}, "
          f"batch 256, DSA, {result['devices'][0]}, {os.cpu_count()} cores (1-minute load average "
          f"{result['load_average_1min'][0]} at the start, {result['load_average_1min'][1]} at the end)\n\n"
          "| way | s per epoch (all experts) | experts x epochs per s |\n|---|---|---|\n"
          + "\n".join(f"| {k} | {v['seconds_per_epoch_all_experts']} | {v['expert_epochs_per_s']} |" for k, v in rows.items())
          + f"\n\nvmapped / one by one: {result['speedup_vmapped_over_one_by_one']}x\n\nCommand: `{result['command']}`\n")
    (RESULTS / "mtt_experts.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
