"""Expert trajectories: N networks trained on real data in one vmapped program, saved every epoch.

Trajectory matching (MTT, Cazenavette et al., "Dataset Distillation by Matching Training
Trajectories", CVPR 2022) compares a student with the parameters of networks trained on the real
data ("experts") recorded after every epoch; IDC (Kim et al., ICML 2022) matches gradients at
networks briefly pre-trained on real data. Both read them from here.

Expert ``i`` of a run with key ``k`` uses ``k_i = split(k, N)[i]``; epoch ``e`` is
:func:`jaxdd.train.train_on_set` for one epoch with key ``fold_in(k_i, e)``, starting from the
parameters after epoch ``e - 1`` (epoch 0 of the trajectory is ``model.init(k_i)``)::

    theta_i^0 = init(k_i);   theta_i^{e+1} = one epoch of SGD(theta_i^e; shuffle/augment keys of fold_in(k_i, e))

All N experts train together in one program jitted once: the experts are a stacked pytree mapped
(``lax.map`` with a ``vmap`` chunk size, :func:`epoch_fn`) over the ``lax.scan`` of one epoch's steps. The optimiser state restarts every epoch, so a protocol must be stateless across
epochs: plain SGD (no momentum) with a constant learning rate, the reference's expert protocol
(``buffer.py``: SGD lr 0.01, momentum 0, weight decay 0, batch 256, DSA, 50 epochs).

A run is one ``.npz`` file: ``params.<path>`` arrays of shape (N, E_done + 1, ...), the run key,
and a JSON header recording the protocol, the epochs done and the caller's description (dataset,
architecture, ZCA); it is rewritten atomically after every epoch, and :func:`train_experts` with
an existing file continues where it stopped (bit-identical to an uninterrupted run).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from jaxdd.evaluate import default_model_batch, resolve_augment
from jaxdd.io import write_file_atomically
from jaxdd.train import Protocol, train_on_set
from jaxdd.types import Array, Model, Params, PRNGKey

FORMAT = "jaxdd-experts-v1"

EXPERT_PROTOCOL = Protocol(
    name="mtt_expert", optimizer="sgd", lr=0.01, momentum=0.0, weight_decay=0.0, epochs=50,
    batch_size=256, schedule="constant", loss="ce", augment="dsa",
)
"""The reference's expert training (MTT ``buffer.py`` defaults): SGD 0.01, batch 256, DSA, 50 epochs."""


class ExpertError(ValueError):
    """An expert file is missing, corrupt, or belongs to another configuration."""


class Trajectories(NamedTuple):
    """Expert parameters recorded after every epoch.

    Attributes:
        params: the model's parameter pytree with two leading axes (N experts, E + 1 epochs);
            ``[:, 0]`` is the initialisation, ``[:, e]`` the parameters after epoch ``e``.
        meta: the file's JSON header (protocol, epochs done, description).
    """

    params: Params
    meta: dict

    @property
    def num_epochs(self) -> int:
        """Epochs recorded (E; the trajectory holds E + 1 parameter sets)."""
        return int(jax.tree.leaves(self.params)[0].shape[1]) - 1


def expert_protocol(augment: Optional[str] = "dsa", **overrides) -> Protocol:
    """:data:`EXPERT_PROTOCOL` with another augmentation (e.g. 'dsa_noflip' for digits) or fields."""
    return dataclasses.replace(EXPERT_PROTOCOL, augment=augment, **overrides)


def _check_protocol(protocol: Protocol) -> None:
    if protocol.momentum or protocol.schedule != "constant" or protocol.optimizer != "sgd" or protocol.steps_by_set_size:
        raise ValueError("expert protocols restart the optimiser every epoch: use plain SGD (momentum 0) with schedule 'constant'")


@functools.lru_cache(maxsize=8)
def epoch_fn(model: Model, protocol: Protocol, model_batch: Optional[int] = None) -> Callable:
    """The jitted ``(keys (N,), params (N, ...), epoch, images, labels) -> params`` of one epoch of N experts.

    The experts are one stacked pytree mapped with ``lax.map(..., batch_size=model_batch)``:
    ``model_batch`` experts are vmapped together, the chunks run one after another in the same
    program. None: :func:`jaxdd.evaluate.default_model_batch` (all on GPU/TPU; 1 on CPU, one
    expert's memory, where vmapping 4 small experts measured 7 % faster on 2 idle cores:
    ``benchmarks/mtt_experts.py``). Any value gives the same parameters up to float rounding.
    """
    _check_protocol(protocol)
    one_epoch = dataclasses.replace(protocol, epochs=1)
    augment = resolve_augment(protocol.augment)

    def epoch_of_all(keys, params, epoch, images, labels):
        def expert(key_and_params):
            key, p = key_and_params
            return train_on_set(jax.random.fold_in(key, epoch), model, images, labels, one_epoch, params=p, augment=augment)

        batch = min(model_batch or default_model_batch(keys.shape[0]), keys.shape[0])
        return jax.lax.map(expert, (keys, params), batch_size=batch)

    return jax.jit(epoch_of_all)


def _leaf_names(params: Params) -> list[str]:
    return [jax.tree_util.keystr(path, simple=True, separator=".") for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _fingerprint(header: dict) -> str:
    fixed = {k: header[k] for k in ("format", "protocol", "num_experts", "key", "shapes", "description")}
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:16]


def save_experts(path: str | os.PathLike, params: Params, header: dict) -> None:
    """Writes a trajectory (leaves (N, E + 1, ...)) and its header to ``path`` atomically."""
    arrays = {f"params.{name}": np.asarray(leaf) for name, leaf in zip(_leaf_names(params), jax.tree.leaves(params))}
    arrays["header"] = np.asarray(json.dumps(header, sort_keys=True))
    write_file_atomically(path, lambda file: np.savez(file, **arrays))


def load_experts(path: str | os.PathLike, template: Params) -> Trajectories:
    """Reads an expert file; ``template`` (e.g. ``model.init(key)``) gives the parameter structure.

    Raises:
        ExpertError: missing or corrupt file, or parameters that do not fit ``template``.
    """
    path = Path(path)
    if not path.is_file():
        raise ExpertError(f"no expert file at {path}")
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        header = json.loads(str(arrays.pop("header")))
    except Exception as error:  # zip, JSON and key errors all mean a corrupt file
        raise ExpertError(f"{path} is not a readable expert file ({type(error).__name__}: {error})") from None
    if header.get("format") != FORMAT:
        raise ExpertError(f"{path} is not a jaxdd expert file")
    leaves, treedef = jax.tree.flatten(template)
    out = []
    for name, leaf in zip(_leaf_names(template), leaves):
        value = arrays.get(f"params.{name}")
        if value is None or value.shape[2:] != leaf.shape:
            raise ExpertError(f"{path}: parameter {name!r} missing or not of shape (N, E+1) + {leaf.shape}: wrong model?")
        out.append(jnp.asarray(value, leaf.dtype))
    return Trajectories(jax.tree.unflatten(treedef, out), header)


def train_experts(
    key: PRNGKey,
    model: Model,
    images: Array,
    labels: Array,
    protocol: Protocol = EXPERT_PROTOCOL,
    num_experts: int = 10,
    *,
    path: Optional[str | os.PathLike] = None,
    description: Optional[dict] = None,
    log: Optional[Callable[[str], None]] = None,
    model_batch: Optional[int] = None,
) -> Trajectories:
    """Trains ``num_experts`` networks on real data for ``protocol.epochs`` epochs, recording every epoch.

    Update (per expert, all experts in one ``vmap``): ``theta^{e+1} = train_on_set(fold_in(k_i, e),
    theta^e, one epoch)``; see the module docstring.

    Args:
        key: typed key of the run.
        model: the network.
        images, labels: the real training set (normalised, whitened if the student will be).
        protocol: plain-SGD protocol (see :data:`EXPERT_PROTOCOL`); ``epochs`` = E.
        num_experts: N.
        path: the run's file; written after every epoch. If it exists, the run continues from
            it (refused with :class:`ExpertError` if it belongs to another configuration).
        description: JSON-serialisable facts recorded in the header and checked on resume
            (dataset, architecture, ZCA ...).
        log: optional ``log(message)`` for progress lines.
        model_batch: experts vmapped together (see :func:`epoch_fn`; default by backend).

    Returns:
        The :class:`Trajectories` (N, E + 1).
    """
    keys = jax.random.split(key, num_experts)
    shapes = jax.eval_shape(model.init, key)
    header = {
        "format": FORMAT,
        "protocol": dataclasses.asdict(protocol),
        "num_experts": num_experts,
        "key": np.asarray(jax.random.key_data(key)).ravel().tolist(),
        "shapes": {n: list(s.shape) for n, s in zip(_leaf_names(shapes), jax.tree.leaves(shapes))},
        "description": description or {},
        "num_images": int(images.shape[0]),
        "epochs_done": 0,
        "seconds": 0.0,
    }
    fingerprint = _fingerprint(header)
    trajectory = None
    if path is not None and Path(path).is_file():
        loaded = load_experts(path, model.init(key))
        if _fingerprint(loaded.meta) != fingerprint:
            raise ExpertError(f"{path} holds experts of another configuration; use another file")
        trajectory, header = [np.asarray(x) for x in jax.tree.leaves(loaded.params)], loaded.meta
    params = jax.vmap(model.init)(keys)
    treedef = jax.tree.structure(params)
    if trajectory is None:
        trajectory = [np.asarray(x)[:, None] for x in jax.tree.leaves(params)]
    else:
        params = jax.tree.unflatten(treedef, [jnp.asarray(x[:, -1]) for x in trajectory])
    step = epoch_fn(model, protocol, model_batch)
    for epoch in range(int(header["epochs_done"]), protocol.epochs):
        started = time.perf_counter()
        params = step(keys, params, epoch, images, labels)
        trajectory = [np.concatenate([t, np.asarray(x)[:, None]], axis=1) for t, x in zip(trajectory, jax.tree.leaves(params))]
        header = {**header, "epochs_done": epoch + 1, "seconds": header["seconds"] + time.perf_counter() - started}
        if path is not None:
            save_experts(path, jax.tree.unflatten(treedef, trajectory), header)
        if log is not None:
            log(f"experts: epoch {epoch + 1}/{protocol.epochs} of {num_experts} experts ({header['seconds']:.0f} s so far)")
    return Trajectories(jax.tree.unflatten(treedef, [jnp.asarray(t) for t in trajectory]), header)


def data_hash(images: Array, model: Optional[Model] = None) -> str:
    """A short hash of a strided sample of the real images (tells whitened from plain data apart)
    and, with ``model``, of its parameter shapes."""
    sample = np.asarray(images[:: max(1, images.shape[0] // 512)], np.float32)
    shapes = "" if model is None else str([x.shape for x in jax.tree.leaves(jax.eval_shape(model.init, jax.random.key(0)))])
    return hashlib.sha256(sample.tobytes() + str(images.shape).encode() + shapes.encode()).hexdigest()[:10]


def default_path(images: Array, model: Model, num_experts: int, epochs: int, dataset: str = "", arch: str = "") -> Path:
    """``runs/experts/<dataset>-<arch>-<N>x<E>-<hash of data and parameter shapes>.npz`` (relative to the working folder)."""
    return Path("runs") / "experts" / f"{dataset or 'data'}-{arch or 'model'}-{num_experts}x{epochs}-{data_hash(images, model)}.npz"


def ensure_experts(
    model: Model,
    images: Array,
    labels: Array,
    protocol: Protocol,
    num_experts: int,
    path: str | os.PathLike,
    *,
    seed: int = 0,
    description: Optional[dict] = None,
    log: Callable[[str], None] = print,
) -> Trajectories:
    """The expert file ``path``: loaded if finished (whatever protocol made it), else trained or finished first, saying so.

    The run key is ``jax.random.key(seed)``, independent of any distillation seed, so that one
    file serves every run (and both MTT and IDC) on the same data and model. An unfinished file
    must have been started with the same protocol, N, seed and description.
    """
    path = Path(path)
    done = 0
    if path.is_file():
        loaded = load_experts(path, model.init(jax.random.key(seed)))
        done = int(loaded.meta.get("epochs_done", 0))
        if done >= int(loaded.meta["protocol"]["epochs"]):
            return loaded
    log(f"expert trajectories {path} {'unfinished' if done else 'absent'}: training {num_experts} experts x "
        f"{protocol.epochs} epochs on the real data (saved after every epoch; rerun to resume)")
    description = {**(description or {}), "data_hash": data_hash(images)}
    return train_experts(jax.random.key(seed), model, images, labels, protocol, num_experts, path=path,
                         description=description, log=log)


def flatten_trajectories(trajectories: Trajectories) -> tuple[Array, Callable[[Array], Params]]:
    """The trajectories as one (N, E + 1, P) array of flat parameter vectors, and ``unravel(vector) -> params``."""
    first = jax.tree.map(lambda x: x[0, 0], trajectories.params)
    _, unravel = jax.flatten_util.ravel_pytree(first)
    leaves = jax.tree.leaves(trajectories.params)
    n, e = leaves[0].shape[:2]
    flat = jnp.concatenate([x.reshape(n, e, -1) for x in leaves], axis=-1)
    return flat, unravel


__all__ = [
    "EXPERT_PROTOCOL",
    "ExpertError",
    "Trajectories",
    "epoch_fn",
    "expert_protocol",
    "flatten_trajectories",
    "data_hash",
    "default_path",
    "ensure_experts",
    "load_experts",
    "save_experts",
    "train_experts",
]
