"""IDC: dataset condensation with multi-formation (efficient synthetic-data parameterisation).

Kim, Kim, Oh, Yun, Song, Jeong, Ha & Song, "Dataset Condensation via Efficient Synthetic-Data
Parameterization", ICML 2022.

**Multi-formation** (factor f = 2): each stored image S (H x W) is cut into f x f tiles, and each
tile is upsampled (bilinear) back to H x W, so ``ipc`` stored images of a class decode into
``f^2 * ipc`` training images (:func:`decode`); the storage budget is that of ``ipc`` images.

One outer iteration (one call of the jitted ``step``)::

    theta = a network briefly pre-trained on real data (expert i, epoch e ~ U[pretrain_from, pretrain_from + pretrain_num))
    for t in 0 .. inner_loop-1:
        for every class c (vmapped):
            B_c = batch_real real images of class c;  D_c = decode(S_c) (at most batch_syn_max of them)
            L_c = sum over conv layers l of dist(grad_l CE(A_c(D_c), c; theta), grad_l CE(A_c(B_c), c; theta))
        S <- SGD(lr_img, momentum 0.5) on sum_c L_c
        theta <- one epoch of SGD (lr 0.01, momentum 0.9, wd 5e-4, batch 64) on net_data random real images

``dist`` is the paper's L1 (``sum |a - b|``, the default) or MSE (``sum (a - b)^2``, DC's 'mse'
distance :func:`jaxdd.methods.dc.match_distance`); as in the reference, biases / norm parameters
(1-D) and fully-connected kernels (2-D) are not matched unless ``match_bias`` / ``match_fc``.
``A_c`` is DSA with one transform shared by the real and the decoded batch of a class (Siamese).

The saved set is the decoded one (``f^2 * ipc`` images per class, what a network trains on, so
every tool uses it unchanged); the stored images travel beside it as the extra array
``idc_stored`` and the run's config records ``factor``.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdd import augment, experts
from jaxdd.coreset import class_sorted_labels
from jaxdd.methods import DistillRequest, IterativeMethod, MethodSpec, register, request_config
from jaxdd.methods.dc import class_loss, match_distance
from jaxdd.methods.mtt import get_trajectories
from jaxdd.sampling import RealByClass, group_by_class, min_class_count, sample_per_class
from jaxdd.train import Protocol, train_loop
from jaxdd.types import Array, Model, Params, PRNGKey, SynSet


class IDCConfig(NamedTuple):
    """IDC hyper-parameters (defaults: the reference's ``argument.py``; presets in :func:`default_config`).

    Attributes:
        iterations: outer iterations, each with a newly drawn pre-trained network.
        inner_loop: matching steps per network, each followed by a network update on real data.
        factor: multi-formation factor f (each stored image decodes into f^2 images).
        metric: gradient distance: 'l1' (sum of absolute differences) or 'mse' (sum of squares).
        match_bias: also match 1-D parameters (biases, norm scales).
        match_fc: also match 2-D parameters (fully-connected kernels).
        batch_real: real images per class per matching step.
        batch_syn_max: decoded images per class per matching step (a random subset if more).
        lr_img: SGD learning rate of the stored images (normalised pixel space).
        momentum_img: its momentum.
        net_lr: SGD learning rate of the network updates on real data.
        net_momentum: their momentum.
        net_weight_decay: their weight decay.
        net_data: real images per network update (one epoch over them).
        net_batch: minibatch size of the network updates.
        dsa_strategy: Siamese DSA families in matching.
        net_dsa_strategy: per-sample DSA families in the network updates.
        init: initial stored images: 'mix' (f^2 real images of the class, downsampled and tiled),
            'real' (one real image each) or 'noise'.
        pretrain_from: first expert epoch used as a pre-trained network.
        pretrain_num: networks come from epochs pretrain_from .. pretrain_from + pretrain_num - 1.
        experts: expert file of the pre-trained networks ('' : the default name, built when absent).
        num_experts: experts trained when the file is absent.
        expert_train_epochs: epochs each expert is trained when the file is absent.
        num_classes: filled from the data.
        ipc: filled from ``--ipc`` (stored images per class).
    """

    iterations: int = 2000
    inner_loop: int = 100
    factor: int = 2
    metric: Literal["l1", "mse"] = "l1"
    match_bias: bool = False
    match_fc: bool = False
    batch_real: int = 64
    batch_syn_max: int = 128
    lr_img: float = 0.05
    momentum_img: float = 0.5
    net_lr: float = 0.01
    net_momentum: float = 0.9
    net_weight_decay: float = 5e-4
    net_data: int = 500
    net_batch: int = 64
    dsa_strategy: str = "color_crop_cutout"
    net_dsa_strategy: str = "color_crop"
    init: Literal["mix", "real", "noise"] = "mix"
    pretrain_from: int = 1
    pretrain_num: int = 4
    experts: str = ""
    num_experts: int = 10
    expert_train_epochs: int = 10
    num_classes: int = 10
    ipc: int = 1


def default_config(preset: str, ipc: int, dataset: str) -> IDCConfig:
    """Preset defaults.

    - ``smoke``: seconds on the 8x8 digits (3 experts x 4 epochs, 10 iterations of 2 steps).
    - ``cpu``: MNIST / Fashion-MNIST on 2 CPU cores: 100 iterations x 10 matching steps (the
      reference: 2000 x 100), networks from epochs 1-3 of 2 experts (the MTT ``cpu`` experts).
    - ``paper``: the reference's iterations; ``lr_img`` is the reference's 5e-3 (pixels in
      [0, 1]) divided by std^2 of the normalised pixels (std about 0.3 for the grey datasets,
      0.2 for CIFAR), as the images here live in normalised space.
    """
    lr_img = 5e-3 / 0.2**2 if dataset.startswith("cifar") else 5e-3 / 0.3**2
    if preset == "smoke":
        return IDCConfig(iterations=10, inner_loop=2, batch_real=16, net_data=64, net_batch=32, lr_img=lr_img,
                         num_experts=3, expert_train_epochs=4, pretrain_num=3, ipc=ipc)
    if preset == "cpu":
        return IDCConfig(iterations=100, inner_loop=10, lr_img=lr_img, num_experts=2, expert_train_epochs=3,
                         pretrain_num=3, ipc=ipc)
    if preset == "paper":
        return IDCConfig(lr_img=lr_img, ipc=ipc)
    raise ValueError(f"unknown preset {preset!r}; known: smoke, cpu, paper")


# --------------------------------------------------------------------------- multi-formation


def split_tiles(images: Array, factor: int) -> Array:
    """(N, H, W, C) -> (f^2, N, H/f, W/f, C): tile k = i * f + j is row-block i, column-block j."""
    n, h, w, c = images.shape
    if h % factor or w % factor:
        raise ValueError(f"image size {h}x{w} is not divisible by the multi-formation factor {factor}")
    tiles = images.reshape(n, factor, h // factor, factor, w // factor, c)
    return tiles.transpose(1, 3, 0, 2, 4, 5).reshape(factor * factor, n, h // factor, w // factor, c)


def merge_tiles(tiles: Array, factor: int) -> Array:
    """Inverse of :func:`split_tiles`: (f^2, N, h, w, C) -> (N, f h, f w, C)."""
    _, n, h, w, c = tiles.shape
    grid = tiles.reshape(factor, factor, n, h, w, c).transpose(2, 0, 3, 1, 4, 5)
    return grid.reshape(n, factor * h, factor * w, c)


def decode(images: Array, factor: int) -> Array:
    """Multi-formation: (N, H, W, C) stored -> (f^2 N, H, W, C); image ``k N + n`` is tile k of image n
    upsampled bilinearly (half-pixel centres, PyTorch's ``Upsample(mode='bilinear')``). Linear in the input."""
    if factor == 1:
        return images
    tiles = split_tiles(images, factor)
    up = jax.image.resize(tiles, tiles.shape[:2] + images.shape[1:], "bilinear")
    return up.reshape((-1,) + images.shape[1:])


def encode(images: Array, factor: int) -> Array:
    """(f^2 N, H, W, C) -> (N, H, W, C): downsample every image to H/f x W/f (antialiased linear)
    and tile image ``k N + n`` at position k of stored image n (the 'mix' initialisation)."""
    if factor == 1:
        return images
    n = images.shape[0] // (factor * factor)
    h, w, c = images.shape[1:]
    small = jax.image.resize(images, (images.shape[0], h // factor, w // factor, c), "linear", antialias=True)
    return merge_tiles(small.reshape((factor * factor, n) + small.shape[1:]), factor)


# --------------------------------------------------------------------------- matching


def idc_distance(g_syn: Params, g_real: Params, metric: str = "l1", match_bias: bool = False, match_fc: bool = False) -> Array:
    """IDC's gradient distance over the matched tensors (convolution kernels unless bias / fc).

    ``'l1'``: ``sum |g_syn - g_real|``; ``'mse'``: ``sum (g_syn - g_real)^2``
    (:func:`jaxdd.methods.dc.match_distance` with metric 'mse').
    """
    pairs = [(a, b) for a, b in zip(jax.tree.leaves(g_syn), jax.tree.leaves(g_real))
             if (a.ndim != 1 or match_bias) and (a.ndim != 2 or match_fc)]
    syn, real = [a for a, _ in pairs], [b for _, b in pairs]
    if metric == "mse":
        return match_distance(syn, real, "mse")
    if metric == "l1":
        return sum(jnp.sum(jnp.abs(a - b)) for a, b in pairs)
    raise ValueError(f"unknown IDC metric {metric!r}; known: l1, mse")


def class_distance(model: Model, params: Params, syn: Array, real: Array, label: Array, key: PRNGKey, config: IDCConfig) -> Array:
    """``dist(grad CE(A(syn)), grad CE(A(real)))`` for one class; the real gradient is a constant."""
    real = augment.dsa(key, real, config.dsa_strategy)
    syn = augment.dsa(key, syn, config.dsa_strategy)
    g_real = jax.lax.stop_gradient(jax.grad(class_loss, argnums=1)(model, params, real, label))
    g_syn = jax.grad(class_loss, argnums=1)(model, params, syn, label)
    return idc_distance(g_syn, g_real, config.metric, config.match_bias, config.match_fc)


def decoded_by_class(stored: Array, factor: int) -> Array:
    """(C, ipc, H, W, Ch) stored -> (C, f^2 ipc, H, W, Ch) decoded, class by class."""
    return jax.vmap(lambda s: decode(s, factor))(stored)


def idc_loss(model: Model, params: Params, stored: Array, real: Array, key: PRNGKey, config: IDCConfig) -> Array:
    """``sum_c`` :func:`class_distance` over all classes (one ``vmap``) for stored images (C, ipc, ...)."""
    syn = decoded_by_class(stored, config.factor)
    subset_key, augment_key = jax.random.split(key)
    if syn.shape[1] > config.batch_syn_max:
        pick = jax.random.permutation(subset_key, syn.shape[1])[: config.batch_syn_max]
        syn = syn[:, pick]
    classes = jnp.arange(syn.shape[0])
    keys = jax.random.split(augment_key, syn.shape[0])
    per_class = jax.vmap(lambda s, r, c, k: class_distance(model, params, s, r, c, k, config))
    return jnp.sum(per_class(syn, real, classes, keys))


# --------------------------------------------------------------------------- the algorithm


class IDCState(NamedTuple):
    """Stored images (C, ipc, H, W, Ch) and their optimiser's state."""

    images: Array
    opt_state: Any


class IDCData(NamedTuple):
    """What every step reads: real images by class and the flat pre-trained parameters (N, E+1, P)."""

    real: RealByClass
    trajectories: Array


def _net_protocol(config: IDCConfig) -> Protocol:
    return Protocol(name="idc_net", lr=config.net_lr, momentum=config.net_momentum, weight_decay=config.net_weight_decay,
                    epochs=1, batch_size=config.net_batch, schedule="constant")


def idc_step(model: Model, unravel, config: IDCConfig, state: IDCState, data: IDCData, key: PRNGKey):
    """One outer iteration (see the module docstring); pure and jittable.

    Returns:
        The new state and ``{'loss': mean over matching steps of sum_c dist / C}``.
    """
    tx = optax.sgd(config.lr_img, momentum=config.momentum_img)
    net_protocol = _net_protocol(config)
    per_class = max(1, config.net_data // config.num_classes)
    net_labels = class_sorted_labels(config.num_classes, per_class)
    expert_key, epoch_key, loop_key = jax.random.split(key, 3)
    expert = jax.random.randint(expert_key, (), 0, data.trajectories.shape[0])
    epoch = jax.random.randint(epoch_key, (), config.pretrain_from, config.pretrain_from + config.pretrain_num)
    params = unravel(data.trajectories[expert, epoch])

    def inner(carry, t):
        params, images, opt_state = carry
        real_key, match_key, net_key, shuffle_key, aug_key = jax.random.split(jax.random.fold_in(loop_key, t), 5)
        batch = sample_per_class(real_key, data.real, config.batch_real)
        loss, grads = jax.value_and_grad(lambda s: idc_loss(model, params, s, batch, match_key, config))(images)
        updates, opt_state = tx.update(grads, opt_state, images)
        images = optax.apply_updates(images, updates)
        net_images = sample_per_class(net_key, data.real, per_class)
        net_images = net_images.reshape((-1,) + net_images.shape[2:])
        params = train_loop(model, params, net_images, net_labels, net_protocol, shuffle_key=shuffle_key,
                            augment=lambda k, x: augment.dsa(k, x, config.net_dsa_strategy, per_sample=True), augment_key=aug_key)
        return (params, images, opt_state), loss

    (_, images, opt_state), losses = jax.lax.scan(inner, (params, state.images, state.opt_state), jnp.arange(config.inner_loop))
    return IDCState(images, opt_state), {"loss": losses.mean() / config.num_classes, "pretrained_epoch": epoch}


def idc_init(key: PRNGKey, real: RealByClass, config: IDCConfig) -> IDCState:
    """Stored images (C, ipc, ...): 'mix' = :func:`encode` of f^2 ipc real images per class; 'real'; 'noise'."""
    f2 = config.factor**2
    shape = real.images.shape[1:]
    if config.init == "mix":
        picked = sample_per_class(key, real, f2 * config.ipc)  # (C, f^2 ipc, ...)
        images = jax.vmap(lambda x: encode(x, config.factor))(picked)
    elif config.init == "real":
        images = sample_per_class(key, real, config.ipc)
    elif config.init == "noise":
        images = jax.random.normal(key, (config.num_classes, config.ipc) + shape)
    else:
        raise ValueError(f"unknown init {config.init!r}; known: mix, real, noise")
    return IDCState(images, optax.sgd(config.lr_img, momentum=config.momentum_img).init(images))


def to_synset(state: IDCState, factor: int) -> SynSet:
    """The decoded, class-sorted training set: (C f^2 ipc) images."""
    decoded = decoded_by_class(state.images, factor)
    num_classes, count = decoded.shape[:2]
    return SynSet(decoded.reshape((-1,) + decoded.shape[2:]), class_sorted_labels(num_classes, count))


def build(model: Model, images: Array, labels: Array, trajectories: experts.Trajectories, config: IDCConfig) -> IterativeMethod:
    """IDC as an :class:`IterativeMethod` for any model, real data and pre-trained networks.

    Raises:
        ValueError: the trajectories lack the pre-training epochs, or a class is too small.
    """
    last = config.pretrain_from + config.pretrain_num - 1
    if trajectories.num_epochs < last:
        raise ValueError(f"the pre-trained networks have {trajectories.num_epochs} epochs; pretrain_from + pretrain_num - 1 = {last}")
    real = group_by_class(images, labels, config.num_classes)
    need = max(config.batch_real, config.factor**2 * config.ipc if config.init == "mix" else config.ipc,
               max(1, config.net_data // config.num_classes))
    if need > min_class_count(real):
        raise ValueError(f"IDC draws {need} real images per class; the smallest class has {min_class_count(real)}")
    split_tiles(images[:1], config.factor)  # checks the image size
    flat, unravel = experts.flatten_trajectories(trajectories)
    return IterativeMethod(
        init=lambda key: idc_init(key, real, config),
        step=lambda state, data, key: idc_step(model, unravel, config, state, data, key),
        to_synset=lambda state: to_synset(state, config.factor),
        real_data=IDCData(real, flat),
        num_steps=config.iterations,
        config={**config._asdict(), "method": "idc", "decoded": True, "stored_images": config.num_classes * config.ipc},
        extra_arrays=lambda state: {"idc_stored": np.asarray(state.images.reshape((-1,) + state.images.shape[2:]))},
    )


def make(request: DistillRequest) -> IterativeMethod:
    """IDC for the command: the resolved config, pre-trained networks (built when absent), :func:`build`."""
    config = request_config(request, default_config)
    trajectories = get_trajectories(request.model, request.images, request.labels, config, request.dataset, request.arch)
    return build(request.model, request.images, request.labels, trajectories, config)


register(MethodSpec(
    "idc", "IDC: gradient matching with multi-formation, factor 2 (Kim et al. ICML 2022)",
    make, config_type=IDCConfig, default_config=default_config, default_protocol="dsa",
))

__all__ = [
    "IDCConfig",
    "IDCData",
    "IDCState",
    "build",
    "class_distance",
    "decode",
    "default_config",
    "encode",
    "idc_distance",
    "idc_init",
    "idc_loss",
    "idc_step",
    "merge_tiles",
    "split_tiles",
    "to_synset",
]
