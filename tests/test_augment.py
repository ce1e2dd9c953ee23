"""DSA and DC's MNIST augmentation: exact family transforms, the Siamese property, gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxdd import augment

_dsa = jax.jit(augment.dsa, static_argnums=(2,), static_argnames=("per_sample", "params"))
_dc_mnist = jax.jit(augment.dc_mnist_augment)


def _images(n=4, size=8, channels=3, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, size, size, channels))


def test_warp_identity_flip_shift_and_rotation_are_exact():
    x = _images(1)[0]
    np.testing.assert_array_equal(augment.warp(x, jnp.eye(2), jnp.zeros(2)), x)
    np.testing.assert_allclose(augment.warp(x, jnp.diag(jnp.array([-1.0, 1.0])), jnp.zeros(2)), x[:, ::-1], atol=1e-6)
    shifted = augment.warp(x, jnp.eye(2), jnp.array([2.0, -3.0]))  # output (r, c) reads (r + 2, c - 3)
    np.testing.assert_allclose(shifted[:-2, 3:], x[2:, :-3], atol=1e-6)
    assert float(jnp.abs(shifted[-2:]).max()) == 0.0 and float(jnp.abs(shifted[:, :3]).max()) == 0.0
    quarter = augment.warp(x, jnp.array([[0.0, -1.0], [1.0, 0.0]]), jnp.zeros(2))
    np.testing.assert_allclose(quarter, np.rot90(np.asarray(x), k=1, axes=(0, 1)), atol=1e-5)


def test_siamese_same_key_same_transform_on_different_batches():
    real, syn = _images(6, seed=1), _images(2, seed=2)
    for i in range(12):  # covers every family
        key = jax.random.key(i)
        both = _dsa(key, jnp.concatenate([real, syn]))
        np.testing.assert_allclose(_dsa(key, real), both[:6], atol=1e-6)
        np.testing.assert_allclose(_dsa(key, syn), both[6:], atol=1e-6)
        # one transform per call: identical inputs give identical outputs
        same = _dsa(key, jnp.repeat(syn[:1], 3, axis=0))
        np.testing.assert_allclose(same, jnp.repeat(same[:1], 3, axis=0), atol=1e-6)


def test_per_sample_parameters_differ_between_images():
    x = jnp.repeat(_images(1)[:1], 8, axis=0)
    changed = 0
    for i in range(6):
        y = _dsa(jax.random.key(i), x, per_sample=True)
        changed += int(float(jnp.abs(y - y[:1]).max()) > 1e-4)
    assert changed >= 4


@pytest.mark.parametrize("family", augment.FAMILIES)
def test_each_family_alone_is_linear_and_differentiable(family):
    x = _images(2, channels=1)
    key = jax.random.key(5)
    y = _dsa(key, x, family)
    assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))
    check_grads(lambda z: _dsa(key, z, family), (x,), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)
    g = jax.grad(lambda z: jnp.sum(_dsa(key, z, family) ** 2))(x)
    assert float(jnp.abs(g).sum()) > 0


def test_family_specific_effects():
    x = _images(1, size=8, channels=1)[0] + 3.0
    p = augment.DSAParams()
    hits = {"cutout": False, "color": False}
    for i in range(40):
        y = _dsa(jax.random.key(i), x, "cutout")
        zeros = int(jnp.sum(y == 0))
        if zeros:
            hits["cutout"] = True
            assert zeros <= (8 * p.cutout) ** 2  # a (clipped) 4x4 square
        z = _dsa(jax.random.key(i), x, "color")
        if float(jnp.abs(z - x).max()) > 0:
            hits["color"] = True
            # grey image: saturation is the identity; brightness then contrast about the mean
            assert abs(float(z.mean() - x.mean())) <= 0.5 * p.brightness + 1e-5
    assert all(hits.values())


def test_strategies_per_dataset_and_registry():
    assert "flip" not in augment.dsa_strategy("mnist") and "flip" in augment.dsa_strategy("cifar10")
    assert augment.dsa_strategy("unknown") == augment.DEFAULT_STRATEGY
    with pytest.raises(ValueError):
        augment.dsa(jax.random.key(0), _images(1), "color_blur")
    np.testing.assert_array_equal(augment.dsa(jax.random.key(0), _images(1), "none"), _images(1))
    x = _images(5, size=28, channels=1)
    for name in ("dc_mnist", "dc_mnist_noise", "dsa", "dsa_noflip"):
        y = jax.jit(augment.AUGMENTATIONS[name])(jax.random.key(1), x)
        assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))


def test_dc_mnist_default_is_the_reference_strategy_without_noise():
    """MNIST's strategy is 'crop_scale_rotate' (``get_daparam``): no image is left to noise alone."""
    x = jnp.repeat(_images(1, size=16, channels=1), 200, axis=0)
    key = jax.random.key(0)
    assert augment.AUGMENTATIONS["dc_mnist"] is augment.dc_mnist_augment
    run = jax.jit(augment.dc_mnist_augment, static_argnames="strategy")
    residual = {}
    for strategy in ("crop_scale_rotate", "crop_scale_rotate_noise"):
        residual[strategy] = np.asarray(jnp.abs(run(key, x, strategy=strategy) - x).reshape(200, -1).max(axis=1))
    # noise (std 1e-3) barely changes an image; with the noise family about a quarter are such
    barely = {s: int(np.sum(r < 0.02)) for s, r in residual.items()}
    assert 30 <= barely["crop_scale_rotate_noise"] <= 70, barely
    # without it only the identity draws remain (crop by (0, 0): 1/64, rotate by 0: 1/90 of a third)
    assert barely["crop_scale_rotate"] <= 4, barely
    assert augment.dc_mnist_augment(jax.random.key(0), x[0]).shape == x[0].shape
    with pytest.raises(ValueError, match="unknown DC augmentation"):
        augment.dc_mnist_augment(key, x, strategy="crop_blur")


def test_dc_crop_is_an_integer_shift_with_mean_fill():
    """Strategy 'crop': every image is the input shifted by (dr, dc) in [-4, 4)^2, the border the batch mean."""
    x = _images(12, size=10, channels=1, seed=3)
    y = np.asarray(augment.dc_mnist_augment(jax.random.key(5), x, strategy="crop"))
    xs, mean = np.asarray(x), float(np.asarray(x).mean())
    for i in range(12):
        padded = np.pad(xs[i], ((4, 4), (4, 4), (0, 0)), constant_values=mean)
        candidates = [padded[4 + dr : 14 + dr, 4 + dc : 14 + dc] for dr in range(-4, 4) for dc in range(-4, 4)]
        assert min(float(np.abs(c - y[i]).max()) for c in candidates) < 1e-5, i
