"""MTT: the loss vanishes on the expert's own segment; the memory-bounded gradient is the plain one."""

from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from conftest import tiny_mlp
from jaxdd import experts
from jaxdd.methods import mtt


def test_loss_is_zero_when_the_student_reproduces_the_expert_segment():
    """An expert trained full-batch on X with step eta: a student on X with eta retraces it exactly."""
    with jax.enable_x64(True):
        model = tiny_mlp()
        x = jax.random.normal(jax.random.key(0), (20, 8, 8, 1), jnp.float64)
        y = jnp.arange(20, dtype=jnp.int32) % 10
        protocol = experts.expert_protocol(None, epochs=4, batch_size=20, lr=0.3)
        run = experts.train_experts(jax.random.key(1), model, x, y, protocol, num_experts=1)
        flat, unravel = experts.flatten_trajectories(run)
        start, target = flat[0, 1], flat[0, 4]  # start epoch 1, expert_epochs 3 = 3 full-batch steps

        def loss(images, lr):
            theta = mtt.student_unroll(model, unravel, images, y, lr, start, jax.random.key(2), syn_steps=3,
                                       dsa_strategy="none", checkpoint="sqrt")
            return mtt.param_distance(theta, start, target)

        value_and_grad = jax.jit(jax.value_and_grad(loss))
        value, grad = value_and_grad(x, jnp.float64(0.3))
        assert float(value) < 1e-20
        assert float(jnp.max(jnp.abs(grad))) < 1e-9  # a minimum: the gradient vanishes too
        assert float(value_and_grad(x + 0.1, jnp.float64(0.3))[0]) > 1e-4  # and it is not zero elsewhere


def test_memory_bounded_gradient_equals_the_plain_unrolled_gradient():
    with jax.enable_x64(True):
        model = tiny_mlp(hidden=8)
        images = jax.random.normal(jax.random.key(0), (10, 8, 8, 1), jnp.float64)
        labels = jnp.arange(10, dtype=jnp.int32)
        start, unravel = jax.flatten_util.ravel_pytree(jax.tree.map(lambda a: a.astype(jnp.float64), model.init(jax.random.key(1))))
        target = start + 0.05 * jax.random.normal(jax.random.key(2), start.shape, jnp.float64)
        params = mtt.MTTParams(images, jnp.float64(0.2), 3.0 * jax.nn.one_hot(labels, 10, dtype=jnp.float64))
        config = mtt.MTTConfig(syn_steps=7, batch_syn=4, ipc=1)

        def loss(p, mode, strategy):
            c = config._replace(checkpoint=mode, dsa_strategy=strategy)
            return mtt.mtt_loss(model, unravel, c, p, labels, start, target, jax.random.key(3))

        grad = jax.jit(jax.value_and_grad(loss), static_argnums=(1, 2))
        plain, bounded = grad(params, "none", "none"), grad(params, "sqrt", "none")  # 7 steps: padded segments
        for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(bounded)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
        # and it is the derivative: central differences in the step size and along a direction in the images
        eps, direction = 1e-6, jax.random.normal(jax.random.key(4), images.shape, jnp.float64)
        value = lambda p: float(grad(p, "sqrt", "none")[0])
        fd_lr = (value(params._replace(syn_lr=params.syn_lr + eps)) - value(params._replace(syn_lr=params.syn_lr - eps))) / (2 * eps)
        fd_img = (value(params._replace(images=images + eps * direction)) - value(params._replace(images=images - eps * direction))) / (2 * eps)
        np.testing.assert_allclose(bounded[1].syn_lr, fd_lr, rtol=1e-6)
        np.testing.assert_allclose(jnp.vdot(bounded[1].images, direction), fd_img, rtol=1e-6)
