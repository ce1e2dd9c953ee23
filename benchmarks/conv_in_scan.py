"""Why jaxdd's CPU convolution is an im2col matmul: XLA:CPU convolutions inside ``lax.scan``.

Times 100 SGD steps of a width-128 ConvNet (10 digits images) as a ``lax.scan`` and as a Python
loop of jitted steps, with XLA's convolution and with :func:`jaxdd.models.patch_conv`, side by
side in one run (medians of ``--repeats``). Writes ``benchmarks/results/conv_in_scan-<host>-<date>.{json,md}``.

    python -m benchmarks.conv_in_scan
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import time
from pathlib import Path

import jax

from jaxdd import data, models
from jaxdd.io import versions
from jaxdd.train import loss_fn

RESULTS = Path(__file__).resolve().parent / "results"


def measure(impl: str, steps: int, repeats: int) -> dict:
    os.environ["JAXDD_CONV"] = impl
    digits = data.load_dataset("digits")
    x, y = digits.x_train[:10], digits.y_train[:10]
    model = models.get_model("ConvNet", digits.info.image_shape, 10)
    params = model.init(jax.random.key(0))
    grad = jax.grad(lambda p: loss_fn(model.apply(p, x), y))

    def sgd(p):
        return jax.tree.map(lambda a, g: a - 0.01 * g, p, grad(p))

    scanned = jax.jit(lambda p: jax.lax.scan(lambda q, _: (sgd(q), None), p, None, length=steps)[0])
    stepped = jax.jit(sgd)
    jax.block_until_ready(scanned(params))
    jax.block_until_ready(stepped(params))
    scan_times, loop_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(scanned(params))
        scan_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        p = params
        for _ in range(steps):
            p = stepped(p)
        jax.block_until_ready(p)
        loop_times.append(time.perf_counter() - start)
    return {"scan_s": statistics.median(scan_times), "loop_s": statistics.median(loop_times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = {impl: measure(impl, args.steps, args.repeats) for impl in ("xla", "patches")}
    record = {
        "command": f"python -m benchmarks.conv_in_scan --steps {args.steps} --repeats {args.repeats}",
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "versions": versions(),
        "results": rows,
        "scan_speedup_patches_over_xla": round(rows["xla"]["scan_s"] / rows["patches"]["scan_s"], 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"conv_in_scan-{socket.gethostname()}-{datetime.date.today().isoformat()}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# ConvNet SGD steps: lax.scan vs Python loop, XLA conv vs im2col conv",
        "",
        f"`{record['command']}` (backend {record['backend']}; medians of {args.repeats})",
        "",
        f"| convolution | {args.steps} steps in lax.scan (s) | {args.steps} jitted steps in a Python loop (s) |",
        "|---|---|---|",
    ]
    lines += [f"| {impl} | {r['scan_s']:.2f} | {r['loop_s']:.2f} |" for impl, r in rows.items()]
    lines += ["", f"im2col speed-up inside scan: {record['scan_speedup_patches_over_xla']}x."]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
