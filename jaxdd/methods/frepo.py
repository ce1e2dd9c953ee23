"""FRePo-style distillation: kernel ridge regression on the features of an online model pool.

Zhou, Nezhadarya, Ba, "Dataset Distillation using Neural Feature Regression", NeurIPS 2022
(REFERENCE section 6). Learned images ``X_s`` and learned soft labels ``Y_s``; per step:

1. pick model ``i`` of a pool of ``P`` online networks (one stacked pytree);
2. ``L = ||F_i(X_t) F_i(X_s)^T (F_i(X_s) F_i(X_s)^T + lambda I)^-1 Y_s - Y_t||^2 / n_t``
   (:func:`jaxdd.krr.krr_loss`, ``lambda = reg * trace / n``) on a real batch ``(X_t, Y_t)``;
   ``(X_s, Y_s) <- Adam((X_s, Y_s), grad L)``;
3. model ``i`` takes one optimiser step on the current synthetic set (MSE to ``Y_s``); once it
   has taken ``max_age`` steps it is re-initialised (the pool stays a mix of young and old
   networks: initial ages are staggered).

KIP-style label solving (Nguyen et al. 2021) where it is cheap: with ``labels='kip'`` the
initial labels are the least-squares optimum :func:`jaxdd.krr.kip_label_solve` for the initial
images in a random network (one Cholesky solve of size ``C * ipc``) instead of one-hot.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxdd import coreset, krr
from jaxdd.methods import DistillRequest, IterativeMethod, MethodSpec, register, request_config
from jaxdd.sharding import DATA, MODEL, constrain
from jaxdd.types import Array, Model, Params, PRNGKey, SynSet


class FRePoConfig(NamedTuple):
    """FRePo hyper-parameters.

    Attributes:
        iterations: outer iterations.
        pool_size: online networks P in the pool.
        max_age: optimiser steps after which a pool network is re-initialised.
        lr: Adam learning rate of the synthetic images and labels.
        model_lr: Adam learning rate of the pool networks (MSE to the synthetic labels).
        batch_real: real images per step in the ridge-regression loss.
        reg: relative ridge ``lambda = reg * trace(K) / n``.
        labels: initial labels: 'learn' (one-hot) or 'kip' (the KIP least-squares solve in a
            random network); learned either way.
    """

    iterations: int = 300
    pool_size: int = 5
    max_age: int = 50
    lr: float = 3e-3
    model_lr: float = 1e-3
    batch_real: int = 256
    reg: float = 1e-4
    labels: Literal["learn", "kip"] = "learn"


PRESETS = {
    "smoke": FRePoConfig(iterations=20, pool_size=2, max_age=10, batch_real=64),
    "cpu": FRePoConfig(),
    "paper": FRePoConfig(iterations=100000, pool_size=10, max_age=100, lr=3e-4, model_lr=3e-4, batch_real=1024, reg=1e-6),
}


class FRePoState(NamedTuple):
    """Synthetic set, its optimiser state, and the online pool (stacked over the first axis)."""

    images: Array
    labels: Array
    opt_state: Any
    pool_params: Params
    pool_opt: Any
    ages: Array


def _index(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


def _set_index(tree, i, value):
    return jax.tree.map(lambda a, v: a.at[i].set(v), tree, value)


def kip_initial_labels(model: Model, key: PRNGKey, x_s: Array, x_t: Array, y_t: Array, reg: float) -> Array:
    """KIP label solve for fixed images in the random network ``model.init(key)`` (cheap: C*ipc sized)."""
    params = model.init(key)
    return krr.kip_label_solve(krr.features(model, params, x_t), y_t, krr.features(model, params, x_s), reg)


def make_frepo(model: Model, images0: Array, labels0: Array, config: FRePoConfig):
    """``(init, step)`` of FRePo for a synthetic set starting at ``(images0, labels0)`` (soft, (N, C)).

    ``step(state, real, key)`` with ``real = (images, labels)`` of the whole real training set.
    Under a mesh (:func:`jaxdd.sharding.constrain`) the pool is split on ``model`` (placed so by
    ``init``) and the real batch on ``data``.
    """
    num_classes = labels0.shape[-1]
    optimizer = optax.adam(config.lr)
    model_opt = optax.adam(config.model_lr)

    def init(key: PRNGKey) -> FRePoState:
        syn = {"images": images0, "labels": labels0}
        params = jax.vmap(model.init)(jax.random.split(key, config.pool_size))
        ages = (jnp.arange(config.pool_size) * config.max_age) // config.pool_size
        pool = constrain((params, jax.vmap(model_opt.init)(params)), MODEL)
        return FRePoState(images0, labels0, optimizer.init(syn), *pool, ages)

    def step(state: FRePoState, real, key: PRNGKey):
        k_batch, k_pick, k_reinit = jax.random.split(key, 3)
        x_all, y_all = real
        idx = jax.random.randint(k_batch, (config.batch_real,), 0, x_all.shape[0])
        x_t, y_t = constrain((x_all[idx], jax.nn.one_hot(y_all[idx], num_classes)), DATA)
        i = jax.random.randint(k_pick, (), 0, config.pool_size)
        params = _index(state.pool_params, i)
        f_t = jax.lax.stop_gradient(krr.features(model, params, x_t))

        def loss_fn(syn):
            return krr.krr_loss(f_t, y_t, krr.features(model, params, syn["images"]), syn["labels"], config.reg)

        syn = {"images": state.images, "labels": state.labels}
        loss, grads = jax.value_and_grad(loss_fn)(syn)
        updates, opt_state = optimizer.update(grads, state.opt_state, syn)
        syn = optax.apply_updates(syn, updates)

        # One online step of model i on the synthetic set, then re-initialise it when too old.
        def model_loss(p):
            return 0.5 * jnp.mean(jnp.sum((model.apply(p, syn["images"]) - syn["labels"]) ** 2, -1))

        m_opt = _index(state.pool_opt, i)
        m_updates, m_opt = model_opt.update(jax.grad(model_loss)(params), m_opt, params)
        new_params = optax.apply_updates(params, m_updates)
        age = state.ages[i] + 1
        old = age >= config.max_age
        fresh = model.init(k_reinit)
        new_params = jax.tree.map(lambda a, b: jnp.where(old, a, b), fresh, new_params)
        m_opt = jax.tree.map(lambda a, b: jnp.where(old, a, b), model_opt.init(fresh), m_opt)
        state = FRePoState(
            syn["images"],
            syn["labels"],
            opt_state,
            _set_index(state.pool_params, i, new_params),
            _set_index(state.pool_opt, i, m_opt),
            state.ages.at[i].set(jnp.where(old, 0, age)),
        )
        return state, {"loss": loss}

    return init, step


def default_config(preset: str, ipc: int, dataset: str) -> FRePoConfig:
    """The preset's :class:`FRePoConfig`."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    return PRESETS[preset]


def make(request: DistillRequest) -> IterativeMethod:
    """``--method frepo``: learned images and labels from random real images (``--labels``)."""
    if request.model.embed is None:
        raise ValueError("frepo needs a model with an `embed` function (features before the classifier)")
    config = request_config(request, default_config)
    if config.labels not in ("learn", "kip"):
        raise ValueError(f"--labels must be 'learn' or 'kip', got {config.labels!r}")
    k_init, k_kip, k_batch = jax.random.split(request.key, 3)
    start = coreset.random_real(k_init, request.images, request.labels, request.num_classes, request.ipc)
    labels0 = jax.nn.one_hot(start.labels, request.num_classes)
    if config.labels == "kip":
        idx = jax.random.randint(k_batch, (config.batch_real,), 0, request.images.shape[0])
        y_t = jax.nn.one_hot(request.labels[idx], request.num_classes)
        labels0 = kip_initial_labels(request.model, k_kip, start.images, request.images[idx], y_t, config.reg)
    init, step = make_frepo(request.model, start.images, labels0, config)
    run_config = {"method": "frepo", "preset": request.preset, "config": config._asdict(),
                  "labels": "learned soft labels (one-hot scale); evaluate with an MSE protocol"}
    return IterativeMethod(
        init, step, lambda s: SynSet(s.images, s.labels), (request.images, request.labels), config.iterations, run_config
    )


register(
    MethodSpec(
        "frepo",
        "FRePo-style kernel ridge regression on an online model pool, learned images and labels",
        make,
        config_type=FRePoConfig,
        default_config=default_config,
        default_protocol="frepo",
    )
)
