"""Kernel ridge regression: the closed-form solves against NumPy, gradients, analytic labels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxdd import krr
from conftest import tiny_mlp
from jaxdd.types import Model


def tiny_model(in_dim: int = 12, width: int = 6, classes: int = 3) -> Model:
    """conftest's MLP with tanh: random features ``embed = tanh(flatten(x) @ w1)`` (zero bias)."""
    return tiny_mlp(in_dim, width, classes, act=jnp.tanh)


def _data(n, d, c, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), np.eye(c)[rng.integers(0, c, n)]


def test_ridge_solve_matches_numpy_float64():
    with jax.enable_x64(True):
        f, y = _data(7, 5, 3, 0)
        k = f @ f.T
        reg = 1e-3
        expected = np.linalg.solve(k + reg * np.trace(k) / 7 * np.eye(7), y)
        got = krr.ridge_solve(jnp.asarray(k), jnp.asarray(y), reg)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("n,d", [(5, 9), (9, 4)])  # dual (n <= d) and primal (n > d) paths
def test_ridge_weights_and_labels_match_numpy_float64(n, d):
    with jax.enable_x64(True):
        f_t, y_t = _data(n, d, 3, 1)
        f_s, _ = _data(4, d, 3, 2)
        reg = 1e-2
        k = f_t @ f_t.T
        w = f_t.T @ np.linalg.solve(k + reg * np.trace(k) / n * np.eye(n), y_t)
        np.testing.assert_allclose(np.asarray(krr.ridge_weights(jnp.asarray(f_t), jnp.asarray(y_t), reg)), w, rtol=1e-8, atol=1e-10)
        labels = krr.analytic_labels(jnp.asarray(f_t), jnp.asarray(y_t), jnp.asarray(f_s), reg)
        np.testing.assert_allclose(np.asarray(labels), f_s @ w, rtol=1e-8, atol=1e-10)


def test_krr_loss_matches_numpy_float64():
    with jax.enable_x64(True):
        f_t, y_t = _data(8, 6, 3, 3)
        f_s, y_s = _data(4, 6, 3, 4)
        reg = 1e-4
        k = f_s @ f_s.T
        pred = f_t @ f_s.T @ np.linalg.solve(k + reg * np.trace(k) / 4 * np.eye(4), y_s)
        expected = np.sum((pred - y_t) ** 2) / 8
        got = krr.krr_loss(*map(jnp.asarray, (f_t, y_t, f_s, y_s)), reg)
        np.testing.assert_allclose(float(got), expected, rtol=1e-10)


def test_model_krr_loss_gradients_wrt_images():
    model = tiny_model()
    with jax.enable_x64(True):
        rng = np.random.default_rng(5)
        x_t = jnp.asarray(rng.normal(size=(10, 2, 2, 3)))
        y_t = jnp.asarray(np.eye(3)[rng.integers(0, 3, 10)])
        x_s = jnp.asarray(rng.normal(size=(4, 2, 2, 3)))
        y_s = jnp.asarray(np.eye(3)[np.arange(4) % 3])
        key = jax.random.key(0)

        def loss(xs):
            return krr.model_krr_loss(model, key, x_t, y_t, xs, y_s, num_nets=2, reg=1e-3)

        check_grads(loss, (x_s,), order=2, modes=("rev",), atol=1e-5, rtol=1e-5)


def test_analytic_labels_reproduce_targets_as_ridge_vanishes():
    # n_t <= d: the kernel is invertible and the ridge readout interpolates Y_t as lambda -> 0.
    with jax.enable_x64(True):
        f_t, y_t = _data(6, 10, 3, 6)
        f_t, y_t = jnp.asarray(f_t), jnp.asarray(y_t)
        errors = [float(jnp.max(jnp.abs(krr.analytic_labels(f_t, y_t, f_t, reg) - y_t))) for reg in (1e-2, 1e-5, 1e-9)]
        assert errors[0] > errors[1] > errors[2]
        assert errors[2] < 1e-7


def test_label_weights_ensemble_through_models():
    # The Model-level ensemble equals averaging the per-network solves done one by one.
    model = tiny_model(width=16)
    with jax.enable_x64(True):
        rng = np.random.default_rng(7)
        x_t = jnp.asarray(rng.normal(size=(8, 2, 2, 3)))
        y_t = jnp.asarray(np.eye(3)[rng.integers(0, 3, 8)])
        keys = jax.random.split(jax.random.key(1), 3)
        params, weights = krr.label_weights_ensemble(model, keys, x_t, y_t, reg=1e-10)
        got = krr.predict_labels_ensemble(model, params, weights, x_t)
        one_by_one = []
        for k in keys:
            p = model.init(k)
            one_by_one.append(krr.analytic_labels(model.embed(p, x_t), y_t, model.embed(p, x_t), 1e-10))
        np.testing.assert_allclose(np.asarray(got), np.mean(np.stack(one_by_one), 0), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(np.asarray(got), np.asarray(y_t), atol=1e-5)  # 8 samples <= 16 features


def test_near_singular_float32_kernel_at_frepo_ridge():
    """Rank 20 < n = 300 at ridge 1e-6: float32 Cholesky fails (NaN on CPU); dtype=float64 gives the float64 solve."""
    f = jax.random.normal(jax.random.key(0), (300, 20), jnp.float32)
    y = jax.nn.one_hot(jnp.arange(300) % 10, 10, dtype=jnp.float32)
    k = f @ f.T
    f64, y64, k64 = (np.asarray(a, np.float64) for a in (f, y, k))
    expected = np.linalg.solve(k64 + 1e-6 * np.trace(k64) / 300 * np.eye(300), y64)
    in_float32 = np.asarray(krr.ridge_solve(k, y, 1e-6))
    assert not np.all(np.isfinite(in_float32)) or np.abs(in_float32 - expected).max() > 1e-2 * np.abs(expected).max()
    with jax.enable_x64(True):
        got = krr.ridge_solve(k, y, 1e-6, dtype=jnp.float64)
        assert got.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(got)))
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
        # the prediction from float32 features, its kernels formed in float64 too
        kq = f64[:7] @ f64.T
        k_exact = f64 @ f64.T
        pred = kq @ np.linalg.solve(k_exact + 1e-6 * np.trace(k_exact) / 300 * np.eye(300), y64)
        got = krr.krr_predict(f[:7], f, y, 1e-6, dtype=jnp.float64)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), pred, rtol=1e-5, atol=1e-5)
    if not jax.config.jax_enable_x64:
        with pytest.raises(ValueError, match="jax_enable_x64"):
            krr.ridge_solve(k, y, 1e-6, dtype=jnp.float64)


def test_kip_label_solve_is_the_least_squares_optimum():
    with jax.enable_x64(True):
        f_t, y_t = _data(12, 5, 3, 8)
        f_s, _ = _data(4, 5, 3, 9)
        reg = 1e-3
        k = f_s @ f_s.T
        a = f_t @ f_s.T @ np.linalg.inv(k + reg * np.trace(k) / 4 * np.eye(4))
        expected = np.linalg.lstsq(a, y_t, rcond=None)[0]
        got = krr.kip_label_solve(*map(jnp.asarray, (f_t, y_t, f_s)), reg=reg, label_reg=1e-12)
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)
        assert float(krr.krr_loss(jnp.asarray(f_t), jnp.asarray(y_t), jnp.asarray(f_s), got, reg)) <= float(
            krr.krr_loss(jnp.asarray(f_t), jnp.asarray(y_t), jnp.asarray(f_s), jnp.asarray(np.eye(3)[np.arange(4) % 3]), reg)
        )
