"""The paper-size benchmark harness (``benchmarks.paper``) at tiny sizes, and its size sets."""

import json

import pytest

pytest.importorskip("torch")

from benchmarks import paper  # noqa: E402

KEYS = ("jax_median_s", "torch_median_s", "jax_peak_rss_bytes", "torch_peak_rss_bytes")


def test_every_size_set_has_every_bench_and_cpu_keeps_the_paper_batches():
    for table in paper.SIZES.values():
        assert set(paper.NAMES) <= set(table)
    for name in ("dc_ipc1", "dc_ipc10", "dc_ipc50", "dsa_ipc1", "dm_ipc10"):
        assert paper.bench_sizes("paper-cpu", name)["batch_real"] == 256
        assert paper.bench_sizes("paper-cpu", name)["ipc"] == int(name.split("ipc")[1])
    assert paper.bench_sizes("paper-cpu", "dd")["real_batch"] == 1024
    assert paper.bench_sizes("paper", "eval_ipc10")["epochs"] == 300


def test_tiny_run_writes_the_checkable_record_and_a_rerun_merges_into_it(tmp_path):
    """Benches end to end (each side in its own process, medians and peak RSS of both); a second
    ``--only`` run adds its bench to the day's file and keeps the others, each with its command."""
    first = ["--sizes", "tiny", "--only", "dm_ipc10", "eval_ipc1", "--out", str(tmp_path)]
    second = ["--sizes", "tiny", "--only", "dsa_ipc1", "--out", str(tmp_path)]
    assert paper.main(first) == 0
    assert paper.main(second) == 0
    (path,) = tmp_path.glob("paper-sizes-*-tiny.json")
    record = json.loads(path.read_text())
    assert list(record["benches"]) == ["dsa_ipc1", "dm_ipc10", "eval_ipc1"]  # in NAMES order
    for bench in record["benches"].values():
        for key in KEYS:
            assert bench[key] > 0, key
        assert isinstance(bench["jax_peak_rss_bytes"], int)
        assert len(bench["jax"]["times_s"]) == paper.SIZES["tiny"]["repeats"]
    assert record["benches"]["dm_ipc10"]["jax"]["class_chunk"] >= 1
    assert record["benches"]["dsa_ipc1"]["jax"]["dsa_strategy"] == "color_crop_cutout_scale_rotate"
    commands = {name: bench["command"] for name, bench in record["benches"].items()}
    first_command = "python -m benchmarks.paper --sizes tiny --only dm_ipc10 eval_ipc1"
    second_command = "python -m benchmarks.paper --sizes tiny --only dsa_ipc1"
    assert commands == {"dm_ipc10": first_command, "eval_ipc1": first_command, "dsa_ipc1": second_command}
    assert record["command"] == f"{first_command}; then {second_command}"
    text = path.with_suffix(".md").read_text()
    assert all(f"| {name} |" in text for name in record["benches"])
    assert f"`{second_command}` (dsa_ipc1)" in text


def test_start_record_keeps_a_file_of_the_same_sizes_and_inputs_only(tmp_path):
    path = tmp_path / "paper-sizes-x-2026-01-01.json"
    record = {"command": "new", "sizes": "paper", "data": "random normal", "benches": {}}
    assert paper.start_record(path, record) is record  # no file yet
    old = {"command": "old", "sizes": "paper", "data": "random normal", "benches": {"dd": {"ratio": 2.0}}}
    path.write_text(json.dumps(old))
    carried = paper.start_record(path, record)
    assert carried["benches"] == {"dd": {"command": "old", "ratio": 2.0}} and carried["command"] == "old; then new"
    for other in ({"sizes": "paper-cpu"}, {"data": "mnist.npz"}):
        path.write_text(json.dumps({**old, **other}))
        assert paper.start_record(path, record) is record


def test_torch_dsa_is_siamese_with_a_seed_and_differentiable():
    """The PyTorch side's DiffAugment: one seed gives every image of a batch the same transform (so
    a class's real and synthetic batches share it); gradients reach the images; DSA's DC loop runs."""
    import numpy as np
    import torch

    from benchmarks import torch_ref

    x = torch.randn(5, 1, 28, 28)
    for family in ("color", "crop", "cutout", "flip", "scale", "rotate"):
        for seed in range(3):
            torch.testing.assert_close(torch_ref.dsa_augment(x, family, seed)[:2],
                                       torch_ref.dsa_augment(x[:2], family, seed), atol=1e-6, rtol=0)
        images = x.clone().requires_grad_()
        torch_ref.dsa_augment(images, family).square().sum().backward()
        assert images.grad.abs().sum() > 0, family
    images = np.random.default_rng(0).standard_normal((12, 28, 28, 1)).astype(np.float32)
    run = torch_ref.dc_iteration(images, np.repeat(np.arange(2), 6), 2, 2, outer_loop=2, inner_loop=1, batch_real=3,
                                 width=4, dsa_strategy=paper.bench_strategy("dsa_ipc1"))
    run()  # matching with Siamese draws, then an inner epoch with per-image draws


def test_device_check_script_dry_run_on_cpu(tmp_path):
    """benchmarks/device_check.sh at tiny sizes: the GPU host's one command, run here on the CPU."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(paper.__file__).resolve().parents[1]
    env = {**os.environ, "RESULTS_DIR": str(tmp_path / "results"), "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", "benchmarks/device_check.sh", "tiny", "--only", "dd"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (copied,) = tmp_path.glob("paper-sizes-*-tiny.json")
    bench = json.loads(copied.read_text())["benches"]["dd"]
    assert all(bench[key] > 0 for key in KEYS)
