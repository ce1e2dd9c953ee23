"""DM: dataset condensation with distribution matching (Zhao & Bilen, WACV 2023).

One iteration (one call of the jitted ``step``)::

    theta ~ P(theta)                  a fresh, frozen network (or a vmapped batch of them)
    for every class c (vmapped, class_chunk classes at a time):
        A_c = a DSA transform drawn from one key, applied to both batches (Siamese)
        L_c = || mean_i psi_theta(A_c(x_i^real)) - mean_j psi_theta(A_c(s_j)) ||^2
    S <- SGD-momentum step (lr_img 1.0, momentum 0.5) on sum_c L_c (mean over the networks)

``psi`` is the network's embedding (``Model.embed``: the features before the final linear
layer). No network is trained.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from jaxdd import augment
from jaxdd.methods import DistillRequest, IterativeMethod, MethodSpec, register, request_config
from jaxdd.methods.dc import DCState, check_class_chunk, image_optimizer, init_images, run_config, to_synset
from jaxdd.sampling import RealByClass, group_by_class, min_class_count, sample_per_class
from jaxdd.sharding import DATA, MODEL, chunk_for, constrain, map_rows, traced_bytes
from jaxdd.types import Array, Model, Params, PRNGKey


STEP_CONV = {"cpu": "xla"}
"""The convolution DM's step traces, by backend (others: the backend's default; :meth:`Model.with_conv`).
On CPU XLA's own convolution takes 0.81x the time of the patch matmul at the paper's sizes (MNIST,
ConvNet-128, 10 img/cls, batch 256, one class at a time: 3.71 s against 4.59 s,
``benchmarks/results/conv_sites-cpu-2core-2026-12-02.md``): DM takes no weight gradient, the
case XLA:CPU is slow at inside loops."""


class DMConfig(NamedTuple):
    """Hyper-parameters of DM (defaults: the reference's).

    Attributes:
        num_classes: C (filled from the data).
        ipc: synthetic images per class (filled from ``--ipc``).
        iterations: outer iterations (20000 in the paper).
        batch_real: real images per class per iteration (at most the smallest class).
        lr_img: SGD learning rate on the images.
        momentum_img: its momentum.
        num_nets: random networks per iteration (vmapped; the loss is their mean).
        init: initial synthetic images: 'real' (random real images, the reference) or 'noise'.
        dsa_strategy: Siamese DSA families joined by '_' ('' or 'none': no augmentation).
        class_chunk: classes computed at once (bounds memory; none: as many as the memory budget
            holds, ``$JAXDD_MEMORY_BUDGET`` or a share of the device's memory, see
            dm.class_chunk). Results equal the all-classes form to float rounding.
    """

    num_classes: int
    ipc: int
    iterations: int = 20000
    batch_real: int = 256
    lr_img: float = 1.0
    momentum_img: float = 0.5
    num_nets: int = 1
    init: str = "real"
    dsa_strategy: str = augment.DEFAULT_STRATEGY
    class_chunk: Optional[int] = None


def class_real_embedding(model: Model, params: Params, real: Array, key: PRNGKey, dsa_strategy: str) -> Array:
    """``mean psi(A(real))`` for one class, a constant (``stop_gradient``); ``A`` = DSA with ``key``."""
    if dsa_strategy:
        real = augment.dsa(key, real, dsa_strategy)
    return jax.lax.stop_gradient(model.embed(params, real).mean(0))


def class_syn_distance(model: Model, params: Params, syn: Array, mean_real: Array, key: PRNGKey, dsa_strategy: str) -> Array:
    """``|| mean_real - mean psi(A(syn)) ||^2`` for one class, differentiable in ``syn``."""
    if dsa_strategy:
        syn = augment.dsa(key, syn, dsa_strategy)
    return jnp.sum(jnp.square(mean_real - model.embed(params, syn).mean(0)))


def class_embedding_distance(
    model: Model, params: Params, syn: Array, real: Array, key: PRNGKey, dsa_strategy: str
) -> Array:
    """``|| mean psi(A(real)) - mean psi(A(syn)) ||^2`` for one class, ``A`` = DSA with ``key``."""
    mean_real = class_real_embedding(model, params, real, key, dsa_strategy)
    return class_syn_distance(model, params, syn, mean_real, key, dsa_strategy)


def class_bytes(model: Model, syn_shape: tuple, real_shape: tuple, dsa_strategy: str) -> int:
    """Estimated bytes of one class's DM loss and image gradient for one network: the
    intermediates of the real embeddings plus those of the synthetic images' gradient, summed over
    the traced program (:func:`jaxdd.sharding.traced_bytes`, an upper bound; nothing runs).

    Args:
        syn_shape, real_shape: one class's (ipc, H, W, Ch) and (B, H, W, Ch).
    """
    key = jax.random.key(0)

    def one(params, s, r):
        mean_real = class_real_embedding(model, params, r, key, dsa_strategy)
        return jax.grad(lambda x: class_syn_distance(model, params, x, mean_real, key, dsa_strategy))(s)

    params = jax.eval_shape(model.init, key)
    return traced_bytes(one, params, jax.ShapeDtypeStruct(syn_shape, jnp.float32),
                        jax.ShapeDtypeStruct(real_shape, jnp.float32))


def class_chunk(model: Model, syn_shape: tuple, real_shape: tuple, config: DMConfig) -> int:
    """Classes at once: ``config.class_chunk``, else as many as :func:`jaxdd.sharding.memory_budget`
    holds at :func:`class_bytes` per class times ``num_nets``.

    Args:
        syn_shape, real_shape: (C, ipc, H, W, Ch) and (C, B, H, W, Ch).
    """
    num_classes = syn_shape[0]
    if config.class_chunk is not None:
        return chunk_for(0, num_classes, config.class_chunk)
    per_class = class_bytes(model, tuple(syn_shape[1:]), tuple(real_shape[1:]), config.dsa_strategy)
    return chunk_for(per_class * max(config.num_nets, 1), num_classes)


def dm_loss(
    model: Model, params: Params, syn: Array, real: Array, key: PRNGKey, dsa_strategy: str, chunk: Optional[int] = None
) -> Array:
    """``sum_c`` :func:`class_embedding_distance` over the classes, ``chunk`` classes at a time.

    With ``chunk`` None or at least C all classes are one ``vmap``; a smaller chunk bounds the
    memory (:func:`jaxdd.sharding.map_rows`): the real mean embeddings ``chunk`` classes at a time,
    then the distances ``chunk`` classes at a time under ``jax.checkpoint``. Same per-class keys,
    hence the same augmentations, in both forms.

    Args:
        syn: (C, ipc, H, W, Ch); real: (C, B, H, W, Ch); key: split per class;
        chunk: classes per chunk (:func:`class_chunk`).
    """
    num_classes = syn.shape[0]
    keys = jax.random.split(key, num_classes)
    if chunk is None or chunk >= num_classes:
        per_class = jax.vmap(lambda s, r, k: class_embedding_distance(model, params, s, r, k, dsa_strategy))
        return jnp.sum(per_class(syn, real, keys))
    mean_real = map_rows(lambda r, k: class_real_embedding(model, params, r, k, dsa_strategy), (real, keys), chunk)
    distances = map_rows(lambda s, m, k: class_syn_distance(model, params, s, m, k, dsa_strategy),
                         (syn, mean_real, keys), chunk, remat=True)
    return jnp.sum(distances)


def dm_init(key: PRNGKey, real: RealByClass, config: DMConfig) -> DCState:
    """Initial state: images (C, ipc, H, W, Ch) and the image optimiser's state."""
    images = init_images(key, real, config, real.images.shape[1:])
    return DCState(images, image_optimizer(config).init(images))


def dm_step(model: Model, config: DMConfig, state: DCState, real: RealByClass, key: PRNGKey) -> tuple[DCState, dict]:
    """One DM iteration (see the module docstring); pure and jittable.

    Under a mesh (:func:`jaxdd.sharding.constrain`) the networks are split on ``model`` and
    each class's real batch on ``data``.

    Returns:
        The new state and ``{'loss': sum_c L_c / C}`` (mean over networks).
    """
    init_key, real_key, aug_key = jax.random.split(key, 3)
    params = constrain(jax.vmap(model.init)(jax.random.split(init_key, config.num_nets)), MODEL)
    batch = constrain(sample_per_class(real_key, real, config.batch_real), (None, DATA))
    chunk = class_chunk(model, state.images.shape, batch.shape, config)

    def loss_of(images):
        losses = jax.vmap(lambda p: dm_loss(model, p, images, batch, aug_key, config.dsa_strategy, chunk))(params)
        return jnp.mean(losses)

    loss, grads = jax.value_and_grad(loss_of)(state.images)
    optimizer = image_optimizer(config)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.images)
    return DCState(optax.apply_updates(state.images, updates), opt_state), {"loss": loss / config.num_classes}


PRESETS: dict[str, dict] = {
    # Seconds on scikit-learn's 8x8 digits (tests).
    "smoke": {"iterations": 50, "batch_real": 32},
    # Minutes on 2 CPU cores: 1000 iterations instead of 20000, real batch 64 instead of 256.
    "cpu": {"iterations": 1000, "batch_real": 64},
    # The reference protocol.
    "paper": {"iterations": 20000, "batch_real": 256},
}


def default_config(preset: str, ipc: int, dataset: str) -> DMConfig:
    """:class:`DMConfig` of ``preset`` with the reference's DSA strategy for ``dataset``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    return DMConfig(num_classes=0, ipc=ipc, dsa_strategy=augment.dsa_strategy(dataset), **PRESETS[preset])


def build(model: Model, images: Array, labels: Array, config: DMConfig) -> IterativeMethod:
    """DM as an :class:`IterativeMethod` for any model with an ``embed`` and real data."""
    if model.embed is None:
        raise ValueError("DM needs a model with an embed function (features before the classifier)")
    check_class_chunk(config)
    real = group_by_class(images, labels, config.num_classes)
    smallest = min_class_count(real)
    if config.batch_real > smallest:
        config = config._replace(batch_real=smallest)
    if config.dsa_strategy == "none":
        config = config._replace(dsa_strategy="")
    step_model = model.with_conv(STEP_CONV.get(jax.default_backend()))
    return IterativeMethod(
        init=lambda key: dm_init(key, real, config),
        step=lambda state, real_data, key: dm_step(step_model, config, state, real_data, key),
        to_synset=to_synset,
        real_data=real,
        num_steps=config.iterations,
        config=run_config(config),
    )


def make(request: DistillRequest) -> IterativeMethod:
    """``--method dm``."""
    return build(request.model, request.images, request.labels, request_config(request, default_config))


register(
    MethodSpec(
        "dm",
        "DM: distribution matching (Zhao & Bilen WACV 2023)",
        make,
        config_type=DMConfig,
        default_config=default_config,
        default_protocol="dsa",
    )
)

__all__ = [
    "DMConfig", "PRESETS", "build", "class_bytes", "class_chunk", "class_embedding_distance", "class_real_embedding",
    "class_syn_distance", "default_config", "dm_init", "dm_loss", "dm_step", "make",
]
