"""jaxdd.sampling: the class tables, their split, and the draws of uniform subsets without
replacement inside a jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd.sampling import (
    class_counts,
    group_by_class,
    min_class_count,
    sample_batch,
    sample_classes,
    sample_per_class,
    split_per_class,
)


@pytest.fixture
def toy():
    labels = jnp.array([0, 1, 0, 2, 1, 0, 2, 2, 1, 0, 2, 2], jnp.int32)  # classes of 4, 3, 5
    images = jnp.arange(12, dtype=jnp.float32).reshape(12, 1, 1, 1)  # image i holds value i
    return images, labels


def rows(x):
    return np.asarray(x).reshape(-1).astype(int)


def test_class_draws_are_distinct_members_and_replayable(toy):
    images, labels = toy
    real = group_by_class(images, labels, 3)
    assert min_class_count(real) == 3
    np.testing.assert_array_equal(class_counts(labels, 4), [4, 3, 5, 0])
    draw = jax.jit(sample_per_class, static_argnums=2)
    out = draw(jax.random.key(0), real, 3)
    assert out.shape == (3, 3, 1, 1, 1)
    for c in range(3):
        got = rows(out[c])
        assert len(set(got)) == 3 and all(int(labels[r]) == c for r in got)
    np.testing.assert_array_equal(out, sample_per_class(jax.random.key(0), real, 3))
    with pytest.raises(ValueError, match="smallest class has 3"):
        sample_per_class(jax.random.key(0), real, 4)
    with pytest.raises(ValueError, match="class 3 has none"):
        group_by_class(images, labels, 4)


def test_class_draws_are_uniform_subsets(toy):
    """Every member of a class of m is drawn with probability n/m (2000 vmapped draws, 5 sigma)."""
    images, labels = toy
    real = group_by_class(images, labels, 3)
    keys = jax.random.split(jax.random.key(1), 2000)
    out = np.asarray(jax.vmap(lambda k: sample_per_class(k, real, 2))(keys)).reshape(2000, 3, 2)
    for c in range(3):
        members = np.flatnonzero(np.asarray(labels) == c)
        p = 2 / len(members)
        freq = np.array([(out[:, c] == r).any(axis=1).mean() for r in members])
        assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / 2000)), (c, freq, p)


def test_split_per_class_is_disjoint_capped_and_compact():
    labels = jnp.asarray(np.repeat(np.arange(3), [5, 9, 6]))
    images = jnp.asarray(np.arange(20, dtype=np.float32)).reshape(20, 1, 1, 1)
    real = group_by_class(images, labels, 3)
    train, held = split_per_class(jax.random.key(0), real, max_per_class=100, holdout_per_class=2)
    assert np.sum(np.asarray(train.index) >= 0, 1).tolist() == [3, 7, 4] and min_class_count(held) == 2
    assert train.images.shape[0] == 14 and held.images.shape[0] == 6  # each table holds only its own images
    for c, lo, hi in ((0, 0, 5), (1, 5, 14), (2, 14, 20)):
        tr = {int(train.images[r, 0, 0, 0]) for r in np.asarray(train.index[c]) if r >= 0}
        he = {int(held.images[r, 0, 0, 0]) for r in np.asarray(held.index[c])}
        assert tr | he == set(range(lo, hi)) and not tr & he
    capped, none = split_per_class(jax.random.key(0), real, max_per_class=2)
    assert none is None and np.asarray(capped.index).tolist() == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError, match="more than 5 images"):
        split_per_class(jax.random.key(0), real, max_per_class=100, holdout_per_class=5)


def test_subset_draws_are_distinct_members_uniform_and_jittable(toy):
    """sample_classes on a traced subset of classes: distinct members of each named class, every
    member drawn with probability n/m (2000 vmapped draws, 5 sigma), the same inside a jit."""
    images, labels = toy
    real = group_by_class(images, labels, 3)
    classes = jnp.array([2, 0])
    out = sample_classes(jax.random.key(1), real, classes, 3)
    assert out.shape == (2, 3, 1, 1, 1)
    np.testing.assert_array_equal(out, jax.jit(sample_classes, static_argnums=3)(jax.random.key(1), real, classes, 3))
    keys = jax.random.split(jax.random.key(2), 2000)
    draws = np.asarray(jax.vmap(lambda k: sample_classes(k, real, classes, 2))(keys)).reshape(2000, 2, 2)
    for i, c in enumerate((2, 0)):
        members = np.flatnonzero(np.asarray(labels) == c)
        assert all(len(set(d)) == 2 and set(d) <= set(members) for d in draws[:, i].astype(int))
        p = 2 / len(members)
        freq = np.array([(draws[:, i] == r).any(axis=1).mean() for r in members])
        assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / 2000)), (c, freq, p)


def test_sample_batch(toy):
    images, labels = toy
    x, y = jax.jit(sample_batch, static_argnums=3)(jax.random.key(5), images, labels, 8)
    got = rows(x)
    assert len(set(got)) == 8
    np.testing.assert_array_equal(np.asarray(y), np.asarray(labels)[got])


def test_map_chunks_equals_the_unchunked_map():
    """The one chunked-map helper: padded fixed-size chunks, trimmed, equal to one big call."""
    from jaxdd.sharding import map_chunks

    x = jax.random.normal(jax.random.key(0), (23, 4))
    w = jax.random.normal(jax.random.key(1), (4, 3))

    def fn(batch):
        return {"y": jnp.tanh(batch["x"] @ w), "n": jnp.sum(batch["x"] ** 2, 1)}

    want = fn({"x": x})
    for chunk in (1, 5, 23, 100):
        got = jax.jit(lambda b: map_chunks(fn, b, chunk))({"x": x})
        np.testing.assert_allclose(got["y"], want["y"], rtol=1e-5, atol=1e-6)  # matmul blocking differs by size
        np.testing.assert_allclose(got["n"], want["n"], rtol=1e-5)
