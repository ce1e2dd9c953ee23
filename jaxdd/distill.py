"""One driver for every iterative method: jit the step once, loop, checkpoint, resume.

The run is a pure function of the method and the key: step ``i`` gets the key
``fold_in(loop_key, i)``, so a run that is killed and resumed from its last checkpoint replays
exactly the steps it lost and ends with the same set, bit for bit, as an uninterrupted run
(on the same machine and software).

A checkpoint records the run's *identity*: the method's config, the number of steps, the key, the
checkpoint format, and whatever the caller adds (dataset and a fingerprint of the loaded data,
architecture and its options, initialisation, seed, ZCA, mesh shape...). Resuming with any other
identity is refused with one line naming the fields that differ, so a resumed run can never
produce a set that describes another run.

The step is jitted together with a finiteness check of the loss and of the new state; the host
reads the metrics only every ``sync_every`` steps (and before every checkpoint), so the device
runs ahead without a round trip per step. A NaN/inf found in any of those steps stops the run;
checkpoints are written only once every step before them has been read back finite.

With a device mesh (:mod:`jaxdd.sharding`) the same step runs as one SPMD program over all
devices: the real data is split on the ``data`` axis, the method state is replicated (leaves that
the method's ``init`` placed on the ``model`` axis, such as FRePo's model pool, stay there), and
the method's own :func:`jaxdd.sharding.constrain` calls split its real batches on ``data`` and
its stacked initialisations on ``model``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdd import io
from jaxdd.methods import IterativeMethod
from jaxdd.sharding import replicate, shard_data
from jaxdd.types import PRNGKey

CHECKPOINT_FILE = "checkpoint.npz"
CHECKPOINT_FORMAT = 2
"""Version of the checkpoint layout: ``__format__``, ``__step__``, ``__identity__`` (JSON),
``leaf_<i>`` / ``key_<i>`` (the state's leaves, typed keys as key data) and ``__sha256__`` (a hash
of all the others)."""
_FINITE = "__finite__"
REFRESH_SECONDS = 0.5
"""Between two syncs the host also reads, without waiting, the metrics already computed, at most this often."""


class NonFiniteError(RuntimeError):
    """The loss or the method state became NaN/inf; the last good checkpoint is kept."""


class CheckpointError(io.FileCheckError):
    """A checkpoint is corrupt, of another jaxdd version, or of another run."""


def run_identity(method: IterativeMethod, key: PRNGKey, identity: Optional[dict] = None) -> dict:
    """Everything that determines a run's result, as canonical JSON.

    The driver's part (checkpoint format, method config, number of steps, key) plus the caller's
    ``identity`` (dataset, data fingerprint, architecture, seed, ...).
    """
    own = {
        "checkpoint_format": CHECKPOINT_FORMAT,
        "method_config": method.config,
        "num_steps": int(method.num_steps),
        "key": np.asarray(jax.random.key_data(key)).tolist(),
        "key_impl": str(jax.random.key_impl(key)),
    }
    return io.canonical({**own, **(identity or {})})


def save_checkpoint(path: Path, state: Any, step: int, identity: dict) -> None:
    """Writes ``state`` (any pytree of arrays, typed keys included), ``step`` and ``identity`` atomically."""
    arrays = {
        "__format__": np.asarray(CHECKPOINT_FORMAT),
        "__step__": np.asarray(step),
        "__identity__": np.asarray(json.dumps(identity, sort_keys=True)),
    }
    for index, leaf in enumerate(jax.tree.leaves(state)):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            arrays[f"key_{index}"] = np.asarray(jax.random.key_data(leaf))
        else:
            arrays[f"leaf_{index}"] = np.asarray(leaf)
    arrays["__sha256__"] = np.asarray(io.content_hash(arrays))
    io.write_file_atomically(path, lambda file: np.savez(file, **arrays))


def load_checkpoint(path: Path, template: Any, identity: dict, num_steps: Optional[int] = None) -> tuple[Any, int]:
    """Restores a state with the structure of ``template``.

    Refuses (:class:`CheckpointError`, one line) a truncated or corrupt file, one of another
    checkpoint format, one whose identity differs from ``identity`` (naming the differing
    fields), and leaves whose number, shape or dtype differ from ``template``'s.
    """
    arrays = io.read_npz(path, CheckpointError)
    fmt = arrays.pop("__format__", None)
    if fmt is None or fmt.shape != () or not np.issubdtype(fmt.dtype, np.integer) or int(fmt) != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this jaxdd version (no run identity); start over with --overwrite")
    digest = arrays.pop("__sha256__", None)
    if digest is None or str(digest) != io.content_hash({"__format__": fmt, **arrays}):
        raise CheckpointError(f"{path} is corrupt (its content does not match its hash)")
    try:
        stored = json.loads(str(arrays["__identity__"]))
        step = int(arrays["__step__"])
    except (KeyError, ValueError, TypeError, RecursionError) as problem:
        raise CheckpointError(f"{path} is corrupt ({type(problem).__name__} in its header)") from None
    differences = io.identity_diff(stored, identity)
    if differences:
        raise CheckpointError(
            f"{path} belongs to another run ({'; '.join(differences)}); use a new --out, or --overwrite to start over"
        )
    if step < 0 or (num_steps is not None and step > num_steps):
        raise CheckpointError(f"{path} is corrupt (step {step} outside [0, {num_steps}])")
    leaves, treedef = jax.tree.flatten(template)
    stored_leaves = [name for name in arrays if name.startswith(("leaf_", "key_"))]
    if len(stored_leaves) != len(leaves):
        raise CheckpointError(f"{path} holds {len(stored_leaves)} state arrays, this run has {len(leaves)}")
    restored = []
    for index, leaf in enumerate(leaves):
        is_key = jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)
        name = f"{'key' if is_key else 'leaf'}_{index}"
        expected = jax.random.key_data(leaf) if is_key else leaf
        value = arrays.get(name)
        if value is None or value.shape != expected.shape or value.dtype != expected.dtype:
            found = "missing" if value is None else f"{value.dtype} {value.shape}"
            raise CheckpointError(f"{path}: state array {name} is {found}, this run needs {expected.dtype} {expected.shape}")
        restored.append(jax.random.wrap_key_data(value, impl=jax.random.key_impl(leaf)) if is_key else jnp.asarray(value))
    return jax.tree.unflatten(treedef, restored), step


def run(
    method: IterativeMethod,
    key: PRNGKey,
    *,
    checkpoint_dir: Optional[str | os.PathLike] = None,
    checkpoint_every: int = 100,
    resume: bool = False,
    identity: Optional[dict] = None,
    progress: bool = True,
    stop_at: Optional[int] = None,
    on_step: Optional[Callable[[int, dict], None]] = None,
    sync_every: int = 10,
    mesh: Optional[Mesh] = None,
) -> Any:
    """Runs ``method.num_steps`` outer steps of an iterative method.

    Args:
        method: pure ``init``/``step``/``to_synset`` and the real data.
        key: typed key; ``split(key)`` gives the init key and the loop key.
        checkpoint_dir: where ``checkpoint.npz`` goes (None: no checkpoints).
        checkpoint_every: steps between checkpoints (the final state is always saved).
        resume: continue from ``checkpoint_dir`` if a checkpoint is there.
        identity: JSON-serialisable description of what else determines the result (dataset and
            a fingerprint of its arrays, architecture and options, initialisation, seed, ZCA,
            mesh shape ...). Stored in checkpoints with the method's config, the step count and
            ``key`` (:func:`run_identity`); a resume refuses a checkpoint whose identity differs.
        progress: show a progress bar with the loss, rate and ETA.
        stop_at: stop (with a checkpoint) after this many steps, as if the run were killed there.
        on_step: optional ``on_step(step, metrics)`` callback with host floats, called for every
            step in order, in batches when the host reads the metrics.
        sync_every: the host waits for the metrics at least every this many steps (and before
            every checkpoint and at the end); in between it reads only those already computed.
        mesh: optional ``("data", "model")`` device mesh (:func:`jaxdd.sharding.make_mesh`).
            Every leaf of ``method.real_data`` is split on ``data`` along its leading axis when
            the ``data`` size divides it (otherwise copied to every device); the state is
            replicated except leaves ``init`` put on the mesh; ``init`` and ``step`` run under
            ``jax.set_mesh(mesh)`` so that their :func:`~jaxdd.sharding.constrain` calls apply.
            The resulting set equals the one without a mesh up to float rounding.

    Returns:
        The final method state.

    Raises:
        NonFiniteError: the loss or the state turned NaN/inf (the last checkpoint is kept; it
            holds no step that was not read back finite).
        CheckpointError: ``resume`` found a corrupt checkpoint or one of another run.
    """
    if sync_every < 1 or checkpoint_every < 1:
        raise ValueError(f"sync_every and checkpoint_every must be at least 1 (got {sync_every}, {checkpoint_every})")
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        return _run(method, key, checkpoint_dir, checkpoint_every, resume, identity, progress, stop_at, on_step, sync_every, mesh)


def _state_shardings(mesh: Mesh, state: Any) -> Any:
    """Where each state leaf lives: its own placement if already on ``mesh``, else replicated."""

    def placement(leaf):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh == mesh:
            return sharding
        return NamedSharding(mesh, P())

    return jax.tree.map(placement, state)


def _checked_step(step: Callable, state: Any, real: Any, key: PRNGKey) -> tuple[Any, dict]:
    """``step`` plus one more metric: whether the loss and every float leaf of the new state are finite."""
    state, metrics = step(state, real, key)
    finite = jnp.all(jnp.isfinite(metrics["loss"]))
    for leaf in jax.tree.leaves(state):
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            finite = finite & jnp.all(jnp.isfinite(leaf))
    return state, {**metrics, _FINITE: finite}


_CHECKED_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _checked(step: Callable) -> Callable:
    """:func:`_checked_step` of ``step`` as a function of (state, real, key), one per step function.

    Reusing it lets JAX reuse its compiled program when a method is run again; it holds ``step``
    only weakly, so both are freed with the method.
    """
    try:
        return _CHECKED_STEPS[step]
    except KeyError:
        pass
    except TypeError:  # not weakly referable: no reuse across runs
        return functools.partial(_checked_step, step)
    ref = weakref.ref(step)
    checked = jax.jit(lambda state, real, key: _checked_step(ref(), state, real, key), donate_argnums=0)
    _CHECKED_STEPS[step] = checked
    return checked


def _run(method, key, checkpoint_dir, checkpoint_every, resume, identity, progress, stop_at, on_step, sync_every, mesh):
    init_key, loop_key = jax.random.split(key)
    full_identity = run_identity(method, key, identity)
    path = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
    # The step donates its input state; init may return arrays the method still holds (a
    # pre-trained generator's parameters), so the loop starts from a copy.
    initial = method.init(init_key)
    placement = None if mesh is None else _state_shardings(mesh, initial)
    state = jax.tree.map(jnp.copy, initial)
    real = method.real_data
    start = 0
    if resume and path is not None and path.exists():
        state, start = load_checkpoint(path, state, full_identity, method.num_steps)
    step_fn = _checked(method.step)
    if mesh is not None:
        state = jax.device_put(state, placement)
        real = shard_data(mesh, real, uneven="replicate")
        loop_key = replicate(mesh, loop_key)
        step_fn = jax.jit(step_fn, donate_argnums=0, out_shardings=(placement, NamedSharding(mesh, P())))
    end = method.num_steps if stop_at is None else min(stop_at, method.num_steps)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=method.num_steps, initial=start, desc=method.config.get("method", "distill"), unit="step", dynamic_ncols=True)
    pending: list[tuple[int, dict]] = []
    saved = {"step": start or None}

    def drain(wait: bool) -> None:
        """Reads the pending metrics (all, or without waiting the computed ones) and checks them."""
        count = len(pending) if wait else sum(1 for _ in itertools.takewhile(lambda p: p[1][_FINITE].is_ready(), pending))
        if not count:
            return
        batch, pending[:count] = pending[:count], []
        for step, host in zip((s for s, _ in batch), jax.device_get([m for _, m in batch])):
            if not bool(host.pop(_FINITE)):
                kept = f"the last good checkpoint is {path} (step {saved['step']})" if saved["step"] is not None else "no checkpoint was written"
                raise NonFiniteError(f"step {step}: the loss or the method state became NaN/inf; stopped ({kept})")
            host = {name: float(value) for name, value in host.items()}
            if on_step is not None:
                on_step(step, host)
            if bar is not None:
                bar.set_postfix({k: f"{v:.4g}" for k, v in host.items()}, refresh=False)
        if bar is not None:
            bar.update(count)

    try:
        last_read = time.monotonic()
        for step in range(start, end):
            state, metrics = step_fn(state, real, jax.random.fold_in(loop_key, step))
            pending.append((step, metrics))
            done = step + 1
            checkpoint_due = path is not None and (done % checkpoint_every == 0 or done == end)
            if checkpoint_due or done == end or len(pending) >= sync_every:
                drain(wait=True)
                last_read = time.monotonic()
            elif time.monotonic() - last_read >= REFRESH_SECONDS:
                drain(wait=False)
                last_read = time.monotonic()
            if checkpoint_due:
                save_checkpoint(path, state, done, full_identity)
                saved["step"] = done
    finally:
        if bar is not None:
            bar.close()
    return state
