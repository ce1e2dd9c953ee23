"""Continual learning with a small memory per task (the DC paper's application, Zhao et al. 2021).

A sequence of tasks arrives one at a time. At stage ``s`` a memory of ``ipc`` images per class
is built from task ``s``'s training data by any memory builder (random real, herding, DC, DM...),
networks are trained on the union of all memories built so far, optionally distilling the
previous stage's network (E2E, Castro et al. 2018), and tested on the test set of every task
seen so far. Two sequences are covered by the same loop:

- domain-incremental: tasks are datasets sharing their classes (SVHN -> MNIST -> USPS in the DC
  paper; digits -> MNIST -> USPS offline);
- class-incremental: tasks are disjoint class subsets of one dataset (:func:`class_split_tasks`;
  the DC authors' later ``CL_DM.py``), tested single-head over all classes.

The memory builders are plain callables of arrays, so this module knows no method, dataset or
architecture; the experiment ``experiments/dc_continual.py`` builds them from the method registry.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd.evaluate import ModelKey, default_model_batch, minibatch_trainer, resolve_augment
from jaxdd.train import Protocol, accuracy, train_loop
from jaxdd.types import Array, Model, Params, PRNGKey

MemoryBuilder = Callable[[PRNGKey, Array, Array, int, int], tuple[Array, Array]]
"""``build(key, images, labels, num_classes, ipc) -> (memory images, memory labels)``: labels in
``[0, num_classes)``, every class present in ``labels``; ``ipc`` images per class."""


class Task(NamedTuple):
    """One stage's data: training split (memory source) and test split, normalised NHWC.

    Attributes:
        name: shown in results ('mnist', 'classes 0-1').
        x_train, y_train: training images and int labels (global class ids).
        x_test, y_test: test images and int labels.
    """

    name: str
    x_train: Array
    y_train: Array
    x_test: Array
    y_test: Array


class Memory(NamedTuple):
    """A task's memory: images and int labels (global class ids)."""

    images: Array
    labels: Array


class ContinualConfig(NamedTuple):
    """How networks are trained and tested after each stage.

    Attributes:
        num_models: networks per stage (each continues its own chain across stages), vmapped.
        kd: distil the previous stage's network (from stage 2 on).
        temperature: T of the distillation term (E2E uses 2).
        kd_weight: lambda in ``CE + lambda * T^2 * KL``.
        warm_start: start each stage from the previous stage's network (E2E: one network trained
            on through the stages); False: a fresh initialisation per stage.
        kd_old_only: the distillation term only on the images of earlier stages' memories (the
            previous network never saw the new task, so its outputs there are poor targets);
            False: on every image of the batch.
    """

    num_models: int = 5
    kd: bool = False
    temperature: float = 2.0
    kd_weight: float = 1.0
    warm_start: bool = True
    kd_old_only: bool = False


class ContinualResult(NamedTuple):
    """Accuracies after each stage, fractions in [0, 1].

    Attributes:
        task_accs: (S, S, K): ``task_accs[s, t, k]`` is model k's accuracy on task t's test set
            after stage s; NaN for tasks not seen yet (t > s).
        stage_accs: (S, K): the mean over the tasks seen after stage s (the paper's figure).
    """

    task_accs: np.ndarray
    stage_accs: np.ndarray


def kd_loss(
    logits: Array,
    labels: Array,
    teacher_logits: Array,
    temperature: float,
    weight: float,
    mask: Optional[Array] = None,
    distil_mask: Optional[Array] = None,
) -> Array:
    """Cross-entropy plus temperature-softened distillation (Hinton et al. 2015; E2E, Castro et al. 2018).

    Per example ``CE(y, softmax(z)) + lambda * T^2 * KL(softmax(z_old / T) || softmax(z / T))``,
    averaged over the batch (weighted by ``mask``); with ``distil_mask`` the KL term of example i
    is multiplied by ``distil_mask[i]``. ``T^2`` keeps the distillation gradient's scale
    independent of T. The teacher's logits are constants (no gradient flows to them).

    Args:
        logits: (B, C) student logits z.
        labels: (B,) int labels y.
        teacher_logits: (B, C) previous network's logits z_old.
        temperature: T > 0.
        weight: lambda >= 0.
        mask: optional (B,) weights (0 for padding).
        distil_mask: optional (B,) weights of the distillation term (default 1).
    """
    log_p = jax.nn.log_softmax(logits)
    ce = -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
    teacher = jax.lax.stop_gradient(teacher_logits)
    log_q_t = jax.nn.log_softmax(teacher / temperature)
    log_p_t = jax.nn.log_softmax(logits / temperature)
    kl = jnp.sum(jnp.exp(log_q_t) * (log_q_t - log_p_t), axis=-1)
    if distil_mask is not None:
        kl = kl * distil_mask
    per_example = ce + weight * temperature**2 * kl
    if mask is None:
        return per_example.mean()
    return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def train_with_teacher(
    key: PRNGKey,
    model: Model,
    params: Params,
    teacher: Params,
    images: Array,
    labels: Array,
    protocol: Protocol,
    temperature: float,
    weight: float,
    distil_on: Optional[Array] = None,
) -> Params:
    """Trains ``params`` on ``(images, labels)`` with :func:`kd_loss` against ``teacher``'s outputs.

    The minibatch loop of :func:`jaxdd.train.train_loop` (one ``lax.scan``, shuffled epochs,
    the protocol's optimiser and schedule, per-sample augmentation of the batch seen by both
    networks); only the loss differs. ``protocol.loss`` is ignored (cross-entropy).
    ``distil_on``: optional (N,) bool, the images whose distillation term counts (default all);
    it travels with the labels as their second column, so it follows every shuffle.
    """
    shuffle_key, augment_key = jax.random.split(key)
    on = jnp.ones_like(labels) if distil_on is None else distil_on.astype(labels.dtype)

    def distillation_loss(q, x, y, mask):
        return kd_loss(model.apply(q, x), y[:, 0], model.apply(teacher, x), temperature, weight, mask,
                       distil_mask=y[:, 1].astype(jnp.float32))

    return train_loop(model, params, images, jnp.stack([labels, on], axis=1), protocol, shuffle_key=shuffle_key,
                      augment=resolve_augment(protocol.augment), augment_key=augment_key,
                      batch_loss=distillation_loss)


def stage_key(key: PRNGKey, stage: int) -> PRNGKey:
    """The training key of ``stage`` (0-based): model k uses ``split(stage_key, K)[k]``."""
    return jax.random.fold_in(jax.random.fold_in(key, 1), stage)


@functools.partial(jax.jit, static_argnames=("model", "protocol", "num_models", "warm_start", "distil"))
def _train_stage(key, previous, images, labels, distil_on, *, model: ModelKey, protocol: Protocol, num_models: int,
                 warm_start: bool, distil: Optional[tuple[float, float]]):
    """K networks of one stage: (key_k, previous_k) -> params_k, ``lax.map`` over models;
    ``distil``: (temperature, weight) of :func:`kd_loss`, or None for plain cross-entropy;
    ``distil_on``: the images the distillation term acts on (None: all)."""
    net = model.model

    def train_one(args):
        k, prev = args
        if distil is None:
            return minibatch_trainer(k, net, images, labels, protocol, params=prev if warm_start else None)
        init_key, train_key = jax.random.split(k)
        start = prev if warm_start else net.init(init_key)
        return train_with_teacher(train_key, net, start, prev, images, labels, protocol, *distil, distil_on=distil_on)

    keys = jax.random.split(key, num_models)
    return jax.lax.map(train_one, (keys, previous), batch_size=default_model_batch(num_models))


@functools.partial(jax.jit, static_argnames=("model",))
def _test(stacked, images, labels, *, model: ModelKey):
    return jax.lax.map(lambda p: accuracy(model.model, p, images, labels), stacked)


def build_task_memory(key: PRNGKey, build: MemoryBuilder, task: Task, ipc: int) -> Memory:
    """Runs ``build`` on the classes present in ``task`` (relabelled 0..c-1, mapped back after)."""
    classes = np.unique(np.asarray(task.y_train))
    relabel = np.full(int(classes.max()) + 1, -1, np.int32)
    relabel[classes] = np.arange(classes.size, dtype=np.int32)
    local = jnp.asarray(relabel)[task.y_train]
    images, labels = build(key, task.x_train, local, int(classes.size), ipc)
    return Memory(jnp.asarray(images), jnp.asarray(classes, jnp.int32)[jnp.asarray(labels, jnp.int32)])


def build_memories(key: PRNGKey, tasks: Sequence[Task], build: MemoryBuilder, ipc: int) -> list[Memory]:
    """One memory per task; task ``s`` uses key ``fold_in(fold_in(key, 0), s)``."""
    memory_key = jax.random.fold_in(key, 0)
    return [build_task_memory(jax.random.fold_in(memory_key, s), build, task, ipc) for s, task in enumerate(tasks)]


def train_sequence(
    key: PRNGKey,
    model: Model,
    tasks: Sequence[Task],
    memories: Sequence[Memory],
    protocol: Protocol,
    config: ContinualConfig = ContinualConfig(),
) -> ContinualResult:
    """Trains and tests K networks after each stage on all memories so far.

    Stage s: ``D_s = M_0 u ... u M_s``; model k starts from its stage s-1 parameters (or afresh
    with ``warm_start=False``; stage 0 always afresh) and is trained on ``D_s`` with ``protocol``
    and key ``split(stage_key(key, s), K)[k]`` by plain cross-entropy, or with ``config.kd`` from
    stage 1 on by :func:`kd_loss` against its own stage s-1 parameters (on the images of
    ``M_0 .. M_{s-1}`` only, with ``config.kd_old_only``). Then it is tested on the
    test sets of tasks 0..s. The K models are one stacked pytree (``lax.map`` / vmap).

    Returns:
        :class:`ContinualResult`.
    """
    num = len(tasks)
    if len(memories) != num:
        raise ValueError(f"{num} tasks but {len(memories)} memories")
    example = memories[0].images
    model_key = ModelKey(model, example.shape[1:], example.dtype)
    task_accs = np.full((num, num, config.num_models), np.nan)
    # Placeholder parameters for stage 0, which always starts afresh (they are never used).
    previous = jax.jit(jax.vmap(model.init))(jax.random.split(jax.random.fold_in(key, 2), config.num_models))
    distil = (float(config.temperature), float(config.kd_weight)) if config.kd else None
    for s in range(num):
        images = jnp.concatenate([m.images for m in memories[: s + 1]])
        labels = jnp.concatenate([m.labels for m in memories[: s + 1]])
        old = jnp.arange(images.shape[0]) < images.shape[0] - memories[s].images.shape[0]
        distil_on = old if config.kd_old_only else None
        previous = _train_stage(stage_key(key, s), previous, images, labels, distil_on, model=model_key, protocol=protocol,
                                num_models=config.num_models, warm_start=bool(config.warm_start and s),
                                distil=distil if s else None)
        for t in range(s + 1):
            task_accs[s, t] = np.asarray(_test(previous, tasks[t].x_test, tasks[t].y_test, model=model_key))
    stage_accs = np.stack([task_accs[s, : s + 1].mean(axis=0) for s in range(num)])
    return ContinualResult(task_accs, stage_accs)


def run_continual(
    key: PRNGKey,
    model: Model,
    tasks: Sequence[Task],
    build: MemoryBuilder,
    ipc: int,
    protocol: Protocol,
    config: ContinualConfig = ContinualConfig(),
) -> ContinualResult:
    """:func:`build_memories` then :func:`train_sequence` with the same key."""
    return train_sequence(key, model, tasks, build_memories(key, tasks, build, ipc), protocol, config)


def class_split_tasks(
    x_train: Array, y_train: Array, x_test: Array, y_test: Array, splits: Sequence[Sequence[int]]
) -> list[Task]:
    """Class-incremental tasks: task i holds the classes ``splits[i]`` of one dataset.

    E.g. CIFAR-10 in 5 stages of 2 classes: ``splits = [(0, 1), (2, 3), ..., (8, 9)]``. Labels
    keep their global ids (one head over all classes).
    """
    y_tr, y_te = np.asarray(y_train), np.asarray(y_test)
    tasks = []
    for classes in splits:
        tr, te = np.isin(y_tr, classes), np.isin(y_te, classes)
        tasks.append(Task(f"classes {','.join(map(str, classes))}", x_train[tr], y_train[tr], x_test[te], y_test[te]))
    return tasks


__all__ = [
    "ContinualConfig",
    "ContinualResult",
    "Memory",
    "MemoryBuilder",
    "Task",
    "build_memories",
    "build_task_memory",
    "class_split_tasks",
    "kd_loss",
    "run_continual",
    "stage_key",
    "train_sequence",
    "train_with_teacher",
]
