"""Drawing real images: the one class sampler, and uniform minibatches.

Pure functions of arrays and a typed key; no dataset, model or method knowledge.

Every class draw works on one per-class index table, :class:`RealByClass`, built once on the
host (:func:`group_by_class`; :func:`split_per_class` cuts it into a training and a held-out
table)::

    index[c] = the rows of ``images`` with label c, padded with -1 to the largest class

and draws a uniform random n-subset of each class (without replacement) at the cost of the table
(C x largest class), not of the whole data per class; it jits and vmaps over keys. Two draws
read the table:

- :func:`sample_per_class`, every class at once (DC, DM, IDC, MTT, the coresets):
  ``u ~ U(0, 1)`` of shape ``index.shape``, ``u[padding] = -1``, keep the n largest u of each row;
- :func:`sample_classes`, a subset of classes that may be traced (MGDD's tasks): class
  ``classes[i]`` draws with its own key ``split(key, k)[i]`` through ``jax.random.choice``
  (without replacement, zero probability on padding).

They are two rules, not two samplers: each keeps the random stream that saved runs replay.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd.types import Array, PRNGKey


class RealByClass(NamedTuple):
    """Real images with a per-class index table, for drawing class batches inside a jit.

    Attributes:
        images: (N, H, W, C) real images.
        index: (num_classes, max_count) int32: the rows of ``images`` of each class, padded with -1.
    """

    images: Array
    index: Array


def class_counts(labels: Array, num_classes: int) -> Array:
    """(num_classes,) int32 number of labels equal to each class."""
    return jnp.bincount(labels, length=num_classes).astype(jnp.int32)


def group_by_class(images: Array, labels: Array, num_classes: int) -> RealByClass:
    """Builds the :class:`RealByClass` index (host side, once per run).

    Raises:
        ValueError: a class has no image.
    """
    labels_np = np.asarray(labels)
    rows = [np.flatnonzero(labels_np == c) for c in range(num_classes)]
    empty = [c for c, r in enumerate(rows) if len(r) == 0]
    if empty:
        raise ValueError(f"every class needs at least one real image; class {empty[0]} has none")
    index = np.full((num_classes, max(len(r) for r in rows)), -1, np.int32)
    for c, r in enumerate(rows):
        index[c, : len(r)] = r
    return RealByClass(jnp.asarray(images), jnp.asarray(index))


def min_class_count(real: RealByClass) -> int:
    """Images in the smallest class (the largest ``n`` :func:`sample_per_class` may draw)."""
    return int(np.min(np.sum(np.asarray(real.index) >= 0, axis=1)))


def sample_per_class(key: PRNGKey, real: RealByClass, n: int) -> Array:
    """``n`` distinct random real images of every class: (num_classes, n, H, W, C).

    Pure and jittable (``n`` static). ``n`` must not exceed :func:`min_class_count` (padding
    rows would be drawn otherwise); this is checked when ``real`` is concrete.
    """
    if not isinstance(real.index, jax.core.Tracer) and n > min_class_count(real):
        raise ValueError(f"asked for {n} images per class; the smallest class has {min_class_count(real)}")
    scores = jax.random.uniform(key, real.index.shape)
    scores = jnp.where(real.index >= 0, scores, -1.0)
    _, positions = jax.lax.top_k(scores, n)
    rows = jnp.take_along_axis(real.index, positions, axis=1)
    return real.images[rows]


def split_per_class(
    key: PRNGKey, real: RealByClass, max_per_class: int, holdout_per_class: int = 0
) -> tuple[RealByClass, Optional[RealByClass]]:
    """A random per-class split of ``real`` into a training table and a held-out one (host side, once).

    Class c's rows are permuted with key ``split(key, num_classes)[c]``; the first
    ``holdout_per_class`` form the held-out table (None when 0), the next ``max_per_class`` at
    most the training table. Each table holds only its own images, so at most ``max_per_class``
    images per class stay on device.

    Raises:
        ValueError: a class has ``holdout_per_class`` images or fewer.
    """
    index = np.asarray(real.index)
    counts = np.sum(index >= 0, axis=1)
    if counts.min() <= holdout_per_class:
        raise ValueError(f"every class needs more than {holdout_per_class} images; counts {counts.tolist()}")
    train, held = [], []
    for row, count, k in zip(index, counts, jax.random.split(key, index.shape[0])):
        rows = row[:count][np.asarray(jax.random.permutation(k, count))]
        held.append(rows[:holdout_per_class])
        train.append(rows[holdout_per_class: holdout_per_class + max_per_class])

    def table(groups):
        positions = np.full((len(groups), max(len(g) for g in groups)), -1, np.int32)
        start = 0
        for c, g in enumerate(groups):
            positions[c, : len(g)] = np.arange(start, start + len(g))
            start += len(g)
        return RealByClass(real.images[jnp.asarray(np.concatenate(groups))], jnp.asarray(positions))

    return table(train), (table(held) if holdout_per_class else None)


def sample_classes(key: PRNGKey, real: RealByClass, classes: Array, n: int) -> Array:
    """``n`` distinct random real images of each class in ``classes``: (k, n, H, W, C).

    Pure and jittable (``n`` static; ``classes`` a (k,) int array, possibly traced). Class
    ``classes[i]`` draws ``jax.random.choice(split(key, k)[i], M, (n,), replace=False, p)`` over
    its row of the table, ``p`` uniform on its images and 0 on padding; ``n`` must not exceed
    the class's images.
    """
    m = real.index.shape[1]

    def one(k, row):
        valid = (row >= 0).astype(jnp.float32)
        return row[jax.random.choice(k, m, (n,), replace=False, p=valid / jnp.sum(valid))]

    rows = jax.vmap(one)(jax.random.split(key, classes.shape[0]), real.index[classes])
    return real.images[rows]


def sample_batch(key: PRNGKey, images: Array, labels: Array, n: int) -> tuple[Array, Array]:
    """A uniform random minibatch of ``n`` distinct examples (without replacement).

    Args:
        key: a typed key.
        images: (N, ...) images.
        labels: (N, ...) labels (hard or soft).
        n: batch size (static), at most N.

    Returns:
        ``(images[idx], labels[idx])`` with ``idx`` n distinct indices.
    """
    idx = jax.random.choice(key, images.shape[0], (n,), replace=False)
    return images[idx], labels[idx]


__all__ = [
    "RealByClass", "class_counts", "group_by_class", "min_class_count", "sample_batch", "sample_classes", "sample_per_class",
    "split_per_class",
]
