"""The computations that ``tests/test_multidevice.py`` runs on 1 device and on a mesh of 8.

``python -m tests.multidevice_cases OUT.json`` (started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu``) runs every case on
every mesh of :data:`EVAL_MESHES` / :data:`DISTILL_MESHES` and writes one JSON object
``{"devices": 8, "evaluate": {mesh: accs}, "distill": {mesh: {method: {"images", "losses"}}}}``; the test
computes the same cases without a mesh in its own 1-device process and compares.

``python -m tests.multidevice_cases distributed PORT PROCESS_ID OUT.json`` is one of two local
processes (``jax.distributed.initialize`` on ``localhost:PORT``, CPU collectives), each with 2
CPU devices: it writes ``{"process": i, "processes": 2, "devices": 4, "sum": ..., "evaluate": accs,
"dc": {"images": ..., "losses": ...}}`` computed on the mesh ``data=2,model=2`` that spans both processes.
"""

from __future__ import annotations

import functools
import json
import sys

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdd import data, distill, evaluate, methods, models, sharding
from jaxdd.coreset import random_real

EVAL_MESHES = ("data=2,model=4", "data=8")
"""Meshes of the evaluation case (8 models)."""

DISTILL_MESHES = ("data=4,model=2",)
"""Meshes of the distillation cases: batches split 4 ways, the stacked networks 2 ways."""

DISTILL_CASES = {
    # method: (ipc, config overrides); iterations few, stacked networks >1 so that `model` splits them.
    "dc": (1, {"iterations": 2, "num_inits": 2}),
    "dm": (1, {"iterations": 3, "num_nets": 4}),
    "dd": (1, {"iterations": 3, "steps": 1, "epochs": 2, "init": "random", "num_inits": 2}),
    "frepo": (2, {"iterations": 3, "pool_size": 2}),
}


@functools.cache
def digits() -> data.Dataset:
    """The embedded digits, loaded once per process."""
    return data.load_dataset("digits")


def tiny_convnet() -> models.Model:
    """ConvNet width 8, depth 1 on 8x8x1 digits (compiles in seconds)."""
    return models.get_model("ConvNet", (8, 8, 1), 10, width=8, depth=1)


def evaluate_case(mesh=None) -> list[float]:
    """Accuracies of 8 fresh ConvNets trained 20 epochs on 2 random real digits per class."""
    ds = digits()
    synset = random_real(jax.random.key(0), ds.x_train, ds.y_train, 10, 2)
    protocol = evaluate.get_protocol("dc", epochs=20)
    result = evaluate.evaluate_synset(
        jax.random.key(1), tiny_convnet(), synset.images, synset.labels, ds.x_test, ds.y_test, protocol, 8, mesh=mesh
    )
    return result.accs.tolist()


def distill_case(method: str, mesh=None) -> dict:
    """``{'images': ..., 'losses': [...]}`` after a few steps of ``method`` (smoke preset) on digits.

    The first 1344 training images (a multiple of 8), so that the real pool is split on ``data``.
    """
    ds = digits()
    ipc, overrides = DISTILL_CASES[method]
    spec = methods.get_method(method)
    config = methods.resolve_config(spec, "smoke", ipc, "digits", overrides, num_classes=10)
    request = methods.DistillRequest(
        images=ds.x_train[:1344], labels=ds.y_train[:1344], num_classes=10, model=tiny_convnet(), ipc=ipc,
        preset="smoke", key=jax.random.key(2), config=config, dataset="digits", arch="ConvNet",
    )
    made = spec.make(request)
    losses: list[float] = []
    state = distill.run(made, jax.random.key(3), progress=False, mesh=mesh, on_step=lambda _, m: losses.append(m["loss"]))
    return {"images": np.asarray(made.to_synset(state).images).tolist(), "losses": losses}


def distributed(port: int, process_id: int) -> dict:
    """This process's share of the two-process run (see the module docstring)."""
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id)
    mesh = sharding.parse_mesh("data=2,model=2")
    values = sharding.shard_data(mesh, np.arange(8.0))
    total = jax.jit(jax.numpy.sum, out_shardings=NamedSharding(mesh, P()))(values)
    return {
        "process": jax.process_index(),
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "sum": float(total),
        "evaluate": evaluate_case(mesh),
        "dc": distill_case("dc", mesh),
    }


def main() -> None:
    """``multidevice_cases OUT.json`` or ``multidevice_cases distributed PORT PROCESS_ID OUT.json``."""
    if sys.argv[1] == "distributed":
        out = distributed(int(sys.argv[2]), int(sys.argv[3]))
    else:
        out = {"devices": jax.device_count(), "evaluate": {}, "distill": {}}
        for spec in EVAL_MESHES:
            out["evaluate"][spec] = evaluate_case(sharding.parse_mesh(spec))
        for spec in DISTILL_MESHES:
            mesh = sharding.parse_mesh(spec)
            out["distill"][spec] = {name: distill_case(name, mesh) for name in DISTILL_CASES}
    with open(sys.argv[-1], "w") as file:
        json.dump(out, file)


if __name__ == "__main__":
    main()
