"""Drawing real images: the one class sampler, and uniform minibatches.

Pure functions of arrays and a typed key; no dataset, model or method knowledge.

The class sampler works on a per-class index table built once on the host
(:func:`group_by_class`)::

    index[c] = the rows of ``images`` with label c, padded with -1 to the largest class
    draw:  u ~ U(0, 1) of shape index.shape,  u[padding] = -1,  keep the n largest u of each row

so a draw is a uniform random n-subset of every class (without replacement) at the cost of the
table (C x largest class), not of the whole data per class, and it jits and vmaps over keys.
"""

from __future__ import annotations

from typing import NamedTuple

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


__all__ = ["RealByClass", "class_counts", "group_by_class", "min_class_count", "sample_batch", "sample_per_class"]
