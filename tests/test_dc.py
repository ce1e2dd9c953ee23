"""DC / DSA / DM: the matching distance, per-class vmapping, the step, and a smoke run on digits."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd.methods import DistillRequest, get_method
from jaxdd.methods import dc, dm
from jaxdd.types import Model


def tiny_convnet(channels: int = 4, num_classes: int = 3, in_channels: int = 1) -> Model:
    """Conv3x3 (Flax layout HWIO) -> ReLU -> global mean pool -> Dense: a hand-made Model pair."""

    def init(key):
        k1, k2 = jax.random.split(key)
        return {
            "conv": {"kernel": jax.random.normal(k1, (3, 3, in_channels, channels)) * 0.5, "bias": jnp.zeros(channels)},
            "dense": {"kernel": jax.random.normal(k2, (channels, num_classes)) * 0.5, "bias": jnp.zeros(num_classes)},
        }

    def embed(params, x):
        y = jax.lax.conv_general_dilated(x, params["conv"]["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.nn.relu(y + params["conv"]["bias"]).mean(axis=(1, 2))

    def apply(params, x):
        return embed(params, x) @ params["dense"]["kernel"] + params["dense"]["bias"]

    return Model(init, apply, embed)


def _np_layer_distance(a, b, out_axis):
    a = np.moveaxis(np.asarray(a, np.float64), out_axis, 0).reshape(a.shape[out_axis], -1)
    b = np.moveaxis(np.asarray(b, np.float64), out_axis, 0).reshape(b.shape[out_axis], -1)
    total = 0.0
    for i in range(a.shape[0]):
        total += 1 - a[i] @ b[i] / (np.linalg.norm(a[i]) * np.linalg.norm(b[i]) + 1e-6)
    return total


@pytest.mark.parametrize("shape,out_axis", [((3, 3, 2, 5), -1), ((5, 2, 3, 3), 0), ((7, 4), -1)])
def test_layer_distance_matches_hand_computation(shape, out_axis):
    ka, kb = jax.random.split(jax.random.key(0))
    a, b = jax.random.normal(ka, shape), jax.random.normal(kb, shape)
    got = dc.layer_distance(a, b, out_axis)
    np.testing.assert_allclose(float(got), _np_layer_distance(a, b, out_axis), rtol=1e-5)
    # a 2x2 case worked by hand: rows (1, 0) vs (0, 1) -> 1 - 0; (1, 1) vs (2, 2) -> 1 - 1
    hand = dc.layer_distance(jnp.array([[1.0, 0.0], [1.0, 1.0]]), jnp.array([[0.0, 1.0], [2.0, 2.0]]), out_axis=0)
    np.testing.assert_allclose(float(hand), 1.0, atol=1e-5)


def test_match_distance_zero_at_identical_gradients_and_metrics():
    model = tiny_convnet()
    grads = jax.grad(lambda p: dc.class_loss(model, p, jnp.ones((2, 5, 5, 1)), 1))(model.init(jax.random.key(1)))
    grads = jax.tree.map(lambda g: g + 0.1, grads)  # no all-zero rows
    for metric in ("layerwise", "mse", "cos"):
        assert abs(float(dc.match_distance(grads, grads, metric))) < 1e-4
    other = jax.tree.map(lambda g: -g, grads)
    # layer-wise: every weight row is exactly opposite: 1 - (-1) = 2 per output node (4 conv + 3 dense)
    np.testing.assert_allclose(float(dc.match_distance(other, grads)), 2.0 * (4 + 3), rtol=1e-4)
    # 1-D parameters count only with include_1d: each is one more row -> +2 each
    np.testing.assert_allclose(float(dc.match_distance(other, grads, include_1d=True)), 2.0 * (4 + 3 + 2), rtol=1e-4)
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(grads)])
    np.testing.assert_allclose(float(dc.match_distance(other, grads, "mse")), np.sum((2 * flat) ** 2), rtol=1e-4)
    np.testing.assert_allclose(float(dc.match_distance(other, grads, "cos")), 2.0, rtol=1e-4)


def test_distance_gradient_is_finite_at_a_zero_row():
    # a dead ReLU unit gives an all-zero gradient row; d|a|/da must not be NaN there
    g_real = jnp.array([[1.0, 2.0], [0.0, 0.0]])
    for metric in ("layerwise", "cos", "mse"):
        grad = jax.grad(lambda a: dc.match_distance({"w": a}, {"w": g_real}, metric, out_axis=0))(jnp.zeros((2, 2)))
        assert bool(jnp.all(jnp.isfinite(grad)))


@pytest.mark.parametrize("strategy", ["", "color_crop_cutout_flip_scale_rotate"])
def test_vmapped_matching_equals_per_class_loop(strategy):
    model = tiny_convnet()
    config = dc.DCConfig(num_classes=3, ipc=2, dsa_strategy=strategy)
    params = model.init(jax.random.key(0))
    syn = jax.random.normal(jax.random.key(1), (3, 2, 6, 6, 1))
    real = jax.random.normal(jax.random.key(2), (3, 5, 6, 6, 1))
    key = jax.random.key(3)

    def loop(s):
        keys = jax.random.split(key, 3)
        return sum(dc.class_match_distance(model, params, s[c], real[c], jnp.int32(c), keys[c], config) for c in range(3))

    vmapped = jax.jit(jax.value_and_grad(lambda s: dc.match_loss(model, params, s, real, key, config)))(syn)
    looped = jax.jit(jax.value_and_grad(loop))(syn)  # one program each: faster to compile than op by op
    np.testing.assert_allclose(float(vmapped[0]), float(looped[0]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(vmapped[1]), np.asarray(looped[1]), rtol=1e-4, atol=1e-6)
    assert float(jnp.abs(vmapped[1]).sum()) > 0


def test_dm_vmapped_loss_equals_loop_and_is_zero_for_same_images():
    model = tiny_convnet()
    params = model.init(jax.random.key(0))
    real = jax.random.normal(jax.random.key(2), (3, 4, 6, 6, 1))
    key = jax.random.key(3)
    keys = jax.random.split(key, 3)
    syn = real[:, :2]
    strategy = "color_crop_cutout_scale_rotate"
    got = jax.jit(lambda s: dm.dm_loss(model, params, s, real, key, strategy))(syn)
    want = jax.jit(lambda s: sum(dm.class_embedding_distance(model, params, s[c], real[c], keys[c], strategy)
                                 for c in range(3)))(syn)  # one program each: faster to compile than op by op
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    assert float(dm.dm_loss(model, params, real, real, key, strategy)) < 1e-8


def test_step_traces_once_and_uses_a_batch_of_initialisations():
    model = tiny_convnet()
    key = jax.random.key(0)
    images = jax.random.normal(key, (30, 6, 6, 1))
    labels = jnp.arange(30, dtype=jnp.int32) % 3
    config = dc.DCConfig(num_classes=3, ipc=2, iterations=2, outer_loop=2, inner_loop=2, batch_real=4, num_inits=2)
    method = dc.build(model, images, labels, config)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state, real, k):
        return method.step(state, real, k)

    state = method.init(key)
    before = state.images
    for i in range(2):
        state, metrics = step(state, method.real_data, jax.random.fold_in(key, i))
    assert np.isfinite(float(metrics["loss"])) and float(jnp.abs(state.images - before).max()) > 0
    synset = method.to_synset(state)
    assert synset.images.shape == (6, 6, 6, 1) and synset.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_presets_and_options_reach_the_config():
    from jaxdd.methods import request_config, resolve_config

    overrides = {"init": "noise", "metric": "mse", "iterations": "7"}
    config = resolve_config(get_method("dsa"), "cpu", 10, "mnist", overrides, num_classes=2)
    assert (config.init, config.metric, config.iterations, config.num_classes) == ("noise", "mse", 7, 2)
    assert config.dsa_strategy == "color_crop_cutout_scale_rotate" and config.loops == (10, 10)
    assert resolve_config(get_method("dc"), "cpu", 10, "mnist").dsa_strategy == ""
    request = DistillRequest(
        images=jnp.zeros((6, 4, 4, 1)), labels=jnp.array([0, 1] * 3, jnp.int32), num_classes=2,
        model=tiny_convnet(num_classes=2), ipc=10, preset="smoke", key=jax.random.key(0), dataset="mnist",
    )
    assert request_config(request, dc.default_config) == dc.default_config("smoke", 10, "mnist")._replace(num_classes=2)
    assert dc.dc_loops(10) == (10, 50) and dc.dc_loops(1) == (1, 1)
    for name in ("dc", "dsa", "dm", "herding", "kcenter", "forgetting", "kmeans"):
        assert get_method(name).name == name


def test_loops_outside_the_reference_table_are_refused():
    """The reference's get_loops exits for img/cls outside its table; so do we, unless both are given."""
    assert dc.dc_loops(20) == (20, 25) and dc.dc_loops(50, inner_loop=3) == (50, 3)
    assert dc.dc_loops(3, outer_loop=3, inner_loop=7) == (3, 7)
    for ipc in (2, 5, 11, 19):
        with pytest.raises(ValueError, match="--outer-loop and --inner-loop"):
            dc.dc_loops(ipc)
        with pytest.raises(ValueError, match="--outer-loop and --inner-loop"):
            dc.dc_loops(ipc, outer_loop=4)


def test_batchnorm_networks_are_refused_for_matching():
    """Per-class batches would normalise ConvNetBN by one class's statistics: refused with a message."""
    from jaxdd import models

    images = jax.random.normal(jax.random.key(0), (12, 8, 8, 1))
    labels = jnp.arange(12, dtype=jnp.int32) % 3
    config = dc.DCConfig(num_classes=3, ipc=1, iterations=1, batch_real=2)
    bn = models.get_model("ConvNetBN", (8, 8, 1), 3, width=4, depth=1)
    with pytest.raises(ValueError, match="not ConvNetBN"):
        dc.build(bn, images, labels, config)
    for arch in ("ConvNet", "ConvNetGN", "ConvNetLN"):  # per-example norms pass
        dc.build(models.get_model(arch, (8, 8, 1), 3, width=4, depth=1), images, labels, config)


def test_large_image_steps_warn_only_through_scale_sensitive_networks(caplog):
    """lr_img above the reference's 0.1 is flagged for MLP / LeNet (logits change with the images'
    scale), not for ConvNet, whose instance norm makes its logits of 2x equal those of x."""
    from jaxdd import models

    images = jax.random.normal(jax.random.key(0), (12, 8, 8, 1))
    convnet = models.get_model("ConvNet", (8, 8, 1), 3, width=4, depth=1)
    x = images[:2]
    params = convnet.init(jax.random.key(1))
    np.testing.assert_allclose(convnet.apply(params, 2.0 * x), convnet.apply(params, x), rtol=1e-4, atol=1e-5)
    assert not dc.warn_scale_sensitive_image_step(convnet, images, 1.0)
    for arch in ("MLP", "LeNet"):
        model = models.get_model(arch, (8, 8, 1), 3)
        assert not dc.warn_scale_sensitive_image_step(model, images, dc.REFERENCE_LR_IMG)
        with caplog.at_level("WARNING", logger="jaxdd.methods.dc"):
            assert dc.warn_scale_sensitive_image_step(model, images, 1.0)
        assert "lr_img 1 with a network whose output depends on the images' scale" in caplog.text
        caplog.clear()
    labels = jnp.arange(12, dtype=jnp.int32) % 3  # build runs the check
    with caplog.at_level("WARNING", logger="jaxdd.methods.dc"):
        dc.build(models.get_model("MLP", (8, 8, 1), 3), images, labels,
                 dc.DCConfig(num_classes=3, ipc=1, iterations=1, batch_real=2, lr_img=1.0))
    assert "the reference's lr_img is 0.1" in caplog.text


def test_smoke_dc_on_digits_beats_random_real(digits):
    from jaxdd import coreset, distill, models
    from jaxdd.evaluate import evaluate_synset, get_protocol

    info = digits.info
    model = models.get_model("ConvNet", info.image_shape, info.num_classes, width=16, depth=2)
    request = DistillRequest(
        images=digits.x_train, labels=digits.y_train, num_classes=10, model=model, ipc=1,
        preset="smoke", key=jax.random.key(0), dataset="digits",
    )
    method = get_method("dc").make(request)
    state = distill.run(method, jax.random.key(1), progress=False)
    distilled = method.to_synset(state)
    random_set = coreset.random_real(jax.random.key(2), digits.x_train, digits.y_train, 10, 1)
    protocol = get_protocol("dc", epochs=100)
    ours = evaluate_synset(jax.random.key(3), model, distilled.images, distilled.labels, digits.x_test, digits.y_test, protocol, 6)
    base = evaluate_synset(jax.random.key(3), model, random_set.images, random_set.labels, digits.x_test, digits.y_test, protocol, 6)
    assert ours.mean > base.mean + 0.05, (ours.mean, base.mean)


def test_dm_step_traces_its_own_convolution_with_the_same_result(monkeypatch):
    """DM's step traces the convolution of dm.STEP_CONV on this backend (XLA's on CPU, measured
    faster there) and computes what the backend's default convolution computes."""
    from jaxdd.models import get_model

    monkeypatch.delenv("JAXDD_CONV", raising=False)
    model = get_model("ConvNet", (8, 8, 1), 3, width=4, depth=2)
    key = jax.random.key(0)
    images = jax.random.normal(key, (30, 8, 8, 1))
    labels = jnp.arange(30, dtype=jnp.int32) % 3
    method = dm.build(model, images, labels, dm.DMConfig(num_classes=3, ipc=2, batch_real=4, dsa_strategy=""))
    state = method.init(key)

    def fresh_step():  # a new function each time: jit traces it again, under the environment of now
        return jax.jit(lambda s, r, k: method.step(s, r, k))

    lowered = fresh_step().lower(state, method.real_data, key).as_text()
    expected = dm.STEP_CONV.get(jax.default_backend(), "xla" if jax.default_backend() != "cpu" else "patches")
    assert ("convolution" in lowered) == (expected == "xla")
    stepped, _ = fresh_step()(state, method.real_data, key)
    monkeypatch.setenv("JAXDD_CONV", "patches")
    assert "convolution" not in fresh_step().lower(state, method.real_data, key).as_text()
    by_patches, _ = fresh_step()(state, method.real_data, key)
    np.testing.assert_allclose(stepped.images, by_patches.images, rtol=1e-4, atol=1e-5)
