"""Expert trajectories: vmapped training equals one-by-one training; a killed run resumes exactly."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_mlp
from jaxdd import experts
from jaxdd.train import train_on_set

MODEL = tiny_mlp()
PROTOCOL = experts.expert_protocol(None, epochs=3, batch_size=16, lr=0.05)


def _data():
    x = jax.random.normal(jax.random.key(0), (40, 8, 8, 1))
    y = jnp.arange(40, dtype=jnp.int32) % 10
    return x, y


def test_vmapped_experts_equal_one_by_one_training():
    model, (x, y) = MODEL, _data()
    key = jax.random.key(1)
    run = experts.train_experts(key, model, x, y, PROTOCOL, num_experts=3, model_batch=3)  # all 3 vmapped
    assert run.num_epochs == 3
    one_epoch = dataclasses.replace(PROTOCOL, epochs=1)
    train = jax.jit(train_on_set, static_argnums=(1, 4))
    for i, k in enumerate(jax.random.split(key, 3)):
        params = model.init(k)
        for epoch in range(3):
            params = train(jax.random.fold_in(k, epoch), model, x, y, one_epoch, params)
            recorded = jax.tree.map(lambda a: a[i, epoch + 1], run.params)
            for a, b in zip(jax.tree.leaves(recorded), jax.tree.leaves(params)):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_killed_run_resumes_bit_identically(tmp_path):
    model, (x, y) = MODEL, _data()
    key = jax.random.key(2)
    full = experts.train_experts(key, model, x, y, PROTOCOL, num_experts=3, path=tmp_path / "full.npz")
    # A run killed after epoch 1: its file holds epochs 0..1.
    cut = jax.tree.map(lambda a: a[:, :2], full.params)
    experts.save_experts(tmp_path / "cut.npz", cut, {**full.meta, "epochs_done": 1})
    resumed = experts.train_experts(key, model, x, y, PROTOCOL, num_experts=3, path=tmp_path / "cut.npz")
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params)):
        np.testing.assert_array_equal(a, b)
    loaded = experts.load_experts(tmp_path / "cut.npz", model.init(key))
    assert loaded.meta["epochs_done"] == 3 and loaded.meta["protocol"]["lr"] == 0.05
    with pytest.raises(experts.ExpertError, match="another configuration"):
        experts.train_experts(key, model, x, y, PROTOCOL, num_experts=2, path=tmp_path / "cut.npz")
