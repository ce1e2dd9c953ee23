"""Training primitives and the vmapped evaluation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdd.evaluate import evaluate_synset, get_protocol, train_models
from jaxdd.train import Protocol, accuracy, epoch_batch, loss_fn, make_optimizer, train_on_set
from jaxdd.types import Model
from tests.conftest import tiny_mlp


@pytest.mark.parametrize("set_size,batch_size", [(10, 10), (100, 32), (37, 8)])
def test_epoch_batches_cover_every_image_once(set_size, batch_size):
    key = jax.random.key(0)
    batches = -(-set_size // batch_size)
    for epoch in range(2):
        seen = []
        for position in range(batches):
            indices, mask = epoch_batch(key, jnp.asarray(epoch * batches + position), set_size, batch_size)
            seen.extend(np.asarray(indices)[np.asarray(mask) > 0].tolist())
        assert sorted(seen) == list(range(set_size))


def test_epochs_are_shuffled_differently():
    key = jax.random.key(1)
    first, _ = epoch_batch(key, jnp.asarray(0), 50, 50)
    second, _ = epoch_batch(key, jnp.asarray(1), 50, 50)
    assert not np.array_equal(first, second)


def test_losses_match_definitions():
    logits = jax.random.normal(jax.random.key(0), (6, 4))
    labels = jnp.array([0, 1, 2, 3, 0, 1])
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    np.testing.assert_allclose(loss_fn(logits, labels, "ce"), expected, rtol=1e-6)
    soft = jax.nn.one_hot(labels, 4)
    np.testing.assert_allclose(loss_fn(logits, soft, "soft_ce"), expected, rtol=1e-6)
    np.testing.assert_allclose(loss_fn(logits, labels, "mse"), 0.5 * jnp.sum((logits - soft) ** 2, -1).mean(), rtol=1e-6)
    weights = jnp.array([1.0, 1, 1, 0, 0, 0])
    np.testing.assert_allclose(loss_fn(logits, labels, "ce", weights), optax.softmax_cross_entropy_with_integer_labels(logits[:3], labels[:3]).mean(), rtol=1e-6)


def test_sgd_follows_pytorch_semantics():
    """d = g + wd p; buf = m buf + d; p -= lr buf, with lr x0.1 from epoch epochs//2 on."""
    protocol = Protocol(lr=0.1, momentum=0.9, weight_decay=0.01, epochs=4, schedule="step_half")
    optimizer = make_optimizer(protocol, total_steps=4, steps_per_epoch=1)
    p, buf = 1.0, 0.0
    params = jnp.asarray(1.0)
    state = optimizer.init(params)
    for step in range(4):
        grad = 2.0 * p  # d/dp of p^2
        lr = 0.1 if step < 2 else 0.01
        buf = 0.9 * buf + (grad + 0.01 * p)
        p = p - lr * buf
        updates, state = optimizer.update(jnp.asarray(2.0) * params, state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(float(params), p, rtol=1e-6)


def _pytorch_dc_evaluation(w, x, y, lr, epochs, momentum, weight_decay, reset):
    """DC's ``evaluate_synset`` loop in float64 on a linear model, full batch, loss 0.5 ||x w - y||^2 / n.

    ``for ep in range(E + 1)``: one SGD step; ``if ep == E // 2 + 1``: lr x0.1 and a new
    ``torch.optim.SGD`` (momentum buffer dropped, unless ``reset`` is False).
    """
    buf = None
    for ep in range(epochs + 1):
        d = x.T @ (x @ w - y) / x.shape[0] + weight_decay * w
        buf = d if buf is None else momentum * buf + d
        w = w - lr * buf
        if ep == epochs // 2 + 1:
            lr *= 0.1
            buf = None if reset else buf
    return w


def test_dc_reference_schedule_matches_the_pytorch_loop():
    """E + 1 epochs, lr x0.1 after epoch E // 2 + 1, momentum reset there (the 'dc' default)."""
    x = np.asarray(jax.random.normal(jax.random.key(0), (6, 3)), np.float64)
    y = np.asarray(jax.random.normal(jax.random.key(1), (6, 2)), np.float64)
    w0 = np.asarray(jax.random.normal(jax.random.key(2), (3, 2)), np.float64)
    model = Model(lambda key: jnp.asarray(w0, jnp.float32), lambda w, a: a.reshape(a.shape[0], -1) @ w)
    protocol = get_protocol("dc", epochs=6, loss="mse", lr=0.2, batch_size=6)
    assert protocol.schedule == "dc_reference" and protocol.total_steps(6) == 7
    got = np.asarray(train_on_set(jax.random.key(3), model, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), protocol))
    expected = _pytorch_dc_evaluation(w0, x, y, 0.2, 6, 0.9, 5e-4, reset=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    no_reset = _pytorch_dc_evaluation(w0, x, y, 0.2, 6, 0.9, 5e-4, reset=False)
    assert np.abs(no_reset - expected).max() > 1e-3  # the reset is visible at this size
    # the former schedule, still available by name: E epochs, lr x0.1 from epoch E // 2, momentum kept
    legacy = np.asarray(train_on_set(jax.random.key(3), model, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32),
                                     get_protocol("dc", epochs=6, loss="mse", lr=0.2, batch_size=6, schedule="step_half")))
    w, buf, lr = w0, np.zeros_like(w0), 0.2
    for ep in range(6):
        buf = 0.9 * buf + x.T @ (x @ w - y) / 6 + 5e-4 * w
        w = w - (lr if ep < 3 else 0.02) * buf
    np.testing.assert_allclose(legacy, w, rtol=1e-5, atol=1e-6)


def test_restart_at_reinitialises_the_momentum_once():
    """Per step (3 steps per epoch, E = 4): lr 0.1 for 12 steps, then 0.01 with a fresh buffer."""
    protocol = Protocol(lr=0.1, momentum=0.5, weight_decay=0.0, epochs=4, batch_size=1, schedule="dc_reference")
    optimizer = make_optimizer(protocol, total_steps=protocol.total_steps(3), steps_per_epoch=3)
    assert protocol.total_steps(3) == 15
    params, state = jnp.asarray(0.0), optimizer.init(jnp.asarray(0.0))
    buf = 0.0
    for step in range(15):
        if step == 12:  # (4 // 2 + 2) * 3: after epoch E // 2 + 1 = 3
            buf = 0.0
        buf = 0.5 * buf + 1.0
        updates, state = optimizer.update(jnp.asarray(1.0), state, params)
        np.testing.assert_allclose(float(updates), -(0.1 if step < 12 else 0.01) * buf, rtol=1e-6)
        params = optax.apply_updates(params, updates)


def test_steps_by_set_size():
    protocol = get_protocol("frepo")
    assert protocol.total_steps(10) == 1000 and protocol.total_steps(100) == 2000 and protocol.total_steps(7000) == 40000
    assert get_protocol("dc").total_steps(300) == 301 * 2
    assert get_protocol("dc", schedule="step_half").total_steps(300) == 300 * 2


def test_dataset_specific_protocol_and_overrides():
    assert get_protocol("dc", "mnist").epochs == 1000 and get_protocol("dc", "mnist").augment == "dc_mnist"
    assert get_protocol("dc", "cifar10").epochs == 300 and get_protocol("dc", "cifar10").augment is None
    assert get_protocol("dc", "mnist", epochs=20).epochs == 20
    with pytest.raises(ValueError, match="unknown protocol"):
        get_protocol("nope")


def test_vmapped_evaluation_equals_one_by_one(digits):
    """K models in one vmapped program == K separate trainings with the same keys."""
    model = tiny_mlp()
    images, labels = digits.x_train[:200], digits.y_train[:200]
    protocol = get_protocol("dc", epochs=15, batch_size=64)
    key = jax.random.key(3)
    result = evaluate_synset(key, model, images, labels, digits.x_test, digits.y_test, protocol, 4)
    stacked = jax.jit(lambda k: train_models(k, model, images, labels, protocol, 4))(key)
    train_one = jax.jit(lambda k: train_on_set(k, model, images, labels, protocol))
    for index, model_key in enumerate(jax.random.split(key, 4)):
        alone = train_one(model_key)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[index], b, rtol=1e-5, atol=1e-6), stacked, alone)
        count = digits.y_test.shape[0]  # compare numbers of correct test images, not float32 ratios
        assert round(float(accuracy(model, alone, digits.x_test, digits.y_test)) * count) == round(result.accs[index] * count)
    assert result.mean == pytest.approx(np.mean(result.accs)) and result.std == pytest.approx(np.std(result.accs))
    for model_batch in (2, 4):  # vmapping models together changes nothing
        vmapped = evaluate_synset(key, model, images, labels, digits.x_test, digits.y_test, protocol, 4, model_batch=model_batch)
        np.testing.assert_allclose(vmapped.accs, result.accs, atol=1.5 / digits.y_test.shape[0])
    assert len(set(np.round(result.accs, 6))) > 1, "independent keys must give different models"


def test_protocol_really_trains_convnet_on_full_digits(digits):
    """ConvNet trained on the whole digits training split reaches >= 95% test accuracy."""
    from jaxdd.models import get_model

    model = get_model("ConvNet", digits.info.image_shape, digits.info.num_classes, width=32)
    protocol = get_protocol("dc", epochs=50, batch_size=64)  # the dc optimiser, fewer epochs: seconds on CPU
    result = evaluate_synset(jax.random.key(0), model, digits.x_train, digits.y_train, digits.x_test, digits.y_test, protocol, 1)
    assert result.mean >= 0.95, result


def test_soft_labels_train(digits):
    model = tiny_mlp()
    soft = jax.nn.one_hot(digits.y_train[:100], 10) * 0.9 + 0.01
    for loss in ("ce", "mse"):
        protocol = get_protocol("dc", epochs=300, loss=loss)
        result = evaluate_synset(jax.random.key(0), model, digits.x_train[:100], soft, digits.x_test, digits.y_test, protocol, 2)
        assert result.mean > 0.6, (loss, result)


def test_evaluation_compiles_once_per_network_not_per_model_object(digits, monkeypatch):
    """Two Model objects of the same network share one compiled program; other constants do not."""
    import chex

    from jaxdd import evaluate

    counted = jax.jit(chex.assert_max_traces(evaluate._evaluate, n=1), static_argnums=evaluate._STATIC_ARGNUMS)
    monkeypatch.setattr(evaluate, "_evaluate_jit", counted)
    protocol = get_protocol("dc", epochs=2, batch_size=16)
    x, y, tx, ty = digits.x_train[:20], digits.y_train[:20], digits.x_test[:50], digits.y_test[:50]
    first, second = (evaluate_synset(jax.random.key(0), tiny_mlp(), x, y, tx, ty, protocol, 2) for _ in range(2))
    np.testing.assert_array_equal(first.accs, second.accs)
    shift = jnp.ones(10)  # a network closing over different constants is another program

    def shifted(model, value):
        return Model(model.init, lambda p, a: model.apply(p, a) + value * shift)

    with pytest.raises(AssertionError, match="traced"):
        evaluate_synset(jax.random.key(0), shifted(tiny_mlp(), 1.0), x, y, tx, ty, protocol, 2)
    assert evaluate.ModelKey(shifted(tiny_mlp(), 1.0), x.shape[1:], x.dtype) != evaluate.ModelKey(
        shifted(tiny_mlp(), 2.0), x.shape[1:], x.dtype)
    assert evaluate.ModelKey(tiny_mlp(), x.shape[1:], x.dtype) == evaluate.ModelKey(tiny_mlp(), x.shape[1:], x.dtype)


def test_protocol_trainer_is_passed_in(digits):
    """The 'dd' protocol carries its trainer (plain GD over cycled class-balanced batches)."""
    from jaxdd.train import CycledGD, train_gd_steps

    protocol = get_protocol("dd", trainer=CycledGD(steps=2), lr=0.05, epochs=2)
    assert get_protocol("dd").trainer == CycledGD(steps=10) and get_protocol("dc").trainer is None
    order = np.argsort(np.asarray(digits.y_train[:60]), kind="stable")[:20]
    x, y = digits.x_train[:60][order], digits.y_train[:60][order]
    model = tiny_mlp()
    stacked = jax.jit(lambda k: train_models(k, model, x, y, protocol, 2))(jax.random.key(1))
    for i, k in enumerate(jax.random.split(jax.random.key(1), 2)):
        alone = train_gd_steps(k, model, x, y, protocol, steps=2)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6), stacked, alone)
