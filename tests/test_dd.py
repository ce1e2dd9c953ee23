"""DD (issue 4): the unroll, its gradients, checkpointing, the method and its evaluation protocol."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import conftest
from jaxdd.evaluate import evaluate_synset, get_protocol
from jaxdd.methods import DistillRequest, get_method
from jaxdd.methods import dd
from jaxdd.train import CycledGD, gd_unroll, loss_fn, split_steps, train_gd_steps
from jaxdd.types import Model


def tiny_mlp(in_dim: int, hidden: int, classes: int, dtype=jnp.float32) -> Model:
    """conftest's MLP with tanh (smooth, so finite differences are exact)."""
    return conftest.tiny_mlp(in_dim, hidden, classes, act=jnp.tanh, dtype=dtype)


def test_scan_unroll_equals_python_loop():
    model = tiny_mlp(6, 5, 3)
    theta0 = model.init(jax.random.key(0))
    s, b, t = 3, 4, 7
    x = jax.random.normal(jax.random.key(1), (s, b, 6))
    y = jax.random.randint(jax.random.key(2), (s, b), 0, 3)
    lrs = jnp.linspace(0.05, 0.3, t)

    def step_loss(theta, batch):
        return loss_fn(model.apply(theta, batch[0]), batch[1])

    grad = jax.jit(jax.grad(step_loss))
    theta = theta0
    for i in range(t):  # the reference: a Python loop over steps, batch i mod S
        g = grad(theta, (x[i % s], y[i % s]))
        theta = jax.tree.map(lambda p, gi: p - lrs[i] * gi, theta, g)
    for mode in ("none", "step", "sqrt", "cbrt"):
        got = gd_unroll(step_loss, theta0, (x, y), lrs, checkpoint=mode)
        jax.tree.map(lambda a, b_: np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-6), got, theta)


def _meta_setup(dtype, learn_labels=False, steps=2, epochs=2):
    model = tiny_mlp(4, 3, 3, dtype)
    config = dd.DDConfig(steps=steps, epochs=epochs, ipc_per_step=1, learn_labels=learn_labels)
    params = dd.init_params(jax.random.key(0), config, (4,), 3)
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    theta0 = model.init(jax.random.key(1))
    real_x = jax.random.normal(jax.random.key(2), (8, 4), dtype)
    real_y = jax.random.randint(jax.random.key(3), (8,), 0, 3)
    labels = dd.step_labels(3, config.steps, 1)
    return model, config, params, theta0, real_x, real_y, labels


def test_meta_loss_gradients_float64():
    with jax.enable_x64(True):
        model, config, params, theta0, real_x, real_y, labels = _meta_setup(jnp.float64)
        # a larger step size so the second-order terms matter
        params = params._replace(raw_lrs=params.raw_lrs + 2.0)

        def f(images, raw_lrs):
            p = params._replace(images=images, raw_lrs=raw_lrs)
            return dd.meta_loss(p, theta0, real_x, real_y, model=model, labels=labels)

        check_grads(jax.jit(f), (params.images, params.raw_lrs), order=1, modes=("rev",), atol=1e-6, rtol=1e-5)


def test_meta_loss_gradients_soft_labels_float64():
    with jax.enable_x64(True):
        model, config, params, theta0, real_x, real_y, labels = _meta_setup(jnp.float64, learn_labels=True)

        def f(logits):
            return dd.meta_loss(params._replace(label_logits=logits), theta0, real_x, real_y, model=model,
                                labels=labels)

        check_grads(jax.jit(f), (params.label_logits,), order=1, modes=("rev",), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", ["step", "sqrt", "cbrt"])
def test_checkpointed_gradients_equal_plain(mode):
    with jax.enable_x64(True):
        # T = 7 * 1 is not a square: the sqrt mode pads with zero step sizes
        model, config, params, theta0, real_x, real_y, labels = _meta_setup(jnp.float64, steps=7, epochs=1)

        def grads(checkpoint):
            def f(p):
                return dd.meta_loss(p, theta0, real_x, real_y, model=model, labels=labels,
                                    checkpoint=checkpoint)
            return jax.jit(jax.grad(f))(params)

        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), grads(mode), grads("none"))


def test_dd_trainer_reproduces_the_distillation_unroll():
    """Evaluating a DD set (its step order, step sizes, theta_0) gives exactly the distilled theta_T."""
    model = tiny_mlp(4, 3, 3)
    config = dd.DDConfig(steps=3, epochs=2, ipc_per_step=2)
    params = dd.init_params(jax.random.key(0), config, (4,), 3)
    params = params._replace(raw_lrs=params.raw_lrs + jnp.arange(6.0) / 10)
    theta0 = model.init(jax.random.key(1))
    labels = dd.step_labels(3, 3, 2)
    synset = dd.to_synset(params, labels, config.epochs)
    assert synset.images.shape == (18, 4) and synset.step_sizes.shape == (2, 3)
    assert np.all(np.asarray(synset.labels[:6]) == [0, 0, 1, 1, 2, 2])

    def step_loss(theta, batch):
        return loss_fn(model.apply(theta, batch[0]), batch[1])

    expected = gd_unroll(step_loss, theta0, (params.images, labels), jax.nn.softplus(params.raw_lrs))
    got = train_gd_steps(jax.random.key(5), model, synset.images, synset.labels, get_protocol("dd"),
                         params=theta0, step_sizes=synset.step_sizes)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, expected)


def test_split_steps_is_class_balanced():
    images = jnp.arange(12.0).reshape(12, 1)
    labels = jnp.repeat(jnp.arange(3), 4)  # class-sorted, ipc 4
    xs, ys = split_steps(images, labels, 2)
    assert xs.shape == (2, 6, 1)
    for s in range(2):
        assert sorted(np.asarray(ys[s]).tolist()) == [0, 0, 1, 1, 2, 2]


def test_theta0_round_trip():
    model = tiny_mlp(4, 3, 3)
    theta0 = model.init(jax.random.key(3))
    arrays = dd.params_to_arrays(theta0)
    assert dd.has_theta0(arrays) and all(k.startswith("theta0.") for k in arrays)
    back = dd.arrays_to_params(arrays, model.init(jax.random.key(9)))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), back, theta0)
    with pytest.raises(ValueError, match="missing initial parameter"):
        dd.arrays_to_params({}, theta0)


def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = ((x / 16.0 - 0.3) / 0.4).astype(np.float32).reshape(-1, 8, 8, 1)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order].astype(np.int32)
    return jnp.asarray(x[:1400]), jnp.asarray(y[:1400]), jnp.asarray(x[1400:]), jnp.asarray(y[1400:])


@pytest.mark.parametrize("init", ["fixed", "random"])
def test_smoke_on_digits_beats_random_real(init):
    """smoke preset: DD's set beats random real images trained with the same 1 x 3 GD steps."""
    from jaxdd import coreset, distill

    x_train, y_train, x_test, y_test = _digits()
    model = tiny_mlp(64, 32, 10)
    request = DistillRequest(images=x_train, labels=y_train, num_classes=10, model=model, ipc=1, preset="smoke",
                             key=jax.random.key(0), config=dd.default_config("smoke", 1, "")._replace(init=init, steps=1))
    method = get_method("dd").make(request)
    assert method.config["unrolled_steps"] == 3
    state = distill.run(method, jax.random.key(0), progress=False)
    synset = method.to_synset(state)
    theta0 = state.theta0 if init == "fixed" else None
    ours = evaluate_synset(jax.random.key(1), model, synset.images, synset.labels, x_test, y_test,
                           get_protocol("dd"), num_models=8, init_params=theta0, step_sizes=synset.step_sizes)
    real = coreset.random_real(jax.random.key(2), x_train, y_train, 10, 1)
    best = max(  # the baseline gets the better of two fixed step sizes
        evaluate_synset(jax.random.key(1), model, real.images, real.labels, x_test, y_test,
                        get_protocol("dd", trainer=CycledGD(steps=1), lr=lr), num_models=8, init_params=theta0).mean
        for lr in (0.3, 1.0))
    assert ours.mean > best + 0.1, (ours.mean, best)


def test_cli_round_trip_keeps_theta0_and_step_sizes(tmp_path, capsys):
    """`jaxdd distill --method dd` saves theta_0 + step sizes; `jaxdd evaluate` trains from them."""
    from jaxdd import cli, io, models

    out = tmp_path / "dd"
    assert cli.main(["distill", "--method", "dd", "--dataset", "digits", "--arch", "MLP", "--ipc", "2", "--steps", "2",
                     "--epochs", "2", "--iterations", "3", "--preset", "smoke", "--out", str(out), "--no-progress"]) == 0
    synset, meta, extras = io.load_synset(out)
    assert synset.step_sizes.shape == (2, 2) and meta["eval_protocol"] == "dd"
    model = models.get_model("MLP", (8, 8, 1), 10)
    theta0 = dd.eval_kwargs(meta, extras, model)["init_params"]
    assert jax.tree.structure(theta0) == jax.tree.structure(model.init(jax.random.key(0)))
    capsys.readouterr()
    assert cli.main(["evaluate", str(out), "--models", "2", "--json"]) == 0
    result = __import__("json").loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["protocol"] == "dd" and result["std"] == 0.0  # fixed init: every model is the same


def test_outer_step_compiles_once():
    import chex

    model = tiny_mlp(4, 3, 3)
    config = dd.DDConfig(steps=2, epochs=2, ipc_per_step=1, init="random", num_inits=2, real_batch=8)
    init, step = dd.make_functions(config, model, (4,), 3)
    real = (jax.random.normal(jax.random.key(0), (32, 4)), jax.random.randint(jax.random.key(1), (32,), 0, 3))
    jitted = jax.jit(chex.assert_max_traces(step, n=1))
    state = init(jax.random.key(2))
    for i in range(3):
        state, metrics = jitted(state, real, jax.random.key(10 + i))
    assert np.isfinite(float(metrics["loss"]))
