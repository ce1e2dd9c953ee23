"""DD: Dataset Distillation by differentiating through unrolled training (Wang et al., 2018).

Learn distilled images ``x~`` (and step sizes ``eta~``) so that a network trained on them for a
few gradient-descent steps does well on real data::

    theta_{t+1} = theta_t - eta~_t * grad_theta l(x~_{t mod S}, theta_t),   t = 0 .. T-1,
    L(x~, eta~; theta_0) = l(x_real, theta_T),                              T = S * E.

``S`` = ``steps`` batches of distilled images (``ipc / steps`` images of every class each) are
cycled ``E`` = ``epochs`` times; every one of the ``T`` unrolled steps has its own learned step size
``eta~_t = softplus(raw_t)`` (initialised to ``distill_lr``). The meta-gradient is ``jax.grad``
through one ``lax.scan`` (:func:`jaxdd.train.gd_unroll`), optionally rematerialised per step or in
sqrt(T) segments. Fixed init: one known ``theta_0`` (saved beside the set, the set only works with
it). Random init: a fresh batch of ``theta_0 ~ p(theta_0)`` every outer step (vmapped), loss
averaged. Outer optimiser: Adam (lr 0.01, betas (0.5, 0.999)), lr halved every ``decay_every``
outer steps (the reference: every 40 epochs of real batches of 1024).

Reference: T. Wang, J.-Y. Zhu, A. Torralba, A. A. Efros, "Dataset Distillation", arXiv 1811.10959.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdd.methods import DistillRequest, IterativeMethod, MethodSpec, register, request_config
from jaxdd.sampling import sample_batch
from jaxdd.sharding import DATA, MODEL, constrain
from jaxdd.train import gd_unroll, loss_fn
from jaxdd.types import Array, Model, Params, PRNGKey, SynSet

THETA0_PREFIX = "theta0"
"""Key prefix of the fixed initial parameters in a set's extra arrays."""


class DDConfig(NamedTuple):
    """DD hyper-parameters (defaults: the reference code's).

    Attributes:
        steps: distinct GD steps S, each with its own batch of distilled images (img/cls must be
            a multiple of S).
        epochs: passes E over the S batches; T = S * E unrolled steps.
        ipc_per_step: distilled images of every class in each step batch (none: img/cls / S).
        init: 'fixed' (one known theta_0, saved with the set) or 'random' (theta_0 ~ p(theta_0)
            every outer step).
        num_inits: initialisations sampled per outer step with init 'random' (vmapped).
        distill_lr: initial value of every learned step size.
        outer_lr: Adam learning rate for images, step sizes (and labels).
        betas: Adam (b1, b2).
        decay_every: outer steps between decays of ``outer_lr`` (none: 40 epochs of real batches).
        decay_factor: the decay factor.
        iterations: outer iterations (none: 400 epochs of real batches, the reference).
        real_batch: real images per outer step for the meta-loss.
        checkpoint: rematerialise the unroll: 'none', 'step' (every inner step), 'sqrt' or 'cbrt'
            (2 / 3 nested levels).
        learn_labels: also learn soft labels (softmax of learned logits; beyond the paper).
    """

    steps: int = 10
    epochs: int = 3
    ipc_per_step: Optional[int] = None
    init: Literal["fixed", "random"] = "fixed"
    num_inits: int = 4
    distill_lr: float = 0.02
    outer_lr: float = 0.01
    betas: tuple[float, float] = (0.5, 0.999)
    decay_every: Optional[int] = 2344
    decay_factor: float = 0.5
    iterations: Optional[int] = 23440
    real_batch: int = 1024
    checkpoint: Literal["none", "step", "sqrt", "cbrt"] = "none"
    learn_labels: bool = False

    @property
    def unrolled_steps(self) -> int:
        """T = steps * epochs."""
        return self.steps * self.epochs


class DDParams(NamedTuple):
    """What the outer optimiser learns.

    Attributes:
        images: (S, B, H, W, C) distilled images, one batch per GD step.
        raw_lrs: (T,) step sizes before softplus.
        label_logits: (S, B, K) learned label logits, or None for fixed hard labels.
    """

    images: Array
    raw_lrs: Array
    label_logits: Optional[Array] = None


class DDState(NamedTuple):
    """Outer-loop state: learned parameters, Adam state, and the fixed theta_0 (or None)."""

    params: DDParams
    opt_state: Any
    theta0: Any = None


def inverse_softplus(y: float) -> float:
    """``x`` with ``softplus(x) = y`` (the reference's ``log(expm1(y))``)."""
    return float(np.log(np.expm1(y)))


def step_labels(num_classes: int, steps: int, ipc_per_step: int) -> Array:
    """(S, B) hard labels: every step batch holds ``ipc_per_step`` images of each class, sorted."""
    one = jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), ipc_per_step)
    return jnp.broadcast_to(one, (steps, one.shape[0]))


def step_targets(params: DDParams, labels: Array) -> Array:
    """Inner-loss targets: int labels (S, B), or softmax of the learned logits (S, B, K)."""
    if params.label_logits is None:
        return labels
    return jax.nn.softmax(params.label_logits, axis=-1)


def meta_loss(params: DDParams, theta0: Params, real_x: Array, real_y: Array, *, model: Model,
              labels: Array, checkpoint: str = "none") -> Array:
    """DD's objective ``l(x_real, theta_T)`` for one initialisation.

    Args:
        params: distilled images, raw step sizes (and label logits).
        theta0: initial network parameters.
        real_x, real_y: a batch of real training data.
        model: the network.
        labels: (S, B) fixed hard labels of the step batches (unused with learned labels).
        checkpoint: see :func:`jaxdd.train.gd_unroll`.

    Returns:
        Scalar cross-entropy of the unrolled network on the real batch.
    """
    targets = step_targets(params, labels)

    def inner(theta, batch):
        x, y = batch
        return loss_fn(model.apply(theta, x), y)

    theta_t = gd_unroll(inner, theta0, (params.images, targets), jax.nn.softplus(params.raw_lrs),
                        checkpoint=checkpoint)
    return loss_fn(model.apply(theta_t, real_x), real_y)


def make_optimizer(config: DDConfig) -> optax.GradientTransformation:
    """Adam(lr, betas) with ``lr * decay_factor ** floor(step / decay_every)``."""
    schedule = optax.exponential_decay(config.outer_lr, config.decay_every, config.decay_factor, staircase=True)
    return optax.adam(schedule, b1=config.betas[0], b2=config.betas[1])


def init_params(key: PRNGKey, config: DDConfig, image_shape: tuple, num_classes: int) -> DDParams:
    """Images ~ N(0, 1) in normalised space, every step size = ``distill_lr``, logits = 3 * one-hot."""
    b = num_classes * config.ipc_per_step
    images = jax.random.normal(key, (config.steps, b) + tuple(image_shape), jnp.float32)
    raw = jnp.full((config.unrolled_steps,), inverse_softplus(config.distill_lr), jnp.float32)
    logits = None
    if config.learn_labels:
        labels = step_labels(num_classes, config.steps, config.ipc_per_step)
        logits = 3.0 * jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return DDParams(images, raw, logits)


def make_functions(config: DDConfig, model: Model, image_shape: tuple, num_classes: int):
    """Builds DD's pure ``init(key) -> DDState`` and ``step(state, real, key) -> (state, metrics)``.

    ``real`` is ``(x_train, y_train)``; every step draws ``real_batch`` of them without replacement
    (split on the ``data`` axis under a mesh; random initialisations on ``model``).
    Update: ``(x~, raw) <- Adam(grad E_theta0[l(x_real, theta_T(x~, softplus(raw), theta0))])``.
    """
    tx = make_optimizer(config)
    labels = step_labels(num_classes, config.steps, config.ipc_per_step)
    loss_one = functools.partial(meta_loss, model=model, labels=labels, checkpoint=config.checkpoint)
    if config.init not in ("fixed", "random"):
        raise ValueError(f"init must be 'fixed' or 'random', got {config.init!r}")

    def init(key: PRNGKey) -> DDState:
        k_img, k_theta = jax.random.split(key)
        params = init_params(k_img, config, image_shape, num_classes)
        theta0 = model.init(k_theta) if config.init == "fixed" else None
        return DDState(params, tx.init(params), theta0)

    def step(state: DDState, real, key: PRNGKey):
        x_all, y_all = real
        k_real, k_init = jax.random.split(key)
        xb, yb = constrain(sample_batch(k_real, x_all, y_all, min(config.real_batch, x_all.shape[0])), DATA)

        def objective(p):
            if config.init == "fixed":
                return loss_one(p, state.theta0, xb, yb)
            thetas = constrain(jax.vmap(model.init)(jax.random.split(k_init, config.num_inits)), MODEL)
            return jnp.mean(jax.vmap(lambda th: loss_one(p, th, xb, yb))(thetas))

        loss, grads = jax.value_and_grad(objective)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        lrs = jax.nn.softplus(params.raw_lrs)
        metrics = {"loss": loss, "lr_mean": jnp.mean(lrs), "lr_min": jnp.min(lrs), "lr_max": jnp.max(lrs)}
        return DDState(params, opt_state, state.theta0), metrics

    return init, step


def to_synset(params: DDParams, labels: Array, epochs: int) -> SynSet:
    """The set in step order: images (S*B, ...), labels, step sizes (E, S) = softplus(raw)."""
    s, b = params.images.shape[:2]
    images = params.images.reshape((s * b,) + params.images.shape[2:])
    if params.label_logits is None:
        out_labels = labels.reshape(-1)
    else:
        out_labels = jax.nn.softmax(params.label_logits, axis=-1).reshape(s * b, -1)
    return SynSet(images, out_labels, jax.nn.softplus(params.raw_lrs).reshape(epochs, s))


def params_to_arrays(params: Params, prefix: str = THETA0_PREFIX) -> dict:
    """Flattens a parameter pytree into ``{prefix.<path>: array}`` (for a set's extra arrays)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {f"{prefix}.{jax.tree_util.keystr(path, simple=True, separator='.')}": np.asarray(leaf) for path, leaf in leaves}


def arrays_to_params(arrays: dict, template: Params, prefix: str = THETA0_PREFIX) -> Params:
    """Inverse of :func:`params_to_arrays`; ``template`` (e.g. ``model.init(key)``) gives the structure.

    Raises:
        ValueError: an entry is missing or has the wrong shape.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    out = []
    for path, leaf in leaves:
        name = f"{prefix}.{jax.tree_util.keystr(path, simple=True, separator='.')}"
        if name not in arrays:
            raise ValueError(f"missing initial parameter {name!r}: the set needs its own theta_0")
        value = jnp.asarray(arrays[name], dtype=leaf.dtype)
        if value.shape != leaf.shape:
            raise ValueError(f"initial parameter {name!r} has shape {value.shape}, the model wants {leaf.shape}")
        out.append(value)
    return jax.tree_util.tree_unflatten(treedef, out)


def has_theta0(arrays: Optional[dict], prefix: str = THETA0_PREFIX) -> bool:
    """Whether a set's extra arrays hold a fixed theta_0."""
    return bool(arrays) and any(k.startswith(prefix + ".") for k in arrays)


# ----------------------------------------------------------------------------------------------
# Presets and the registry entry.

PRESETS = {
    # seconds on the 8x8 digits: tests and quick checks
    "smoke": dict(iterations=500, decay_every=250, real_batch=256),
    # minutes on 2 CPU cores on real MNIST with LeNet
    "cpu": dict(iterations=2000, decay_every=500, real_batch=512),
    # the reference: 400 epochs of real batches of 1024, lr halved every 40 epochs (None: resolved
    # from the size of the real data when the run is built); one random init per step (its n_nets)
    "paper": dict(iterations=None, decay_every=None, real_batch=1024, num_inits=1),
}


def default_config(preset: str, ipc: int, dataset: str) -> DDConfig:
    """DD's config for ``preset``; ``ipc_per_step`` is left to :func:`make` (img/cls / ``steps``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    return DDConfig(**PRESETS[preset])


def resolve(config: DDConfig, ipc: int, num_real: int) -> DDConfig:
    """Fills the config's data-dependent entries: ``ipc_per_step`` from ``ipc`` and, where None,
    the reference's 400 epochs (``iterations``) and 40-epoch decay of real batches of ``num_real`` images."""
    if ipc % config.steps:
        raise ValueError(f"ipc {ipc} is not a multiple of --steps {config.steps} "
                         f"(each step holds ipc/steps images of every class)")
    ipc_per_step = ipc // config.steps
    if config.ipc_per_step not in (None, ipc_per_step):
        raise ValueError(f"--ipc-per-step {config.ipc_per_step} with --steps {config.steps} does not give ipc {ipc}")
    per_epoch = math.ceil(num_real / config.real_batch)
    return config._replace(
        ipc_per_step=ipc_per_step,
        iterations=400 * per_epoch if config.iterations is None else config.iterations,
        decay_every=40 * per_epoch if config.decay_every is None else config.decay_every,
    )


def make(request: DistillRequest) -> IterativeMethod:
    """Builds the DD run for ``request`` (see :class:`DDConfig` for the options)."""
    config = resolve(request_config(request, default_config), request.ipc, request.images.shape[0])
    image_shape = tuple(request.images.shape[1:])
    init, step = make_functions(config, request.model, image_shape, request.num_classes)
    labels = step_labels(request.num_classes, config.steps, config.ipc_per_step)
    cfg = config._asdict()
    cfg.update(method="dd", betas=list(config.betas), unrolled_steps=config.unrolled_steps)
    extra = (lambda state: params_to_arrays(state.theta0)) if config.init == "fixed" else None
    return IterativeMethod(
        init=init, step=step,
        to_synset=lambda state: to_synset(state.params, labels, config.epochs),
        real_data=(request.images, request.labels), num_steps=config.iterations, config=cfg,
        extra_arrays=extra)


def eval_kwargs(meta: dict, extra_arrays: dict, model: Model) -> dict:
    """``evaluate_synset`` keywords for a DD set: its fixed theta_0, if it was distilled with one."""
    if not has_theta0(extra_arrays):
        return {}
    return {"init_params": arrays_to_params(extra_arrays, model.init(jax.random.key(0)))}


register(MethodSpec("dd", "Dataset Distillation: learn images + step sizes through the unrolled GD (Wang et al. 2018)",
                    make, config_type=DDConfig, default_config=default_config, eval_kwargs=eval_kwargs,
                    default_protocol="dd", model_init="dd"))
