"""Coreset selection and training-free baselines, all computed in JAX.

Every selector works class by class and returns indices or images per class, so a set of
``ipc`` images per class comes out sorted by class (labels ``repeat(arange(C), ipc)``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdd.progress import tick
from jaxdd.sampling import group_by_class, sample_per_class
from jaxdd.sharding import map_chunks
from jaxdd.train import Protocol, loss_fn, train_loop
from jaxdd.types import Array, Model, Params, PRNGKey, SynSet


def class_sorted_labels(num_classes: int, ipc: int) -> Array:
    """Hard labels ``[0]*ipc + [1]*ipc + ...`` of a class-sorted set."""
    return jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), ipc)


def random_real(key: PRNGKey, images: Array, labels: Array, num_classes: int, ipc: int) -> SynSet:
    """``ipc`` distinct random real images of every class (the "random real" baseline).

    Args:
        key: typed PRNG key; the same key gives the same set.
        images: (N, H, W, C) real images.
        labels: (N,) int labels.
        num_classes: number of classes C.
        ipc: images per class.

    Returns:
        A class-sorted SynSet of C * ipc images.
    """
    chosen = sample_per_class(key, group_by_class(images, labels, num_classes), ipc)
    return SynSet(chosen.reshape((-1,) + images.shape[1:]), class_sorted_labels(num_classes, ipc))


def class_mean(images: Array, labels: Array, num_classes: int, ipc: int = 1) -> SynSet:
    """The average real image of every class (DD's "average real" baseline).

    With ``ipc > 1`` the mean image is repeated, which trains a network exactly like one copy
    with ``ipc`` times the weight; it is offered so that the set has the requested size.
    """
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=images.dtype)  # (N, C)
    sums = jnp.einsum("nc,n...->c...", one_hot, images)
    means = sums / one_hot.sum(0).reshape((-1,) + (1,) * (images.ndim - 1))
    return SynSet(jnp.repeat(means, ipc, axis=0), class_sorted_labels(num_classes, ipc))


# ----------------------------------------------------------------------------- feature-based coresets
# Herding, k-center and forgetting select real images by class; every selector loops over classes
# with ``lax.map`` on the full arrays with a class mask (no per-class padding copies).


def _select(images: Array, labels: Array, indices: Array) -> SynSet:
    num_classes, ipc = indices.shape
    return SynSet(images[indices.reshape(-1)], class_sorted_labels(num_classes, ipc))


def herding_indices(features: Array, labels: Array, num_classes: int, ipc: int) -> Array:
    """Herding (Welling 2009; iCaRL's exemplar rule) per class: (num_classes, ipc) indices.

    With ``mu_c`` the mean feature of class c and ``S`` the selected set, step k adds
    ``argmin_i || mu_c - (sum_{j in S} f_j + f_i) / k ||`` over unselected images i of class c.
    """
    features = features.reshape(features.shape[0], -1)

    def one_class(c):
        member = labels == c
        weights = member.astype(features.dtype)
        mu = weights @ features / jnp.sum(weights)

        def pick(carry, k):
            total, taken = carry
            candidate = (total[None, :] + features) / (k + 1.0)
            cost = jnp.sum(jnp.square(mu[None, :] - candidate), axis=1)
            cost = jnp.where(member & ~taken, cost, jnp.inf)
            i = jnp.argmin(cost)
            return (total + features[i], taken.at[i].set(True)), i

        start = (jnp.zeros_like(mu), jnp.zeros(labels.shape[0], bool))
        _, chosen = jax.lax.scan(pick, start, jnp.arange(ipc))
        return chosen

    return jax.lax.map(one_class, jnp.arange(num_classes))


def kcenter_indices(features: Array, labels: Array, num_classes: int, ipc: int) -> Array:
    """Greedy k-center per class (Sener & Savarese 2018): (num_classes, ipc) indices.

    The first centre is the image closest to the class mean; each next one is the image of the
    class farthest from its nearest chosen centre (Euclidean distance in feature space).
    """
    features = features.reshape(features.shape[0], -1)

    def one_class(c):
        member = labels == c
        weights = member.astype(features.dtype)
        mu = weights @ features / jnp.sum(weights)
        first = jnp.argmin(jnp.where(member, jnp.sum(jnp.square(features - mu), axis=1), jnp.inf))

        def pick(nearest, _):
            i = jnp.argmax(jnp.where(member, nearest, -jnp.inf))
            distance = jnp.sum(jnp.square(features - features[i]), axis=1)
            return jnp.minimum(nearest, distance), i

        nearest = jnp.sum(jnp.square(features - features[first]), axis=1)
        _, rest = jax.lax.scan(pick, nearest, None, length=ipc - 1)
        return jnp.concatenate([first[None], rest])

    return jax.lax.map(one_class, jnp.arange(num_classes))


def forgetting_indices(key: PRNGKey, counts: Array, labels: Array, num_classes: int, ipc: int) -> Array:
    """The ``ipc`` most often forgotten images of every class (Toneva et al., ICLR 2019).

    Args:
        key: breaks ties at random.
        counts: (N,) forgetting events per image (``inf`` for images never learned, as in Toneva
            et al.), e.g. from :func:`train_and_count_forgetting`.
    """
    noise = jax.random.uniform(key, counts.shape)

    def one_class(c):
        score = jnp.where(labels == c, counts.astype(jnp.float32) + noise, -jnp.inf)
        return jax.lax.top_k(score, ipc)[1]

    return jax.lax.map(one_class, jnp.arange(num_classes))


def herding(features: Array, images: Array, labels: Array, num_classes: int, ipc: int) -> SynSet:
    """The real images chosen by :func:`herding_indices`, class-sorted."""
    return _select(images, labels, herding_indices(features, labels, num_classes, ipc))


def kcenter(features: Array, images: Array, labels: Array, num_classes: int, ipc: int) -> SynSet:
    """The real images chosen by :func:`kcenter_indices`, class-sorted."""
    return _select(images, labels, kcenter_indices(features, labels, num_classes, ipc))


def forgetting(key: PRNGKey, counts: Array, images: Array, labels: Array, num_classes: int, ipc: int) -> SynSet:
    """The real images chosen by :func:`forgetting_indices`, class-sorted."""
    return _select(images, labels, forgetting_indices(key, counts, labels, num_classes, ipc))


def kmeans(key: PRNGKey, images: Array, labels: Array, num_classes: int, ipc: int, iterations: int = 30) -> SynSet:
    """Per-class k-means centroids in pixel space (DD's k-means baseline), class-sorted.

    Lloyd's algorithm with k = ipc, started from ``ipc`` distinct random images of the class;
    a cluster that loses all its members keeps its previous centroid.
    """
    flat = images.reshape(images.shape[0], -1)
    starts = sample_per_class(key, group_by_class(flat, labels, num_classes), ipc)

    def one_class(args):
        c, centroids = args
        member = labels == c

        def lloyd(centroids, _):
            d = jnp.sum(jnp.square(flat), 1)[:, None] - 2 * flat @ centroids.T + jnp.sum(jnp.square(centroids), 1)[None]
            assign = jax.nn.one_hot(jnp.argmin(d, axis=1), ipc, dtype=flat.dtype) * member[:, None]
            sizes = assign.sum(0)
            means = assign.T @ flat / jnp.maximum(sizes, 1.0)[:, None]
            return jnp.where(sizes[:, None] > 0, means, centroids), None

        centroids, _ = jax.lax.scan(lloyd, centroids, None, length=iterations)
        return centroids

    centroids = jax.lax.map(one_class, (jnp.arange(num_classes), starts))
    return SynSet(centroids.reshape((num_classes * ipc,) + images.shape[1:]), class_sorted_labels(num_classes, ipc))


def knn_predict(support: Array, support_labels: Array, queries: Array, k: int = 1, batch_size: int = 1000) -> Array:
    """k-nearest-neighbour labels of ``queries`` under Euclidean distance to ``support``.

    Ties in the vote go to the smaller label. Queries are processed in chunks (``lax.map``).

    Args:
        support: (M, ...) images or features of the set; support_labels: (M,) int.
        queries: (Q, ...) with the same trailing shape.
        k: neighbours that vote.
    """
    s = support.reshape(support.shape[0], -1)
    num_classes = int(jnp.max(support_labels)) + 1

    def chunk(x):
        x = x.reshape(x.shape[0], -1)
        d = jnp.sum(jnp.square(x), 1)[:, None] - 2 * x @ s.T + jnp.sum(jnp.square(s), 1)[None]
        nearest = jax.lax.top_k(-d, k)[1]
        votes = jax.nn.one_hot(support_labels[nearest], num_classes).sum(1)
        return jnp.argmax(votes, axis=1)

    return map_chunks(chunk, queries, batch_size)


def knn_accuracy(support: Array, support_labels: Array, queries: Array, query_labels: Array, k: int = 1) -> float:
    """Accuracy of :func:`knn_predict` (DD's "used in k-NN classification" baselines)."""
    return float(jnp.mean(knn_predict(support, support_labels, queries, k) == query_labels))


def forgetting_protocol(epochs: int = 1, batch_size: int = 256, lr: float = 0.01, momentum: float = 0.9) -> Protocol:
    """The feature network's training: SGD with momentum, constant ``lr``, no weight decay, cross-entropy."""
    return Protocol(name="forgetting", optimizer="sgd", lr=lr, momentum=momentum, weight_decay=0.0, epochs=epochs,
                    batch_size=batch_size, schedule="constant", loss="ce")


def train_and_count_forgetting(
    key: PRNGKey,
    model: Model,
    images: Array,
    labels: Array,
    epochs: int = 1,
    batch_size: int = 256,
    lr: float = 0.01,
    momentum: float = 0.9,
) -> tuple[Params, Array]:
    """Trains ``model`` on the full data and counts forgetting events (Toneva et al., ICLR 2019).

    :func:`jaxdd.train.train_loop` under :func:`forgetting_protocol` (shuffled minibatches, one
    ``lax.scan`` over all steps) from ``model.init``, tracking per image: each time it is in a
    minibatch its correctness (before the update) is recorded; a forgetting event is a
    presentation where it is misclassified after having been correct at its previous
    presentation. Images never classified correctly get ``inf`` events. Every step ticks an open
    :func:`jaxdd.progress.progress_bar` (``total_steps`` of the protocol).

    Returns:
        (trained params, (N,) float32 forgetting counts). The params give the features of the
        herding and k-center selections.
    """
    init_key, shuffle_key = jax.random.split(key)
    count = images.shape[0]

    def batch_loss(p, x, y, mask):
        logits = model.apply(p, x)
        return loss_fn(logits, y, "ce", mask), jnp.argmax(logits, -1) == y

    def count_events(state, indices, mask, correct):
        last, learned, events = state
        rows = jnp.where(mask > 0, indices, count)  # padding entries are dropped below
        forgot = last[indices] & ~correct
        events = events.at[rows].add(forgot.astype(jnp.float32), mode="drop")
        last = last.at[rows].set(correct, mode="drop")
        learned = learned.at[rows].set(learned[indices] | correct, mode="drop")
        jax.debug.callback(tick, events[0])
        return last, learned, events

    start = (jnp.zeros(count, bool), jnp.zeros(count, bool), jnp.zeros(count))
    params, (_, learned, events) = train_loop(
        model, model.init(init_key), images, labels, forgetting_protocol(epochs, batch_size, lr, momentum),
        shuffle_key=shuffle_key, batch_loss=batch_loss, track=(start, count_events),
    )
    return params, jnp.where(learned, events, jnp.inf)


def embed_all(model: Model, params: Params, images: Array, batch_size: int = 1000) -> Array:
    """``model.embed(params, images)`` in chunks (:func:`jaxdd.sharding.map_chunks`), (N, F)."""
    return map_chunks(lambda x: model.embed(params, x).reshape(x.shape[0], -1), images, batch_size)
