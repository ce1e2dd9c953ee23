"""One driver for every iterative method: jit the step once, loop, checkpoint, resume.

The run is a pure function of the method and the key: step ``i`` gets the key
``fold_in(loop_key, i)``, so a run that is killed and resumed from its last checkpoint replays
exactly the steps it lost and ends with the same set, bit for bit, as an uninterrupted run
(on the same machine and software).

With a device mesh (:mod:`jaxdd.sharding`) the same step runs as one SPMD program over all
devices: the real data is split on the ``data`` axis, the method state is replicated (leaves that
the method's ``init`` placed on the ``model`` axis, such as FRePo's model pool, stay there), and
the method's own :func:`jaxdd.sharding.constrain` calls split its real batches on ``data`` and
its stacked initialisations on ``model``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdd.methods import IterativeMethod
from jaxdd.sharding import replicate, shard_data
from jaxdd.types import PRNGKey

CHECKPOINT_FILE = "checkpoint.npz"


class NonFiniteError(RuntimeError):
    """The loss or the synthetic set became NaN/inf; the last good checkpoint is kept."""


def config_fingerprint(config: dict) -> str:
    """A short hash of a method config, stored in checkpoints so a resume cannot mix runs."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_checkpoint(path: Path, state: Any, step: int, fingerprint: str) -> None:
    """Writes ``state`` (any pytree of arrays, typed keys included) and ``step`` atomically."""
    leaves = jax.tree.leaves(state)
    arrays = {"__step__": np.asarray(step), "__fingerprint__": np.asarray(fingerprint)}
    for index, leaf in enumerate(leaves):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            arrays[f"key_{index}"] = np.asarray(jax.random.key_data(leaf))
        else:
            arrays[f"leaf_{index}"] = np.asarray(leaf)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=".ckpt-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, template: Any, fingerprint: str) -> tuple[Any, int]:
    """Restores a state with the structure of ``template``; refuses another run's checkpoint."""
    with np.load(path, allow_pickle=False) as stored:
        if str(stored["__fingerprint__"]) != fingerprint:
            raise ValueError(f"{path} belongs to a run with another configuration; use a new --out or drop --resume")
        leaves, treedef = jax.tree.flatten(template)
        restored = []
        for index, leaf in enumerate(leaves):
            if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                restored.append(jax.random.wrap_key_data(stored[f"key_{index}"], impl=jax.random.key_impl(leaf)))
            else:
                restored.append(jnp.asarray(stored[f"leaf_{index}"], dtype=leaf.dtype))
        return jax.tree.unflatten(treedef, restored), int(stored["__step__"])


def run(
    method: IterativeMethod,
    key: PRNGKey,
    *,
    checkpoint_dir: Optional[str | os.PathLike] = None,
    checkpoint_every: int = 100,
    resume: bool = False,
    progress: bool = True,
    stop_at: Optional[int] = None,
    on_step: Optional[Callable[[int, dict], None]] = None,
    mesh: Optional[Mesh] = None,
) -> Any:
    """Runs ``method.num_steps`` outer steps of an iterative method.

    Args:
        method: pure ``init``/``step``/``to_synset`` and the real data.
        key: typed key; ``split(key)`` gives the init key and the loop key.
        checkpoint_dir: where ``checkpoint.npz`` goes (None: no checkpoints).
        checkpoint_every: steps between checkpoints (the final state is always saved).
        resume: continue from ``checkpoint_dir`` if a checkpoint is there.
        progress: show a progress bar with the loss, rate and ETA.
        stop_at: stop (with a checkpoint) after this many steps, as if the run were killed there.
        on_step: optional ``on_step(step, metrics)`` callback with host floats.
        mesh: optional ``("data", "model")`` device mesh (:func:`jaxdd.sharding.make_mesh`).
            Every leaf of ``method.real_data`` is split on ``data`` along its leading axis when
            the ``data`` size divides it (otherwise copied to every device); the state is
            replicated except leaves ``init`` put on the mesh; ``init`` and ``step`` run under
            ``jax.set_mesh(mesh)`` so that their :func:`~jaxdd.sharding.constrain` calls apply.
            The resulting set equals the one without a mesh up to float rounding.

    Returns:
        The final method state.

    Raises:
        NonFiniteError: the loss or the set turned NaN/inf (the last checkpoint is kept).
    """
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        return _run(method, key, checkpoint_dir, checkpoint_every, resume, progress, stop_at, on_step, mesh)


def _state_shardings(mesh: Mesh, state: Any) -> Any:
    """Where each state leaf lives: its own placement if already on ``mesh``, else replicated."""

    def placement(leaf):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh == mesh:
            return sharding
        return NamedSharding(mesh, P())

    return jax.tree.map(placement, state)


def _run(method, key, checkpoint_dir, checkpoint_every, resume, progress, stop_at, on_step, mesh):
    init_key, loop_key = jax.random.split(key)
    fingerprint = config_fingerprint(method.config)
    path = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
    state = method.init(init_key)
    placement = None if mesh is None else _state_shardings(mesh, state)
    real = method.real_data
    start = 0
    if resume and path is not None and path.exists():
        state, start = load_checkpoint(path, state, fingerprint)
    if mesh is None:
        step_fn = jax.jit(method.step, donate_argnums=0)
    else:
        state = jax.device_put(state, placement)
        real = shard_data(mesh, real, uneven="replicate")
        loop_key = replicate(mesh, loop_key)
        step_fn = jax.jit(method.step, donate_argnums=0, out_shardings=(placement, NamedSharding(mesh, P())))
    images_finite = jax.jit(lambda s: jnp.all(jnp.isfinite(method.to_synset(s).images)))
    end = method.num_steps if stop_at is None else min(stop_at, method.num_steps)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=method.num_steps, initial=start, desc=method.config.get("method", "distill"), unit="step", dynamic_ncols=True)
    try:
        for step in range(start, end):
            state, metrics = step_fn(state, real, jax.random.fold_in(loop_key, step))
            host = {name: float(value) for name, value in metrics.items()}
            if not math.isfinite(host["loss"]) or not bool(images_finite(state)):
                kept = f"the last good checkpoint is {path}" if path is not None and path.exists() else "no checkpoint was written"
                raise NonFiniteError(f"step {step}: loss or synthetic set became NaN/inf; stopped ({kept})")
            if on_step is not None:
                on_step(step, host)
            if bar is not None:
                bar.set_postfix({k: f"{v:.4g}" for k, v in host.items()}, refresh=False)
                bar.update(1)
            done = step + 1
            if path is not None and (done % checkpoint_every == 0 or done == end):
                save_checkpoint(path, state, done, fingerprint)
    finally:
        if bar is not None:
            bar.close()
    return state
