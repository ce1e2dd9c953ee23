"""Inner-loop primitives: losses, optimisers and training a network on a (small) set.

Everything here is a pure function of explicit arguments, jittable and vmappable over keys, so
that :mod:`jaxdd.evaluate` can train many networks at once and methods can train networks inside
their own jitted steps.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from jaxdd.sharding import map_chunks
from jaxdd.types import Array, Model, Params, PRNGKey


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How a fresh network is trained on a set (hashable, so it can be a static jit argument).

    Attributes:
        name: preset name, recorded with every result.
        optimizer: 'sgd' (PyTorch semantics: weight decay added to the gradient, then momentum)
            or 'adam'.
        lr: peak learning rate.
        momentum: SGD momentum (0 for plain SGD).
        weight_decay: L2 coefficient added to the gradient (PyTorch ``weight_decay``).
        epochs: passes over the set (ignored when ``steps_by_set_size`` is given).
        batch_size: minibatch size; a set smaller than this is one full batch.
        schedule: 'dc_reference' (the default; DC's ``evaluate_synset``: ``epochs + 1`` epochs,
            after epoch ``epochs // 2 + 1`` the lr is x0.1 and the SGD optimiser is created anew,
            so its momentum restarts from zero), 'step_half' (``epochs`` epochs, lr x0.1 from
            epoch ``epochs // 2`` on, momentum kept), 'constant' or 'warmup_cosine'.
        loss: 'ce' (cross-entropy; soft cross-entropy for soft labels), 'mse' (against one-hot or
            soft targets) or 'soft_ce'.
        augment: name of a per-sample augmentation in ``jaxdd.augment.AUGMENTATIONS`` or None.
        steps_by_set_size: ((max_set_size, steps), ...) ascending; total steps chosen by set
            size (FRePo's protocol). None: ``epochs`` decides.
        trainer: the function that trains one network,
            ``trainer(key, model, images, labels, protocol, params=None, step_sizes=None) -> params``
            (hashable, e.g. :class:`CycledGD`); None: minibatch training (:func:`train_on_set`
            with the protocol's augmentation).
    """

    name: str = "custom"
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 300
    batch_size: int = 256
    schedule: str = "dc_reference"
    loss: str = "ce"
    augment: Optional[str] = None
    steps_by_set_size: Optional[tuple] = None
    trainer: Optional[Callable[..., Params]] = None

    def batches_per_epoch(self, set_size: int) -> int:
        return math.ceil(set_size / min(self.batch_size, set_size))

    def total_steps(self, set_size: int) -> int:
        """Number of optimiser steps for a set of ``set_size`` images."""
        if self.steps_by_set_size:
            for max_size, steps in self.steps_by_set_size:
                if set_size <= max_size:
                    return steps
            return self.steps_by_set_size[-1][1]
        epochs = self.epochs + 1 if self.schedule == "dc_reference" else self.epochs
        return epochs * self.batches_per_epoch(set_size)


def loss_fn(logits: Array, labels: Array, kind: str = "ce", weights: Optional[Array] = None) -> Array:
    """Mean training loss over a batch, optionally weighted (weights 0 mask padding).

    Args:
        logits: (B, C).
        labels: (B,) int hard labels or (B, C) soft labels / targets.
        kind: 'ce', 'soft_ce' or 'mse' (0.5 * squared error summed over classes).
        weights: optional (B,) non-negative weights.
    """
    num_classes = logits.shape[-1]
    targets = labels if labels.ndim == 2 else jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
    if kind in ("ce", "soft_ce"):
        per_example = -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)
    elif kind == "mse":
        per_example = 0.5 * jnp.sum(jnp.square(logits - targets), axis=-1)
    else:
        raise ValueError(f"unknown loss {kind!r}; known: ce, soft_ce, mse")
    if weights is None:
        return per_example.mean()
    return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0)


class RestartState(NamedTuple):
    """Updates seen so far and the wrapped transformation's state."""

    count: Array
    inner: optax.OptState


def restart_at(inner: optax.GradientTransformation, step: int) -> optax.GradientTransformation:
    """``inner`` whose state is initialised afresh before update number ``step`` (0-based).

    PyTorch code that re-creates its optimiser mid-training (DC's ``evaluate_synset``) drops the
    momentum buffers; wrapping the momentum ``trace`` in this reproduces that exactly: the first
    update after the restart is ``buf = d``.
    """

    def init(params):
        return RestartState(jnp.zeros([], jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        fresh = inner.init(updates)
        restarted = jax.tree.map(lambda f, s: jnp.where(state.count == step, f, s), fresh, state.inner)
        updates, inner_state = inner.update(updates, restarted, params)
        return updates, RestartState(optax.safe_int32_increment(state.count), inner_state)

    return optax.GradientTransformation(init, update)


def make_optimizer(protocol: Protocol, total_steps: int, steps_per_epoch: int) -> optax.GradientTransformation:
    """The protocol's optimiser with its learning-rate schedule.

    SGD follows PyTorch: ``d = g + wd * p; buf = momentum * buf + d; p -= lr * buf``. With
    schedule 'dc_reference' (Zhao et al. 2021, ``evaluate_synset``: ``lr_schedule = [E // 2 + 1]``)
    the update from step ``b = (E // 2 + 2) * steps_per_epoch`` on uses ``0.1 * lr`` and a fresh
    momentum buffer (the reference builds a new ``torch.optim.SGD`` there).
    """
    if protocol.schedule == "dc_reference":
        if protocol.steps_by_set_size:
            raise ValueError("schedule 'dc_reference' counts epochs; it cannot be used with steps_by_set_size")
        boundary = (protocol.epochs // 2 + 2) * steps_per_epoch
        schedule = optax.piecewise_constant_schedule(protocol.lr, {boundary: 0.1})
        if protocol.optimizer == "sgd":
            moments = optax.trace(decay=protocol.momentum) if protocol.momentum else optax.identity()
        elif protocol.optimizer == "adam":
            moments = optax.scale_by_adam()
        else:
            raise ValueError(f"unknown optimizer {protocol.optimizer!r}")
        base = optax.chain(restart_at(moments, boundary), optax.scale_by_learning_rate(schedule))
        return optax.chain(optax.add_decayed_weights(protocol.weight_decay), base) if protocol.weight_decay else base
    if protocol.schedule == "constant":
        schedule = optax.constant_schedule(protocol.lr)
    elif protocol.schedule == "step_half":
        boundary = (protocol.epochs // 2) * steps_per_epoch
        if protocol.steps_by_set_size:
            boundary = total_steps // 2
        schedule = optax.piecewise_constant_schedule(protocol.lr, {boundary: 0.1})
    elif protocol.schedule == "warmup_cosine":
        warmup = max(1, min(500, total_steps // 10))
        schedule = optax.warmup_cosine_decay_schedule(0.0, protocol.lr, warmup, max(total_steps, warmup + 1))
    else:
        raise ValueError(f"unknown schedule {protocol.schedule!r}")
    if protocol.optimizer == "sgd":
        base = optax.sgd(schedule, momentum=protocol.momentum or None)
    elif protocol.optimizer == "adam":
        base = optax.adam(schedule)
    else:
        raise ValueError(f"unknown optimizer {protocol.optimizer!r}")
    return optax.chain(optax.add_decayed_weights(protocol.weight_decay), base) if protocol.weight_decay else base


def epoch_batch(key: PRNGKey, step: Array, set_size: int, batch_size: int) -> tuple[Array, Array]:
    """Indices and mask of minibatch ``step`` of a shuffled epoch, like a PyTorch DataLoader.

    Epoch ``e = step // nb`` is a permutation drawn from ``fold_in(key, e)``; it is cut into
    ``nb = ceil(N / B)`` batches, the last one padded with masked (weight 0) entries, so every
    image is seen exactly once per epoch (``drop_last=False``).

    Returns:
        (indices (B,), mask (B,) float32).
    """
    batches = math.ceil(set_size / batch_size)
    epoch, position = jnp.divmod(step, batches)
    order = jax.random.permutation(jax.random.fold_in(key, epoch), set_size)
    padded = jnp.concatenate([order, jnp.zeros(batches * batch_size - set_size, order.dtype)])
    valid = jnp.arange(batches * batch_size) < set_size
    start = position * batch_size
    indices = jax.lax.dynamic_slice_in_dim(padded, start, batch_size)
    mask = jax.lax.dynamic_slice_in_dim(valid, start, batch_size).astype(jnp.float32)
    return indices, mask


def train_loop(
    model: Model,
    params: Params,
    images: Array,
    labels: Array,
    protocol: Protocol,
    *,
    shuffle_key: PRNGKey,
    augment: Optional[Callable[[PRNGKey, Array], Array]] = None,
    augment_key: Optional[PRNGKey] = None,
    batch_loss: Optional[Callable[[Params, Array, Array, Array], Array]] = None,
    track: Optional[tuple[Any, Callable[[Any, Array, Array, Any], Any]]] = None,
) -> Any:
    """Trains ``params`` on ``(images, labels)`` with ``protocol``: minibatch steps in one ``lax.scan``.

    Update per step t: ``params, opt_state = opt.update(grad L(params; batch_t))`` where batch_t
    is the t-th minibatch of the shuffled epochs (:func:`epoch_batch` with ``shuffle_key``),
    augmented per sample with ``augment(fold_in(augment_key, t), x)`` if given. The one loop
    behind evaluation (:func:`train_on_set`), the inner training of the matching methods,
    continual learning's distillation (which passes its own ``batch_loss(params, x, y, mask)``;
    default: ``protocol.loss`` on the network's logits) and the forgetting counts of the coresets.

    With ``track = (state_0, update)`` the loop also carries a state of per-example bookkeeping:
    ``batch_loss`` returns ``(loss, aux)`` and after each step's gradient
    ``state = update(state, indices, mask, aux)``, with ``aux`` computed at the parameters before
    the update (e.g. which examples of the batch were classified correctly).

    Returns:
        The trained parameters; with ``track``, ``(params, state)``.
    """
    set_size = images.shape[0]
    batch_size = min(protocol.batch_size, set_size)
    steps_per_epoch = protocol.batches_per_epoch(set_size)
    total_steps = protocol.total_steps(set_size)
    optimizer = make_optimizer(protocol, total_steps, steps_per_epoch)

    if batch_loss is None:
        if track is not None:
            raise ValueError("train_loop: track needs a batch_loss that returns (loss, aux)")

        def batch_loss(p, x, y, mask):
            return loss_fn(model.apply(p, x), y, protocol.loss, mask)

    def one_step(carry, step):
        p, opt_state, tracked = carry
        indices, mask = epoch_batch(shuffle_key, step, set_size, batch_size)
        x = images[indices]
        if augment is not None:
            x = augment(jax.random.fold_in(augment_key, step), x)
        if track is None:
            grads = jax.grad(batch_loss)(p, x, labels[indices], mask)
        else:
            grads, aux = jax.grad(batch_loss, has_aux=True)(p, x, labels[indices], mask)
            tracked = track[1](tracked, indices, mask, aux)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state, tracked), None

    start = (params, optimizer.init(params), None if track is None else track[0])
    (params, _, tracked), _ = jax.lax.scan(one_step, start, jnp.arange(total_steps))
    return params if track is None else (params, tracked)


def train_on_set(
    key: PRNGKey,
    model: Model,
    images: Array,
    labels: Array,
    protocol: Protocol,
    params: Optional[Params] = None,
    augment: Optional[Callable[[PRNGKey, Array], Array]] = None,
) -> Params:
    """Trains one network on ``(images, labels)`` with ``protocol`` (:func:`train_loop`).

    Args:
        key: typed key; split into initialisation, shuffling and augmentation keys.
        model: the network.
        images, labels: the training set (hard or soft labels).
        protocol: optimiser, schedule, epochs, batch size, loss.
        params: start here instead of ``model.init`` (e.g. DD's fixed initialisation).
        augment: per-sample augmentation ``augment(key, x) -> x``; None for none.

    Returns:
        The trained parameters.
    """
    init_key, shuffle_key, augment_key = jax.random.split(key, 3)
    if params is None:
        params = model.init(init_key)
    return train_loop(model, params, images, labels, protocol, shuffle_key=shuffle_key, augment=augment,
                      augment_key=augment_key)


def accuracy(model: Model, params: Params, images: Array, labels: Array, batch_size: int = 1000) -> Array:
    """Top-1 accuracy of one network, in chunks of ``batch_size`` rows (:func:`~jaxdd.sharding.map_chunks`)."""

    def correct(chunk):
        x, y = chunk
        return jnp.argmax(model.apply(params, x), -1) == y

    return jnp.sum(map_chunks(correct, (images, labels), batch_size)) / images.shape[0]


# ----------------------------------------------------------------------------------------------
# Plain-GD unrolls in the style of Dataset Distillation (Wang et al. 2018): differentiable, and
# the trainer that evaluates a set the way DD uses it.


def gd_unroll(step_loss, params: Params, step_batches, lrs: Array, *, checkpoint: str = "none") -> Params:
    """T steps of plain gradient descent as one ``lax.scan``, differentiable end to end.

    ``theta_{t+1} = theta_t - lrs[t] * grad step_loss(theta_t, batch_{t mod S})`` for t < T = len(lrs),
    where ``batch_s = tree_map(lambda a: a[s], step_batches)`` (DD's S steps cycled over epochs).
    ``jax.grad`` of anything computed from the result differentiates through every step (second
    order: the Hessian-vector products come from autodiff, none is written by hand).

    Args:
        step_loss: ``step_loss(params, batch) -> scalar``.
        params: theta_0 (any pytree).
        step_batches: pytree whose leaves have a leading axis S (one batch per distinct step).
        lrs: (T,) step sizes.
        checkpoint: memory/compute trade-off of the backward pass. ``'none'`` stores every
            step's residuals (memory O(T)); ``'step'`` rematerialises each step and stores only
            the parameters entering it; ``'sqrt'`` scans over ceil(T/k) segments of k =
            ceil(sqrt T) steps, rematerialising at both levels, so it stores O(sqrt T) parameter
            copies; ``'cbrt'`` nests three levels of k = ceil(T^(1/3)) (O(3 T^(1/3)) copies, each
            step's forward computed up to four times). A padded tail of zero step sizes leaves
            the parameters exactly unchanged.

    Returns:
        theta_T.
    """
    step_batches = jax.tree.map(jnp.asarray, step_batches)
    num_distinct = jax.tree.leaves(step_batches)[0].shape[0]
    total = lrs.shape[0]
    index = jnp.arange(total) % num_distinct

    def body(theta, xs):
        i, lr = xs
        batch = jax.tree.map(lambda a: a[i], step_batches)
        grads = jax.grad(step_loss)(theta, batch)
        return jax.tree.map(lambda p, g: p - lr.astype(p.dtype) * g, theta, grads), None

    if checkpoint == "none":
        return jax.lax.scan(body, params, (index, lrs))[0]
    step_body = jax.checkpoint(body, prevent_cse=False)
    if checkpoint == "step":
        return jax.lax.scan(step_body, params, (index, lrs))[0]
    levels = {"sqrt": 2, "cbrt": 3}.get(checkpoint)
    if levels is None:
        raise ValueError(f"checkpoint must be 'none', 'step', 'sqrt' or 'cbrt', got {checkpoint!r}")
    seg = 1
    while seg**levels < total:  # seg = ceil(T ** (1 / levels))
        seg += 1
    inner = seg ** (levels - 1)
    outer = -(-total // inner)
    pad = outer * inner - total
    shape = (outer,) + (seg,) * (levels - 1)
    index = jnp.concatenate([index, jnp.zeros((pad,), index.dtype)]).reshape(shape)
    lrs = jnp.concatenate([lrs, jnp.zeros((pad,), lrs.dtype)]).reshape(shape)

    def nested(theta, xs, level):
        if level == 1:
            return jax.lax.scan(step_body, theta, xs)[0]
        segment = jax.checkpoint(lambda th, x: (nested(th, x, level - 1), None), prevent_cse=False)
        return jax.lax.scan(segment, theta, xs)[0]

    return nested(params, (index, lrs), levels)


def split_steps(images: Array, labels: Array, steps: int) -> tuple[Array, Array]:
    """Cuts a set into ``steps`` equal batches, batch s = items s, s+S, s+2S, ... -> (S, N/S, ...).

    For a class-sorted set with ipc a multiple of S, every batch holds ipc/S images of each class
    (DD's baselines); for a DD set stored in step order use a plain reshape instead.
    """
    n = images.shape[0]
    if n % steps:
        raise ValueError(f"a set of {n} images cannot be split into {steps} equal GD steps")

    def arrange(a):
        return jnp.swapaxes(a.reshape((n // steps, steps) + a.shape[1:]), 0, 1)

    return arrange(images), arrange(labels)


def train_gd_steps(
    key: PRNGKey,
    model: Model,
    images: Array,
    labels: Array,
    protocol: Protocol,
    params: Optional[Params] = None,
    step_sizes: Optional[Array] = None,
    *,
    steps: int = 1,
) -> Params:
    """DD's way of using a set: T = S x E plain GD steps, each on its own batch.

    With learned ``step_sizes`` of shape (E, S) (a DD set), ``images`` are in step order: batch s
    is ``images[s*B:(s+1)*B]`` and step t uses batch ``t mod S`` with size ``step_sizes.flat[t]``.
    Without them, S = ``steps`` batches from :func:`split_steps`, cycled ``protocol.epochs``
    times with the fixed step size ``protocol.lr`` (DD's baselines).
    ``theta_{t+1} = theta_t - eta_t grad l(batch_{t mod S}, theta_t)`` from ``params`` (fixed
    init) or ``model.init(key)``.
    """
    if params is None:
        params = model.init(key)
    if step_sizes is not None:
        steps = step_sizes.shape[-1]
        batch = images.shape[0] // steps
        step_images = images.reshape((steps, batch) + images.shape[1:])
        step_labels = labels.reshape((steps, batch) + labels.shape[1:])
        lrs = step_sizes.reshape(-1)
    else:
        step_images, step_labels = split_steps(images, labels, steps)
        lrs = jnp.full((steps * protocol.epochs,), protocol.lr, jnp.float32)

    def step_loss(theta, batch):
        x, y = batch
        return loss_fn(model.apply(theta, x), y, protocol.loss)

    return gd_unroll(step_loss, params, (step_images, step_labels), lrs)


@dataclasses.dataclass(frozen=True)
class CycledGD:
    """A protocol trainer (``Protocol.trainer``) that runs :func:`train_gd_steps`.

    Attributes:
        steps: S, the class-balanced batches a set without learned step sizes is cut into.
    """

    steps: int = 1

    def __call__(self, key, model, images, labels, protocol, params=None, step_sizes=None) -> Params:
        return train_gd_steps(key, model, images, labels, protocol, params, step_sizes, steps=self.steps)
