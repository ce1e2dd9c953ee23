"""Where a benchmark's time goes: its XLA ops, grouped by kind, from a profiler trace.

    python -m benchmarks.profile_step --bench dc_ipc1            # quick sizes, 3 traced calls
    python -m benchmarks.profile_step --bench eval_ipc10 --mode full

Builds the named case of :mod:`benchmarks.cases` (``dc_ipc1``, ``dm_ipc10``, ``eval_ipc1``, ...),
warms it up, traces ``--calls`` calls with ``jax.profiler`` (Perfetto JSON) and sums the
duration of every XLA op event by kind, the op's name without its numeric suffix. On XLA:CPU
``ynn_fusion`` is a matmul run by YNNPACK (every convolution of jaxdd's CPU path is one,
:func:`jaxdd.models.patch_conv`), ``concatenate`` and ``pad_slice_fusion`` build the im2col
patches and their transposes, and the ``broadcast_*`` fusions are normalisation, activations
and the matching losses. Host-side events (Python frames, the thunk executor, thread-pool waits)
are left out; op times on several threads overlap, so their sum can exceed the wall time.

Writes ``benchmarks/results/profile-<bench>-<machine>-<date>.{json,md}``.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import glob
import gzip
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.run import machine_tag

RESULTS = Path(__file__).resolve().parent / "results"
HOST_EVENTS = ("$", "ThunkExecutor", "SlinkyThreadPool", "PjitFunction", "CommonPjRt", "end: ",
               "PjRtCpuExecutable", "TfrtCpuExecutable")
"""Name prefixes of trace events that are host bookkeeping, not XLA ops."""
MATMUL_KINDS = re.compile(r"ynn_fusion|xnn_fusion|dot|gemm|conv|cublas|cutlass|matmul", re.IGNORECASE)


def op_kind(event_name: str) -> str:
    """'ynn_fusion.37' -> 'ynn_fusion'; 'broadcast_add_fusion.30' -> 'broadcast_add_fusion'."""
    return re.sub(r"[.\d]+$", "", event_name)


def op_time_by_kind(trace_events: list[dict], calls: int) -> dict[str, float]:
    """Seconds per call of each op kind over complete ('X') events, host events excluded."""
    total: collections.Counter = collections.Counter()
    for event in trace_events:
        if event.get("ph") == "X" and not event["name"].startswith(HOST_EVENTS):
            total[op_kind(event["name"])] += event.get("dur", 0) * 1e-6
    return {kind: seconds / calls for kind, seconds in total.most_common()}


def profile(bench: str, mode: str, calls: int) -> dict:
    """Builds ``bench``, warms it up, traces ``calls`` calls; op time by kind and wall times."""
    import jax

    from benchmarks.cases import builders

    cases = builders(mode)[bench.split("_")[0]]()
    if bench not in cases:
        raise SystemExit(f"unknown bench {bench!r}; this family has {sorted(cases)}")
    case = cases[bench]
    case.jax_call(0)
    case.jax_call(1)
    walls = []
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        for r in range(2, 2 + calls):
            started = time.perf_counter()
            case.jax_call(r)
            walls.append(time.perf_counter() - started)
        jax.profiler.stop_trace()
        trace_file = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]
        with gzip.open(trace_file) as f:
            events = json.load(f)["traceEvents"]
    by_kind = op_time_by_kind(events, calls)
    ops = sum(by_kind.values())
    matmul = sum(s for kind, s in by_kind.items() if MATMUL_KINDS.search(kind))
    return {"bench": bench, "mode": mode, "sizes": case.sizes, "calls": calls,
            "wall_median_s": statistics.median(walls), "op_s_per_call": ops, "matmul_s_per_call": matmul,
            "flops_per_call": case.flops, "by_kind_s_per_call": by_kind, "backend": jax.default_backend(),
            "machine": machine_tag(jax.devices(), jax.default_backend()),
            "devices": [str(d) for d in jax.devices()]}


def markdown(record: dict, top: int = 15) -> str:
    ops, flops = record["op_s_per_call"], record.get("flops_per_call")
    lines = [f"# Where the time goes: {record['bench']} ({record['mode']} sizes, {record['backend']})", "",
             f"`{record['command']}`; sizes {record['sizes']}; {record['calls']} traced calls after a warm-up.", "",
             f"- wall time per call (median, under the profiler, which slows it; untraced times are in "
             f"`benchmarks.run`'s results): {record['wall_median_s']:.3f} s",
             f"- XLA op time per call (summed over threads): {ops:.3f} s",
             f"- of which matmuls / convolutions: {record['matmul_s_per_call']:.3f} s "
             f"({100 * record['matmul_s_per_call'] / ops:.0f} %)"]
    if flops:
        lines.append(f"- matmul + conv FLOPs per call: {flops / 1e9:.2f} GFLOP, i.e. "
                     f"{flops / record['matmul_s_per_call'] / 1e9:.1f} GFLOP/s inside the matmul ops")
    lines += ["", "| op kind | ms per call | share of op time |", "|---|---|---|"]
    for kind, seconds in list(record["by_kind_s_per_call"].items())[:top]:
        lines.append(f"| {kind} | {1e3 * seconds:.1f} | {100 * seconds / ops:.1f} % |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench", default="dc_ipc1", help="a case name of benchmarks.cases, e.g. dc_ipc1, eval_ipc1")
    parser.add_argument("--mode", default="quick", choices=("quick", "full"))
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    record = profile(args.bench, args.mode, args.calls)
    record["command"] = " ".join(["python -m benchmarks.profile_step", *(sys.argv[1:] if argv is None else argv)])
    stem = f"profile-{args.bench}-{record['machine']}-{datetime.date.today()}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=1))
    (RESULTS / f"{stem}.md").write_text(markdown(record))
    print(markdown(record))
    print(f"wrote {RESULTS / stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
