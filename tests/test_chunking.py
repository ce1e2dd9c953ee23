"""Class chunks (bounded memory) give the all-classes results: DC / DSA matching and DM.

``class_chunk`` = C is the original single ``vmap`` over classes; smaller chunks run
``lax.map(..., batch_size=chunk)`` with a checkpointed body (``jaxdd.sharding.map_rows``),
including a remainder chunk (chunk 2 of 5 classes). The augmentations are drawn from the same
per-class keys, so the steps agree to float rounding.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import models, sharding
from jaxdd.methods import dc, dm

CLASSES = 5
DSA = "color_crop_cutout_scale_rotate"


@pytest.fixture(scope="module")
def tiny():
    model = models.get_model("ConvNet", (8, 8, 1), CLASSES, width=8, depth=2)
    x = jax.random.normal(jax.random.key(1), (CLASSES * 6, 8, 8, 1))
    y = jnp.repeat(jnp.arange(CLASSES), 6)
    return model, x, y


def _step(build, config, model, x, y):
    method = build(model, x, y, config)
    state, metrics = jax.jit(method.step)(method.init(jax.random.key(0)), method.real_data, jax.random.key(3))
    return np.asarray(state.images), float(metrics["loss"])


@pytest.mark.parametrize("method", ["dc", "dm"])
def test_step_chunked_equals_unchunked(tiny, method):
    """DC and DM steps: the budget's default (every class at this size) is the single vmap bit for
    bit; two classes at a time (with a leftover chunk) equal it to float rounding."""
    model, x, y = tiny
    if method == "dc":
        build = dc.build
        config = dc.DCConfig(num_classes=CLASSES, ipc=2, batch_real=4, outer_loop=2, inner_loop=2, num_inits=2)
    else:
        build = dm.build
        config = dm.DMConfig(num_classes=CLASSES, ipc=2, batch_real=4, num_nets=2)
    whole = _step(build, config._replace(class_chunk=CLASSES), model, x, y)
    default = _step(build, config, model, x, y)
    np.testing.assert_array_equal(default[0], whole[0])
    images, loss = _step(build, config._replace(class_chunk=2), model, x, y)
    np.testing.assert_allclose(images, whole[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(loss, whole[1], rtol=1e-6)


def test_dsa_losses_and_gradients_chunked_equal_unchunked(tiny):
    """With Siamese augmentation: the same per-class draws in every chunking (DSA matching and DM)."""
    model, x, _ = tiny
    params = model.init(jax.random.key(0))
    syn, real = x[:CLASSES * 2].reshape(CLASSES, 2, 8, 8, 1), x.reshape(CLASSES, 6, 8, 8, 1)
    key = jax.random.key(5)
    config = dc.DCConfig(num_classes=CLASSES, ipc=2, dsa_strategy=DSA)
    losses = {
        "dsa": lambda s, chunk: dc.match_loss(model, params, s, real, key, config, chunk),
        "dm": lambda s, chunk: dm.dm_loss(model, params, s, real, key, DSA, chunk),
    }
    for name, loss in losses.items():
        whole = jax.jit(jax.value_and_grad(lambda s: loss(s, None)))(syn)
        # Chunks of 2, 2 and a remainder of 1 class: lax.map's batches and its leftover.
        got = jax.jit(jax.value_and_grad(lambda s: loss(s, 2)))(syn)
        np.testing.assert_allclose(got[0], whole[0], rtol=1e-6, err_msg=name)
        scale = float(jnp.abs(whole[1]).max())  # float rounding, relative to the gradient's size
        np.testing.assert_allclose(got[1], whole[1], rtol=1e-5, atol=1e-5 * scale, err_msg=name)


def test_chunk_from_budget(tiny, monkeypatch):
    """The automatic chunk is the budget over the estimate of one class's bytes; the config overrides it."""
    model, _, _ = tiny
    config = dc.DCConfig(num_classes=CLASSES, ipc=2, batch_real=4)
    per_class = dc.class_bytes(model, (2, 8, 8, 1), (4, 8, 8, 1), config)
    assert per_class > 0
    shapes = ((CLASSES, 2, 8, 8, 1), (CLASSES, 4, 8, 8, 1))
    monkeypatch.setenv(sharding.MEMORY_BUDGET_ENV, str(2 * per_class + 1))
    assert dc.class_chunk(model, *shapes, config) == 2
    assert dc.class_chunk(model, *shapes, config._replace(num_inits=2)) == 1
    assert dc.class_chunk(model, *shapes, config._replace(class_chunk=3)) == 3
    monkeypatch.setenv(sharding.MEMORY_BUDGET_ENV, "1")
    assert dc.class_chunk(model, *shapes, config) == 1
    dm_config = dm.DMConfig(num_classes=CLASSES, ipc=2, batch_real=4, dsa_strategy="")
    monkeypatch.setenv(sharding.MEMORY_BUDGET_ENV, str(3 * dm.class_bytes(model, (2, 8, 8, 1), (4, 8, 8, 1), "")))
    assert dm.class_chunk(model, *shapes, dm_config) == 3


def test_parse_bytes_and_budget(monkeypatch):
    assert sharding.parse_bytes("4G") == 4 * 2**30
    assert sharding.parse_bytes("512MiB") == 512 * 2**20
    assert sharding.parse_bytes("1000") == 1000
    with pytest.raises(ValueError, match="bad memory size"):
        sharding.parse_bytes("lots")
    monkeypatch.setenv(sharding.MEMORY_BUDGET_ENV, "1.5G")
    assert sharding.memory_budget() == int(1.5 * 2**30)
    monkeypatch.delenv(sharding.MEMORY_BUDGET_ENV)
    assert sharding.memory_budget() > 0
    with pytest.raises(ValueError, match="at least 1"):
        sharding.chunk_for(10, 5, chunk=0)


def test_map_rows_chunked_equals_vmap_with_remainder():
    xs = (jnp.arange(14.0).reshape(7, 2), jax.random.split(jax.random.key(0), 7))
    fn = lambda v, k: v * jax.random.normal(k, ())  # noqa: E731
    whole = sharding.map_rows(fn, xs, 7)
    for chunk in (1, 3):
        np.testing.assert_array_equal(sharding.map_rows(fn, xs, chunk), whole)
    grad = jax.grad(lambda v: sharding.map_rows(fn, (v, xs[1]), 3, remat=True).sum())(xs[0])
    np.testing.assert_allclose(grad, jax.grad(lambda v: jax.vmap(fn)(v, xs[1]).sum())(xs[0]))


def test_recorded_config_names_class_chunk_only_when_set(tiny):
    """The automatic chunk is not part of a run's identity (old checkpoints resume); an override is."""
    model, x, y = tiny
    config = dc.DCConfig(num_classes=CLASSES, ipc=1, batch_real=4)
    assert "class_chunk" not in dc.build(model, x, y, config).config
    assert dc.build(model, x, y, config._replace(class_chunk=2)).config["class_chunk"] == 2
    assert "class_chunk" not in dm.build(model, x, y, dm.DMConfig(num_classes=CLASSES, ipc=1, batch_real=4)).config
    with pytest.raises(ValueError, match="class_chunk must be at least 1"):
        dm.build(model, x, y, dm.DMConfig(num_classes=CLASSES, ipc=1, batch_real=4, class_chunk=0))
