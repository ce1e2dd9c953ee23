"""IDC: multi-formation decodes the layout its encoder writes; the matching gradient reaches the stored images."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import experts
from jaxdd.methods import idc
from jaxdd.types import Model


def tiny_conv(num_classes: int = 10) -> Model:
    """conv 3x3 (1 -> 4), ReLU, global mean, dense: one matched (4-D) tensor."""

    def init(key):
        k1, k2 = jax.random.split(key)
        return {"conv": 0.3 * jax.random.normal(k1, (3, 3, 1, 4)), "dense": 0.3 * jax.random.normal(k2, (4, num_classes)),
                "bias": jnp.zeros(num_classes)}

    def apply(params, x):
        h = jax.lax.conv_general_dilated(x, params["conv"].astype(x.dtype), (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.nn.relu(h).mean(axis=(1, 2)) @ params["dense"].astype(x.dtype) + params["bias"].astype(x.dtype)

    return Model(init, apply)


def test_decode_is_the_inverse_layout_of_encode():
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 2))
    tiles = idc.split_tiles(x, 2)
    np.testing.assert_array_equal(idc.merge_tiles(tiles, 2), x)
    np.testing.assert_array_equal(idc.split_tiles(idc.merge_tiles(tiles, 2), 2), tiles)
    decoded = idc.decode(x, 2)  # image k*N + n is tile k = 2i + j of stored image n, upsampled
    for n in range(3):
        for i in range(2):
            for j in range(2):
                tile = x[n, 4 * i:4 * i + 4, 4 * j:4 * j + 4]
                np.testing.assert_allclose(decoded[(2 * i + j) * 3 + n], jax.image.resize(tile, (8, 8, 2), "bilinear"), atol=1e-6)
    # encode writes image k*N + n to tile k of stored image n, so decoding returns every image
    # that survives the 2x downsampling (here: constant ones) exactly, in its place
    constant = jnp.broadcast_to(jax.random.normal(jax.random.key(1), (12, 1, 1, 2)), (12, 8, 8, 2))
    np.testing.assert_allclose(idc.decode(idc.encode(constant, 2), 2), constant, atol=1e-6)


def test_matching_gradient_reaches_every_tile_of_the_stored_images():
    model = tiny_conv()
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(jax.random.key(0)))
        stored = jax.random.normal(jax.random.key(1), (10, 1, 8, 8, 1), jnp.float64)  # (C, ipc, ...)
        real = jax.random.normal(jax.random.key(2), (10, 6, 8, 8, 1), jnp.float64)
        config = idc.IDCConfig(dsa_strategy="none", ipc=1)  # the paper's L1 distance
        loss = jax.jit(jax.value_and_grad(lambda s: idc.idc_loss(model, params, s, real, jax.random.key(3), config)))
        value, grad = loss(stored)
        per_tile = jnp.abs(idc.split_tiles(grad.reshape(10, 8, 8, 1), 2)).sum(axis=(2, 3, 4))  # (4 tiles, 10 images)
        assert bool(jnp.all(per_tile > 0))
        # and it is the derivative of the loss: central differences along a random direction
        eps, direction = 1e-6, jax.random.normal(jax.random.key(4), stored.shape, jnp.float64)
        fd = (loss(stored + eps * direction)[0] - loss(stored - eps * direction)[0]) / (2 * eps)
        np.testing.assert_allclose(jnp.vdot(grad, direction), fd, rtol=1e-6)


def test_the_saved_set_is_the_decoded_set_in_class_order():
    model = tiny_conv()
    x = jax.random.normal(jax.random.key(0), (200, 8, 8, 1))
    y = jnp.arange(200, dtype=jnp.int32) % 10
    theta = model.init(jax.random.key(1))  # 2 "experts" x epochs 0..2 (the layout is what matters here)
    run = experts.Trajectories(jax.tree.map(lambda a: jnp.broadcast_to(a, (2, 3) + a.shape), theta), {})
    method = idc.build(model, x, y, run, idc.IDCConfig(batch_real=8, net_data=40, pretrain_from=1, pretrain_num=2, ipc=2))
    state = idc.IDCState(jax.random.normal(jax.random.key(2), (10, 2, 8, 8, 1)), None)  # stored (C, ipc, ...)
    synset = method.to_synset(state)
    assert synset.images.shape == (80, 8, 8, 1)  # 10 classes x 2 stored x 4 decoded
    np.testing.assert_array_equal(synset.labels, np.repeat(np.arange(10), 8))
    np.testing.assert_allclose(synset.images[8:16], idc.decode(state.images[1], 2), atol=1e-6)
    np.testing.assert_array_equal(method.extra_arrays(state)["idc_stored"][2:4], state.images[1])
