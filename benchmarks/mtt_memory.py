"""Peak memory of one compiled MTT outer step against the number of student steps N.

For N in {10, 20, 40, 80} and the unroll's ``checkpoint`` in {none ("plain": every student step's
residuals kept for the backward pass), sqrt (the default: O(sqrt N) parameter copies, each step
recomputed)}, the jitted :func:`jaxdd.methods.mtt.mtt_step` is lowered and compiled (not run) and
XLA's compiled memory analysis is read: **peak bytes = temp + argument + output**, deterministic
for a given program and backend (the arguments are the state and the expert buffer; the outputs
the new state and metrics). Compile times are wall times on a shared machine.

Setting: MNIST shapes (28x28x1), ConvNet (width 128, depth 3, instance norm; about 320k
parameters), 10 img/cls (100 synthetic images, every student step on all of them as in the
reference), DSA, one expert with 3 recorded epochs (max_start_epoch 1, expert_epochs 2), random
data (accuracy is not measured).

Usage::

    python -m benchmarks.mtt_memory          # benchmarks/results/mtt_memory.{json,md,png}
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = (10, 20, 40, 80)


def measure(syn_steps: int, checkpoint: str, width: int, ipc: int) -> dict:
    """Compiles one MTT outer step and returns its memory analysis."""
    import jax
    import jax.numpy as jnp

    from jaxdd import augment, experts
    from jaxdd.methods import mtt
    from jaxdd.models import get_model

    model = get_model("ConvNet", (28, 28, 1), 10, width=width)
    keys = jax.random.split(jax.random.key(0), 3)
    trajectory = jax.tree.map(lambda *a: jnp.stack(a)[None], *[model.init(k) for k in keys])  # 1 expert, epochs 0..2
    x = jax.random.normal(jax.random.key(1), (20 * ipc, 28, 28, 1))
    y = jnp.arange(20 * ipc, dtype=jnp.int32) % 10
    config = mtt.MTTConfig(iterations=1, syn_steps=syn_steps, expert_epochs=2, max_start_epoch=1,
                           dsa_strategy=augment.dsa_strategy("mnist"), checkpoint=checkpoint, ipc=ipc)
    method = mtt.build(model, x, y, experts.Trajectories(trajectory, {}), config)
    state = method.init(jax.random.key(2))
    started = time.perf_counter()
    compiled = jax.jit(method.step, donate_argnums=0).lower(state, method.real_data, jax.random.key(3)).compile()
    compile_s = time.perf_counter() - started
    mem = compiled.memory_analysis()
    temp, arg, out = int(mem.temp_size_in_bytes), int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
    return {"syn_steps": syn_steps, "checkpoint": checkpoint, "temp_bytes": temp, "argument_bytes": arg,
            "output_bytes": out, "peak_bytes": temp + arg + out, "compile_s": round(compile_s, 1)}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    steps = result["syn_steps"]
    ax.plot(steps, [b / 2**20 for b in result["plain_peak_bytes"]], "o-", label="plain unroll (checkpoint='none')")
    ax.plot(steps, [b / 2**20 for b in result["constant_peak_bytes"]], "o-", label="checkpointed unroll ('sqrt')")
    ax.set(xlabel="student steps N (syn_steps)", ylabel="temp + argument + output (MiB)",
           title="MTT outer step, compiled memory (XLA)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(steps, [str(s) for s in steps])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--ipc", type=int, default=10)
    args = parser.parse_args(argv)
    import jax

    rows = []
    for steps in args.steps:
        for mode in ("none", "sqrt"):
            rows.append(measure(steps, mode, args.width, args.ipc))
            print(json.dumps(rows[-1]), flush=True)
    by = {(r["syn_steps"], r["checkpoint"]): r for r in rows}
    result = {
        "syn_steps": list(args.steps),
        "plain_peak_bytes": [by[(s, "none")]["peak_bytes"] for s in args.steps],
        "constant_peak_bytes": [by[(s, "sqrt")]["peak_bytes"] for s in args.steps],
        "measure": "XLA compiled memory analysis of the jitted MTT outer step: temp + argument + output bytes",
        "constant_ratio_last_over_first": round(by[(args.steps[-1], "sqrt")]["peak_bytes"] / by[(args.steps[0], "sqrt")]["peak_bytes"], 3),
        "plain_ratio_last_over_first": round(by[(args.steps[-1], "none")]["peak_bytes"] / by[(args.steps[0], "none")]["peak_bytes"], 3),
        "rows": rows,
        "setting": {"arch": f"ConvNet width {args.width} depth 3", "image_shape": [28, 28, 1], "ipc": args.ipc,
                    "synthetic_images": 10 * args.ipc, "batch_syn": "all", "dsa": True, "experts": 1, "expert_epochs_stored": 3},
        "command": ("python -m benchmarks.mtt_memory " + " ".join(sys.argv[1:])).strip(),
        "machine": platform.platform(), "devices": [str(d) for d in jax.devices()],
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mtt_memory.json").write_text(json.dumps(result, indent=1))
    lines = ["| syn_steps | plain peak (MiB) | checkpointed peak (MiB) | plain temp | checkpointed temp | compile s (plain / ckpt) |",
             "|---|---|---|---|---|---|"]
    for s in args.steps:
        p, c = by[(s, "none")], by[(s, "sqrt")]
        lines.append(f"| {s} | {p['peak_bytes'] / 2**20:.1f} | {c['peak_bytes'] / 2**20:.1f} | {p['temp_bytes'] / 2**20:.1f} | "
                     f"{c['temp_bytes'] / 2**20:.1f} | {p['compile_s']} / {c['compile_s']} |")
    md = (f"MTT outer step, {result['setting']['arch']}, 28x28x1, {10 * args.ipc} synthetic images, DSA, "
          f"{result['devices'][0]}. Peak = XLA compiled temp + argument + output bytes.\n\n" + "\n".join(lines) +
          f"\n\nCheckpointed peak at N={args.steps[-1]} over N={args.steps[0]}: {result['constant_ratio_last_over_first']}x "
          f"(plain: {result['plain_ratio_last_over_first']}x). Compile times measured while other jobs shared the 2 cores.\n\n"
          f"Command: `{result['command']}`\n")
    (RESULTS / "mtt_memory.md").write_text(md)
    plot(result, RESULTS / "mtt_memory.png")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
