"""DC: dataset condensation with gradient matching, and DSA (DC with Siamese augmentation).

Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021 (Algorithm 1);
Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation", ICML 2021.

One outer iteration (one call of the jitted ``step``)::

    theta_0 ~ P(theta_0)                           (a fresh network, or a vmapped batch of them)
    for t in 0 .. outer_loop-1:
        for every class c (vmapped, one program):
            B_c^T = batch_real real images of class c;  S_c = the ipc synthetic images of class c
            [DSA: the same random transform A_c applied to both]
            L_c = D(grad_theta CE(S_c, c; theta_t), grad_theta CE(B_c^T, c; theta_t))
        S <- SGD-momentum step (lr_img, momentum 0.5) on sum_c L_c  (mean over the batch of theta_0)
        if t < outer_loop-1: theta_{t+1} <- inner_loop epochs of SGD (lr_net) on the whole S

``D`` is the layer-wise distance of the paper: for every weight tensor, the sum over output
nodes of ``1 - cos`` between the per-node gradient rows (1-D parameters such as biases and norm
scales are ignored, as in the reference, unless ``include_1d``); ``mse`` and a global ``cos``
are the reference's alternatives.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdd import augment
from jaxdd.coreset import class_sorted_labels
from jaxdd.methods import DistillRequest, IterativeMethod, MethodSpec, register
from jaxdd.sharding import DATA, MODEL, constrain
from jaxdd.train import epoch_batch, loss_fn
from jaxdd.types import Array, Model, Params, PRNGKey, SynSet

LOOPS: dict[int, tuple[int, int]] = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
"""(outer_loop, inner_loop) by images per class, from the reference's ``get_loops``."""

EPS = 1e-6
"""Added to the product of norms in the cosine distances, as in the reference."""


def default_loops(ipc: int) -> tuple[int, int]:
    """The reference's (outer_loop, inner_loop) for ``ipc``; other sizes take the nearest entry."""
    nearest = min(LOOPS, key=lambda k: (abs(k - ipc), k))
    return LOOPS[nearest]


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


# --------------------------------------------------------------------------- real data by class


class RealByClass(NamedTuple):
    """Real training images with a per-class index table, for drawing class batches in a jit.

    Attributes:
        images: (N, H, W, C) real images.
        index: (num_classes, max_count) int32: the rows of ``images`` of each class, padded with -1.
    """

    images: Array
    index: Array


def group_by_class(images: Array, labels: Array, num_classes: int) -> RealByClass:
    """Builds the :class:`RealByClass` index (host side, once per run)."""
    labels_np = np.asarray(labels)
    rows = [np.flatnonzero(labels_np == c) for c in range(num_classes)]
    if min(len(r) for r in rows) == 0:
        raise ValueError("every class needs at least one real image")
    index = np.full((num_classes, max(len(r) for r in rows)), -1, np.int32)
    for c, r in enumerate(rows):
        index[c, : len(r)] = r
    return RealByClass(jnp.asarray(images), jnp.asarray(index))


def min_class_count(real: RealByClass) -> int:
    """Images in the smallest class (an upper bound for ``batch_real``)."""
    return int(np.min(np.sum(np.asarray(real.index) >= 0, axis=1)))


def sample_real(key: PRNGKey, real: RealByClass, batch: int) -> Array:
    """``batch`` distinct random real images of every class: (num_classes, batch, H, W, C).

    ``batch`` must not exceed :func:`min_class_count` (padding would be drawn otherwise).
    """
    scores = jax.random.uniform(key, real.index.shape)
    scores = jnp.where(real.index >= 0, scores, -1.0)
    _, positions = jax.lax.top_k(scores, batch)
    rows = jnp.take_along_axis(real.index, positions, axis=1)
    return real.images[rows]


# --------------------------------------------------------------------------- the algorithm


@dataclasses.dataclass(frozen=True)
class DCConfig:
    """Hyper-parameters of DC / DSA (defaults: the reference's).

    Attributes:
        num_classes: C.
        ipc: synthetic images per class.
        iterations: outer iterations (fresh networks); 1000 in the paper.
        outer_loop: matching steps per network (None: :data:`LOOPS` by ipc).
        inner_loop: epochs of network training on the synthetic set between matching steps.
        batch_real: real images per class per matching step.
        lr_img: SGD learning rate on the images.
        momentum_img: its momentum.
        lr_net: SGD learning rate of the inner network training (no momentum).
        batch_train: minibatch size of the inner training.
        metric: 'layerwise' | 'mse' | 'cos', see :func:`match_distance`.
        include_1d: match 1-D parameters too.
        out_axis: output-node axis of weight tensors (-1: Flax layout).
        num_inits: networks theta_0 per iteration (vmapped; the matching loss is their mean).
        init: 'noise' (N(0, 1) in normalised space) or 'real' (random real images).
        dsa_strategy: '' for DC; a DSA strategy (e.g. 'color_crop_cutout_scale_rotate') for DSA,
            applied Siamese-wise in matching and per sample in the inner training.
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
    metric: str = "layerwise"
    include_1d: bool = False
    out_axis: int = -1
    num_inits: int = 1
    init: str = "noise"
    dsa_strategy: str = ""

    @property
    def loops(self) -> tuple[int, int]:
        outer, inner = default_loops(self.ipc)
        return (self.outer_loop or outer, self.inner_loop if self.inner_loop is not None else inner)


class DCState(NamedTuple):
    """Synthetic images (num_classes, ipc, H, W, C) and the image optimiser's state."""

    images: Array
    opt_state: optax.OptState


def class_loss(model: Model, params: Params, images: Array, label: Array) -> Array:
    """Mean cross-entropy of ``images`` that all belong to class ``label``."""
    return -jnp.mean(jax.nn.log_softmax(model.apply(params, images))[:, label])


def class_match_distance(
    model: Model, params: Params, syn: Array, real: Array, label: Array, key: PRNGKey, config: DCConfig
) -> Array:
    """``D(grad CE(A(syn)), grad CE(A(real)))`` for one class; ``A`` is DSA with ``key`` (if any).

    The real gradient is a constant (``stop_gradient``); the result is differentiable in ``syn``.
    """
    if config.dsa_strategy:
        real = augment.dsa(key, real, config.dsa_strategy)
        syn = augment.dsa(key, syn, config.dsa_strategy)
    g_real = jax.lax.stop_gradient(jax.grad(class_loss, argnums=1)(model, params, real, label))
    g_syn = jax.grad(class_loss, argnums=1)(model, params, syn, label)
    return match_distance(g_syn, g_real, config.metric, config.include_1d, config.out_axis)


def match_loss(model: Model, params: Params, syn: Array, real: Array, key: PRNGKey, config: DCConfig) -> Array:
    """``sum_c`` :func:`class_match_distance`, all classes in one ``vmap``.

    Args:
        syn: (C, ipc, H, W, Ch) synthetic images by class.
        real: (C, B, H, W, Ch) real images by class.
        key: split into one augmentation key per class.
    """
    classes = jnp.arange(syn.shape[0])
    keys = jax.random.split(key, syn.shape[0])
    per_class = jax.vmap(lambda s, r, c, k: class_match_distance(model, params, s, r, c, k, config))
    return jnp.sum(per_class(syn, real, classes, keys))


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
    """Plain SGD (``theta <- theta - lr * grad``) for ``epochs`` shuffled epochs, as one ``lax.scan``.

    DSA (per-sample parameters) is applied to every minibatch when ``dsa_strategy`` is set.
    """
    set_size = images.shape[0]
    batch = min(batch_size, set_size)
    steps = epochs * math.ceil(set_size / batch)
    shuffle_key, augment_key = jax.random.split(key)

    def one_step(p, step):
        indices, mask = epoch_batch(shuffle_key, step, set_size, batch)
        x = images[indices]
        if dsa_strategy:
            x = augment.dsa(jax.random.fold_in(augment_key, step), x, dsa_strategy, per_sample=True)
        grads = jax.grad(lambda q: loss_fn(model.apply(q, x), labels[indices], "ce", mask))(p)
        return jax.tree.map(lambda a, g: a - lr * g, p, grads), None

    params, _ = jax.lax.scan(one_step, params, jnp.arange(steps))
    return params


def image_optimizer(config) -> optax.GradientTransformation:
    """SGD with momentum on the synthetic images (PyTorch semantics)."""
    return optax.sgd(config.lr_img, momentum=config.momentum_img)


def init_images(key: PRNGKey, real: RealByClass, config, image_shape: tuple[int, ...]) -> Array:
    """(C, ipc, H, W, Ch) initial images: N(0, 1) noise or random real images of each class."""
    if config.init == "noise":
        return jax.random.normal(key, (config.num_classes, config.ipc) + tuple(image_shape))
    if config.init == "real":
        return sample_real(key, real, config.ipc)
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

    def match(params, images, opt_state, t):
        real_key, aug_key = jax.random.split(jax.random.fold_in(loop_key, t))
        batch = constrain(sample_real(real_key, real, config.batch_real), (None, DATA))

        def loss_of(imgs):
            losses = jax.vmap(lambda p: match_loss(model, p, imgs, batch, aug_key, config))(params)
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
    # The reference protocol.
    "paper": {"iterations": 1000, "batch_real": 256, "init": "noise"},
}
"""Per-preset defaults; ``large_ipc`` entries replace the others at 10 img/cls and more."""


def config_from_request(request: DistillRequest, dsa: bool) -> DCConfig:
    """:class:`DCConfig` from the preset, overridden by the command-line options."""
    if request.preset not in PRESETS:
        raise ValueError(f"unknown preset {request.preset!r}; known: {', '.join(PRESETS)}")
    preset = dict(PRESETS[request.preset])
    large = preset.pop("large_ipc", {})
    if request.ipc >= 10:
        preset.update(large)
    options = {OPTION_FIELDS.get(k, k): v for k, v in request.options.items() if v is not None}
    fields = {f.name for f in dataclasses.fields(DCConfig)}
    preset.update({k: v for k, v in options.items() if k in fields})
    if dsa and not preset.get("dsa_strategy"):
        preset["dsa_strategy"] = augment.dsa_strategy(request.dataset)
    if not dsa:
        preset["dsa_strategy"] = ""
    return DCConfig(num_classes=request.num_classes, ipc=request.ipc, **preset)


def build(model: Model, images: Array, labels: Array, config: DCConfig) -> IterativeMethod:
    """DC / DSA as an :class:`IterativeMethod` for any model and real data."""
    real = group_by_class(images, labels, config.num_classes)
    smallest = min_class_count(real)
    if config.batch_real > smallest:
        config = dataclasses.replace(config, batch_real=smallest)
    if config.init == "real" and config.ipc > smallest:
        raise ValueError(f"init 'real' needs {config.ipc} images per class; the smallest class has {smallest}")
    outer, inner = config.loops
    return IterativeMethod(
        init=lambda key: dc_init(key, real, config),
        step=lambda state, real_data, key: dc_step(model, config, state, real_data, key),
        to_synset=to_synset,
        real_data=real,
        num_steps=config.iterations,
        config={**dataclasses.asdict(config), "outer_loop": outer, "inner_loop": inner},
    )


def _make(dsa: bool):
    def make(request: DistillRequest) -> IterativeMethod:
        return build(request.model, request.images, request.labels, config_from_request(request, dsa))

    return make


OPTION_FIELDS = {"syn_init": "init", "match_metric": "metric"}
"""Command-line ``dest`` names that differ from the :class:`DCConfig` field they set."""

OPTIONS = (
    ("--iterations", {"type": int, "default": None, "help": "outer iterations (default from the preset)"}),
    ("--outer-loop", {"type": int, "default": None, "help": "matching steps per network (default by ipc)"}),
    ("--inner-loop", {"type": int, "default": None, "help": "network epochs between matching steps"}),
    ("--batch-real", {"type": int, "default": None, "help": "real images per class per matching step"}),
    ("--lr-img", {"type": float, "default": None, "help": "image learning rate (0.1)"}),
    ("--match-metric", {"choices": ["layerwise", "mse", "cos"], "default": None, "help": "dc/dsa: gradient distance"}),
    ("--include-1d", {"action": "store_true", "default": None, "help": "also match biases / norm scales"}),
    ("--num-inits", {"type": int, "default": None, "help": "networks per iteration (vmapped)"}),
    ("--syn-init", {"choices": ["noise", "real"], "default": None, "help": "dc/dsa/dm: initial synthetic images"}),
    ("--dsa-strategy", {"default": None, "help": "DSA families joined by '_' (default per dataset)"}),
)

register(MethodSpec("dc", "DC: gradient matching (Zhao et al. ICLR 2021)", _make(dsa=False), OPTIONS))
register(
    MethodSpec(
        "dsa",
        "DSA: gradient matching with Siamese augmentation (Zhao & Bilen ICML 2021)",
        _make(dsa=True),
        OPTIONS,
        default_protocol="dsa",
    )
)

__all__ = [
    "DCConfig",
    "DCState",
    "LOOPS",
    "PRESETS",
    "RealByClass",
    "build",
    "class_loss",
    "class_match_distance",
    "dc_init",
    "dc_step",
    "default_loops",
    "group_by_class",
    "layer_distance",
    "match_distance",
    "match_loss",
    "min_class_count",
    "sample_real",
    "to_synset",
    "train_network",
]
