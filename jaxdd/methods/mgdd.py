"""MGDD: a meta generator for fast dataset distillation (Liu & Wang, NeurIPS 2023).

The algorithm, top to bottom (seed paper ``../shared/seeds/001_*``, REFERENCE section 5):

1. **Analytic labels.** In random but fixed networks ``f_theta`` the readout
   ``W = f(X_t)^T (f(X_t) f(X_t)^T + lambda I)^-1 Y_t`` is fitted once on real data; an initial
   synthetic set ``X_s`` of random real images gets the soft labels ``Y_s = f(X_s) W`` (eq. 3).
2. **Loss.** The generator output ``X~_s = g_w(X_s, Y_s)`` is scored by kernel ridge regression in
   a freshly drawn random network ``theta*``:
   ``L = ||f*(X_t) f*(X~_s)^T (f*(X~_s) f*(X~_s)^T + lambda I)^-1 Y_s - Y_t||^2`` (eq. 1).
3. **Pre-training** (first-order MAML, :func:`fomaml_grad`, :func:`make_pretrain`): per iteration
   sample a subset of classes of a source pool; ``w' = w``; ``T`` SGD steps
   ``w' <- w' - alpha grad L(w')`` (``lax.scan``); then ``w <- Adam(w, grad L(w'))`` (the gradient
   at ``w'`` only, first order). An :class:`~jaxdd.methods.IterativeMethod`, so
   :func:`jaxdd.distill.run` drives it (checkpoints, resume, NaN stop); a held-out meta-validation
   loss on fixed tasks is part of the state.
4. **Adaptation** (:func:`make`, driven by :func:`jaxdd.distill.run`): start from the meta
   generator and take a limited number of Adam steps on ``L`` for the target dataset.
5. **Deployment** (:func:`deploy`): random real initial set -> analytic labels -> one forward
   pass of the adapted generator, for any images per class.

The generator (no public code exists; our design, see ``docs/mgdd.md``) is :class:`SetGenerator`:
a FiLM-modulated residual image-to-image network whose modulation comes from the image, its
analytic label and a permutation-invariant summary of its class's initial set.

This module takes arrays and a :class:`~jaxdd.types.Model`; choosing datasets and feature
networks belongs to the command (``jaxdd pretrain-generator``) and the experiments.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from jaxdd import io, krr
from jaxdd.methods import DistillRequest, IterativeMethod, MethodSpec, config_to_dict, register, request_config
from jaxdd.sampling import RealByClass, group_by_class, min_class_count, sample_classes, split_per_class
from jaxdd.types import Array, Model, Params, PRNGKey, SynSet

GENERATOR_FORMAT = "jaxdd-mgdd-generator-v2"
PRETRAIN_CURVE = "pretrain_curve.json"


# --------------------------------------------------------------------------------------------
# Configurations and presets


class MGDDConfig(NamedTuple):
    """Adaptation and deployment of a (pre-trained) generator on a target dataset.

    Attributes:
        generator: directory written by ``jaxdd pretrain-generator``; '' adapts a freshly
            initialised generator of the architecture below (MGDD without pre-training).
        adapt_steps: Adam steps of adaptation on the target.
        adapt_lr: Adam learning rate of adaptation.
        adapt_ipcs: images per class of the initial sets seen in adaptation; empty: the deployed size.
        real_per_class: real images per class in the target batch X_t of each loss.
        label_per_class: real images per class used to fit the analytic-label readouts W.
        label_nets: random networks averaged for the analytic labels.
        loss_nets: fresh random networks theta* averaged in each loss.
        reg: relative ridge of every kernel solve (lambda = reg * trace(K) / n).
        max_per_class: cap on the real images per class kept on device for sampling.
        init_sets: size of the pool Z of random real initial sets per adaptation size whose
            analytic labels are solved once before adaptation; each step draws one from Z.
        labels: 'analytic' (the paper's soft labels f(X_s) W) or 'onehot' (hard labels, an
            ablation that the cross-entropy protocols can evaluate).
        gen_width: channels of a fresh generator's image convolutions.
        gen_depth: FiLM-modulated 3x3 convolutions of a fresh generator (dilations 1, 2, 4, ...).
        gen_embed: width of a fresh generator's image, set and label embeddings.
        gen_gate: initial value of a fresh generator's residual gate (small, non-zero).
    """

    generator: str = ""
    adapt_steps: int = 50
    adapt_lr: float = 1e-2
    adapt_ipcs: tuple[int, ...] = ()
    real_per_class: int = 50
    label_per_class: int = 50
    label_nets: int = 4
    loss_nets: int = 1
    reg: float = 1e-2
    max_per_class: int = 2000
    init_sets: int = 4
    labels: str = "analytic"
    gen_width: int = 16
    gen_depth: int = 3
    gen_embed: int = 32
    gen_gate: float = 0.01


class PretrainConfig(NamedTuple):
    """First-order MAML pre-training of a generator on a pool of source classes.

    Attributes:
        steps: outer first-order MAML iterations.
        inner_steps: inner SGD steps T per task.
        inner_lr: inner learning rate alpha.
        inner_optimizer: 'sgd' (the paper's inner loop) or 'adam' (the optimiser of adaptation).
        outer_lr: Adam learning rate beta of the meta update.
        task_classes: classes per task (a random subset of the pool's classes).
        pretrain_ipcs: initial-set sizes (images per class) scored in every task loss.
        real_per_class: real images per class in a task's batch X_t.
        label_per_class: real images per class used to fit a task's analytic-label readouts.
        label_nets: random networks averaged for a task's analytic labels.
        loss_nets: fresh random networks theta* averaged in each loss.
        reg: relative ridge of every kernel solve.
        max_per_class: cap on the real images per class kept on device.
        holdout_per_class: images per class held out of pre-training for the validation tasks.
        val_every: iterations between two evaluations of the held-out meta-validation loss.
        val_tasks: fixed validation tasks (fixed classes, images, label networks and theta*).
        gen_width: channels of the generator's image convolutions.
        gen_depth: FiLM-modulated 3x3 convolutions (dilations 1, 2, 4, ...).
        gen_embed: width of the image, set and label embeddings.
        gen_gate: initial value of the residual gate (small, non-zero).
    """

    steps: int = 150
    inner_steps: int = 3
    inner_lr: float = 1e-2
    inner_optimizer: str = "adam"
    outer_lr: float = 3e-3
    task_classes: int = 10
    pretrain_ipcs: tuple[int, ...] = (1, 10)
    real_per_class: int = 20
    label_per_class: int = 20
    label_nets: int = 2
    loss_nets: int = 1
    reg: float = 1e-2
    max_per_class: int = 2000
    holdout_per_class: int = 100
    val_every: int = 25
    val_tasks: int = 4
    gen_width: int = 16
    gen_depth: int = 3
    gen_embed: int = 32
    gen_gate: float = 0.01


_PRESETS = ("smoke", "cpu", "paper")


def default_config(preset: str, ipc: int, dataset: str) -> MGDDConfig:
    """Adaptation defaults: 'smoke' (digits, seconds), 'cpu' (28x28 on 2 cores), 'paper' (a GPU)."""
    del ipc, dataset  # the same adaptation recipe for every size and dataset
    if preset == "smoke":
        return MGDDConfig(adapt_steps=60, adapt_lr=3e-3, real_per_class=20, label_per_class=40, label_nets=8,
                          max_per_class=150, gen_width=8, gen_depth=2, gen_embed=16)
    if preset == "cpu":
        return MGDDConfig()
    if preset == "paper":
        return MGDDConfig(adapt_steps=1000, adapt_lr=1e-3, real_per_class=256, label_per_class=500, label_nets=8, loss_nets=4,
                          max_per_class=6000, gen_width=64, gen_depth=5, gen_embed=128)
    raise ValueError(f"unknown preset {preset!r}; known: {', '.join(_PRESETS)}")


def default_pretrain_config(preset: str, ipc: int = 0, dataset: str = "") -> PretrainConfig:
    """Pre-training defaults: 'smoke' (digits, seconds), 'cpu' (~20 min on 2 cores), 'paper' (a GPU)."""
    del ipc, dataset
    if preset == "smoke":
        return PretrainConfig(steps=40, inner_steps=1, outer_lr=3e-3, pretrain_ipcs=(1, 5), real_per_class=20,
                              label_per_class=30, label_nets=4, max_per_class=150, holdout_per_class=30,
                              val_every=20, val_tasks=4, gen_width=8, gen_depth=2, gen_embed=16)
    if preset == "cpu":
        return PretrainConfig()
    if preset == "paper":
        return PretrainConfig(steps=20000, inner_steps=5, pretrain_ipcs=(1, 10, 50), real_per_class=128,
                              label_per_class=256, label_nets=8, loss_nets=4, max_per_class=6000,
                              holdout_per_class=500, val_every=500, val_tasks=16, gen_width=64, gen_depth=5,
                              gen_embed=128)
    raise ValueError(f"unknown preset {preset!r}; known: {', '.join(_PRESETS)}")


# --------------------------------------------------------------------------------------------
# The generator g_w(X, Y)


class SetGenerator(nn.Module):
    """``g(X, Y)_i = x_i + gate * h(x_i; FiLM(z_i))``: a set- and label-conditioned residual generator.

    The input is a class-sorted initial set ``X`` (C * n, H, W, Ch) with its soft labels ``Y``
    (C * n, C). Per image: an embedding ``e_i`` (two strided convolutions, global mean, dense).
    Per class: the DeepSets context ``s_c = rho(mean_{j in c} e_j)`` (permutation invariant, any
    n). Per label: ``l_i = sum_k Y_ik s_k`` (the label read through the class contexts, so the
    generator is equivariant to relabelling the classes and works for any class count) and the
    label's own-class value. ``z_i = MLP([e_i, s_c(i), l_i, Y_i,c(i)])`` gives per-channel
    ``(gamma, beta)`` for every hidden convolution of a full-resolution residual trunk
    ``h = conv_out(relu(FiLM(conv_d(...))))``. The output convolution has its ordinary (non-zero)
    initialisation and the scalar ``gate`` starts small and non-zero, so ``g`` starts near the
    identity while every parameter receives gradient from the first step.
    """

    channels: int
    width: int = 16
    depth: int = 3
    embed: int = 32
    gate_init: float = 0.01

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        num_classes = y.shape[1]
        n = x.shape[0] // num_classes
        own = jnp.repeat(jnp.arange(num_classes), n)
        e = nn.relu(nn.Conv(self.embed, (3, 3), strides=(2, 2))(x))
        e = nn.relu(nn.Conv(self.embed, (3, 3), strides=(2, 2))(e))
        e = nn.Dense(self.embed)(jnp.mean(e, axis=(1, 2)))
        context = nn.relu(nn.Dense(self.embed)(jnp.mean(e.reshape(num_classes, n, self.embed), axis=1)))
        label = y @ context
        own_value = jnp.take_along_axis(y, own[:, None], axis=1)
        z = jnp.concatenate([e, context[own], label, own_value], axis=1)
        z = nn.relu(nn.Dense(2 * self.embed)(z))
        film = nn.Dense(2 * self.depth * self.width)(z).reshape(-1, self.depth, 2, self.width)
        h = x
        for d in range(self.depth):
            h = nn.Conv(self.width, (3, 3), kernel_dilation=2 ** d, padding="SAME")(h)
            h = nn.relu(h * (1.0 + film[:, d, 0, None, None, :]) + film[:, d, 1, None, None, :])
        delta = nn.Conv(self.channels, (3, 3), padding="SAME")(h)
        gate = self.param("gate", nn.initializers.constant(self.gate_init), ())
        return x + gate * delta


class Generator(NamedTuple):
    """The generator as pure functions: ``init(key) -> params``, ``apply(params, x, y) -> images``.

    ``x`` is a class-sorted set (C * n, H, W, Ch), ``y`` its soft labels (C * n, C); any n, any
    C, any image size.
    """

    init: Callable[[PRNGKey], Params]
    apply: Callable[[Params, Array, Array], Array]
    arch: dict


def make_generator(channels: int, width: int = 16, depth: int = 3, embed: int = 32, gate: float = 0.01) -> Generator:
    """A :class:`SetGenerator` as a :class:`Generator` pair; ``arch`` is what its file records."""
    module = SetGenerator(channels=channels, width=width, depth=depth, embed=embed, gate_init=gate)

    def init(key: PRNGKey) -> Params:
        return module.init(key, jnp.zeros((2, 8, 8, channels)), jnp.eye(2))

    arch = {"channels": channels, "width": width, "depth": depth, "embed": embed, "gate": gate}
    return Generator(init, module.apply, arch)


def generator_from_config(channels: int, config) -> Generator:
    """The generator architecture named by a config's ``gen_*`` fields."""
    return make_generator(channels, config.gen_width, config.gen_depth, config.gen_embed, config.gen_gate)


# --------------------------------------------------------------------------------------------
# Real images by class: the tables of :mod:`jaxdd.sampling`, drawn inside the jitted steps


def pool_sources(sources) -> tuple[Array, Array, int]:
    """Several labelled datasets as one pool with disjoint class ids.

    Args:
        sources: ``[(images (N_i, H, W, Ch), labels (N_i,), num_classes_i), ...]`` of one image shape.

    Returns:
        ``(images, labels, total classes)``; the classes of source i are shifted by the classes before it.
    """
    offset, xs, ys = 0, [], []
    for images, labels, num_classes in sources:
        xs.append(jnp.asarray(images))
        ys.append(jnp.asarray(labels, jnp.int32) + offset)
        offset += int(num_classes)
    return jnp.concatenate(xs), jnp.concatenate(ys), offset


def _flat_with_labels(x: Array) -> tuple[Array, Array]:
    """(k, n, H, W, Ch) class-grouped images -> (k*n, H, W, Ch) and one-hot (k*n, k) labels."""
    k, n = x.shape[:2]
    y = jnp.repeat(jnp.eye(k, dtype=x.dtype), n, axis=0)
    return x.reshape((k * n,) + x.shape[2:]), y


# --------------------------------------------------------------------------------------------
# Analytic labels, the MGDD loss and first-order MAML


class LabelNets(NamedTuple):
    """Random but fixed networks and their ridge readouts, fitted once on real data (eq. 3)."""

    params: Params
    weights: Array


def fit_label_nets(model: Model, key: PRNGKey, x_t: Array, y_t: Array, num_nets: int, reg: float) -> LabelNets:
    """``num_nets`` random networks and readouts ``W_k`` on ``(X_t, Y_t)`` (:func:`krr.label_weights_ensemble`)."""
    params, weights = krr.label_weights_ensemble(model, jax.random.split(key, num_nets), x_t, y_t, reg)
    return LabelNets(params, weights)


def label_set(model: Model, nets: LabelNets, x_s: Array) -> Array:
    """Analytic soft labels of ``x_s``: the average of ``f_k(X_s) W_k`` over the label networks."""
    return krr.predict_labels_ensemble(model, nets.params, nets.weights, x_s)


def initial_labels(model: Model, nets: LabelNets, x_init: Array, num_classes: int, kind: str = "analytic") -> Array:
    """Labels of a class-sorted initial set: analytic soft labels (N, C) or their one-hot ablation."""
    if kind == "analytic":
        return label_set(model, nets, x_init)
    if kind == "onehot":
        return jnp.repeat(jnp.eye(num_classes, dtype=x_init.dtype), x_init.shape[0] // num_classes, axis=0)
    raise ValueError(f"unknown mgdd labels {kind!r}; known: analytic, onehot")


def mgdd_loss(
    generator: Generator,
    model: Model,
    gen_params: Params,
    key: PRNGKey,
    x_t: Array,
    y_t: Array,
    x_init: Array,
    y_init: Array,
    *,
    num_nets: int,
    reg: float,
) -> Array:
    """Eq. 1 on the generator output: ``krr.model_krr_loss(model, key, X_t, Y_t, g_w(X_init, Y_init), Y_init)``."""
    x_s = generator.apply(gen_params, x_init, y_init)
    return krr.model_krr_loss(model, key, x_t, y_t, x_s, y_init, num_nets=num_nets, reg=reg)


def fomaml_grad(
    loss_fn: Callable[[Params, PRNGKey], Array],
    params: Params,
    key: PRNGKey,
    inner_steps: int,
    inner_lr: float,
    inner_optimizer: str = "sgd",
) -> tuple[Params, Array, Array]:
    """First-order MAML meta-gradient (MGDD Alg. "Pre-Training").

    ``w' = w``; for t < T: ``w' <- w' - alpha * grad loss_fn(w', k_t)`` (a ``lax.scan``; with
    ``inner_optimizer='adam'`` the step is Adam's with a fresh state, as in adaptation); the
    meta-gradient is ``grad loss_fn(w', k_T)`` evaluated at the adapted ``w'`` and applied to ``w``
    (first order: no differentiation through the inner steps).

    Args:
        loss_fn: ``loss_fn(params, key) -> scalar`` of one task.
        params: meta parameters ``w``.
        key: split into T + 1 keys (T training losses and the meta-test loss).
        inner_steps: T.
        inner_lr: alpha.
        inner_optimizer: 'sgd' (the paper's) or 'adam'.

    Returns:
        (meta-gradient (a pytree like ``params``), meta-test loss, inner losses (T,)).
    """
    adapted, inner_losses = inner_adapt(loss_fn, params, key, inner_steps, inner_lr, inner_optimizer)
    test_loss, meta_grad = jax.value_and_grad(loss_fn)(adapted, jax.random.split(key, inner_steps + 1)[-1])
    return meta_grad, test_loss, inner_losses


def inner_adapt(
    loss_fn: Callable[[Params, PRNGKey], Array], params: Params, key: PRNGKey, inner_steps: int, inner_lr: float,
    inner_optimizer: str = "sgd",
) -> tuple[Params, Array]:
    """The inner loop of :func:`fomaml_grad`: ``T`` steps on ``loss_fn`` with keys ``split(key, T + 1)[:T]``."""
    optimizer = {"sgd": optax.sgd, "adam": optax.adam}[inner_optimizer](inner_lr)
    keys = jax.random.split(key, inner_steps + 1)[:-1]

    def inner(carry, k):
        w, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(w, k)
        updates, opt_state = optimizer.update(grads, opt_state, w)
        return (optax.apply_updates(w, updates), opt_state), loss

    (adapted, _), inner_losses = jax.lax.scan(inner, (params, optimizer.init(params)), keys)
    return adapted, inner_losses


# --------------------------------------------------------------------------------------------
# Pre-training as an IterativeMethod


class Task(NamedTuple):
    """One task: real batch, label networks, and initial sets (with analytic labels) per size."""

    x_t: Array
    y_t: Array
    inits: tuple  # ((X_init, Y_init), ...) one pair per initial-set size


class PretrainState(NamedTuple):
    """Pre-training state.

    Attributes:
        params: meta generator ``w``.
        opt_state: Adam state of the meta update.
        curve: (len(curve_steps), 2) held-out losses at iterations ``curve_steps`` (0 until
            reached): the generator's zero-shot loss and its meta-test loss after ``T`` inner steps.
        step: iterations done.
    """

    params: Params
    opt_state: Any
    curve: Array
    step: Array


class PretrainData(NamedTuple):
    """Real data of pre-training: the training pool and the fixed validation tasks (stacked)."""

    train: RealByClass
    val: Task


def curve_steps(config: PretrainConfig) -> list[int]:
    """Iterations at which the held-out loss is recorded: 0, val_every, ... and the last."""
    return list(range(0, config.steps, config.val_every)) + [config.steps]


def _draw_task(model: Model, key: PRNGKey, pool: RealByClass, classes: Array, ipcs, config) -> Task:
    """A task's real batch, label networks (fitted once) and one random-real initial set per size."""
    k_real, k_lab, k_net, k_init = jax.random.split(key, 4)
    x_t, y_t = _flat_with_labels(sample_classes(k_real, pool, classes, config.real_per_class))
    x_l, y_l = _flat_with_labels(sample_classes(k_lab, pool, classes, config.label_per_class))
    nets = fit_label_nets(model, k_net, x_l, y_l, config.label_nets, config.reg)
    inits = []
    for i, ipc in enumerate(ipcs):
        x0, _ = _flat_with_labels(sample_classes(jax.random.fold_in(k_init, i), pool, classes, ipc))
        inits.append((x0, label_set(model, nets, x0)))
    return Task(x_t, y_t, tuple(inits))


def task_loss(generator: Generator, model: Model, params: Params, task: Task, key: PRNGKey, config) -> Array:
    """Mean over the task's initial-set sizes of eq. 1 on ``g_w(X_init, Y_init)``."""
    losses = [
        mgdd_loss(generator, model, params, jax.random.fold_in(key, i), task.x_t, task.y_t, x0, y0,
                  num_nets=config.loss_nets, reg=config.reg)
        for i, (x0, y0) in enumerate(task.inits)
    ]
    return sum(losses) / len(losses)


def identity_loss(model: Model, task: Task, key: PRNGKey, config) -> Array:
    """The same loss for the initial sets themselves (random real + analytic labels, no generator)."""
    identity = Generator(None, lambda p, x, y: x, {})
    return task_loss(identity, model, None, task, key, config)


def make_pretrain(
    generator: Generator,
    model: Model,
    images: Array,
    labels: Array,
    num_classes: int,
    config: PretrainConfig,
    key: PRNGKey,
    description: Optional[dict] = None,
) -> IterativeMethod:
    """First-order MAML pre-training of ``generator`` on a pool of source classes.

    Per iteration (MGDD Alg. "Pre-Training"): a random subset of ``task_classes`` pool classes;
    the task's real batch and label networks are fixed; each of the ``T`` inner steps and the
    meta-test draw fresh random-real initial sets (sizes ``pretrain_ipcs``) with analytic labels
    and a fresh ``theta*`` (Alg. GetTrainingLoss); ``w <- Adam(w, grad L(w'))``
    (:func:`fomaml_grad`). Every ``val_every`` iterations (and after the last) the held-out
    meta-validation loss is written into the state's curve: on ``val_tasks`` fixed tasks drawn
    from ``holdout_per_class`` held-out images per class (fixed classes, images, label networks,
    keys and ``theta*``), the mean eq.-1 loss after the ``T`` inner steps from ``w`` (the meta-test
    loss that first-order MAML minimises), and beside it the zero-shot loss of ``g_w``.

    Args:
        generator: from :func:`make_generator`.
        model: the random feature network family (needs ``embed``).
        images, labels, num_classes: the source pool (see :func:`pool_sources`).
        config: a :class:`PretrainConfig`.
        key: typed key of the data split and of the validation tasks (not of the run).
        description: JSON-serialisable facts recorded in the method config (sources, network).

    Returns:
        An :class:`IterativeMethod` whose state is a :class:`PretrainState`; ``to_synset`` is the
        generator's output on the first validation task's largest initial set (a preview).
    """
    if model.embed is None:
        raise ValueError("mgdd needs a model with an `embed` function (features before the classifier)")
    task_classes = min(config.task_classes, num_classes)
    k_split, k_val = jax.random.split(key)
    train, held = split_per_class(k_split, group_by_class(images, labels, num_classes), config.max_per_class,
                                  config.holdout_per_class)
    if held is None:
        raise ValueError("pre-training needs held-out images (holdout_per_class > 0) for its validation loss")
    smallest = min(min_class_count(train), min_class_count(held))
    if max(config.pretrain_ipcs + (config.real_per_class, config.label_per_class)) > smallest:
        raise ValueError(f"mgdd pre-training: too few images per class ({smallest}) for the configured batch sizes")
    ipcs = tuple(config.pretrain_ipcs)

    def val_task(k):
        k_cls, k_task = jax.random.split(k)
        classes = jax.random.choice(k_cls, num_classes, (task_classes,), replace=False)
        return _draw_task(model, k_task, held, classes, ipcs, config)

    val_keys = jax.random.split(k_val, config.val_tasks)
    val = jax.jit(jax.vmap(val_task))(val_keys)
    loss_keys = jax.random.split(jax.random.fold_in(k_val, 1), config.val_tasks)

    def val_loss(params, data: PretrainData):
        """(zero-shot loss of g_w, meta-test loss after the T inner steps), means over the fixed tasks."""

        def one(task, k):
            k_inner, k_test = jax.random.split(k)
            adapted, _ = inner_adapt(lambda w, kk: task_loss(generator, model, w, task, kk, config), params, k_inner,
                                     config.inner_steps, config.inner_lr, config.inner_optimizer)
            return jnp.stack([task_loss(generator, model, params, task, k_test, config),
                              task_loss(generator, model, adapted, task, k_test, config)])

        return jnp.mean(jax.vmap(one)(data.val, loss_keys), axis=0)

    # The same theta* as the zero-shot and meta-test losses (the second half of each task key).
    reference = float(jnp.mean(jax.jit(jax.vmap(lambda t, k: identity_loss(model, t, jax.random.split(k)[1], config)))(val, loss_keys)))
    steps_list = curve_steps(config)
    optimizer = optax.adam(config.outer_lr)

    def init(k):
        params = generator.init(k)
        curve = jnp.zeros((len(steps_list), 2), jnp.float32)
        return PretrainState(params, optimizer.init(params), curve, jnp.zeros((), jnp.int32))

    def record(curve, slot, params, data, when):
        return jax.lax.cond(when, lambda: curve.at[slot].set(val_loss(params, data)), lambda: curve)

    def step(state: PretrainState, data: PretrainData, k):
        i = state.step
        curve = record(state.curve, i // config.val_every, state.params, data, i % config.val_every == 0)
        k_cls, k_task, k_steps = jax.random.split(k, 3)
        classes = jax.random.choice(k_cls, num_classes, (task_classes,), replace=False)
        k_real, k_lab, k_net = jax.random.split(k_task, 3)
        x_t, y_t = _flat_with_labels(sample_classes(k_real, data.train, classes, config.real_per_class))
        x_l, y_l = _flat_with_labels(sample_classes(k_lab, data.train, classes, config.label_per_class))
        nets = fit_label_nets(model, k_net, x_l, y_l, config.label_nets, config.reg)

        def loss_fn(w, kk):
            # Fixed real batch and label networks; fresh initial sets and theta* at every call.
            k_init, k_loss = jax.random.split(kk)
            inits = []
            for j, ipc in enumerate(ipcs):
                x0, _ = _flat_with_labels(sample_classes(jax.random.fold_in(k_init, j), data.train, classes, ipc))
                inits.append((x0, label_set(model, nets, x0)))
            return task_loss(generator, model, w, Task(x_t, y_t, tuple(inits)), k_loss, config)

        meta_grad, test_loss, inner_losses = fomaml_grad(loss_fn, state.params, k_steps, config.inner_steps, config.inner_lr,
                                                         config.inner_optimizer)
        updates, opt_state = optimizer.update(meta_grad, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        curve = record(curve, len(steps_list) - 1, params, data, i + 1 == config.steps)
        metrics = {"loss": test_loss, **({"inner_first": inner_losses[0]} if config.inner_steps else {})}
        return PretrainState(params, opt_state, curve, i + 1), metrics

    def to_synset(state: PretrainState) -> SynSet:
        x0, y0 = jax.tree.map(lambda a: a[0], val.inits[-1])
        return SynSet(generator.apply(state.params, x0, y0), y0)

    run_config = {
        "method": "mgdd-pretrain",
        "config": config_to_dict(config),
        "generator": generator.arch,
        "num_classes": num_classes,
        "curve_steps": steps_list,
        "identity_loss": reference,
        **(description or {}),
    }
    return IterativeMethod(init, step, to_synset, PretrainData(train, val), config.steps, run_config)


def pretrain_record(method: IterativeMethod, state: PretrainState) -> dict:
    """The held-out meta-validation curve of a finished (or stopped) pre-training as a JSON dict."""
    done, steps = int(state.step), method.config["curve_steps"]
    points = [(s, [float(u) for u in v]) for j, (s, v) in enumerate(zip(steps, np.asarray(state.curve)))
              if (s < done if j < len(steps) - 1 else s == done)]
    meta_loss = [v[1] for _, v in points]
    return {
        "steps": [s for s, _ in points],
        "heldout_loss": meta_loss,
        "heldout_zero_shot_loss": [v[0] for _, v in points],
        "identity_loss": method.config["identity_loss"],
        "iterations": int(state.step),
        "heldout_loss_start": meta_loss[0] if points else None,
        "heldout_loss_end": meta_loss[-1] if points else None,
    }


def plot_curve(path: str, record: dict, title: str = "") -> None:
    """Writes the held-out meta-validation curve of :func:`pretrain_record` as a PNG (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(record["steps"], record["heldout_loss"], marker="o", label="meta-test: after the inner steps")
    ax.plot(record["steps"], record["heldout_zero_shot_loss"], marker=".", label="zero-shot g_w")
    ax.axhline(record["identity_loss"], color="gray", linestyle="--", label="no generator (random real + analytic labels)")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("held-out KRR loss (eq. 1)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pretrain_generator(
    method: IterativeMethod,
    generator: Generator,
    out_dir: str,
    key: PRNGKey,
    *,
    meta: Optional[dict] = None,
    resume: bool = False,
    progress: bool = True,
    checkpoint_every: int = 25,
    stop_at: Optional[int] = None,
) -> dict:
    """Runs :func:`make_pretrain`'s method with :func:`jaxdd.distill.run` and writes the generator.

    ``out_dir`` receives ``checkpoint.npz`` during the run (``resume`` continues from it, bit for
    bit), then ``generator.msgpack`` + ``generator.json`` (:func:`save_generator`) and the held-out
    curve ``pretrain_curve.json`` + ``pretrain_curve.png``.

    Returns:
        The curve record (:func:`pretrain_record`) with the wall seconds of this invocation.
    """
    from jaxdd.distill import run

    start = time.perf_counter()
    state = run(method, key, checkpoint_dir=out_dir, checkpoint_every=checkpoint_every, resume=resume,
                progress=progress, stop_at=stop_at)
    jax.block_until_ready(state)
    record = {**pretrain_record(method, state), "seconds": time.perf_counter() - start, "resumed": bool(resume)}
    full = {**(meta or {}), "pretrain": method.config, "pretrain_result": record}
    save_generator(out_dir, state.params, {"generator": generator.arch, **full})
    io.write_file_atomically(os.path.join(out_dir, PRETRAIN_CURVE), json.dumps(record, indent=2))
    plot_curve(os.path.join(out_dir, "pretrain_curve.png"), record, title=str((meta or {}).get("source", "")))
    return record


# --------------------------------------------------------------------------------------------
# Generator files


class GeneratorError(io.FileCheckError):
    """A generator directory that is missing, incomplete, corrupt or inconsistent (one line, exit 2)."""


def _params_hash(params: Params) -> str:
    """SHA-256 of every parameter array by its path (stored in ``generator.json``, checked on load)."""
    return io.content_hash({jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(params)})


def save_generator(out_dir: str, params: Params, meta: dict) -> None:
    """Writes ``generator.msgpack`` (flax serialisation) and ``generator.json`` as one atomic change.

    ``meta["generator"]`` is the architecture (``Generator.arch``). Other files in ``out_dir``
    (a pre-training checkpoint, the curve) are kept.
    """
    for field in ("channels", "width", "depth", "embed", "gate"):
        if field not in meta.get("generator", {}):
            raise GeneratorError(f"generator metadata lacks generator.{field}")
    params = jax.device_get(params)
    text = json.dumps({"format": GENERATOR_FORMAT, **meta, "params_sha256": _params_hash(params)}, indent=2, sort_keys=True, default=str)
    io.write_folder_atomically(out_dir, {"generator.msgpack": serialization.to_bytes(params), "generator.json": text})


def load_generator(path: str) -> tuple[Generator, Params, dict]:
    """Reads a generator written by :func:`save_generator`: ``(generator, params, meta)``.

    Raises:
        GeneratorError: missing, unreadable or truncated files, a wrong format tag, parameters
            that do not fit the architecture recorded in the metadata, or parameters whose
            content hash differs from the one written beside them.
    """
    meta_path = os.path.join(path, "generator.json")
    params_path = os.path.join(path, "generator.msgpack")
    if not (os.path.isfile(meta_path) and os.path.isfile(params_path)):
        raise GeneratorError(f"{path} is not a generator directory (needs generator.json and generator.msgpack)")
    meta = io.read_json(meta_path, GeneratorError)
    found = meta.get("format") if isinstance(meta, dict) else None
    if found != GENERATOR_FORMAT:
        raise GeneratorError(f"{meta_path}: format {found!r}, expected {GENERATOR_FORMAT!r}")
    arch = meta.get("generator", {})
    try:
        generator = make_generator(int(arch["channels"]), int(arch["width"]), int(arch["depth"]), int(arch["embed"]),
                                   float(arch["gate"]))
    except (KeyError, TypeError, ValueError) as e:
        raise GeneratorError(f"{meta_path}: bad generator architecture {arch!r} ({e})") from None
    template = generator.init(jax.random.key(0))
    with open(params_path, "rb") as f:
        raw = f.read()
    try:
        params = serialization.from_bytes(template, raw)
    except Exception as e:  # truncated or corrupt msgpack raises msgpack's own errors too
        raise GeneratorError(f"{params_path}: unreadable, or its parameters do not match the recorded architecture ({type(e).__name__})") from None
    if jax.tree.structure(params) != jax.tree.structure(template) or any(
        np.shape(a) != np.shape(b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(template))
    ):
        raise GeneratorError(f"{params_path}: parameters do not match the recorded architecture")
    if "params_sha256" in meta and _params_hash(params) != meta["params_sha256"]:
        raise GeneratorError(f"{params_path}: parameters changed since they were written (content hash differs)")
    return generator, jax.tree.map(jnp.asarray, params), meta


# --------------------------------------------------------------------------------------------
# Adaptation and deployment


class AdaptState(NamedTuple):
    """Adaptation state: the target-specific generator ``w'`` and its Adam state."""

    params: Params
    opt_state: Any


class AdaptData(NamedTuple):
    """Real data of adaptation.

    Attributes:
        pool: target images by class.
        nets: the fixed label networks and readouts.
        pools: one ``(X (Z, C*ipc, H, W, Ch), Y (Z, C*ipc, C))`` pair per adaptation size: the
            pool Z of random real initial sets with their labels (solved once).
    """

    pool: RealByClass
    nets: LabelNets
    pools: tuple


def initial_set(key: PRNGKey, pool: RealByClass, ipc: int) -> Array:
    """A class-sorted random real initial set of ``ipc`` images per class, (C * ipc, H, W, Ch)."""
    x, _ = _flat_with_labels(sample_classes(key, pool, jnp.arange(pool.index.shape[0]), ipc))
    return x


def prepare_target(
    model: Model,
    key: PRNGKey,
    pool: RealByClass,
    config: MGDDConfig,
    adapt_ipcs: tuple,
    first_sets: Optional[dict] = None,
) -> AdaptData:
    """Fits the label readouts once on the target and builds the pools Z of initial sets.

    Args:
        model: the random feature network family.
        key: typed key (label batch, label networks, pools).
        pool: target images by class (:func:`jaxdd.sampling.split_per_class`).
        config: ``label_per_class``, ``label_nets``, ``reg``, ``init_sets``, ``labels``.
        adapt_ipcs: the sizes (images per class) of the pools.
        first_sets: optional ``{ipc: X}`` initial sets placed first in their pool (the set that
            will be deployed, so adaptation sees it).
    """
    k_lab, k_net, k_pool = jax.random.split(key, 3)
    num_classes = pool.index.shape[0]
    classes = jnp.arange(num_classes)
    x_l, y_l = _flat_with_labels(sample_classes(k_lab, pool, classes, config.label_per_class))
    nets = fit_label_nets(model, k_net, x_l, y_l, config.label_nets, config.reg)
    pools = []
    for ipc in adapt_ipcs:
        keys = jax.random.split(jax.random.fold_in(k_pool, ipc), config.init_sets)
        xs = jax.vmap(lambda k: initial_set(k, pool, ipc))(keys)
        if first_sets and ipc in first_sets:
            xs = xs.at[0].set(first_sets[ipc])
        ys = jax.vmap(lambda x: initial_labels(model, nets, x, num_classes, config.labels))(xs)
        pools.append((xs, ys))
    return AdaptData(pool, nets, tuple(pools))


def make_adapt_step(generator: Generator, model: Model, config: MGDDConfig):
    """``(optimizer, step)`` where ``step(state, data, key) -> (state, metrics)`` is one adaptation step.

    Update (MGDD Alg. "Adaptation"): sample a real batch ``X_t`` of every class and, for every
    adaptation size, an initial set with its labels from the pool Z; draw ``theta*``;
    ``w' <- Adam(w', grad L)`` with ``L`` the mean of eq. 1 over the sizes.
    """
    optimizer = optax.adam(config.adapt_lr)

    def step(state: AdaptState, data: AdaptData, key: PRNGKey):
        k_real, k_pick, k_loss = jax.random.split(key, 3)
        classes = jnp.arange(data.pool.index.shape[0])
        x_t, y_t = _flat_with_labels(sample_classes(k_real, data.pool, classes, config.real_per_class))

        def loss_fn(w):
            total = 0.0
            for i, (xs, ys) in enumerate(data.pools):
                j = jax.random.randint(jax.random.fold_in(k_pick, i), (), 0, xs.shape[0])
                total = total + mgdd_loss(generator, model, w, jax.random.fold_in(k_loss, i), x_t, y_t, xs[j], ys[j],
                                          num_nets=config.loss_nets, reg=config.reg)
            return total / len(data.pools)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return AdaptState(optax.apply_updates(state.params, updates), opt_state), {"loss": loss}

    return optimizer, step


def deploy(
    generator: Generator, gen_params: Params, model: Model, nets: LabelNets, x_init: Array, num_classes: int,
    labels: str = "analytic",
) -> SynSet:
    """Deployment: labels of the random real initial set, then one generator pass.

    Returns ``SynSet(g_w'(X_init, Y), Y)`` with ``Y = mean_k f_k(X_init) W_k`` soft (N, C) for
    ``labels='analytic'``, or hard (N,) int32 class-sorted labels for ``labels='onehot'``.
    """
    y = initial_labels(model, nets, x_init, num_classes, labels)
    images = generator.apply(gen_params, x_init, y)
    if labels == "onehot":
        return SynSet(images, jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), x_init.shape[0] // num_classes))
    return SynSet(images, y)


def generate(
    generator: Generator, gen_params: Params, model: Model, data: AdaptData, key: PRNGKey, ipc: int,
    labels: str = "analytic",
) -> SynSet:
    """A synthetic set of any size: :func:`initial_set` (``ipc`` per class) then :func:`deploy`."""
    num_classes = data.pool.index.shape[0]
    return deploy(generator, gen_params, model, data.nets, initial_set(key, data.pool, ipc), num_classes, labels)


def make(request: DistillRequest) -> IterativeMethod:
    """``--method mgdd``: adapt a (pre-trained) generator to the request's data, deploy at ``ipc``.

    The resolved :class:`MGDDConfig` is ``request.config`` (else the preset's defaults). With
    ``config.generator`` empty a fresh generator (``gen_*`` fields) is adapted: MGDD without
    pre-training. The deployed set's initial images are the first element of the pool Z.
    """
    config = request_config(request, default_config)
    if request.model.embed is None:
        raise ValueError("mgdd needs a model with an `embed` function (features before the classifier)")
    if config.labels not in ("analytic", "onehot"):
        raise ValueError(f"mgdd labels must be 'analytic' or 'onehot', got {config.labels!r}")
    channels = int(request.images.shape[-1])
    gen_meta: dict = {}
    k_gen, k_target, k_deploy, k_split = jax.random.split(request.key, 4)
    if config.generator:
        generator, gen_params, gen_meta = load_generator(config.generator)
        if int(generator.arch["channels"]) != channels:
            raise GeneratorError(f"generator {config.generator} expects {generator.arch['channels']}-channel images, "
                                 f"the dataset has {channels}")
    else:
        generator = generator_from_config(channels, config)
        gen_params = generator.init(k_gen)
    adapt_ipcs = tuple(config.adapt_ipcs) or (request.ipc,)
    pool, _ = split_per_class(k_split, group_by_class(request.images, request.labels, request.num_classes),
                              config.max_per_class)
    available = min_class_count(pool)
    if max(adapt_ipcs + (request.ipc, config.real_per_class, config.label_per_class)) > available:
        raise ValueError(f"mgdd: too few real images per class ({available}) for the requested sizes")
    x_init = initial_set(k_deploy, pool, request.ipc)
    data = prepare_target(request.model, k_target, pool, config, adapt_ipcs, {request.ipc: x_init})
    optimizer, step = make_adapt_step(generator, request.model, config)
    model = request.model

    def init(key):
        del key  # the starting point is the (meta) generator
        return AdaptState(gen_params, optimizer.init(gen_params))

    def to_synset(state: AdaptState) -> SynSet:
        return deploy(generator, state.params, model, data.nets, x_init, request.num_classes, config.labels)

    run_config = {
        "method": "mgdd",
        "preset": request.preset,
        "generator_meta": {k: gen_meta[k] for k in ("source", "sources", "arch", "generator", "pretrain_result") if k in gen_meta},
        "adapt_ipcs": list(adapt_ipcs),
        "deploy_ipc": request.ipc,
        "config": config_to_dict(config),
        "labels": config.labels,
    }
    return IterativeMethod(init, step, to_synset, data, config.adapt_steps, run_config)


register(
    MethodSpec(
        "mgdd",
        "MGDD: adapt a meta-trained generator (analytic KRR labels), deploy at any img/cls",
        make,
        config_type=MGDDConfig,
        default_config=default_config,
        default_protocol="frepo",
    )
)
