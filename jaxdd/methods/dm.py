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

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from jaxdd import augment
from jaxdd.methods import DistillRequest, IterativeMethod, MethodSpec, register
from jaxdd.methods.dc import (
    OPTION_FIELDS,
    DCState,
    RealByClass,
    group_by_class,
    image_optimizer,
    init_images,
    min_class_count,
    sample_real,
    to_synset,
)
from jaxdd.sharding import DATA, MODEL, constrain
from jaxdd.types import Array, Model, Params, PRNGKey


@dataclasses.dataclass(frozen=True)
class DMConfig:
    """Hyper-parameters of DM (defaults: the reference's).

    Attributes:
        num_classes: C.
        ipc: synthetic images per class.
        iterations: 20000 in the paper.
        batch_real: real images per class per iteration.
        lr_img: SGD learning rate on the images.
        momentum_img: its momentum.
        num_nets: random networks per iteration (vmapped; the loss is their mean).
        init: 'real' (the reference) or 'noise'.
        dsa_strategy: Siamese DSA strategy ('' for none).
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
    batch = constrain(sample_real(real_key, real, config.batch_real), (None, DATA))

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


def config_from_request(request: DistillRequest) -> DMConfig:
    """:class:`DMConfig` from the preset, the dataset's DSA strategy and the command-line options."""
    if request.preset not in PRESETS:
        raise ValueError(f"unknown preset {request.preset!r}; known: {', '.join(PRESETS)}")
    values = dict(PRESETS[request.preset], dsa_strategy=augment.dsa_strategy(request.dataset))
    options = {OPTION_FIELDS.get(k, k): v for k, v in request.options.items() if v is not None}
    fields = {f.name for f in dataclasses.fields(DMConfig)}
    values.update({k: v for k, v in options.items() if k in fields})
    if values["dsa_strategy"] == "none":
        values["dsa_strategy"] = ""
    return DMConfig(num_classes=request.num_classes, ipc=request.ipc, **values)


def build(model: Model, images: Array, labels: Array, config: DMConfig) -> IterativeMethod:
    """DM as an :class:`IterativeMethod` for any model with an ``embed`` and real data."""
    if model.embed is None:
        raise ValueError("DM needs a model with an embed function (features before the classifier)")
    real = group_by_class(images, labels, config.num_classes)
    smallest = min_class_count(real)
    if config.batch_real > smallest:
        config = dataclasses.replace(config, batch_real=smallest)
    return IterativeMethod(
        init=lambda key: dm_init(key, real, config),
        step=lambda state, real_data, key: dm_step(model, config, state, real_data, key),
        to_synset=to_synset,
        real_data=real,
        num_steps=config.iterations,
        config=dataclasses.asdict(config),
    )


def make(request: DistillRequest) -> IterativeMethod:
    """``--method dm``."""
    return build(request.model, request.images, request.labels, config_from_request(request))


OPTIONS = (
    ("--iterations", {"type": int, "default": None, "help": "outer iterations (default from the preset)"}),
    ("--batch-real", {"type": int, "default": None, "help": "real images per class per matching step"}),
    ("--lr-img", {"type": float, "default": None, "help": "image learning rate"}),
    ("--num-nets", {"type": int, "default": None, "help": "dm: random networks per iteration (vmapped)"}),
    ("--syn-init", {"choices": ["noise", "real"], "default": None, "help": "dc/dsa/dm: initial synthetic images"}),
    ("--dsa-strategy", {"default": None, "help": "DSA families joined by '_' ('none': off; default per dataset)"}),
)

register(MethodSpec("dm", "DM: distribution matching (Zhao & Bilen WACV 2023)", make, OPTIONS, default_protocol="dsa"))

__all__ = ["DMConfig", "PRESETS", "build", "class_embedding_distance", "dm_init", "dm_loss", "dm_step", "make"]
