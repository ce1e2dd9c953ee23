"""DM: dataset condensation with distribution matching (Zhao & Bilen, WACV 2023).

One iteration (one call of the jitted ``step``)::

    theta ~ P(theta)                  a fresh, frozen network (or a vmapped batch of them)
    for every class c (vmapped):
        A_c = a DSA transform drawn from one key, applied to both batches (Siamese)
        L_c = || mean_i psi_theta(A_c(x_i^real)) - mean_j psi_theta(A_c(s_j)) ||^2
    S <- SGD-momentum step (lr_img 1.0, momentum 0.5) on sum_c L_c (mean over the networks)

``psi`` is the network's embedding (``Model.embed``: the features before the final linear
layer). No network is trained.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxdd import augment
from jaxdd.methods import DistillRequest, IterativeMethod, MethodSpec, register, request_config
from jaxdd.methods.dc import DCState, image_optimizer, init_images, to_synset
from jaxdd.sampling import RealByClass, group_by_class, min_class_count, sample_per_class
from jaxdd.sharding import DATA, MODEL, constrain
from jaxdd.types import Array, Model, Params, PRNGKey


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


def class_embedding_distance(
    model: Model, params: Params, syn: Array, real: Array, key: PRNGKey, dsa_strategy: str
) -> Array:
    """``|| mean psi(A(real)) - mean psi(A(syn)) ||^2`` for one class, ``A`` = DSA with ``key``."""
    if dsa_strategy:
        real = augment.dsa(key, real, dsa_strategy)
        syn = augment.dsa(key, syn, dsa_strategy)
    mean_real = jax.lax.stop_gradient(model.embed(params, real).mean(0))
    return jnp.sum(jnp.square(mean_real - model.embed(params, syn).mean(0)))


def dm_loss(model: Model, params: Params, syn: Array, real: Array, key: PRNGKey, dsa_strategy: str) -> Array:
    """``sum_c`` :func:`class_embedding_distance`, all classes in one ``vmap``.

    Args:
        syn: (C, ipc, H, W, Ch); real: (C, B, H, W, Ch); key: split per class.
    """
    keys = jax.random.split(key, syn.shape[0])
    per_class = jax.vmap(lambda s, r, k: class_embedding_distance(model, params, s, r, k, dsa_strategy))
    return jnp.sum(per_class(syn, real, keys))


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

    def loss_of(images):
        losses = jax.vmap(lambda p: dm_loss(model, p, images, batch, aug_key, config.dsa_strategy))(params)
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
    real = group_by_class(images, labels, config.num_classes)
    smallest = min_class_count(real)
    if config.batch_real > smallest:
        config = config._replace(batch_real=smallest)
    if config.dsa_strategy == "none":
        config = config._replace(dsa_strategy="")
    return IterativeMethod(
        init=lambda key: dm_init(key, real, config),
        step=lambda state, real_data, key: dm_step(model, config, state, real_data, key),
        to_synset=to_synset,
        real_data=real,
        num_steps=config.iterations,
        config=config._asdict(),
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

__all__ = ["DMConfig", "PRESETS", "build", "class_embedding_distance", "default_config", "dm_init", "dm_loss", "dm_step", "make"]
