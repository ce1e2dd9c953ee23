"""Scale-out: the same results on 1 device, on 8 simulated CPU devices and on two processes.

``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX starts, so the
8-device side runs in one subprocess (``tests/multidevice_cases.py``, every case and mesh in one
go), and the two-process side in two more (``jax.distributed`` on localhost, CPU collectives).
They run while this process computes the same cases on its single device, without a mesh.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import sharding
from jaxdd.cli import main
from tests import multidevice_cases as cases

pytestmark = pytest.mark.multidevice

ROOT = Path(__file__).resolve().parents[1]
TEST_IMAGES = 450
"""Test split of the embedded digits."""

CPU_COLLECTIVES = hasattr(jax.config, "jax_cpu_collectives_implementation")
"""Whether this JAX can run collectives between CPU processes (gloo)."""


def _env(devices: int) -> dict:
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", PYTHONPATH=path)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _start(name: str, args: list, devices: int, folder: Path) -> tuple[subprocess.Popen, Path, Path]:
    out, log = folder / f"{name}.json", folder / f"{name}.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.multidevice_cases", *args, str(out)],
            cwd=ROOT, env=_env(devices), stdout=subprocess.DEVNULL, stderr=stderr,
        )
    return proc, out, log


def _collect(proc: subprocess.Popen, out: Path, log: Path) -> dict:
    try:
        proc.wait(timeout=900)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise AssertionError(f"{' '.join(map(str, proc.args))} failed ({proc.returncode}):\n{tail}")
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(reference without a mesh, on one device, {'eight': ..., 'process0': ..., 'process1': ...})."""
    folder = tmp_path_factory.mktemp("multidevice")
    started = {"eight": _start("eight", [], 8, folder)}
    port = str(_free_port())
    for i in range(2 if CPU_COLLECTIVES else 0):
        started[f"process{i}"] = _start(f"process{i}", ["distributed", port, str(i)], 2, folder)
    try:
        reference = {
            "evaluate": cases.evaluate_case(),
            "distill": {name: cases.distill_case(name) for name in cases.DISTILL_CASES},
        }
    finally:
        results = {}
        for name, (proc, out, log) in started.items():
            try:
                results[name] = _collect(proc, out, log)
            except AssertionError as error:
                results[name] = error
    return reference, results


def _result(results: dict, name: str) -> dict:
    if isinstance(results[name], AssertionError):
        raise results[name]
    return results[name]


@pytest.mark.parametrize("mesh", cases.EVAL_MESHES)
def test_evaluation_on_8_devices_equals_1_device(runs, mesh):
    reference, results = runs
    eight = _result(results, "eight")
    assert eight["devices"] == 8
    accs, expected = np.asarray(eight["evaluate"][mesh]), np.asarray(reference["evaluate"])
    assert expected.shape == (8,) and expected.mean() > 0.3  # trained: chance is 0.1
    # Each device trains its models with the 1-device program, so the parameters are the same;
    # only the test chunks differ (split on `data`): at most one test image may flip per model
    # (none does here; the keys of a wrongly assigned model would change every accuracy).
    np.testing.assert_allclose(accs, expected, rtol=0, atol=1.01 / TEST_IMAGES)


@pytest.mark.parametrize("method", list(cases.DISTILL_CASES))
@pytest.mark.parametrize("mesh", cases.DISTILL_MESHES)
def test_distillation_on_8_devices_matches_1_device(runs, method, mesh):
    reference, results = runs
    _assert_same_run(_result(results, "eight")["distill"][mesh][method], reference["distill"][method], method)


def _assert_same_run(got: dict, expected: dict, method: str) -> None:
    """Every step's loss and the final images agree up to float32 rounding.

    Sums split across devices are added in another order: rounding, nothing more.
    """
    assert len(expected["losses"]) == cases.DISTILL_CASES[method][1]["iterations"]
    np.testing.assert_allclose(got["losses"], expected["losses"], rtol=1e-4, atol=1e-6)
    images, want = np.asarray(got["images"], np.float32), np.asarray(expected["images"], np.float32)
    assert images.shape == want.shape
    np.testing.assert_allclose(images, want, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(
    not CPU_COLLECTIVES,
    reason="this JAX has no CPU collectives (jax_cpu_collectives_implementation), so two CPU processes cannot share a mesh",
)
def test_two_processes_share_one_mesh(runs):
    reference, results = runs
    for i in range(2):
        result = _result(results, f"process{i}")
        assert (result["process"], result["processes"], result["devices"]) == (i, 2, 4)
        assert result["sum"] == 28.0  # sum(range(8)) over a vector split across both processes
        np.testing.assert_allclose(result["evaluate"], reference["evaluate"], rtol=0, atol=1.01 / TEST_IMAGES)
        _assert_same_run(result["dc"], reference["distill"]["dc"], "dc")


def test_make_and_parse_mesh():
    one = jax.devices()[:1]
    mesh = sharding.make_mesh(devices=one)
    assert mesh.axis_names == ("data", "model") and dict(mesh.shape) == {"data": 1, "model": 1}
    assert dict(sharding.parse_mesh("model=1", one).shape) == {"data": 1, "model": 1}
    for spec, message in [
        ("data=2", "does not use the 1 available devices"),
        ("data=1,model=2", "does not use the 1 available devices"),
        ("pipeline=1", "expected data=N,model=M"),
        ("data=1,data=1", "expected data=N,model=M"),
        ("data=two", "needs an integer size"),
        ("data=0", "at least 1 device"),
    ]:
        with pytest.raises(ValueError, match=message):
            sharding.parse_mesh(spec, one)


def test_placement_helpers_and_constrain_without_mesh():
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    x = jnp.arange(12.0).reshape(6, 2)
    assert sharding.shard_data(mesh, x).sharding.spec == jax.sharding.PartitionSpec("data")
    assert sharding.shard_data(mesh, x, axis=1).sharding.spec == jax.sharding.PartitionSpec(None, "data")
    key = sharding.replicate(mesh, jax.random.key(0))
    assert jax.random.key_data(key).tolist() == jax.random.key_data(jax.random.key(0)).tolist()
    with pytest.raises(ValueError, match="must exist and its size must divide"):
        sharding.shard_data(mesh, jnp.float32(1.0))
    assert sharding.constrain(x, "model") is x  # no mesh: the very same array, nothing traced
    assert "sharding_constraint" not in str(jax.make_jaxpr(lambda a: sharding.constrain(a, "data"))(x))


def test_cli_mesh_option(tmp_path, capsys):
    out = tmp_path / "rand"
    assert main(["distill", "--method", "random", "--ipc", "1", "--out", str(out), "--mesh", "data=1"]) == 0
    assert json.loads((out / "synset.json").read_text())["mesh"] == "data=1"
    capsys.readouterr()
    assert main(["evaluate", str(out), "--models", "2", "--epochs", "2", "--arch", "MLP", "--json", "--mesh", "data=1,model=1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["accs"]) == 2 and result["mesh"] == "data=1,model=1"
    for spec in ("data=3", "data=x"):
        assert main(["evaluate", str(out), "--mesh", spec]) == 2
        err = capsys.readouterr().err
        assert err.startswith("jaxdd: error: --mesh:") and err.count("\n") == 1
