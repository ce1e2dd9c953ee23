"""DC: dataset condensation with gradient matching, and DSA (DC with Siamese augmentation).

Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021 (Algorithm 1);
Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation", ICML 2021.

One outer iteration (one call of the jitted ``step``)::

    theta_0 ~ P(theta_0)                           (a fresh network, or a vmapped batch of them)
    for t in 0 .. outer_loop-1:
        for every class c (vmapped, class_chunk classes at a time):
            B_c^T = batch_real real images of class c;  S_c = the ipc synthetic images of class c
            [DSA: the same random transform A_c applied to both]
            L_c = D(grad_theta CE(S_c, c; theta_t), grad_theta CE(B_c^T, c; theta_t))
        S <- SGD-momentum step (lr_img, momentum 0.5) on sum_c L_c  (mean over the batch of theta_0)
        if t < outer_loop-1: theta_{t+1} <- inner_loop epochs of SGD (lr_net) on the whole S

``D`` is the layer-wise distance of the paper: for every weight tensor, the sum over output
nodes of ``1 - cos`` between the per-node gradient rows (1-D parameters such as biases and norm
scales are ignored, as in the reference, unless ``include_1d``); ``mse`` and a global ``cos``
are the reference's alternatives.

Memory: the classes are matched ``class_chunk`` at a time (:func:`match_loss`), by default as
many as the memory budget holds (:func:`class_chunk`); at the papers' sizes one class's real
gradient with its second-order synthetic gradient is the bulk of a step's memory.
"""

from __future__ import annotations

import logging
from typing import Literal, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from jaxdd import augment
from jaxdd.coreset import class_sorted_labels
from jaxdd.methods import DistillRequest, IterativeMethod, MethodSpec, register, request_config
from jaxdd.sampling import RealByClass, group_by_class, min_class_count, sample_per_class
from jaxdd.sharding import DATA, MODEL, chunk_for, constrain, map_rows, traced_bytes
from jaxdd.train import Protocol, train_loop
from jaxdd.types import Array, Model, Params, PRNGKey, SynSet

LOOPS: dict[int, tuple[int, int]] = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
"""(outer_loop, inner_loop) by images per class, from the reference's ``get_loops``."""

EPS = 1e-6
"""Added to the product of norms in the cosine distances, as in the reference."""

REFERENCE_LR_IMG = 0.1
"""The reference's image step; larger ones are safe only through a network blind to the images' scale."""

_log = logging.getLogger(__name__)


def dc_loops(ipc: int, outer_loop: Optional[int] = None, inner_loop: Optional[int] = None) -> tuple[int, int]:
    """(outer_loop, inner_loop): the given values, the missing ones from :data:`LOOPS` by ``ipc``.

    Raises:
        ValueError: ``ipc`` has no entry in the reference's table (which refuses such sizes)
            and a value is missing.
    """
    if outer_loop is not None and inner_loop is not None:
        return outer_loop, inner_loop
    if ipc not in LOOPS:
        raise ValueError(
            f"DC's reference defines its loops only for {', '.join(map(str, LOOPS))} img/cls, not {ipc}: "
            "give both --outer-loop and --inner-loop"
        )
    outer, inner = LOOPS[ipc]
    return (outer if outer_loop is None else outer_loop, inner if inner_loop is None else inner_loop)


# --------------------------------------------------------------------------- matching distance


def _rows(g: Array, out_axis: int) -> Array:
    """A gradient tensor as (out, rest): one row per output node (a 1-D tensor is one row)."""
    if g.ndim == 1:
        return g[None, :]
    return jnp.moveaxis(g, out_axis, 0).reshape(g.shape[out_axis], -1)


def _norm(a: Array) -> Array:
    """Euclidean norm over the last axis whose gradient at 0 is 0 (as PyTorch), not NaN."""
    squared = jnp.sum(a * a, axis=-1)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def layer_distance(g_syn: Array, g_real: Array, out_axis: int = -1) -> Array:
    """``sum_i (1 - <A_i, B_i> / (|A_i| |B_i| + 1e-6))`` over the output nodes i of one layer.

    Args:
        g_syn, g_real: gradients of one parameter tensor (same shape).
        out_axis: the axis of output nodes (-1 for Flax ``Conv``/``Dense`` kernels, which are
            (kh, kw, in, out) and (in, out); 0 for PyTorch layouts). A 1-D tensor is one row.
    """
    a, b = _rows(g_syn, out_axis), _rows(g_real, out_axis)
    cos = jnp.sum(a * b, axis=-1) / (_norm(a) * _norm(b) + EPS)
    return jnp.sum(1.0 - cos)


def match_distance(
    g_syn: Params, g_real: Params, metric: str = "layerwise", include_1d: bool = False, out_axis: int = -1
) -> Array:
    """Distance between two gradient pytrees (DC's ``match_loss``).

    Args:
        g_syn, g_real: gradients of the same parameter pytree.
        metric: 'layerwise' (the paper's D: :func:`layer_distance` summed over tensors),
            'mse' (squared Euclidean distance of the concatenated gradients) or 'cos'
            (``1 - cos`` of the concatenated gradients).
        include_1d: also match 1-D tensors (biases, norm scales), each as one row; the
            reference ignores them (its ``distance_wb`` returns 0 for them). Applies to
            'layerwise' only; 'mse' and 'cos' always use every tensor, as in the reference.
        out_axis: output-node axis of the weight tensors (see :func:`layer_distance`).
    """
    syn_leaves, real_leaves = jax.tree.leaves(g_syn), jax.tree.leaves(g_real)
    if metric == "layerwise":
        terms = [
            layer_distance(a, b, out_axis) for a, b in zip(syn_leaves, real_leaves) if include_1d or a.ndim > 1
        ]
        return jnp.sum(jnp.stack(terms)) if terms else jnp.float32(0.0)
    a = jnp.concatenate([x.ravel() for x in syn_leaves])
    b = jnp.concatenate([x.ravel() for x in real_leaves])
    if metric == "mse":
        return jnp.sum(jnp.square(a - b))
    if metric == "cos":
        return 1.0 - jnp.sum(a * b) / (_norm(a) * _norm(b) + EPS)
    raise ValueError(f"unknown matching metric {metric!r}; known: layerwise, mse, cos")


# --------------------------------------------------------------------------- the algorithm


class DCConfig(NamedTuple):
    """Hyper-parameters of DC / DSA (defaults: the reference's).

    Attributes:
        num_classes: C (filled from the data).
        ipc: synthetic images per class (filled from ``--ipc``).
        iterations: outer iterations (fresh networks); 1000 in the paper.
        outer_loop: matching steps per network (none: the reference's table by img/cls).
        inner_loop: epochs of network training on the synthetic set between matching steps
            (none: the reference's table by img/cls).
        batch_real: real images per class per matching step (at most the smallest class).
        lr_img: SGD learning rate on the images.
        momentum_img: its momentum.
        lr_net: SGD learning rate of the inner network training (no momentum).
        batch_train: minibatch size of the inner training.
        metric: gradient distance: 'layerwise' (the paper's), 'mse' or 'cos'.
        include_1d: also match 1-D parameters (biases, norm scales).
        out_axis: output-node axis of weight tensors (-1: Flax layout).
        num_inits: networks theta_0 per iteration (vmapped; the matching loss is their mean).
        init: initial synthetic images: 'noise' (N(0, 1) in normalised space) or 'real' (random
            real images).
        dsa_strategy: DSA families joined by '_' ('' for DC; e.g. 'color_crop_cutout_scale_rotate'),
            applied Siamese-wise in matching and per sample in the inner training.
        class_chunk: classes matched at once (bounds memory; none: as many as the memory budget
            holds, ``$JAXDD_MEMORY_BUDGET`` or a share of the device's memory, see
            dc.class_chunk). Results equal the all-classes form to float rounding.
    """

    num_classes: int
    ipc: int
    iterations: int = 1000
    outer_loop: Optional[int] = None
    inner_loop: Optional[int] = None
    batch_real: int = 256
    lr_img: float = 0.1
    momentum_img: float = 0.5
    lr_net: float = 0.01
    batch_train: int = 256
    metric: Literal["layerwise", "mse", "cos"] = "layerwise"
    include_1d: bool = False
    out_axis: int = -1
    num_inits: int = 1
    init: Literal["noise", "real"] = "noise"
    dsa_strategy: str = ""
    class_chunk: Optional[int] = None

    @property
    def loops(self) -> tuple[int, int]:
        return dc_loops(self.ipc, self.outer_loop, self.inner_loop)


class DCState(NamedTuple):
    """Synthetic images (num_classes, ipc, H, W, C) and the image optimiser's state."""

    images: Array
    opt_state: optax.OptState


def check_batch_independent(model: Model, images: Array, key: Optional[PRNGKey] = None) -> None:
    """Refuses a network whose output for one image depends on the rest of its batch.

    Matching class by class feeds the network one class at a time; with BatchNorm on batch
    statistics every layer would be normalised by that class's statistics (the reference instead
    computes them on a mixed real batch and freezes them). The check compares, at a random
    initialisation, the logits of ``images[0]`` alone and within ``images[:2]``.

    Raises:
        ValueError: the logits differ (e.g. a ``*BN`` architecture).
    """
    params = model.init(jax.random.key(0) if key is None else key)
    pair = images[:2]
    alone, together = model.apply(params, pair[:1])[0], model.apply(params, pair)[0]
    scale = float(jnp.max(jnp.abs(together))) + 1e-6
    if pair.shape[0] == 2 and float(jnp.max(jnp.abs(alone - together))) > 1e-4 * scale:
        raise ValueError(
            "DC/DSA match gradients class by class and need a network whose output for an image does not "
            "depend on the rest of its batch (no BatchNorm on batch statistics): use instance, group or layer "
            "norm (e.g. ConvNet, not ConvNetBN)"
        )


def warn_scale_sensitive_image_step(model: Model, images: Array, lr_img: float, key: Optional[PRNGKey] = None) -> bool:
    """Warns (logger ``jaxdd.methods.dc``) when ``lr_img`` exceeds the reference's 0.1 and the
    network's output depends on the images' scale; returns whether it warned.

    Through instance norm after the first convolution (ConvNet) the logits of ``2 x`` equal those
    of ``x``, so the images' magnitude does not feed back into the matching and a large step only
    moves them faster. Through a norm-free network (MLP, LeNet, AlexCifarNet) it does: the `cpu`
    preset's 1.0, chosen on ConvNet, grew MNIST images to +-170 through an MLP in 150 iterations
    (+-9 at 0.1; experiments/results/evidence/dc_cross_arch_cpu_lr_img1.md). The check compares,
    at a random initialisation, the logits of ``images[:2]`` and of twice them.
    """
    if lr_img <= REFERENCE_LR_IMG:
        return False
    params = model.init(jax.random.key(0) if key is None else key)
    pair = images[:2]
    logits, doubled = model.apply(params, pair), model.apply(params, 2.0 * pair)
    scale = float(jnp.max(jnp.abs(logits))) + 1e-6
    if float(jnp.max(jnp.abs(doubled - logits))) <= 1e-3 * scale:
        return False
    _log.warning("lr_img %g with a network whose output depends on the images' scale (no normalisation after its "
                 "first layer): steps this large can grow the images tenfold (the cpu preset's 1.0 suits ConvNet's "
                 "instance norm); the reference's lr_img is %g", lr_img, REFERENCE_LR_IMG)
    return True


def class_loss(model: Model, params: Params, images: Array, label: Array) -> Array:
    """Mean cross-entropy of ``images`` that all belong to class ``label``."""
    return -jnp.mean(jax.nn.log_softmax(model.apply(params, images))[:, label])


def class_real_gradient(model: Model, params: Params, real: Array, label: Array, key: PRNGKey, config: DCConfig) -> Params:
    """``grad_theta CE(A(real))`` for one class, a constant (``stop_gradient``); ``A`` is DSA with ``key``."""
    if config.dsa_strategy:
        real = augment.dsa(key, real, config.dsa_strategy)
    return jax.lax.stop_gradient(jax.grad(class_loss, argnums=1)(model, params, real, label))


def class_syn_distance(
    model: Model, params: Params, syn: Array, g_real: Params, label: Array, key: PRNGKey, config: DCConfig
) -> Array:
    """``D(grad CE(A(syn)), g_real)`` for one class, differentiable in ``syn``; ``A`` is DSA with ``key``."""
    if config.dsa_strategy:
        syn = augment.dsa(key, syn, config.dsa_strategy)
    g_syn = jax.grad(class_loss, argnums=1)(model, params, syn, label)
    return match_distance(g_syn, g_real, config.metric, config.include_1d, config.out_axis)


def class_match_distance(
    model: Model, params: Params, syn: Array, real: Array, label: Array, key: PRNGKey, config: DCConfig
) -> Array:
    """``D(grad CE(A(syn)), grad CE(A(real)))`` for one class; ``A`` is DSA with ``key`` (if any).

    The real gradient is a constant (``stop_gradient``); the result is differentiable in ``syn``.
    """
    g_real = class_real_gradient(model, params, real, label, key, config)
    return class_syn_distance(model, params, syn, g_real, label, key, config)


def class_bytes(model: Model, syn_shape: tuple, real_shape: tuple, config: DCConfig) -> int:
    """Estimated bytes of one class's matching for one network: the intermediates of the real
    gradient plus those of the synthetic images' gradient of the distance (second order), summed
    over the traced program (:func:`jaxdd.sharding.traced_bytes`, an upper bound; nothing runs).

    Args:
        syn_shape, real_shape: one class's (ipc, H, W, Ch) and (B, H, W, Ch).
    """
    label, key = jnp.int32(0), jax.random.key(0)

    def one(params, s, r):
        g_real = class_real_gradient(model, params, r, label, key, config)
        return jax.grad(lambda x: class_syn_distance(model, params, x, g_real, label, key, config))(s)

    params = jax.eval_shape(model.init, key)
    return traced_bytes(one, params, jax.ShapeDtypeStruct(syn_shape, jnp.float32),
                        jax.ShapeDtypeStruct(real_shape, jnp.float32))


def class_chunk(model: Model, syn_shape: tuple, real_shape: tuple, config: DCConfig) -> int:
    """Classes matched at once: ``config.class_chunk``, else as many as
    :func:`jaxdd.sharding.memory_budget` holds at :func:`class_bytes` per class times ``num_inits``.

    Args:
        syn_shape, real_shape: (C, ipc, H, W, Ch) and (C, B, H, W, Ch).
    """
    num_classes = syn_shape[0]
    if config.class_chunk is not None:
        return chunk_for(0, num_classes, config.class_chunk)
    per_class = class_bytes(model, tuple(syn_shape[1:]), tuple(real_shape[1:]), config) * max(config.num_inits, 1)
    return chunk_for(per_class, num_classes)


def match_loss(
    model: Model, params: Params, syn: Array, real: Array, key: PRNGKey, config: DCConfig, chunk: Optional[int] = None
) -> Array:
    """``sum_c`` :func:`class_match_distance` over the classes, ``chunk`` classes at a time.

    With ``chunk`` None or at least C all classes are one ``vmap``. A smaller chunk bounds the
    memory (:func:`jaxdd.sharding.map_rows`): first the real gradients, ``chunk`` classes at a
    time (no derivative flows through them), then the distances, ``chunk`` classes at a time
    under ``jax.checkpoint``, so the image gradient keeps one chunk's second-order intermediates
    at a time. Same per-class keys, hence the same augmentations, in both forms.

    Args:
        syn: (C, ipc, H, W, Ch) synthetic images by class.
        real: (C, B, H, W, Ch) real images by class.
        key: split into one augmentation key per class.
        chunk: classes per chunk (:func:`class_chunk`).
    """
    num_classes = syn.shape[0]
    classes = jnp.arange(num_classes)
    keys = jax.random.split(key, num_classes)
    if chunk is None or chunk >= num_classes:
        per_class = jax.vmap(lambda s, r, c, k: class_match_distance(model, params, s, r, c, k, config))
        return jnp.sum(per_class(syn, real, classes, keys))
    g_real = map_rows(lambda r, c, k: class_real_gradient(model, params, r, c, k, config), (real, classes, keys), chunk)
    distances = map_rows(lambda s, g, c, k: class_syn_distance(model, params, s, g, c, k, config),
                         (syn, g_real, classes, keys), chunk, remat=True)
    return jnp.sum(distances)


def train_network(
    key: PRNGKey,
    model: Model,
    params: Params,
    images: Array,
    labels: Array,
    epochs: int,
    lr: float,
    batch_size: int = 256,
    dsa_strategy: str = "",
) -> Params:
    """Plain SGD (``theta <- theta - lr * grad``) for ``epochs`` shuffled epochs (:func:`jaxdd.train.train_loop`).

    DSA (per-sample parameters) is applied to every minibatch when ``dsa_strategy`` is set.
    """
    protocol = Protocol(name="dc-inner", lr=lr, momentum=0.0, weight_decay=0.0, epochs=epochs,
                        batch_size=batch_size, schedule="constant")
    shuffle_key, augment_key = jax.random.split(key)

    def dsa(k: PRNGKey, x: Array) -> Array:
        return augment.dsa(k, x, dsa_strategy, per_sample=True)

    return train_loop(model, params, images, labels, protocol, shuffle_key=shuffle_key,
                      augment=dsa if dsa_strategy else None, augment_key=augment_key)


def image_optimizer(config) -> optax.GradientTransformation:
    """SGD with momentum on the synthetic images (PyTorch semantics)."""
    return optax.sgd(config.lr_img, momentum=config.momentum_img)


def init_images(key: PRNGKey, real: RealByClass, config, image_shape: tuple[int, ...]) -> Array:
    """(C, ipc, H, W, Ch) initial images: N(0, 1) noise or random real images of each class."""
    if config.init == "noise":
        return jax.random.normal(key, (config.num_classes, config.ipc) + tuple(image_shape))
    if config.init == "real":
        return sample_per_class(key, real, config.ipc)
    raise ValueError(f"unknown init {config.init!r}; known: noise, real")


def dc_init(key: PRNGKey, real: RealByClass, config: DCConfig) -> DCState:
    """Initial :class:`DCState`."""
    images = init_images(key, real, config, real.images.shape[1:])
    return DCState(images, image_optimizer(config).init(images))


def dc_step(model: Model, config: DCConfig, state: DCState, real: RealByClass, key: PRNGKey) -> tuple[DCState, dict]:
    """One outer iteration of DC / DSA (see the module docstring); pure and jittable.

    Under a mesh (:func:`jaxdd.sharding.constrain`) the initialisations are split on ``model``
    and each class's real batch on ``data``.

    Returns:
        The new state and ``{'loss': mean over matching steps of sum_c D / C}``.
    """
    outer_loop, inner_loop = config.loops
    optimizer = image_optimizer(config)
    num_classes, ipc = config.num_classes, config.ipc
    labels = class_sorted_labels(num_classes, ipc)
    init_key, loop_key = jax.random.split(key)
    params = constrain(jax.vmap(model.init)(jax.random.split(init_key, config.num_inits)), MODEL)
    chunk = class_chunk(model, state.images.shape, (num_classes, config.batch_real) + real.images.shape[1:], config)

    def match(params, images, opt_state, t):
        real_key, aug_key = jax.random.split(jax.random.fold_in(loop_key, t))
        batch = constrain(sample_per_class(real_key, real, config.batch_real), (None, DATA))

        def loss_of(imgs):
            losses = jax.vmap(lambda p: match_loss(model, p, imgs, batch, aug_key, config, chunk))(params)
            return jnp.mean(losses)

        loss, grads = jax.value_and_grad(loss_of)(images)
        updates, opt_state = optimizer.update(grads, opt_state, images)
        return optax.apply_updates(images, updates), opt_state, loss

    def match_and_train(carry, t):
        params, images, opt_state = carry
        images, opt_state, loss = match(params, images, opt_state, t)
        flat = jax.lax.stop_gradient(images).reshape((num_classes * ipc,) + images.shape[2:])
        train_keys = jax.random.split(jax.random.fold_in(jax.random.fold_in(loop_key, t), 1), config.num_inits)
        params = jax.vmap(
            lambda k, p: train_network(
                k, model, p, flat, labels, inner_loop, config.lr_net, config.batch_train, config.dsa_strategy
            )
        )(train_keys, params)
        return (params, images, opt_state), loss

    images, opt_state = state.images, state.opt_state
    losses = jnp.zeros((0,), jnp.float32)
    if outer_loop > 1:
        (params, images, opt_state), losses = jax.lax.scan(
            match_and_train, (params, images, opt_state), jnp.arange(outer_loop - 1)
        )
    images, opt_state, last = match(params, images, opt_state, outer_loop - 1)
    loss = jnp.concatenate([losses, last[None]]).mean() / num_classes
    return DCState(images, opt_state), {"loss": loss}


def to_synset(state) -> SynSet:
    """The class-sorted synthetic set of a DC / DM state."""
    num_classes, ipc = state.images.shape[:2]
    images = state.images.reshape((num_classes * ipc,) + state.images.shape[2:])
    return SynSet(images, class_sorted_labels(num_classes, ipc))


# --------------------------------------------------------------------------- presets and registry

PRESETS: dict[str, dict] = {
    # Seconds on scikit-learn's 8x8 digits (tests).
    "smoke": {"iterations": 30, "batch_real": 32, "init": "noise"},
    # Minutes on 2 CPU cores for MNIST / Fashion-MNIST. Deviations from the paper: real batch
    # 64 per class instead of 256; at >= 10 img/cls 100 iterations instead of 1000 with
    # inner_loop 10 instead of 50; initialised from real images (as DSA's commands); lr_img 1.0
    # instead of 0.1, chosen on 1000 held-out *training* images of MNIST at 1 img/cls with
    # ConvNet width 16 (experiments/dc_cpu_lr.py; see docs/dc.md for the figures).
    "cpu": {
        "iterations": 1000, "batch_real": 64, "init": "real", "lr_img": 1.0,
        "large_ipc": {"iterations": 100, "inner_loop": 10},
    },
    # The reference protocol (DSA's commands initialise from real images).
    "paper": {"iterations": 1000, "batch_real": 256, "init": "noise", "dsa": {"init": "real"}},
}
"""Per-preset defaults; ``large_ipc`` entries replace the others at 10 img/cls and more, ``dsa``
entries for DSA."""


def default_config(preset: str, ipc: int, dataset: str, dsa: bool = False) -> DCConfig:
    """:class:`DCConfig` of ``preset`` at ``ipc``; with ``dsa`` the reference's strategy for ``dataset``.

    ``outer_loop`` / ``inner_loop`` stay None unless the preset fixes them: :attr:`DCConfig.loops`
    then takes the reference's values for ``ipc`` when the run is built.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    values = dict(PRESETS[preset])
    large = values.pop("large_ipc", {})
    dsa_values = values.pop("dsa", {})
    if ipc >= 10:
        values.update(large)
    if dsa:
        values.update(dsa_values)
    values["dsa_strategy"] = augment.dsa_strategy(dataset) if dsa else ""
    return DCConfig(num_classes=0, ipc=ipc, **values)


def dsa_default_config(preset: str, ipc: int, dataset: str) -> DCConfig:
    """DSA's defaults: :func:`default_config` with the dataset's DSA strategy."""
    return default_config(preset, ipc, dataset, dsa=True)


def check_class_chunk(config) -> None:
    """Raises ValueError (one line) for a ``class_chunk`` below 1."""
    if config.class_chunk is not None and config.class_chunk < 1:
        raise ValueError(f"class_chunk must be at least 1 class (got {config.class_chunk}); none chooses it from memory")


def run_config(config) -> dict:
    """The config a run records (its identity, :func:`jaxdd.distill.run_identity`): every field, but
    ``class_chunk`` only when it is set: the automatic chunk depends on the machine, changes results
    only at float rounding, and older checkpoints (without the field) must still resume."""
    fields = config._asdict()
    if fields.get("class_chunk") is None:
        fields.pop("class_chunk", None)
    return fields


def build(model: Model, images: Array, labels: Array, config: DCConfig) -> IterativeMethod:
    """DC / DSA as an :class:`IterativeMethod` for any model and real data."""
    check_class_chunk(config)
    real = group_by_class(images, labels, config.num_classes)
    check_batch_independent(model, real.images[real.index[:2, 0]])
    warn_scale_sensitive_image_step(model, real.images[real.index[:2, 0]], config.lr_img)
    smallest = min_class_count(real)
    if config.batch_real > smallest:
        config = config._replace(batch_real=smallest)
    if config.init == "real" and config.ipc > smallest:
        raise ValueError(f"init 'real' needs {config.ipc} images per class; the smallest class has {smallest}")
    outer, inner = config.loops
    return IterativeMethod(
        init=lambda key: dc_init(key, real, config),
        step=lambda state, real_data, key: dc_step(model, config, state, real_data, key),
        to_synset=to_synset,
        real_data=real,
        num_steps=config.iterations,
        config={**run_config(config), "outer_loop": outer, "inner_loop": inner},
    )


def make(request: DistillRequest) -> IterativeMethod:
    """``--method dc`` / ``--method dsa`` (the request's config carries the DSA strategy)."""
    return build(request.model, request.images, request.labels, request_config(request, default_config))


def make_dsa(request: DistillRequest) -> IterativeMethod:
    """``--method dsa`` for a request without a config: DSA's defaults."""
    return build(request.model, request.images, request.labels, request_config(request, dsa_default_config))


register(
    MethodSpec(
        "dc", "DC: gradient matching (Zhao et al. ICLR 2021)", make, config_type=DCConfig, default_config=default_config
    )
)
register(
    MethodSpec(
        "dsa",
        "DSA: gradient matching with Siamese augmentation (Zhao & Bilen ICML 2021)",
        make_dsa,
        config_type=DCConfig,
        default_config=dsa_default_config,
        default_protocol="dsa",
    )
)

__all__ = [
    "DCConfig",
    "DCState",
    "LOOPS",
    "PRESETS",
    "build",
    "check_batch_independent",
    "check_class_chunk",
    "class_bytes",
    "class_chunk",
    "class_loss",
    "class_match_distance",
    "class_real_gradient",
    "class_syn_distance",
    "dc_init",
    "dc_step",
    "default_config",
    "dc_loops",
    "dsa_default_config",
    "layer_distance",
    "match_distance",
    "match_loss",
    "run_config",
    "to_synset",
    "train_network",
    "warn_scale_sensitive_image_step",
]
