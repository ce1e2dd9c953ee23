"""Which convolution each paper-size step should trace: XLA's or the patch matmul, measured.

Runs the JAX side of :mod:`benchmarks.paper` benches in fresh processes with ``$JAXDD_CONV``
forced to each convolution in turn (alternating, ``--rounds`` times), and reports the median time
and peak resident memory of each. This is the measurement behind the per-call-site choice of
:meth:`jaxdd.types.Model.with_conv` (docs/ARCHITECTURE.md, Models).

    python -m benchmarks.conv_sites --data .data/bench/mnist.npz --benches dm_ipc10 eval_ipc1 dc_ipc1 --timeout 300

Writes ``benchmarks/results/conv_sites-<machine>-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics

from benchmarks.paper import NAMES, RESULTS, SIZES, default_sizes, run_side

IMPLS = ("patches", "xla")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benches", nargs="+", choices=NAMES, default=["dm_ipc10", "dc_ipc1", "eval_ipc1"])
    parser.add_argument("--sizes", choices=tuple(SIZES), default=None)
    parser.add_argument("--data", default=None)
    parser.add_argument("--rounds", type=int, default=1, help="processes per convolution and bench (alternating)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds after which a process is stopped")
    args = parser.parse_args(argv)
    import jax

    from benchmarks.run import machine_tag

    sizes = args.sizes or default_sizes()
    command = "python -m benchmarks.conv_sites " + " ".join(
        [f"--benches {' '.join(args.benches)}"] + ([f"--sizes {args.sizes}"] if args.sizes else [])
        + ([f"--data {args.data}"] if args.data else []) + ([f"--rounds {args.rounds}"] if args.rounds != 1 else [])
        + ([f"--timeout {args.timeout:g}"] if args.timeout else []))
    machine, date = machine_tag(jax.devices(), jax.default_backend()), datetime.date.today().isoformat()
    record = {"command": command, "sizes": sizes, "data": args.data or "random normal", "machine": machine,
              "date": date, "benches": {}}
    lines = [f"# Convolution per call site: {machine}, {date} (sizes '{sizes}')", "", f"`{command}`", "",
             "JAX side of each `benchmarks.paper` bench with `$JAXDD_CONV` forced; median seconds per call over "
             "the bench's repeats (all rounds pooled); peak RSS of the process.", "",
             "| bench | patches (s) | xla (s) | xla / patches time | patches peak RSS (GiB) | xla peak RSS (GiB) |",
             "|---|---|---|---|---|---|"]
    for name in args.benches:
        runs = {impl: [] for impl in IMPLS}
        for _ in range(args.rounds):
            for impl in IMPLS:
                # every convolution traced as impl; a much slower one need not run to its end
                runs[impl].append(run_side(name, "jax", sizes, args.data, {"JAXDD_CONV": impl}, args.timeout))
                print(f"{name} {impl}: {runs[impl][-1].get('median_s', runs[impl][-1].get('error'))}", flush=True)
        summary = {}
        for impl, results in runs.items():
            times = [t for r in results for t in r.get("times_s", [])]
            summary[impl] = {"median_s": statistics.median(times) if times else None,
                             "peak_rss_bytes": max((r.get("peak_rss_bytes", 0) for r in results), default=0),
                             "runs": results}
        record["benches"][name] = summary
        p, x = summary["patches"], summary["xla"]
        ratio = f"{x['median_s'] / p['median_s']:.2f}" if p["median_s"] and x["median_s"] else "-"
        fmt = lambda v: "-" if v is None else f"{v:.3f}"
        lines.append(f"| {name} | {fmt(p['median_s'])} | {fmt(x['median_s'])} | {ratio} | "
                     f"{p['peak_rss_bytes'] / 2**30:.2f} | {x['peak_rss_bytes'] / 2**30:.2f} |")
    path = RESULTS / f"conv_sites-{machine}-{date}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
