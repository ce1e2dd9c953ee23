"""Do XLA:CPU's library flags speed jaxdd up? The DC step and an evaluation under each ``XLA_FLAGS`` (CPU).

    python -m benchmarks.xla_flags                 # 2 rounds, the default flag sets
    python -m benchmarks.xla_flags --rounds 3

``XLA_FLAGS`` is read once per process, so every flag set runs in its own process; the sets
alternate round by round (default, oneDNN, ..., default, oneDNN, ...) so that load changes hit
them alike, and each process reports the median of 3 calls after a warm-up. The cases are
``benchmarks.run --quick``'s ``dc_ipc1`` and ``eval_ipc10`` (JAX side only). Writes
``benchmarks/results/xla_flags-<machine>-<date>.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks.run import RESULTS

FLAG_SETS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "xnn fusions": "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce",
    "xnn graph": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "no xnnpack": "--xla_cpu_use_xnnpack=false",
}
"""Label -> the ``XLA_FLAGS`` value it runs under."""


def child() -> dict:
    """Times the two cases in this process (under whatever ``XLA_FLAGS`` it was started with)."""
    import jax

    from benchmarks import cases

    built = {"dc_ipc1": cases.dc_cases("quick", (1,))["dc_ipc1"],
             "eval_ipc10": cases.eval_case("quick", 10, 2, 3, with_torch=False)}
    medians = {}
    for name, case in built.items():
        case.jax_call(0)
        times = []
        for r in range(1, 4):
            started = time.perf_counter()
            case.jax_call(r)
            times.append(time.perf_counter() - started)
        medians[name] = statistics.median(times)
    return {"backend": jax.default_backend(), "seconds": medians}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child()))
        return 0
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    runs: dict[str, list] = {label: [] for label in FLAG_SETS}
    for round_index in range(args.rounds):
        for label, flags in FLAG_SETS.items():
            env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()}
            done = subprocess.run([sys.executable, "-m", "benchmarks.xla_flags", "--child"], env=env,
                                  stdout=subprocess.PIPE, text=True)
            if done.returncode != 0:
                runs[label].append({"error": f"exit status {done.returncode}"})
                continue
            runs[label].append(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])
            print(f"round {round_index + 1} {label}: {runs[label][-1]}", flush=True)
    summary = {}
    for label, rows in runs.items():
        ok = [r for r in rows if "error" not in r]
        summary[label] = {name: statistics.median(r[name] for r in ok) for name in ok[0]} if ok else None
    base = summary["default"]
    record = {"command": " ".join(["python -m benchmarks.xla_flags", *(sys.argv[1:] if argv is None else argv)]),
              "date": str(datetime.date.today()), "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()),
              "flag_sets": FLAG_SETS, "runs": runs, "median_of_rounds_s": summary}
    lines = [f"# XLA:CPU flags: `{record['command']}`", "",
             f"{os.cpu_count()} CPUs; load average at the end {[round(v, 2) for v in record['load_average']]}. "
             f"Seconds per call (median over {args.rounds} alternating rounds of each process's median of 3); "
             "relative = default / this (> 1: faster than the default).", "",
             "| flags | DC step, 1 img/cls | relative | evaluation, 10 img/cls (2 models x 3 epochs) | relative |",
             "|---|---|---|---|---|"]
    for label, s in summary.items():
        if s is None:
            lines.append(f"| {label} (`{FLAG_SETS[label]}`) | failed | | | |")
            continue
        rel = {n: (base[n] / s[n] if base else float("nan")) for n in s}
        lines.append(f"| {label} (`{FLAG_SETS[label] or 'none'}`) | {s['dc_ipc1']:.3f} s | {rel['dc_ipc1']:.2f}x "
                     f"| {s['eval_ipc10']:.3f} s | {rel['eval_ipc10']:.2f}x |")
    stem = f"xla_flags-cpu-{os.cpu_count()}core-{record['date']}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=1))
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
