"""Shared fixtures. Real-data tests read ../shared/data (or $JAXDD_DATA_DIR) and skip without it."""

from __future__ import annotations

import os
from pathlib import Path

# pytest-xdist runs one process per core; on a GPU host each must not pre-allocate most of the
# device memory for itself.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# The suite's programs are tiny, so its time is mostly XLA compiling them, and LLVM's optimisation
# passes are most of that: level 0 halves the suite's time on 2 CPU cores (XLA's HLO passes are
# unchanged). Set before JAX starts; subprocesses inherit it. A level
# already in XLA_FLAGS is kept.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

import jax  # noqa: E402
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd.types import Model

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if "JAXDD_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["JAXDD_DATA_DIR"] = str(SHARED_DATA)


def real_data_dir() -> Path | None:
    """The real-data root, or None (tests then skip with a reason)."""
    root = os.environ.get("JAXDD_DATA_DIR")
    return Path(root) if root and Path(root).is_dir() else None


def tiny_mlp(num_inputs: int = 64, hidden: int = 32, num_classes: int = 10, act=jax.nn.relu, dtype=None) -> Model:
    """A two-layer MLP as a plain init/apply pair (no Flax), for fast mathematical tests.

    ``embed = act(flatten(x) @ w1 + b1)``, ``apply = embed @ w2 + b2``; weights N(0, 1/fan_in),
    zero biases. ``act=jnp.tanh`` makes it smooth (finite differences exact); ``dtype`` None is
    JAX's default float (float64 under ``jax.enable_x64``).
    """

    def init(key):
        k1, k2 = jax.random.split(key)
        return {
            "w1": jax.random.normal(k1, (num_inputs, hidden), dtype) / float(np.sqrt(num_inputs)),
            "b1": jnp.zeros(hidden, dtype),
            "w2": jax.random.normal(k2, (hidden, num_classes), dtype) / float(np.sqrt(hidden)),
            "b2": jnp.zeros(num_classes, dtype),
        }

    def embed(params, x):
        return act(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"])

    def apply(params, x):
        return embed(params, x) @ params["w2"] + params["b2"]

    return Model(init, apply, embed)


@pytest.fixture(scope="session")
def digits():
    from jaxdd.data import load_dataset

    return load_dataset("digits")
