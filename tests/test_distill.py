"""The driver: deterministic, resumable bit for bit, stops on NaN keeping the last checkpoint."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdd.distill import CheckpointError, NonFiniteError, run
from jaxdd.methods import IterativeMethod
from jaxdd.types import SynSet


def toy_method(lr: float = 0.1, num_steps: int = 12) -> IterativeMethod:
    """Moves 2 images per class toward noisy real class members with Adam (a key per step)."""
    real = jax.random.normal(jax.random.key(9), (40, 4, 4, 1))
    labels = jnp.repeat(jnp.arange(2), 20)
    optimizer = optax.adam(lr)

    def init(key):
        images = jax.random.normal(key, (4, 4, 4, 1))
        return {"images": images, "opt": optimizer.init(images)}

    def step(state, real_data, key):
        x, y = real_data
        pick = jax.random.randint(key, (4,), 0, 20) + jnp.array([0, 0, 20, 20])

        def loss(images):
            return jnp.mean((images - x[pick]) ** 2)

        value, grads = jax.value_and_grad(loss)(state["images"])
        updates, opt = optimizer.update(grads, state["opt"])
        return {"images": optax.apply_updates(state["images"], updates), "opt": opt}, {"loss": value}

    def to_synset(state):
        return SynSet(state["images"], jnp.array([0, 0, 1, 1]))

    return IterativeMethod(init, step, to_synset, (real, labels), num_steps, {"method": "toy", "lr": lr})


def test_same_key_same_set():
    a = run(toy_method(), jax.random.key(0), progress=False)
    b = run(toy_method(), jax.random.key(0), progress=False)
    c = run(toy_method(), jax.random.key(1), progress=False)
    np.testing.assert_array_equal(a["images"], b["images"])
    assert not np.array_equal(a["images"], c["images"])


def test_killed_and_resumed_run_equals_uninterrupted(tmp_path):
    straight = run(toy_method(), jax.random.key(0), progress=False)
    run(toy_method(), jax.random.key(0), checkpoint_dir=tmp_path, checkpoint_every=3, stop_at=7, progress=False)
    # the "kill" happened after step 7; the checkpoint on disk is the one of step 7
    resumed = run(toy_method(), jax.random.key(0), checkpoint_dir=tmp_path, checkpoint_every=3, resume=True, progress=False)
    jax.tree.map(np.testing.assert_array_equal, straight, resumed)


def test_resume_refuses_a_checkpoint_of_another_run_naming_the_fields(tmp_path):
    identity = {"dataset": "digits", "data": "ab12", "arch": "ConvNet", "seed": 7}
    run(toy_method(), jax.random.key(0), checkpoint_dir=tmp_path, identity=identity, stop_at=2, progress=False)
    before = (tmp_path / "checkpoint.npz").read_bytes()
    cases = [
        (toy_method(lr=0.5), jax.random.key(0), identity, r"\(method_config.lr: 0.1 -> 0.5\)"),
        (toy_method(), jax.random.key(1), identity, r"\(key: \[0, 0\] -> \[0, 1\]\)"),
        (toy_method(), jax.random.key(0), {**identity, "dataset": "mnist", "seed": 8}, r'\(dataset: "digits" -> "mnist"; seed: 7 -> 8\)'),
        (toy_method(), jax.random.key(0), {**identity, "zca": True}, r"\(zca: \(absent\) -> true\)"),
    ]
    for method, key, other, message in cases:
        with pytest.raises(CheckpointError, match=message):
            run(method, key, checkpoint_dir=tmp_path, identity=other, resume=True, progress=False)
    assert (tmp_path / "checkpoint.npz").read_bytes() == before
    resumed = run(toy_method(), jax.random.key(0), checkpoint_dir=tmp_path, identity=identity, resume=True, progress=False)
    jax.tree.map(np.testing.assert_array_equal, resumed, run(toy_method(), jax.random.key(0), progress=False))


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    method = toy_method(num_steps=50)
    inner_step = method.step

    def exploding_step(state, real_data, key):
        state, metrics = inner_step(state, real_data, key)
        count = state["opt"][0].count
        return state, {"loss": jnp.where(count >= 6, jnp.nan, metrics["loss"])}

    method = method._replace(step=exploding_step)
    with pytest.raises(NonFiniteError, match="step 5"):
        run(method, jax.random.key(0), checkpoint_dir=tmp_path, checkpoint_every=2, progress=False)
    with np.load(tmp_path / "checkpoint.npz") as stored:
        assert int(stored["__step__"]) == 4
        assert all(np.all(np.isfinite(stored[name])) for name in stored.files if name.startswith("leaf_"))


def test_a_nan_found_late_is_never_checkpointed(tmp_path):
    """Metrics are read in batches (sync_every); a checkpoint is written only after every step before it was read back finite."""
    method = toy_method(num_steps=50)
    inner_step = method.step

    def poisoned_step(state, real_data, key):
        state, metrics = inner_step(state, real_data, key)
        count = state["opt"][0].count
        return {**state, "images": jnp.where(count >= 5, jnp.inf, state["images"])}, metrics  # the state, not the loss

    seen = []
    with pytest.raises(NonFiniteError, match=r"step 4: .*\(step 3\)"):
        run(method._replace(step=poisoned_step), jax.random.key(0), checkpoint_dir=tmp_path, checkpoint_every=3,
            sync_every=7, on_step=lambda step, metrics: seen.append(step), progress=False)
    assert seen == [0, 1, 2, 3]
    with np.load(tmp_path / "checkpoint.npz") as stored:
        assert int(stored["__step__"]) == 3
        assert all(np.all(np.isfinite(stored[name])) for name in stored.files if name.startswith("leaf_"))


def test_step_is_compiled_once():
    import chex

    method = toy_method(num_steps=6)
    chex.clear_trace_counter()
    traced_step = chex.assert_max_traces(method.step, n=1)
    run(method._replace(step=traced_step), jax.random.key(0), progress=False)
