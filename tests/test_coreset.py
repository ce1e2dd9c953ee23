"""Coresets: herding, k-center, forgetting, k-means and kNN against plain NumPy references."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import coreset
from jaxdd.methods import DistillRequest, get_method


def _np_herding(f, labels, c, ipc):
    rows = np.flatnonzero(labels == c)
    mu = f[rows].mean(0)
    chosen, total = [], np.zeros_like(mu)
    for k in range(ipc):
        best, best_cost = None, np.inf
        for i in rows:
            if i in chosen:
                continue
            cost = np.sum((mu - (total + f[i]) / (k + 1)) ** 2)
            if cost < best_cost:
                best, best_cost = i, cost
        chosen.append(best)
        total = total + f[best]
    return chosen


def _np_kcenter(f, labels, c, ipc):
    rows = np.flatnonzero(labels == c)
    mu = f[rows].mean(0)
    chosen = [rows[np.argmin(np.sum((f[rows] - mu) ** 2, 1))]]
    while len(chosen) < ipc:
        nearest = np.min([np.sum((f[rows] - f[j]) ** 2, 1) for j in chosen], axis=0)
        chosen.append(rows[np.argmax(nearest)])
    return chosen


def _data(n=60, dim=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)).astype(np.float32), (np.arange(n) % classes).astype(np.int32)


def test_herding_and_kcenter_match_numpy_greedy():
    f, labels = _data()
    herd = np.asarray(coreset.herding_indices(jnp.asarray(f), jnp.asarray(labels), 3, 4))
    kc = np.asarray(coreset.kcenter_indices(jnp.asarray(f), jnp.asarray(labels), 3, 4))
    for c in range(3):
        assert herd[c].tolist() == _np_herding(f, labels, c, 4)
        assert kc[c].tolist() == _np_kcenter(f, labels, c, 4)
    images = jnp.arange(60.0).reshape(60, 1, 1, 1)
    s = coreset.herding(jnp.asarray(f), images, jnp.asarray(labels), 3, 4)
    assert s.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert all(int(v) % 3 == c for v, c in zip(np.asarray(s.images).ravel(), s.labels.tolist()))


def test_forgetting_picks_most_forgotten_and_counts_events():
    counts = jnp.array([0.0, 5.0, 1.0, jnp.inf, 2.0, 0.0], jnp.float32)
    labels = jnp.array([0, 0, 0, 1, 1, 1], jnp.int32)
    chosen = np.asarray(coreset.forgetting_indices(jax.random.key(0), counts, labels, 2, 2))
    assert sorted(chosen[0].tolist()) == [1, 2] and sorted(chosen[1].tolist()) == [3, 4]

    from conftest import tiny_mlp

    model = tiny_mlp(num_inputs=4, hidden=8, num_classes=2)
    x = jax.random.normal(jax.random.key(1), (40, 2, 2, 1))
    y = (x.reshape(40, -1).sum(1) > 0).astype(jnp.int32)
    params, events = coreset.train_and_count_forgetting(jax.random.key(2), model, x, y, epochs=5, batch_size=8, lr=0.5)
    events = np.asarray(events)
    assert events.shape == (40,) and np.all((events >= 0) | np.isinf(events))
    assert np.isfinite(events).sum() >= 30  # most examples were learned at some point
    assert float(jnp.mean(jnp.argmax(model.apply(params, x), -1) == y)) > 0.8


def test_forgetting_counts_match_a_step_by_step_reference():
    """train.train_loop with a forgetting track against a Python loop over the same minibatches:
    SGD with momentum, correctness before each update, an event when a correct image turns wrong,
    inf for images never correct; 40 images in batches of 12 (the last one padded)."""
    import optax

    from conftest import tiny_mlp
    from jaxdd.train import epoch_batch, loss_fn

    model = tiny_mlp(num_inputs=4, hidden=8, num_classes=2)
    x = jax.random.normal(jax.random.key(1), (40, 2, 2, 1))
    y = (x.reshape(40, -1).sum(1) > 0).astype(jnp.int32)
    key = jax.random.key(3)
    params, counts = coreset.train_and_count_forgetting(key, model, x, y, epochs=3, batch_size=12, lr=0.3, momentum=0.9)

    init_key, shuffle_key = jax.random.split(key)
    p = model.init(init_key)
    opt = optax.sgd(0.3, momentum=0.9)
    state = opt.init(p)
    last, learned, events = np.zeros(40, bool), np.zeros(40, bool), np.zeros(40)
    for t in range(3 * 4):
        idx, mask = (np.asarray(a) for a in epoch_batch(shuffle_key, t, 40, 12))
        logits = model.apply(p, x[idx])
        grads = jax.grad(lambda q: loss_fn(model.apply(q, x[idx]), y[idx], "ce", jnp.asarray(mask)))(p)
        for i, correct, real in zip(idx, np.asarray(jnp.argmax(logits, -1) == y[idx]), mask > 0):
            if real:
                events[i] += last[i] and not correct
                last[i], learned[i] = correct, learned[i] or correct
        updates, state = opt.update(grads, state, p)
        p = optax.apply_updates(p, updates)
    np.testing.assert_array_equal(np.asarray(counts), np.where(learned, events, np.inf))
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(p)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_kmeans_recovers_separated_clusters_and_knn():
    centres = np.array([[0.0, 0.0], [10.0, 10.0]], np.float32)
    rng = np.random.default_rng(0)
    points = np.concatenate([centres[i] + 0.1 * rng.normal(size=(20, 2)) for i in range(2)]).astype(np.float32)
    x = np.concatenate([points, points + 100]).reshape(80, 1, 2, 1)
    labels = np.repeat([0, 1], 40).astype(np.int32)
    s = coreset.kmeans(jax.random.key(0), jnp.asarray(x), jnp.asarray(labels), 2, 2)
    got = np.sort(np.asarray(s.images).reshape(4, 2), axis=0)
    want = np.sort(np.concatenate([centres, centres + 100]), axis=0)
    np.testing.assert_allclose(got, want, atol=0.1)

    support, queries = jnp.asarray(x[::2]), jnp.asarray(x[1::2])
    pred = np.asarray(coreset.knn_predict(support, jnp.asarray(labels[::2]), queries, k=3, batch_size=7))
    d = ((x[1::2].reshape(40, 1, -1) - x[::2].reshape(1, 40, -1)) ** 2).sum(-1)
    want = [np.bincount(labels[::2][np.argsort(row)[:3]], minlength=2).argmax() for row in d]
    assert pred.tolist() == want
    assert coreset.knn_accuracy(support, jnp.asarray(labels[::2]), queries, jnp.asarray(labels[1::2])) == 1.0


def test_coreset_methods_through_the_registry(digits):
    from conftest import tiny_mlp

    model = tiny_mlp(num_inputs=64, hidden=16, num_classes=10)
    request = DistillRequest(
        images=digits.x_train, labels=digits.y_train, num_classes=10, model=model, ipc=2, preset="smoke",
        key=jax.random.key(0), dataset="digits",
    )
    train = np.asarray(digits.x_train).reshape(len(digits.x_train), -1)
    for name in ("herding", "kcenter", "forgetting", "kmeans"):
        synset, config = get_method(name).make(request)
        assert synset.images.shape == (20, 8, 8, 1) and synset.labels.tolist() == np.repeat(np.arange(10), 2).tolist()
        assert isinstance(config, dict)
        if name != "kmeans":  # real images of the right class
            for image, label in zip(np.asarray(synset.images).reshape(20, -1), synset.labels.tolist()):
                row = int(np.argmin(np.abs(train - image).sum(1)))
                assert np.allclose(train[row], image) and int(digits.y_train[row]) == label


def test_feature_network_progress_bar_follows_the_request_and_changes_nothing(digits, capsys):
    from conftest import tiny_mlp

    model = tiny_mlp(num_inputs=64, hidden=16, num_classes=10)
    request = DistillRequest(
        images=digits.x_train, labels=digits.y_train, num_classes=10, model=model, ipc=2, preset="smoke",
        key=jax.random.key(0), dataset="digits",
    )
    quiet, _ = get_method("forgetting").make(request)
    assert "coreset features" not in capsys.readouterr().err
    shown, _ = get_method("forgetting").make(dataclasses.replace(request, progress=True))
    err = capsys.readouterr().err
    steps = 2 * -(-digits.x_train.shape[0] // 256)  # the smoke preset's 2 epochs of batch 256
    assert "coreset features" in err and f"{steps}/{steps}" in err, err
    np.testing.assert_array_equal(quiet.images, shown.images)
