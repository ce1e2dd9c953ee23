"""Closed-form kernel ridge regression on the features of random networks.

The primitive shared by MGDD (Liu & Wang, "Meta Generator for Fast Dataset Distillation",
NeurIPS 2023), FRePo (Zhou et al., NeurIPS 2022) and KIP (Nguyen et al., ICLR 2021).
With features ``F_t = f_theta(X_t)`` (n_t, d) and ``F_s = f_theta(X_s)`` (n_s, d):

* ridge weights (MGDD eq. 3): ``W = F_t^T (F_t F_t^T + lambda I)^-1 Y_t``;
* analytic labels: ``Y_s = F_s W``;
* KRR prediction of a query set from a support set:
  ``Y_q = F_q F_s^T (F_s F_s^T + lambda I)^-1 Y_s``;
* the MGDD / KIP / FRePo loss (MGDD eq. 1):
  ``L = ||F_t F_s^T (F_s F_s^T + lambda I)^-1 Y_s - Y_t||^2 / n_t`` with ``theta`` drawn afresh.

``lambda = reg * trace(K) / n`` (scale-free, as in neural-tangents and FRePo). Every solve is
one Cholesky factorisation (``cho_factor``) reused for all label columns (``cho_solve``) of the
symmetrised ``(K + K^T) / 2 + lambda I``. Kernels are formed at ``Precision.HIGHEST`` (never
TF32 or bfloat16 passes, the default for float32 matmuls on recent GPUs, whose errors exceed a
1e-6 ridge). A float32 kernel whose rank is below ``n`` (more samples than features, repeated
images) can still break a float32 factorisation at FRePo's ridge 1e-6: every function takes
``dtype=jnp.float64`` to form its kernels and solve in double precision (with
``jax_enable_x64``), returning results in the inputs' dtype. When
the feature dimension ``d`` is smaller than the number of samples ``n`` the same ridge problem is
solved in the primal, ``(F^T F + lambda I)^-1 F^T Y`` (a d x d factor, identical result since
``trace(F F^T) = trace(F^T F)`` and the same absolute ``lambda`` is used).

Functions taking a :class:`~jaxdd.types.Model` draw ``theta`` with ``model.init`` and use
``model.embed``; ``*_ensemble`` variants ``vmap`` over several random networks.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_factor, cho_solve
from jax.typing import DTypeLike

from jaxdd.types import Array, Model, PRNGKey

DEFAULT_REG = 1e-6
"""Relative ridge of the KIP/FRePo loss: ``lambda = 1e-6 * trace(K) / n``."""


def _mm(a: Array, b: Array) -> Array:
    """``a @ b`` at full precision: kernels must not lose bits to TF32 / bfloat16 passes."""
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _cast(dtype: Optional[DTypeLike], *arrays: Array) -> tuple[Array, ...]:
    """``arrays`` in ``dtype`` (None: unchanged); float64 without ``jax_enable_x64`` is an error."""
    if dtype is None:
        return arrays
    if jnp.dtype(dtype).itemsize == 8 and not jax.config.jax_enable_x64:
        raise ValueError("dtype=float64 needs 64-bit JAX: jax.config.update('jax_enable_x64', True)")
    return tuple(jnp.asarray(a).astype(dtype) for a in arrays)


def ridge(k: Array, reg: float = DEFAULT_REG) -> Array:
    """Absolute ridge ``reg * trace(k) / n`` of a square kernel matrix ``k``."""
    return reg * jnp.trace(k) / k.shape[0]


def _solve(k: Array, y: Array, lam: Array) -> Array:
    """``(sym(k) + lam I)^-1 y`` with ``sym(k) = (k + k^T) / 2``, one Cholesky factor for all columns.

    The symmetrisation acts on the value only (the gradient passes to ``k`` unchanged: every kernel
    here is ``F F^T``, whose own backward pass symmetrises it).
    """
    k = k + jax.lax.stop_gradient((k.T - k) / 2)
    factor = cho_factor(k + lam * jnp.eye(k.shape[0], dtype=k.dtype), lower=True)
    return cho_solve(factor, y)


def ridge_solve(k: Array, y: Array, reg: float = DEFAULT_REG, *, dtype: Optional[DTypeLike] = None) -> Array:
    """``(k + reg * trace(k)/n * I)^-1 y`` by one Cholesky factor reused for every column of ``y``.

    ``k`` is symmetrised first (``(k + k^T) / 2``, the same matrix for an exactly symmetric ``k``).

    Args:
        k: (n, n) symmetric positive semi-definite kernel matrix.
        y: (n,) or (n, c) right-hand sides.
        reg: relative ridge.
        dtype: factorise and solve in this dtype (e.g. ``jnp.float64``); None: ``k``'s.

    Returns:
        The solution in the dtype of ``k`` and ``y``.
    """
    out = jnp.result_type(k, y)
    k, y = _cast(dtype, k, y)
    return _solve(k, y, ridge(k, reg)).astype(out)


def ridge_weights(f_t: Array, y_t: Array, reg: float = DEFAULT_REG, *, dtype: Optional[DTypeLike] = None) -> Array:
    """Linear readout ``W = F_t^T (F_t F_t^T + lambda I)^-1 Y_t`` (MGDD eq. 3), shape (d, c).

    ``lambda = reg * trace(F_t F_t^T) / n_t``. Solved in the dual (n_t x n_t factor) when
    ``n_t <= d``, else in the primal ``(F_t^T F_t + lambda I)^-1 F_t^T Y_t`` (d x d factor); the two
    are the same matrix. ``dtype``: form the kernel and solve in it (see the module docstring).
    """
    out = jnp.result_type(f_t, y_t)
    f_t, y_t = _cast(dtype, f_t, y_t)
    n, d = f_t.shape
    if n <= d:
        return _mm(f_t.T, ridge_solve(_mm(f_t, f_t.T), y_t, reg)).astype(out)
    gram = _mm(f_t.T, f_t)
    return _solve(gram, _mm(f_t.T, y_t), reg * jnp.trace(gram) / n).astype(out)


def analytic_labels(
    f_t: Array, y_t: Array, f_s: Array, reg: float = DEFAULT_REG, *, dtype: Optional[DTypeLike] = None
) -> Array:
    """MGDD's analytic labels ``Y_s = F_s W`` with ``W`` from :func:`ridge_weights`."""
    out = jnp.result_type(f_t, y_t, f_s)
    f_t, y_t, f_s = _cast(dtype, f_t, y_t, f_s)
    return _mm(f_s, ridge_weights(f_t, y_t, reg)).astype(out)


def krr_predict(
    f_q: Array, f_s: Array, y_s: Array, reg: float = DEFAULT_REG, *, dtype: Optional[DTypeLike] = None
) -> Array:
    """Kernel ridge prediction ``F_q F_s^T (F_s F_s^T + lambda I)^-1 Y_s`` of queries from a support set."""
    out = jnp.result_type(f_q, f_s, y_s)
    f_q, f_s, y_s = _cast(dtype, f_q, f_s, y_s)
    return _mm(_mm(f_q, f_s.T), ridge_solve(_mm(f_s, f_s.T), y_s, reg)).astype(out)


def krr_loss(
    f_t: Array, y_t: Array, f_s: Array, y_s: Array, reg: float = DEFAULT_REG, *, dtype: Optional[DTypeLike] = None
) -> Array:
    """MGDD eq. 1 / KIP / FRePo loss: ``||krr_predict(F_t, F_s, Y_s) - Y_t||^2 / n_t``."""
    out = jnp.result_type(f_t, y_t, f_s, y_s)
    f_t, y_t, f_s, y_s = _cast(dtype, f_t, y_t, f_s, y_s)
    err = krr_predict(f_t, f_s, y_s, reg) - y_t
    return (jnp.sum(err**2) / f_t.shape[0]).astype(out)


def features(model: Model, params, x: Array) -> Array:
    """Flattened features ``model.embed(params, x)`` as (N, d)."""
    if model.embed is None:
        raise ValueError("kernel ridge regression needs a Model with an `embed` function")
    f = model.embed(params, x)
    return f.reshape(f.shape[0], -1)


def label_weights_ensemble(
    model: Model, keys: PRNGKey, x_t: Array, y_t: Array, reg: float = DEFAULT_REG, *, dtype: Optional[DTypeLike] = None
) -> tuple:
    """Random networks ``theta_k = model.init(keys[k])`` and their readouts ``W_k`` on ``(X_t, Y_t)``.

    The result is computed once and reused for any number of synthetic sets with
    :func:`predict_labels_ensemble` (MGDD's "random but fixed network").

    Returns:
        ``(params, weights)``: params stacked over the leading axis of ``keys``; weights (K, d, c).
    """

    def one(key):
        params = model.init(key)
        return params, ridge_weights(features(model, params, x_t), y_t, reg, dtype=dtype)

    return jax.vmap(one)(keys)


def predict_labels_ensemble(model: Model, params, weights: Array, x_s: Array) -> Array:
    """Analytic labels averaged over the networks of :func:`label_weights_ensemble`: mean_k F_k(X_s) W_k."""

    def one(p, w):
        return _mm(features(model, p, x_s), w)

    return jnp.mean(jax.vmap(one)(params, weights), axis=0)


def model_krr_loss(
    model: Model,
    key: PRNGKey,
    x_t: Array,
    y_t: Array,
    x_s: Array,
    y_s: Array,
    *,
    num_nets: int = 1,
    reg: float = DEFAULT_REG,
    dtype: Optional[DTypeLike] = None,
) -> Array:
    """MGDD's loss with freshly drawn random networks ``theta* = model.init(k)``, averaged over ``num_nets``.

    ``L = mean_k ||F*_k(X_t) F*_k(X_s)^T (F*_k(X_s) F*_k(X_s)^T + lambda I)^-1 Y_s - Y_t||^2 / n_t``.
    Differentiable in ``x_s`` and ``y_s`` (and through whatever produced them).
    """

    def one(k):
        params = jax.lax.stop_gradient(model.init(k))
        return krr_loss(features(model, params, x_t), y_t, features(model, params, x_s), y_s, reg, dtype=dtype)

    return jnp.mean(jax.vmap(one)(jax.random.split(key, num_nets)))


def kip_label_solve(
    f_t: Array, y_t: Array, f_s: Array, reg: float = DEFAULT_REG, label_reg: float = 1e-6,
    *, dtype: Optional[DTypeLike] = None,
) -> Array:
    """KIP-style optimal support labels for fixed support features (cheap for small support sets).

    Minimises ``||A Y_s - Y_t||^2`` with ``A = F_t F_s^T (F_s F_s^T + lambda I)^-1`` (n_t, n_s):
    ``Y_s = (A^T A + mu I)^-1 A^T Y_t`` with ``mu = label_reg * trace(A^T A) / n_s`` (one Cholesky).
    """
    out = jnp.result_type(f_t, y_t, f_s)
    f_t, y_t, f_s = _cast(dtype, f_t, y_t, f_s)
    a = ridge_solve(_mm(f_s, f_s.T), _mm(f_t, f_s.T).T, reg).T  # (K_ss + lam)^-1 is symmetric
    return ridge_solve(_mm(a.T, a), _mm(a.T, y_t), label_reg).astype(out)
