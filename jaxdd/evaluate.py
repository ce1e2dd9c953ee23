"""Evaluate a synthetic set: train K fresh networks on it and test them on real data.

All K networks are one stacked pytree: training maps over keys (``lax.map`` whose ``batch_size``
models are vmapped together) a ``lax.scan`` over steps, and testing maps over models a
``lax.map`` over test chunks, all in one jitted program. There is no Python loop over models,
epochs or batches.

With a device mesh (:mod:`jaxdd.sharding`) the same per-device program runs under
``jax.shard_map``: the K models are spread over every device for training (each device trains
its share exactly as one device trains all of them, so the accuracies are the same), then tested
with the models split on the ``model`` axis and the test images on the ``data`` axis.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxdd.progress import progress_bar, tick
from jaxdd.sharding import DATA, MODEL, constrain, replicate, shard_data
from jaxdd.train import CycledGD, Protocol, accuracy, train_on_set
from jaxdd.types import Array, Model, Params, PRNGKey

PROTOCOLS: dict[str, Protocol] = {
    # DC (Zhao et al. 2021), `evaluate_synset`: SGD 0.01 / momentum 0.9 / wd 5e-4, batch 256,
    # E = 300: E + 1 epochs, lr x0.1 and a fresh optimiser (momentum reset) after epoch E//2 + 1
    # (schedule 'dc_reference'; `schedule='step_half'` gives jaxdd's former E epochs with the lr
    # x0.1 from epoch E//2 on and momentum kept). On MNIST the reference augments
    # (crop/scale/rotate) and trains E = 1000: `get_protocol('dc', 'mnist')` applies that.
    "dc": Protocol(name="dc"),
    # DSA / DM: as DC but E = 1000 with DSA augmentation, per-sample parameters.
    "dsa": Protocol(name="dsa", epochs=1000, augment="dsa"),
    # FRePo (Zhou et al. 2022): Adam 3e-4, warm-up + cosine, MSE loss, steps by set size.
    # Batch size and weight decay of its evaluation are unverified: we use 256 and 0.
    "frepo": Protocol(
        name="frepo",
        optimizer="adam",
        lr=3e-4,
        momentum=0.0,
        weight_decay=0.0,
        schedule="warmup_cosine",
        loss="mse",
        steps_by_set_size=((10, 1000), (100, 2000), (500, 5000), (1000, 10000), (5000, 40000)),
    ),
}

# DD (Wang et al. 2018): T = steps x epochs plain GD steps, one batch per step (the trainer
# CycledGD). A DD set uses its own step order and learned step sizes (and its theta_0 if
# fixed-init); any other set is cut into `CycledGD.steps` class-balanced batches trained `epochs`
# times with the fixed step size `lr` (DD's baselines; lr chosen on held-out MNIST training
# images, see docs/dd.md). Another S: `get_protocol('dd', trainer=CycledGD(steps=S))`.
PROTOCOLS["dd"] = Protocol(name="dd", trainer=CycledGD(steps=10), lr=0.1, momentum=0.0, weight_decay=0.0,
                           epochs=3, schedule="constant")

# Per-dataset changes of a preset in its reference code.
DATASET_OVERRIDES: dict[tuple[str, str], dict] = {
    ("dc", "mnist"): {"epochs": 1000, "augment": "dc_mnist"},
    # DSA's strategy for digit datasets has no flip (color_crop_cutout_scale_rotate).
    **{("dsa", name): {"augment": "dsa_noflip"} for name in ("mnist", "svhn_cropped", "usps", "digits")},
}


def get_protocol(name: str, dataset: Optional[str] = None, **overrides) -> Protocol:
    """A named evaluation protocol, with its reference's per-dataset changes and user overrides.

    Args:
        name: a key of :data:`PROTOCOLS`.
        dataset: registry name; e.g. ``('dc', 'mnist')`` trains 1000 epochs with augmentation.
        **overrides: any :class:`~jaxdd.train.Protocol` field (``epochs=50``,
            ``schedule='step_half'``, ``augment='dc_mnist_noise'``,
            ``trainer=CycledGD(steps=S)``); ``None`` values are ignored.

    'dc' and 'dsa' use the reference's schedule 'dc_reference' (E + 1 epochs, lr x0.1 and
    momentum reset after epoch E // 2 + 1); jaxdd's earlier schedule is ``schedule='step_half'``.
    """
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join(sorted(PROTOCOLS))}")
    changes = dict(DATASET_OVERRIDES.get((name, dataset or ""), {}))
    changes.update({k: v for k, v in overrides.items() if v is not None})
    return dataclasses.replace(PROTOCOLS[name], **changes)


def minibatch_trainer(key, model, images, labels, protocol, params=None, step_sizes=None) -> Params:
    """The default ``Protocol.trainer``: :func:`~jaxdd.train.train_on_set` with the protocol's
    augmentation; ``step_sizes`` (learned by DD) are not used by minibatch training."""
    return train_on_set(key, model, images, labels, protocol, params=params, augment=resolve_augment(protocol.augment))


def resolve_augment(name: Optional[str]) -> Optional[Callable[[PRNGKey, Array], Array]]:
    """The per-sample augmentation registered under ``name`` in :mod:`jaxdd.augment` ('none': None)."""
    if name is None or name == "none":
        return None
    from jaxdd import augment

    if name not in augment.AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; known: {', '.join(sorted(augment.AUGMENTATIONS))}")
    return augment.AUGMENTATIONS[name]


class EvalResult(NamedTuple):
    """Per-model test accuracies (fractions in [0, 1]) with their mean and population std."""

    accs: np.ndarray
    mean: float
    std: float

    def as_dict(self) -> dict:
        return {"accs": [float(a) for a in self.accs], "mean": self.mean, "std": self.std}


def default_model_batch(num_models: int) -> int:
    """How many models to vmap together: all on GPU/TPU, one at a time on CPU.

    On XLA:CPU a convolution vmapped over per-model weights lowers to a grouped convolution that
    runs several times slower than the same models one after another (measured in
    ``benchmarks/eval_vmap.py``), so on CPU the model axis is a sequential ``lax.map`` inside the
    same jitted program; on accelerators it is one ``vmap``.
    """
    return 1 if jax.default_backend() == "cpu" else num_models


def train_models(
    key: PRNGKey,
    model: Model,
    images: Array,
    labels: Array,
    protocol: Protocol,
    num_models: int,
    *,
    init_params: Optional[Params] = None,
    step_sizes: Optional[Array] = None,
    model_batch: Optional[int] = None,
    mesh: Optional[Mesh] = None,
) -> Params:
    """Trains ``num_models`` networks (keys ``split(key, num_models)``) as one stacked pytree.

    The model axis is ``lax.map(..., batch_size=model_batch)``: ``model_batch`` models are
    vmapped together (default :func:`default_model_batch`); the result is the same either way.
    With ``mesh`` the models are spread over all its devices (``jax.shard_map``; model ``i`` is
    still trained with key ``i``; ``num_models`` is padded to a multiple of the device count and
    the extra models dropped) and ``model_batch`` counts the models vmapped on one device.
    """
    keys = jax.random.split(key, num_models)
    if mesh is None:
        return _train_keys(model, protocol, model_batch, keys, images, labels, init_params, step_sizes)
    stacked = _train_on_mesh(model, protocol, model_batch, mesh, keys, images, labels, init_params, step_sizes)
    return jax.tree.map(lambda a: a[:num_models], stacked)


def _train_keys(model, protocol, model_batch, keys, images, labels, init_params, step_sizes):
    """One model per key, ``model_batch`` (default :func:`default_model_batch`) vmapped at a time."""
    trainer = protocol.trainer or minibatch_trainer

    def train_one(k):
        params = trainer(k, model, images, labels, protocol, params=init_params, step_sizes=step_sizes)
        # Tick the progress bar once this model is trained (the argument orders it after training).
        jax.debug.callback(tick, jax.tree.leaves(params)[0].ravel()[0])
        return params

    count = keys.shape[0]
    batch = model_batch or default_model_batch(count)
    return jax.lax.map(train_one, keys, batch_size=min(batch, count))


_EVERY_DEVICE = P((MODEL, DATA))
"""Stacked models over all devices, ``model``-major: device (d, m) holds block m * D + d, so
regrouping them on ``model`` alone (for testing) only gathers within each ``model`` column."""


def _train_on_mesh(model, protocol, model_batch, mesh, keys, images, labels, init_params, step_sizes):
    """:func:`_train_keys` on every device of ``mesh`` for its block of ``keys``.

    The keys are padded (repeating the last) to a multiple of the device count; the stacked
    result keeps the padding models at its end.
    """
    pad = -keys.shape[0] % mesh.size
    keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], pad, axis=0)])
    train = functools.partial(_train_keys, model, protocol, model_batch)
    return jax.shard_map(
        train, mesh=mesh, in_specs=(_EVERY_DEVICE, P(), P(), P(), P()), out_specs=_EVERY_DEVICE, check_vma=False
    )(keys, images, labels, init_params, step_sizes)


class ModelKey:
    """A :class:`~jaxdd.types.Model` compared and hashed by what it computes, for a jit cache.

    Two ``get_model`` calls give different function objects for the same network, so a
    ``Model`` as a static argument would compile the evaluation anew every time. The key is the
    printed jaxprs of ``init`` and of ``apply`` at the set's image shape (architecture, options,
    parameter shapes, dtypes) plus a digest of the constants they close over: equal keys compute
    the same functions, and the program compiled for one serves the other.
    """

    __slots__ = ("model", "signature", "_hash")

    def __init__(self, model: Model, image_shape: tuple[int, ...], dtype) -> None:
        self.model = model
        self.signature = _model_signature(model, tuple(image_shape), np.dtype(dtype).name)
        self._hash = hash(self.signature)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        return isinstance(other, ModelKey) and self.signature == other.signature


@functools.lru_cache(maxsize=64)
def _model_signature(model: Model, image_shape: tuple[int, ...], dtype: str) -> tuple:
    init, params = jax.make_jaxpr(model.init, return_shape=True)(jax.random.key(0))
    apply = jax.make_jaxpr(model.apply)(params, jax.ShapeDtypeStruct((1,) + image_shape, dtype))
    consts = tuple(
        (np.shape(c), str(np.asarray(c).dtype), hashlib.sha256(np.ascontiguousarray(c).tobytes()).hexdigest())
        for c in (*init.consts, *apply.consts)
    )
    return str(init), str(apply), consts


def evaluate_synset(
    key: PRNGKey,
    model: Model,
    images: Array,
    labels: Array,
    test_images: Array,
    test_labels: Array,
    protocol: Protocol,
    num_models: int = 10,
    *,
    init_params: Optional[Params] = None,
    step_sizes: Optional[Array] = None,
    test_batch_size: Optional[int] = None,
    model_batch: Optional[int] = None,
    mesh: Optional[Mesh] = None,
    progress: Union[bool, str] = False,
) -> EvalResult:
    """Trains ``num_models`` fresh networks on a set and returns their real test accuracies.

    Model ``i`` uses key ``jax.random.split(key, num_models)[i]`` for its initialisation,
    shuffling and augmentation, so ``evaluate_synset(key, ..., num_models=K)`` gives the same
    accuracies as training each model alone with ``protocol.trainer`` (by default
    :func:`jaxdd.train.train_on_set`; tested). No model is selected on the test set: each is
    tested once, after its last step. The compiled program is cached on :class:`ModelKey`, so a
    second ``get_model`` call for the same network reuses it. A network whose output depends on
    its batch (BatchNorm on batch statistics) is tested on chunks of ``test_batch_size`` test
    images in their stored order, so its accuracy depends on that chunking.

    Args:
        key: typed key.
        model: the network to train (fresh from ``model.init`` unless ``init_params``).
        images, labels: the synthetic set (hard (N,) or soft (N, C) labels).
        test_images, test_labels: real test split.
        protocol: see :func:`get_protocol`.
        num_models: K.
        init_params: optional fixed starting parameters for every model (DD fixed init).
        step_sizes: learned step sizes for trainers that use them (DD's :class:`~jaxdd.train.CycledGD`).
        test_batch_size: test images per chunk (default 1000).
        model_batch: models vmapped together (default: all on GPU/TPU, 1 on CPU); any value
            gives the same accuracies. With ``mesh``: per device.
        mesh: optional ``("data", "model")`` mesh (:func:`jaxdd.sharding.make_mesh`). The
            models are trained spread over all its devices (K is padded to a multiple of the
            device count; the extra models are discarded), then tested split on ``model``
            with the test images split on ``data``; the accuracies equal those without a mesh.
        progress: show a progress bar on stderr counting trained models (a string labels it).
            The compiled program is the same either way: every trained model calls a host
            function (``jax.debug.callback``) that ticks the bar when one is shown.

    Returns:
        :class:`EvalResult` with per-model accuracies, mean and population std.
    """
    chunk = test_batch_size or 1000
    model = ModelKey(model, images.shape[1:], images.dtype)
    if mesh is None:
        batch = min(model_batch or default_model_batch(num_models), num_models)
        with progress_bar(num_models, progress, "evaluate", "model"):
            accs = np.asarray(_evaluate_jit(
                key, model, images, labels, test_images, test_labels, protocol, num_models, init_params, step_sizes, chunk, batch
            ))
    else:
        per_device = -(-num_models // mesh.size)
        batch = min(model_batch or default_model_batch(per_device), per_device)
        num_test = test_images.shape[0]
        pad = -num_test % mesh.shape[DATA]
        test_images = jnp.concatenate([test_images, jnp.zeros((pad,) + test_images.shape[1:], test_images.dtype)])
        test_labels = jnp.concatenate([test_labels, jnp.full((pad,), -1, test_labels.dtype)])
        with progress_bar(per_device * mesh.size, progress, "evaluate", "model"):  # padded models are trained too
            accs = np.asarray(_evaluate_mesh_jit(
                *replicate(mesh, (key, images, labels)),
                *shard_data(mesh, (test_images, test_labels)),
                replicate(mesh, init_params),
                replicate(mesh, step_sizes),
                model=model, protocol=protocol, num_models=num_models, chunk=chunk, batch=batch, num_test=num_test, mesh=mesh,
            ))
    accs = np.asarray(accs, dtype=np.float64)
    return EvalResult(accs, float(accs.mean()), float(accs.std()))


def _evaluate(key, model_key, images, labels, test_images, test_labels, protocol, num_models, init_params, step_sizes,
              chunk, batch):
    model = model_key.model
    stacked = train_models(
        key, model, images, labels, protocol, num_models, init_params=init_params, step_sizes=step_sizes, model_batch=batch
    )
    return jax.lax.map(lambda params: accuracy(model, params, test_images, test_labels, chunk), stacked, batch_size=batch)


_STATIC_ARGNUMS = (1, 6, 7, 10, 11)
_evaluate_jit = jax.jit(_evaluate, static_argnums=_STATIC_ARGNUMS)


@jax.jit(static_argnames=("model", "protocol", "num_models", "chunk", "batch", "num_test", "mesh"))
def _evaluate_mesh_jit(key, images, labels, test_images, test_labels, init_params, step_sizes, *, model, protocol,
                       num_models, chunk, batch, num_test, mesh):
    model = model.model
    keys = jax.random.split(key, num_models)
    stacked = _train_on_mesh(model, protocol, batch, mesh, keys, images, labels, init_params, step_sizes)

    def hits(params, x, y):
        # accuracy * local count is the hit count up to float32 rounding (< 0.5 below 2**22 images).
        local = jax.lax.map(lambda p: jnp.round(accuracy(model, p, x, y, chunk) * x.shape[0]), params, batch_size=batch)
        return jax.lax.psum(local, DATA)

    counts = jax.shard_map(
        hits, mesh=mesh, in_specs=(P(MODEL), P(DATA), P(DATA)), out_specs=P(MODEL), check_vma=False
    )(stacked, test_images, test_labels)
    return constrain(counts[:num_models] / num_test, P(), mesh)


__all__ = [
    "PROTOCOLS",
    "EvalResult",
    "accuracy",
    "evaluate_synset",
    "get_protocol",
    "minibatch_trainer",
    "train_models",
]
