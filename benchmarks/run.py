"""All benchmarks in one command: jaxdd against eager PyTorch, side by side, in one session.

    python -m benchmarks.run                             # the headline: the papers' sizes (benchmarks.paper)
    python -m benchmarks.run --sizes tiny                # seconds: the paper-size harness on tiny sizes
    python -m benchmarks.run --only dc_ipc1 dsa_ipc1     # some paper-size benches (merged into today's file)
    nice -n 10 python -m benchmarks.run --quick          # smoke: minutes on 2 CPU cores, small batches
    python -m benchmarks.run --quick --only dc eval      # some smoke benchmarks (merged into today's file)

Without ``--quick`` this runs :mod:`benchmarks.paper` (each side in its own process, peak
resident memory of each; ``benchmarks/results/paper-sizes-<machine>-<date>.json``). The smoke
run below is the older harness at small sizes.

Every smoke benchmark runs in its own process (so that its peak memory is its own, and so that the
device-scaling runs can ask XLA for N host devices). Inside it the JAX program is compiled
once (compile time reported apart), both sides are warmed up, then JAX and PyTorch alternate
``repeats`` times (JAX, PyTorch, JAX, ...) and the medians are compared: these machines are
shared and noisy, so alternating keeps load changes from favouring one side. PyTorch runs with
the faster of one and all CPU threads, chosen after its warm-up (:func:`pick_torch_threads`).

Reported per benchmark: seconds per outer step (or models x epochs per second for evaluation),
the PyTorch figure and the ratio (> 1: jaxdd is faster), the goal of issue 6 where there is one,
peak memory (growth of the process's resident memory during a call on CPU, sampled every 5 ms;
the device's peak bytes in use on GPU), matmul + convolution FLOPs per call with the achieved
fraction of a measured float32 matmul peak, and XLA's own cost-analysis FLOPs (which count a
loop body once). Writes ``benchmarks/results/<machine>-<date>.json`` (versions, devices, sizes,
every repeat's time) and the same stem ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

RESULTS = Path(__file__).resolve().parent / "results"
GOALS = {("cpu", "dc"): 1.0, ("cpu", "eval"): 3.0, ("gpu", "dc"): 10.0, ("gpu", "eval"): 20.0}
"""(backend, benchmark family) -> the speed-up over eager PyTorch that issue 6 asks for."""
ORDER = ("dc", "dsa", "dm", "dd", "frepo", "mgdd", "eval", "devices")


# --------------------------------------------------------------------------- memory


class RssSampler:
    """Largest resident set size of this process while a block runs (polled every 5 ms)."""

    def __init__(self, interval: float = 0.005):
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.start = self.peak = 0

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(self._interval)

    def __enter__(self) -> "RssSampler":
        self.start = self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def jax_device_peak() -> Optional[int]:
    """Peak bytes in use on the default JAX device (None on backends without statistics)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def torch_device_peak(reset: bool = False) -> Optional[int]:
    """Peak CUDA bytes allocated by PyTorch (None without CUDA); ``reset`` starts a new peak."""
    import torch

    if not torch.cuda.is_available():
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return int(torch.cuda.max_memory_allocated())


def timed(call: Callable[[], Any], memory: dict, side: str) -> float:
    """Runs ``call``, returns its wall seconds; records its memory growth in ``memory[side]``."""
    if side == "torch":
        torch_device_peak(reset=True)
    with RssSampler() as rss:
        started = time.perf_counter()
        call()
        seconds = time.perf_counter() - started
    growth = rss.peak - rss.start
    memory[f"{side}_rss_growth_bytes"] = max(memory.get(f"{side}_rss_growth_bytes", 0), growth)
    memory[f"{side}_rss_peak_bytes"] = max(memory.get(f"{side}_rss_peak_bytes", 0), rss.peak)
    device_peak = jax_device_peak() if side == "jax" else torch_device_peak()
    if device_peak is not None:
        memory[f"{side}_device_peak_bytes"] = max(memory.get(f"{side}_device_peak_bytes", 0), device_peak)
    return seconds


# --------------------------------------------------------------------------- one benchmark (child)


def pick_torch_threads(call: Callable[[], Any]) -> dict:
    """Times ``call`` with every CPU and with one thread and keeps the faster setting.

    On a shared, oversubscribed CPU PyTorch's OpenMP workers spin at barriers while their
    siblings are descheduled, and many small ops become far slower with 2 threads than with 1
    (measured here: a tiny DC iteration 8.3 s with 2 threads, 0.05 s with 1). So each benchmark
    gives PyTorch its better setting on this machine at this moment; XLA keeps its own pool.
    """
    import torch

    trials = {}
    for count in sorted({os.cpu_count() or 1, 1}, reverse=True):
        torch.set_num_threads(count)
        trials[count] = timed(call, {}, "torch")
    best = min(trials, key=trials.get)
    torch.set_num_threads(best)
    return {"torch_threads": best, "torch_thread_trials_s": trials}


def measure(case, repeats: int) -> dict:
    """Warm-up of both sides (PyTorch's thread count chosen then), then ``repeats`` alternating calls."""
    memory: dict = {}
    out = {"sizes": case.sizes, "unit": case.unit, "work": case.work, "note": case.note,
           "compile_s": case.compile_s, "flops": case.flops, "xla_flops": case.xla_flops,
           "load_before": list(os.getloadavg()), "jax_s": [], "torch_s": [] if case.torch_call else None}
    out["jax_first_s"] = timed(lambda: case.jax_call(0), {}, "jax")
    if case.torch_call:
        warmup = case.torch_warmup or case.torch_call
        out["torch_first_s"] = timed(warmup, {}, "torch")
        out.update(pick_torch_threads(warmup))
    for r in range(1, repeats + 1):
        out["jax_s"].append(timed(lambda: case.jax_call(r), memory, "jax"))
        if case.torch_call:
            out["torch_s"].append(timed(case.torch_call, memory, "torch"))
        print(f"  repeat {r}: jax {out['jax_s'][-1]:.3f} s" + (f", torch {out['torch_s'][-1]:.3f} s"
              if case.torch_call else ""), file=sys.stderr, flush=True)
    out["memory"] = memory
    out["load_after"] = list(os.getloadavg())
    return out


def child(name: str, mode: str) -> dict:
    """Builds benchmark ``name`` and measures each of its cases; the results by case name.

    PyTorch's thread count is chosen per benchmark (:func:`pick_torch_threads`).
    """
    from benchmarks import cases

    try:
        import torch

        torch.manual_seed(0)
    except ImportError:
        print("PyTorch is not installed: only the JAX side is measured", file=sys.stderr)
    results = {}
    built = cases.builders(mode)[name]()
    for case_name, case in built.items():
        print(f"{case_name}: {case.sizes}", file=sys.stderr, flush=True)
        results[case_name] = measure(case, cases.SIZES[mode]["repeats"])
    return results


# --------------------------------------------------------------------------- the session (parent)


def machine_tag(devices: list, backend: str) -> str:
    """'cpu-2core' on CPU, e.g. 'h200' or '8xh100' on accelerators."""
    if backend == "cpu":
        return f"cpu-{os.cpu_count()}core"
    kind = devices[0].device_kind.split()[-1].lower()
    return kind if len(devices) == 1 else f"{len(devices)}x{kind}"


def session_info(mode: str) -> dict:
    """Versions, devices, the measured matmul peak and the machine's load."""
    import jax

    from benchmarks.flops import matmul_peak
    from jaxdd.io import versions

    try:
        import torch

        torch_version, torch_cuda = torch.__version__, torch.cuda.is_available()
    except ImportError:
        torch_version, torch_cuda = None, False
    backend = jax.default_backend()
    return {
        "mode": mode, "backend": backend, "machine": machine_tag(jax.devices(), backend),
        "date": datetime.date.today().isoformat(), "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "devices": [str(d) for d in jax.devices()], "device_kind": jax.devices()[0].device_kind,
        "versions": {**versions(), "torch": torch_version}, "torch_cuda": torch_cuda,
        "peak": matmul_peak(8192 if backend != "cpu" else 1024),
        "load_average": list(os.getloadavg()),
    }


def bench_names(only: Optional[list], backend: str) -> list[str]:
    """The benchmarks to run (``--only`` names or prefixes, e.g. 'devices'), device counts filtered."""
    import jax

    from benchmarks.cases import DEVICE_COUNTS

    counts = DEVICE_COUNTS if backend == "cpu" else [n for n in DEVICE_COUNTS if n <= jax.device_count()]
    names = [n for n in ORDER if n != "devices"] + [f"devices{n}" for n in counts]
    if only:
        names = [n for n in names if any(n == o or n.startswith(o) for o in only)]
    return names


def run_child(name: str, mode: str, backend: str) -> dict:
    """Runs benchmark ``name`` in a fresh process; device benchmarks get N host devices on CPU.

    JAX does not preallocate GPU memory there, so that PyTorch in the same process has room and
    the device's peak statistics show what each side used.
    """
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave GPU memory to PyTorch too
    if name.startswith("devices") and backend == "cpu":
        flag = f"--xla_force_host_platform_device_count={name[len('devices'):]}"
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flag).strip()
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--child", name, "--mode", mode],
                          stdout=subprocess.PIPE, text=True, env=env)
    if done.returncode != 0:
        return {name: {"error": f"exit status {done.returncode} (see stderr above)"}}
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for result in results.values():
        result["process_s"] = round(time.perf_counter() - started, 1)
    return results


def summarise(name: str, result: dict, info: dict) -> dict:
    """Medians, the ratio (> 1: jaxdd faster), the goal and whether it is met, achieved FLOP rate."""
    if "error" in result or "skipped" in result:
        return result
    jax_s = statistics.median(result["jax_s"])
    torch_s = statistics.median(result["torch_s"]) if result.get("torch_s") else None
    family = name.split("_")[0]
    goal = GOALS.get(("cpu" if info["backend"] == "cpu" else "gpu", family))
    summary = {"jax_median_s": jax_s, "torch_median_s": torch_s,
               "ratio": torch_s / jax_s if torch_s else None, "goal": goal}
    summary["met"] = None if goal is None or summary["ratio"] is None else summary["ratio"] >= goal
    if torch_s and info["backend"] != "cpu" and not info["torch_cuda"]:
        summary["met"], result["note"] = None, "PyTorch ran on the CPU (no CUDA build): not comparable"
    if result.get("flops"):
        summary["flops_per_s"] = result["flops"] / jax_s
        summary["fraction_of_peak"] = summary["flops_per_s"] / info["peak"]["flops_per_s"]
    return {**result, "summary": summary}


# --------------------------------------------------------------------------- the report


def _mib(value: Optional[float]) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def _value(result: dict, side: str) -> str:
    """Median as seconds per step, or models x epochs per second for evaluations."""
    seconds = result["summary"][f"{side}_median_s"]
    if seconds is None:
        return "-"
    if result["unit"] == "model-epoch":
        return f"{result['work'] / seconds:.2f} model-ep/s"
    return f"{seconds:.3f} s"


def speed_table(benches: dict) -> list[str]:
    lines = ["| bench | sizes | JAX median | torch median | ratio | goal | met? |", "|---|---|---|---|---|---|---|"]
    for name, r in benches.items():
        if "summary" not in r:
            lines.append(f"| {name} | - | {r.get('error') or r.get('skipped')} | - | - | - | - |")
            continue
        s = r["summary"]
        sizes = ", ".join(f"{k} {v}" for k, v in r["sizes"].items() if k not in ("protocol", "timed"))
        ratio = "-" if s["ratio"] is None else f"{s['ratio']:.2f}x"
        goal = "-" if s["goal"] is None else f">= {s['goal']:g}x"
        met = "-" if s["met"] is None else ("yes" if s["met"] else "no")
        lines.append(f"| {name} | {sizes} | {_value(r, 'jax')} | {_value(r, 'torch')} | {ratio} | {goal} | {met} |")
    return lines


def cost_table(benches: dict, info: dict) -> list[str]:
    gpu = info["backend"] != "cpu"
    mem = "device peak (MiB) JAX / torch" if gpu else "RSS growth in a call (MiB) JAX / torch"
    lines = [f"| bench | compile (s) | first call (s) | {mem} | GFLOP per call (jaxpr) | XLA cost analysis GFLOP "
             "| achieved GFLOP/s | fraction of peak | process peak RSS (MiB) | torch threads | load before / after |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    key = "device_peak_bytes" if gpu else "rss_growth_bytes"
    for name, r in benches.items():
        if "summary" not in r:
            continue
        s, m = r["summary"], r["memory"]
        compile_s = "-" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        flops = "-" if not r["flops"] else f"{r['flops'] / 1e9:.2f}"
        xla = "-" if not r["xla_flops"] else f"{r['xla_flops'] / 1e9:.2f}"
        rate = "-" if "flops_per_s" not in s else f"{s['flops_per_s'] / 1e9:.1f}"
        frac = "-" if "fraction_of_peak" not in s else f"{100 * s['fraction_of_peak']:.1f} %"
        load = f"{r['load_before'][0]:.1f} / {r['load_after'][0]:.1f}"
        peak_rss = max(m.get("jax_rss_peak_bytes", 0), m.get("torch_rss_peak_bytes", 0))
        lines.append(f"| {name} | {compile_s} | {r['jax_first_s']:.1f} | {_mib(m.get('jax_' + key))} / "
                     f"{_mib(m.get('torch_' + key))} | {flops} | {xla} | {rate} | {frac} | {_mib(peak_rss)} | "
                     f"{r.get('torch_threads', '-')} | {load} |")
    return lines


def scaling_lines(benches: dict, info: dict) -> list[str]:
    """DC step time and evaluation throughput by img/cls, and both by device count relative to one device."""
    lines = ["## Scaling"]
    for prefix, what in (("dc_ipc", "DC outer iteration"), ("eval_ipc", "Evaluation")):
        lines += ["", f"{what} by images per class (sizes as in the table above):", ""]
        for name, r in benches.items():
            if name.startswith(prefix) and "summary" in r:
                ratio = r["summary"]["ratio"]
                lines.append(f"- {r['sizes']['ipc']} img/cls: JAX {_value(r, 'jax')}, PyTorch {_value(r, 'torch')}"
                             + (f" ({ratio:.2f}x)" if ratio else ""))
    devices = {n: r for n, r in benches.items() if n.startswith("devices")}
    if not devices:
        return lines
    simulated = info["backend"] == "cpu"
    lines += ["", "By devices" + (f" (SIMULATED: `--xla_force_host_platform_device_count=N` on {info['cpu_count']} "
                                  "CPU cores; no speed-up is possible, this checks that the sharded programs run "
                                  "and what partitioning costs)" if simulated else "") + ":", ""]
    base = {}
    for name, r in devices.items():
        if "summary" not in r:
            lines.append(f"- {name}: {r.get('skipped') or r.get('error')}")
            continue
        kind = name.split("_", 1)[1]
        base.setdefault(kind, r["summary"]["jax_median_s"])
        lines.append(f"- {name}: {_value(r, 'jax')} (time x{r['summary']['jax_median_s'] / base[kind]:.2f} of the "
                     "first device count)")
    return lines


def markdown(record: dict) -> str:
    info, benches = record["session"], record["benches"]
    peak = info["peak"]
    lines = [
        f"# Benchmarks: {info['machine']}, {info['date']} ({info['mode']})", "",
        f"`{record['command']}` on {info['processor']}, {info['cpu_count']} CPUs, devices {', '.join(info['devices'])};"
        f" jax {info['versions']['jax']}, torch {info['versions']['torch']}"
        f" ({'CUDA' if info['torch_cuda'] else 'CPU'}); load average at the start {info['load_average']}.", "",
        "Each benchmark ran in its own process; JAX and eager PyTorch alternated in it (warm-up, then "
        f"{record['repeats']} repeats each) and the medians are compared. Ratio = PyTorch time / JAX time "
        "(> 1: jaxdd faster). PyTorch used the faster of 1 and all CPU threads, timed after its warm-up (on a "
        "loaded CPU its OpenMP threads spin at barriers; see the threads column). Inputs: random normal "
        "28x28x1 images, 10 classes; ConvNet width 128.", "",
    ]
    lines += speed_table(benches)
    lines += ["", "## Where the time goes", "",
              f"Peak = a measured {peak['size']}x{peak['size']} float32 matmul: "
              f"{peak['flops_per_s'] / 1e9:.1f} GFLOP/s. GFLOP per call counts matmuls and convolutions in the jaxpr "
              "(scan bodies times their length); XLA's cost analysis counts a loop body once. Memory on CPU: the largest growth of the process's resident memory "
              "during one call (sampled every 5 ms).", ""]
    lines += cost_table(benches, info)
    lines += [""] + scaling_lines(benches, info)
    notes = [f"- {n}: {r['note']}" for n, r in benches.items() if r.get("note")]
    if notes:
        lines += ["", "## Notes", ""] + notes
    return "\n".join(lines) + "\n"


def save(record: dict, merge: bool) -> Path:
    """Writes ``<machine>-<date>.json`` and ``.md``; with ``merge``, keeps other benchmarks already there."""
    stem = f"{record['session']['machine']}-{record['session']['date']}"
    path = RESULTS / f"{stem}.json"
    if merge and path.exists():
        previous = json.loads(path.read_text())
        if previous["session"]["mode"] == record["session"]["mode"]:
            record["benches"] = {**previous["benches"], **record["benches"]}
            record["command"] = f"{previous['command']}; then {record['command']}"
    ordered = sorted(record["benches"].items(), key=lambda kv: _rank(kv[0]))
    record["benches"] = dict(ordered)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    path.with_suffix(".md").write_text(markdown(record))
    return path


def _rank(name: str) -> tuple:
    """Report order: the families of :data:`ORDER`, then by name."""
    return next((i for i, f in enumerate(ORDER) if name.startswith(f)), len(ORDER)), name


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke: small sizes, minutes on 2 CPU cores")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help=f"benchmarks to run: with --quick of {', '.join(ORDER)}; else of benchmarks.paper's")
    parser.add_argument("--sizes", help="paper-size set: paper, paper-cpu or tiny (default: by backend)")
    parser.add_argument("--data", help="paper sizes: an .npz with x_train, y_train (default: random normal)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.quick and not args.child:
        from benchmarks import paper

        forwarded = (["--sizes", args.sizes] if args.sizes else []) + (["--only", *args.only] if args.only else []) \
            + (["--data", args.data] if args.data else [])
        return paper.main(forwarded)
    mode = args.mode or "quick"
    if args.child:
        print(json.dumps(child(args.child, mode)))
        return 0
    from benchmarks import cases

    info = session_info(mode)
    print(f"{info['machine']}: {mode} benchmarks, peak matmul {info['peak']['flops_per_s'] / 1e9:.1f} GFLOP/s",
          flush=True)
    benches: dict = {}
    missing = cases.sharding_missing()
    for name in bench_names(args.only, info["backend"]):
        if name.startswith("devices") and missing:
            benches[name] = {"skipped": missing}
            continue
        print(f"== {name}", flush=True)
        for case_name, result in run_child(name, mode, info["backend"]).items():
            benches[case_name] = summarise(case_name, result, info)
    command = "python -m benchmarks.run" + (" --quick" if args.quick else "") + \
        (" --only " + " ".join(args.only) if args.only else "")
    record = {"command": command, "repeats": cases.SIZES[mode]["repeats"], "session": info, "benches": benches}
    path = save(record, merge=bool(args.only))
    print(path.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
