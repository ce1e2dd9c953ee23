"""The paper-size benchmark harness (``benchmarks.paper``) at tiny sizes, and its size sets."""

import json

import pytest

pytest.importorskip("torch")

from benchmarks import paper  # noqa: E402

KEYS = ("jax_median_s", "torch_median_s", "jax_peak_rss_bytes", "torch_peak_rss_bytes")


def test_every_size_set_has_every_bench_and_cpu_keeps_the_paper_batches():
    for table in paper.SIZES.values():
        assert set(paper.NAMES) <= set(table)
    for name in ("dc_ipc1", "dc_ipc10", "dc_ipc50", "dm_ipc10"):
        assert paper.bench_sizes("paper-cpu", name)["batch_real"] == 256
        assert paper.bench_sizes("paper-cpu", name)["ipc"] == int(name.split("ipc")[1])
    assert paper.bench_sizes("paper-cpu", "dd")["real_batch"] == 1024
    assert paper.bench_sizes("paper", "eval_ipc10")["epochs"] == 300


def test_tiny_run_writes_the_checkable_record(tmp_path):
    """Two benches end to end: each side in its own process, medians and peak RSS of both."""
    assert paper.main(["--sizes", "tiny", "--only", "dm_ipc10", "eval_ipc1", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("paper-sizes-*-tiny.json")
    record = json.loads(path.read_text())
    assert set(record["benches"]) == {"dm_ipc10", "eval_ipc1"}
    for bench in record["benches"].values():
        for key in KEYS:
            assert bench[key] > 0, key
        assert isinstance(bench["jax_peak_rss_bytes"], int)
        assert len(bench["jax"]["times_s"]) == paper.SIZES["tiny"]["repeats"]
    assert record["benches"]["dm_ipc10"]["jax"]["class_chunk"] >= 1
    assert "| dm_ipc10 |" in path.with_suffix(".md").read_text()


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
