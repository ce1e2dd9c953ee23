"""The papers' own sizes: jaxdd beside an eager PyTorch loop, each side in its own process.

    python -m benchmarks.run                      # the headline: these benches (sizes by backend)
    python -m benchmarks.paper --sizes tiny       # seconds: a smoke test of the harness itself
    python -m benchmarks.paper --only dc_ipc1 dm_ipc10 --sizes paper-cpu   # merged into today's file

Benches (issue 14), MNIST-shaped inputs (28x28x1, 10 classes):

- ``dc_ipc1``, ``dc_ipc10``, ``dc_ipc50``: one DC outer iteration (a fresh ConvNet-128, the
  reference's ``outer_loop`` matching steps with a real batch of 256 per class and its inner
  training loops); PyTorch matches one class at a time, as the reference's ``main.py`` does;
- ``dsa_ipc1``: one DSA outer iteration, 1 img/cls, the same sizes as ``dc_ipc1`` with the
  reference's MNIST strategy 'color_crop_cutout_scale_rotate' (no flip): per class one transform
  shared by the real and the synthetic batch (Siamese); PyTorch follows the reference's
  ``DiffAugment`` (:func:`benchmarks.torch_ref.dsa_augment`);
- ``dm_ipc10``: one DM iteration, 10 img/cls, real batch 256 per class, no augmentation;
- ``dd``: one DD outer step, LeNet, 10 steps x 3 epochs unrolled, real batch 1024;
- ``eval_ipc1``, ``eval_ipc10``: 10 fresh ConvNet-128 trained on 10 or 100 images for 300
  epochs (DC protocol, no augmentation) and tested.

Each side of each bench runs in a fresh process, so the peak resident memory (``ru_maxrss``)
is that side's alone (imports included: the baseline before the bench is recorded too); the
two processes run one after the other, so a ratio is measured side by side in one session.
JAX's program is compiled ahead of time (reported apart); each side makes ``warmup`` untimed
calls, then ``repeats`` timed ones, and medians are compared. Size sets: ``paper`` (the papers'
protocol, for a GPU), ``paper-cpu`` (the same batches and networks; on 2 CPU cores fewer
repeats, 5 of the 50 matching steps of the 50 img/cls iteration, a fraction of the evaluation
epochs and 1000 test images: each stated in the results) and ``tiny`` (tests). Inputs are
random normal images unless ``--data`` names an ``.npz`` with ``x_train, y_train`` (Keras
layout; a GPU host without tensorflow-datasets): timing does not depend on the pixel values.

Writes ``benchmarks/results/paper-sizes-<machine>-<date>.json`` (``{"benches": {name:
{"jax_median_s", "torch_median_s", "jax_peak_rss_bytes", "torch_peak_rss_bytes", "command",
...}}}``) and the same stem ``.md``. A run with ``--only`` merges into that day's file when it
holds the same size set and inputs: the other benches stay, each with the command that measured
it (:func:`start_record`); a full run starts the file afresh.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
NAMES = ("dc_ipc1", "dc_ipc10", "dc_ipc50", "dsa_ipc1", "dm_ipc10", "dd", "eval_ipc1", "eval_ipc10")
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)

_PAPER = {
    "width": 128, "real_per_class": 600, "repeats": 3, "warmup": 1,
    "dc_ipc1": {"ipc": 1, "batch_real": 256},
    "dc_ipc10": {"ipc": 10, "batch_real": 256},
    "dc_ipc50": {"ipc": 50, "batch_real": 256},
    "dsa_ipc1": {"ipc": 1, "batch_real": 256},
    "dm_ipc10": {"ipc": 10, "batch_real": 256},
    "dd": {"steps": 10, "epochs": 3, "real_batch": 1024},
    "eval_ipc1": {"ipc": 1, "models": 10, "epochs": 300, "test_images": 10000},
    "eval_ipc10": {"ipc": 10, "models": 10, "epochs": 300, "test_images": 10000},
}
SIZES: dict[str, dict] = {
    "paper": _PAPER,
    # About 20-30 minutes on 2 idle CPU cores, both sides: the papers' batches and networks;
    # DC at 50 img/cls times 5 of the iteration's 50 matching steps (with their inner loops);
    # evaluation a fifth (1 img/cls) and a twentieth (10 img/cls) of the 300 epochs, 1000 test images.
    "paper-cpu": {
        **_PAPER, "repeats": 2,
        "dc_ipc10": {**_PAPER["dc_ipc10"], "warmup": 0},
        "dc_ipc50": {**_PAPER["dc_ipc50"], "outer_loop": 5, "warmup": 0},
        "eval_ipc1": {**_PAPER["eval_ipc1"], "epochs": 60, "test_images": 1000},
        "eval_ipc10": {**_PAPER["eval_ipc10"], "epochs": 15, "test_images": 1000, "warmup": 0},
    },
    # Seconds: the harness's own test (every code path, tiny networks and batches).
    "tiny": {
        "width": 8, "real_per_class": 12, "repeats": 2, "warmup": 1,
        "dc_ipc1": {"ipc": 1, "batch_real": 4},
        "dc_ipc10": {"ipc": 10, "batch_real": 4, "outer_loop": 2, "inner_loop": 1},
        "dc_ipc50": {"ipc": 2, "batch_real": 4, "outer_loop": 2, "inner_loop": 1, "warmup": 0},
        "dsa_ipc1": {"ipc": 1, "batch_real": 4},
        "dm_ipc10": {"ipc": 10, "batch_real": 4},
        "dd": {"steps": 2, "epochs": 1, "real_batch": 16},
        "eval_ipc1": {"ipc": 1, "models": 2, "epochs": 2, "test_images": 20},
        "eval_ipc10": {"ipc": 10, "models": 2, "epochs": 1, "test_images": 20},
    },
}
"""Size sets; a bench's ``warmup`` overrides the set's."""


def default_sizes() -> str:
    """'paper' on an accelerator, 'paper-cpu' on the CPU."""
    import jax

    return "paper-cpu" if jax.default_backend() == "cpu" else "paper"


def bench_sizes(sizes: str, name: str) -> dict:
    """One bench's sizes with the set's width, repeats and warm-up filled in."""
    table = SIZES[sizes]
    return {"width": table["width"], "repeats": table["repeats"], "warmup": table["warmup"], **table[name]}


def bench_strategy(name: str) -> str:
    """DSA strategy of bench ``name``: the reference's MNIST one for ``dsa_*``, '' (no augmentation) else."""
    from jaxdd.augment import dsa_strategy

    return dsa_strategy("mnist") if name.startswith("dsa") else ""


def load_data(sizes: str, data: Optional[str], per_class: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Class-sorted training images (N, 28, 28, 1) float32, standardised, and labels.

    ``data``: an ``.npz`` with ``x_train, y_train`` (the first ``real_per_class`` of each class
    are kept); None: random normal images.
    """
    per_class = per_class or SIZES[sizes]["real_per_class"]
    if data is None:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((NUM_CLASSES * per_class,) + IMAGE_SHAPE).astype(np.float32)
        return x, np.repeat(np.arange(NUM_CLASSES, dtype=np.int32), per_class)
    with np.load(data) as arrays:
        x_all, y_all = arrays["x_train"], arrays["y_train"].astype(np.int32)
    rows = np.concatenate([np.flatnonzero(y_all == c)[:per_class] for c in range(NUM_CLASSES)])
    x = x_all[rows].astype(np.float32).reshape((len(rows),) + IMAGE_SHAPE)
    x = (x - x.mean()) / (x.std() + 1e-8)
    return x, y_all[rows]


def eval_data(sizes: dict) -> tuple[np.ndarray, ...]:
    """The set to train on (ipc per class) and test images, random normal (seeds fixed)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((NUM_CLASSES * sizes["ipc"],) + IMAGE_SHAPE).astype(np.float32)
    y = np.repeat(np.arange(NUM_CLASSES, dtype=np.int32), sizes["ipc"])
    x_test = rng.standard_normal((sizes["test_images"],) + IMAGE_SHAPE).astype(np.float32)
    return x, y, x_test, rng.integers(0, NUM_CLASSES, sizes["test_images"]).astype(np.int32)


# --------------------------------------------------------------------------- one side (child)


def jax_side(name: str, sizes: dict, x: np.ndarray, y: np.ndarray) -> tuple[Callable[[int], None], dict]:
    """The JAX call of bench ``name`` and what building it measured (compile time, FLOPs)."""
    import jax
    import jax.numpy as jnp

    from benchmarks.flops import traced_flops
    from jaxdd import evaluate, models
    from jaxdd.methods import dc, dd, dm

    convnet = models.get_model("ConvNet", IMAGE_SHAPE, NUM_CLASSES, width=sizes["width"])
    if name.startswith("eval"):
        arrays = [jnp.asarray(a) for a in eval_data(sizes)]
        protocol = evaluate.get_protocol("dc", epochs=sizes["epochs"], augment="none")
        key = jax.random.key(4)

        def evaluation(r: int) -> None:
            accs = evaluate.evaluate_synset(jax.random.fold_in(key, r), convnet, *arrays, protocol, sizes["models"])
            jax.block_until_ready(accs)

        return evaluation, {"compile_s": None}
    if name == "dd":
        config = dd.DDConfig(steps=sizes["steps"], epochs=sizes["epochs"], ipc_per_step=1, init="fixed",
                             real_batch=sizes["real_batch"])
        lenet = models.get_model("LeNet", IMAGE_SHAPE, NUM_CLASSES)
        init, step = dd.make_functions(config, lenet, IMAGE_SHAPE, NUM_CLASSES)
        real = (jnp.asarray(x), jnp.asarray(y))
        extra = {"unrolled_steps": config.unrolled_steps}
    else:
        fields = {k: v for k, v in sizes.items() if k in ("ipc", "batch_real", "outer_loop", "inner_loop")}
        shapes = ((NUM_CLASSES, sizes["ipc"]) + IMAGE_SHAPE, (NUM_CLASSES, sizes["batch_real"]) + IMAGE_SHAPE)
        if name.startswith(("dc", "dsa")):
            config = dc.DCConfig(num_classes=NUM_CLASSES, init="noise", dsa_strategy=bench_strategy(name), **fields)
            method = dc.build(convnet, jnp.asarray(x), jnp.asarray(y), config)
            outer, inner = config.loops
            extra = {"outer_loop": outer, "inner_loop": inner, "class_chunk": dc.class_chunk(convnet, *shapes, config)}
            if config.dsa_strategy:
                extra["dsa_strategy"] = config.dsa_strategy
        else:
            config = dm.DMConfig(num_classes=NUM_CLASSES, init="noise", dsa_strategy="", **fields)
            method = dm.build(convnet, jnp.asarray(x), jnp.asarray(y), config)
            extra = {"class_chunk": dm.class_chunk(convnet, *shapes, config)}
        init, step, real = method.init, method.step, method.real_data
    key = jax.random.key(1)
    holder = [init(jax.random.key(0))]
    flops = traced_flops(step, holder[0], real, key)
    started = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(holder[0], real, key).compile()
    compile_s = time.perf_counter() - started

    def call(r: int) -> None:
        holder[0], metrics = compiled(holder[0], real, jax.random.fold_in(key, r))
        jax.block_until_ready((holder[0], metrics))

    return call, {"compile_s": compile_s, "flops": flops, **extra}


def torch_side(name: str, sizes: dict, x: np.ndarray, y: np.ndarray) -> tuple[Callable[[int], Any], dict]:
    """The eager PyTorch call of bench ``name`` (:mod:`benchmarks.torch_ref`)."""
    from benchmarks import torch_ref
    from jaxdd.methods.dc import dc_loops

    width = sizes["width"]
    if name.startswith("eval"):
        run = torch_ref.evaluation(*eval_data(sizes), NUM_CLASSES, num_models=sizes["models"],
                                   epochs=sizes["epochs"], width=width)
    elif name == "dd":
        run = torch_ref.dd_iteration(x, y, NUM_CLASSES, steps=sizes["steps"], epochs=sizes["epochs"],
                                     real_batch=sizes["real_batch"], arch="lenet")
    elif name.startswith(("dc", "dsa")):
        outer, inner = dc_loops(sizes["ipc"], sizes.get("outer_loop"), sizes.get("inner_loop"))
        run = torch_ref.dc_iteration(x, y, NUM_CLASSES, sizes["ipc"], outer_loop=outer, inner_loop=inner,
                                     batch_real=sizes["batch_real"], width=width, dsa_strategy=bench_strategy(name))
    else:
        run = torch_ref.dm_iteration(x, y, NUM_CLASSES, sizes["ipc"], batch_real=sizes["batch_real"], width=width)
    import torch

    return (lambda r: run()), {"torch_threads": torch.get_num_threads(), "torch_device": str(torch_ref.device())}


def device_peak(side: str) -> Optional[int]:
    """Peak accelerator bytes of this process's side (None on the CPU)."""
    if side == "torch":
        import torch

        return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
    import jax

    if jax.default_backend() == "cpu":
        return None
    return (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")


def child(name: str, side: str, sizes_name: str, data: Optional[str]) -> dict:
    """Builds one side of one bench, warms it up, times it; its times and this process's peak RSS."""
    sizes = bench_sizes(sizes_name, name)
    per_class = max(SIZES[sizes_name]["real_per_class"], sizes.get("batch_real", 0),
                    -(-sizes.get("real_batch", 0) // NUM_CLASSES))
    x, y = load_data(sizes_name, data, per_class)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if side == "torch":
        import torch

        torch.manual_seed(0)
        np.random.seed(0)  # the reference's class batches are drawn with NumPy's global state
    call, info = (jax_side if side == "jax" else torch_side)(name, sizes, x, y)
    times = []
    for r in range(sizes["warmup"] + sizes["repeats"]):
        started = time.perf_counter()
        call(r)
        if r >= sizes["warmup"]:
            times.append(time.perf_counter() - started)
        print(f"  {name} {side} call {r}: {time.perf_counter() - started:.3f} s", file=sys.stderr, flush=True)
    return {"times_s": times, "median_s": statistics.median(times), "rss_before_bytes": rss_before,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "device_peak_bytes": device_peak(side), "load_after": list(os.getloadavg()), **info}


# --------------------------------------------------------------------------- the session (parent)


def run_side(name: str, side: str, sizes: str, data: Optional[str], env: Optional[dict] = None,
             timeout_s: Optional[float] = None) -> dict:
    """One side of one bench in a fresh process (``XLA_PYTHON_CLIENT_PREALLOCATE=false``, plus
    ``env``), stopped after ``timeout_s`` seconds if given."""
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", **(env or {})}
    command = [sys.executable, "-m", "benchmarks.paper", "--child", name, "--side", side, "--sizes", sizes]
    if data:
        command += ["--data", data]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"stopped after {timeout_s:g} s"}
    if done.returncode != 0:
        return {"error": f"{side} exit status {done.returncode} (see stderr above)"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = round(time.perf_counter() - started, 1)
    return result


def summarise(sizes: dict, jax_result: dict, torch_result: dict, peak_flops: Optional[float]) -> dict:
    """The bench's record: medians, ratio (> 1: jaxdd faster), peak memories, fraction of peak."""
    out = {"sizes": sizes, "jax": jax_result, "torch": torch_result}
    for side, result in (("jax", jax_result), ("torch", torch_result)):
        out[f"{side}_median_s"] = result.get("median_s")
        out[f"{side}_peak_rss_bytes"] = result.get("peak_rss_bytes")
        out[f"{side}_device_peak_bytes"] = result.get("device_peak_bytes")
    if out["jax_median_s"] and out["torch_median_s"]:
        out["ratio"] = out["torch_median_s"] / out["jax_median_s"]
        out["memory_ratio"] = out["jax_peak_rss_bytes"] / out["torch_peak_rss_bytes"]
    flops = jax_result.get("flops")
    if flops and peak_flops and out["jax_median_s"]:
        out["flops"] = flops
        out["jax_fraction_of_peak"] = flops / out["jax_median_s"] / peak_flops
        if out["torch_median_s"]:
            out["torch_fraction_of_peak"] = flops / out["torch_median_s"] / peak_flops
    return out


def _gib(value: Optional[float]) -> str:
    return "-" if value is None else f"{value / 2**30:.2f}"


def _sizes_text(sizes: dict, jax_result: dict) -> str:
    skip = ("width", "repeats", "warmup")
    text = ", ".join(f"{k} {v}" for k, v in sizes.items() if k not in skip)
    for key in ("outer_loop", "inner_loop", "class_chunk", "dsa_strategy"):
        if key in jax_result and key not in sizes:
            text += f", {key} {jax_result[key]}"
    return text


def _commands_text(benches: dict) -> str:
    by_command: dict[str, list] = {}
    for name, bench in benches.items():
        by_command.setdefault(bench["command"], []).append(name)
    return "; ".join(f"`{command}` ({', '.join(names)})" for command, names in by_command.items())


def markdown(record: dict) -> str:
    info, benches = record["session"], record["benches"]
    lines = [f"# Paper-size benchmarks: {info['machine']}, {info['date']} (sizes '{record['sizes']}')", "",
             f"{_commands_text(benches)}; {info['cpu_count']} CPUs, devices {', '.join(info['devices'])}; "
             f"jax {info['versions'].get('jax')}, torch {info['versions'].get('torch')}; "
             f"load average at the start of the last run {info['load_average']}.", "",
             "Each side ran in its own process, one after the other (peak RSS = `ru_maxrss` of that process, "
             "imports included). Ratio = PyTorch median / JAX median (> 1: jaxdd faster); memory ratio = JAX "
             "peak RSS / PyTorch peak RSS. ConvNet width "
             f"{SIZES[record['sizes']]['width']}; inputs {record['data']}.", "",
             "| bench | sizes | JAX median (s) | PyTorch median (s) | ratio | JAX peak RSS (GiB) | "
             "PyTorch peak RSS (GiB) | memory ratio | JAX compile (s) | JAX / PyTorch % of matmul peak |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, b in benches.items():
        if "error" in b.get("jax", {}) or "error" in b.get("torch", {}):
            lines.append(f"| {name} | - | {b['jax'].get('error', '')} {b['torch'].get('error', '')} "
                         "| - | - | - | - | - | - | - |")
            continue
        ratio = f"{b['ratio']:.2f}x" if b.get("ratio") else "-"
        mem = f"{b['memory_ratio']:.2f}x" if b.get("memory_ratio") else "-"
        compile_s = b["jax"].get("compile_s")
        frac = "-" if "jax_fraction_of_peak" not in b else \
            f"{100 * b['jax_fraction_of_peak']:.0f} / {100 * b.get('torch_fraction_of_peak', 0):.0f}"
        lines.append(f"| {name} | {_sizes_text(b['sizes'], b['jax'])} | {b['jax_median_s']:.3f} | "
                     f"{b['torch_median_s']:.3f} | {ratio} | {_gib(b['jax_peak_rss_bytes'])} | "
                     f"{_gib(b['torch_peak_rss_bytes'])} | {mem} | "
                     f"{'-' if compile_s is None else f'{compile_s:.1f}'} | {frac} |")
    if info.get("peak"):
        lines += ["", f"Matmul peak (the last run): a measured {info['peak']['size']}^2 float32 matmul, "
                  f"{info['peak']['flops_per_s'] / 1e9:.1f} GFLOP/s; FLOPs = matmuls and convolutions of the JAX "
                  "program (the same arithmetic on both sides)."]
    lines += ["", f"Size set '{record['sizes']}': {record['sizes_note']}"]
    return "\n".join(lines) + "\n"


SIZES_NOTES = {
    "paper": "the papers' protocols (DC's loops by img/cls, 300 evaluation epochs, 10000 test images).",
    "paper-cpu": "the papers' networks and batches; repeats 2 (no warm-up call at dc_ipc10, dc_ipc50, "
                 "eval_ipc10); dc_ipc50 times 5 of the 50 matching steps of one outer iteration; evaluation "
                 "runs 60 of 300 epochs (1 img/cls) and 15 of 300 (10 img/cls) on 1000 test images.",
    "tiny": "a test of the harness, not a measurement.",
}


def session(sizes: str, measure_peak: bool) -> dict:
    import jax

    from benchmarks.flops import matmul_peak
    from benchmarks.run import machine_tag
    from jaxdd.io import versions

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    backend = jax.default_backend()
    return {"backend": backend, "machine": machine_tag(jax.devices(), backend),
            "date": datetime.date.today().isoformat(), "cpu_count": os.cpu_count(),
            "devices": [str(d) for d in jax.devices()], "versions": {**versions(), "torch": torch_version},
            "peak": matmul_peak(8192 if backend != "cpu" else 1024) if measure_peak else None,
            "load_average": list(os.getloadavg())}


def start_record(path: Path, record: dict) -> dict:
    """``record`` (no benches yet) carrying on the file at ``path``: its benches kept, its command before ours.

    Only a file of the same size set and inputs is carried on; otherwise ``record`` is returned as
    it is (and replaces the file). A kept bench without a command of its own (a file of an older
    harness) gets the file's command.
    """
    if not path.exists():
        return record
    previous = json.loads(path.read_text())
    if (previous.get("sizes"), previous.get("data")) != (record["sizes"], record["data"]):
        return record
    benches = {name: {"command": previous["command"], **bench} for name, bench in previous["benches"].items()}
    return {**record, "command": f"{previous['command']}; then {record['command']}", "benches": benches}


def _in_order(benches: dict) -> dict:
    rank = {name: i for i, name in enumerate(NAMES)}
    return dict(sorted(benches.items(), key=lambda kv: (rank.get(kv[0], len(NAMES)), kv[0])))


def export_data(path: Path, data_dir: Optional[str] = None, per_class: int = 600) -> Path:
    """Writes the first ``per_class`` MNIST training images of each class as uint8 pixels
    (``x_train, y_train``) to ``path``: the ``--data`` of a host without tensorflow-datasets."""
    from jaxdd.data import load_dataset

    dataset = load_dataset("mnist", data_dir)
    x, y = np.asarray(dataset.x_train), np.asarray(dataset.y_train)
    rows = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(NUM_CLASSES)])
    pixels = np.clip(np.rint((x[rows] * np.asarray(dataset.info.std) + np.asarray(dataset.info.mean)) * 255), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, x_train=pixels.astype(np.uint8), y_train=y[rows].astype(np.uint8))
    return path


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", choices=tuple(SIZES), help="size set (default: paper on a GPU, paper-cpu on CPU)")
    parser.add_argument("--only", nargs="+", choices=NAMES, metavar="NAME", help=f"benches of {', '.join(NAMES)}")
    parser.add_argument("--data", help="an .npz with x_train, y_train (default: random normal images)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results")
    parser.add_argument("--export-data", type=Path, metavar="NPZ",
                        help="write MNIST (600 img/cls, from $JAXDD_DATA_DIR) as an .npz for --data, and stop")
    parser.add_argument("--child", choices=NAMES, help=argparse.SUPPRESS)
    parser.add_argument("--side", choices=("jax", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.export_data:
        print(f"wrote {export_data(args.export_data)}")
        return 0
    sizes = args.sizes or default_sizes()
    if args.child:
        print(json.dumps(child(args.child, args.side, sizes, args.data)))
        return 0
    info = session(sizes, measure_peak=sizes != "tiny")
    print(f"{info['machine']}: paper-size benchmarks, sizes '{sizes}'", flush=True)
    command = "python -m benchmarks.paper" + (f" --sizes {args.sizes}" if args.sizes else "") + \
        (" --only " + " ".join(args.only) if args.only else "") + (f" --data {args.data}" if args.data else "")
    record = {"command": command, "sizes": sizes, "sizes_note": SIZES_NOTES[sizes],
              "data": args.data or "random normal", "session": info, "benches": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"paper-sizes-{info['machine']}-{info['date']}{'-tiny' if sizes == 'tiny' else ''}.json"
    if args.only:
        record = start_record(path, record)
    peak = info["peak"]["flops_per_s"] if info["peak"] else None
    for name in args.only or NAMES:  # the record is rewritten after every bench: a cut-off run keeps its part
        print(f"== {name}", flush=True)
        jax_result = run_side(name, "jax", sizes, args.data)
        torch_result = run_side(name, "torch", sizes, args.data)
        bench = {"command": command, **summarise(bench_sizes(sizes, name), jax_result, torch_result, peak)}
        record["benches"] = _in_order({**record["benches"], name: bench})
        path.write_text(json.dumps(record, indent=1) + "\n")
        path.with_suffix(".md").write_text(markdown(record))
    print(path.with_suffix(".md").read_text())
    print(f"wrote {path} and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
