"""Scale-out through JAX's SPMD engine: one 2-D device mesh with axes ``data`` and ``model``.

Real batches are split on ``data``, stacked models and initialisations on ``model``. The same
program runs on one device, on 8 GPUs, or on several hosts (``jax.distributed.initialize``);
there is no ``pmap`` and no branch on the device count. The helpers here are small and pure:

- :func:`make_mesh` / :func:`parse_mesh` build the mesh (``--mesh data=4,model=2``);
- :func:`shard_data`, :func:`replicate` place host or device arrays on it
  (``jax.device_put`` with a ``NamedSharding``);
- :func:`constrain` pins the layout of an intermediate inside a jitted step
  (``jax.lax.with_sharding_constraint``). Without a mesh it returns its input unchanged, so a
  method that calls it runs the very same program as before on one device;
- :func:`map_chunks` bounds the memory of a row-wise computation on one device (one ``lax.map``
  over fixed-size chunks); :func:`map_rows` is ``vmap`` or that chunked map, by a chunk size that
  :func:`chunk_for` derives from a memory budget (:func:`memory_budget`) and an estimate of the
  bytes of one row (:func:`traced_bytes`).

See ``docs/scaling.md``.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"
"""Mesh axis of real batches (and of test images in evaluation)."""

MODEL = "model"
"""Mesh axis of stacked models, initialisations and online model pools."""

AXES = (DATA, MODEL)


def make_mesh(data: Optional[int] = None, model: Optional[int] = None, devices: Optional[Sequence] = None) -> Mesh:
    """A 2-D mesh with axes ``("data", "model")`` over ``devices`` (default: ``jax.devices()``).

    With neither size given every device is on ``data``; with one given the other is the
    quotient. Both axes are ``AxisType.Auto``: the compiler propagates the layouts that inputs
    and :func:`constrain` fix. Under ``jax.distributed`` ``jax.devices()`` lists the devices of
    every process, so the mesh spans all hosts.

    Args:
        data: devices on the ``data`` axis.
        model: devices on the ``model`` axis.
        devices: the devices to use, all of them (default: every device of every process).

    Returns:
        A ``jax.sharding.Mesh`` of shape ``(data, model)``.

    Raises:
        ValueError: a size is below 1, or ``data * model`` is not the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    count = len(devices)
    for name, size in ((DATA, data), (MODEL, model)):
        if size is not None and size < 1:
            raise ValueError(f"mesh axis {name} must have at least 1 device (got {size})")
    if data is None and model is None:
        data, model = count, 1
    elif data is None:
        data = count // model if count % model == 0 else 0
    elif model is None:
        model = count // data if count % data == 0 else 0
    if data * model != count or data == 0 or model == 0:
        shown = f"data={data or '?'} x model={model or '?'}"
        raise ValueError(f"mesh {shown} does not use the {count} available devices (the product of the sizes must be {count})")
    return jax.make_mesh((data, model), AXES, axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def parse_mesh(spec: str, devices: Optional[Sequence] = None) -> Mesh:
    """The mesh of a command-line spec such as ``"data=4,model=2"``, ``"model=2"`` or ``"data=8"``.

    Raises:
        ValueError: unknown axis, repeated axis, a size that is not a positive integer, or sizes
            whose product is not the device count (one line each).
    """
    sizes: dict[str, int] = {}
    for part in (p.strip() for p in spec.split(",")):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in AXES or name in sizes:
            raise ValueError(f"bad mesh spec {spec!r}: expected data=N,model=M (each axis at most once)")
        try:
            sizes[name] = int(value)
        except ValueError:
            raise ValueError(f"bad mesh spec {spec!r}: {name} needs an integer size, got {value.strip()!r}") from None
    return make_mesh(sizes.get(DATA), sizes.get(MODEL), devices)


def _spec(spec: Any) -> P:
    """A ``PartitionSpec`` from a spec, an axis name (leading axis) or a tuple of names."""
    if isinstance(spec, P):
        return spec
    if spec is None or isinstance(spec, str):
        return P(spec)
    return P(*spec)


def _put(mesh: Mesh, tree: Any, spec: Any, uneven: str) -> Any:
    if uneven not in ("error", "replicate"):
        raise ValueError(f"uneven must be 'error' or 'replicate', got {uneven!r}")
    spec = _spec(spec)

    def put(leaf):
        fits = _fits(mesh.shape, leaf.shape, spec)
        if uneven == "error" and fits != tuple(spec):
            dim = next(i for i, entry in enumerate(spec) if entry is not None and (i >= len(fits) or fits[i] is None))
            raise ValueError(
                f"cannot split axis {dim} of an array of shape {tuple(leaf.shape)} over mesh axis {spec[dim]!r} "
                f"(mesh {dict(mesh.shape)}): the axis must exist and its size must divide the dimension"
            )
        return _device_put(leaf, NamedSharding(mesh, P(*fits)))

    return jax.tree.map(put, tree)


def shard_data(mesh: Mesh, tree: Any, *, axis: int = 0, uneven: str = "error") -> Any:
    """Places every leaf of ``tree`` on ``mesh``, split along ``axis`` over the ``data`` axis.

    Args:
        mesh: from :func:`make_mesh`.
        tree: pytree of arrays (host or device); each leaf needs at least ``axis + 1`` dims.
        axis: the array axis to split (the sample axis; 1 for class-grouped ``(C, n, ...)``).
        uneven: ``'error'``: a leaf whose ``axis`` the ``data`` size does not divide raises
            ``ValueError``; ``'replicate'``: such a leaf is copied to every device instead.

    Returns:
        The same pytree of ``jax.Array`` with ``NamedSharding(mesh, P(None, ..., 'data'))``.
    """
    return _put(mesh, tree, P(*([None] * axis), DATA), uneven)


def replicate(mesh: Mesh, tree: Any) -> Any:
    """Places a full copy of every leaf of ``tree`` on every device of ``mesh``."""
    return jax.tree.map(lambda leaf: _device_put(leaf, NamedSharding(mesh, P())), tree)


def constrain(tree: Any, spec: Any, mesh: Optional[Mesh] = None) -> Any:
    """``with_sharding_constraint`` on every leaf of ``tree``; the identity without a mesh.

    The mesh is ``mesh`` or, when it is None, the one set by ``jax.set_mesh`` around the call
    (:func:`jaxdd.distill.run` sets it), so method code names axes without receiving a mesh.
    With neither, ``tree`` is returned unchanged (the traced program is the unsharded one).
    Entries of ``spec`` that name an axis the mesh lacks, or whose mesh axis size does not
    divide the array dimension, are dropped (that dimension stays unsplit), so the constraint
    is always valid: e.g. one initialisation on a ``model`` axis of 4 is replicated.

    Args:
        tree: pytree of arrays (inside or outside ``jax.jit``).
        spec: a ``PartitionSpec``, an axis name for the leading axis (``"model"``) or a tuple
            of names per leading dims (``(None, "data")``).
        mesh: a concrete mesh; default the ambient one.
    """
    ambient = jax.sharding.get_abstract_mesh()
    if mesh is None and ambient.empty:
        return tree
    shape = (mesh or ambient).shape
    spec = _spec(spec)

    def pin(leaf):
        fits = P(*_fits(shape, leaf.shape, spec))
        return jax.lax.with_sharding_constraint(leaf, fits if mesh is None else NamedSharding(mesh, fits))

    return jax.tree.map(pin, tree)


def map_chunks(fn: Callable[[Any], Any], xs: Any, chunk: int) -> Any:
    """``fn`` over the rows of ``xs`` in chunks of ``chunk`` rows: one ``lax.map``, one chunk in memory.

    ``xs`` is a pytree of arrays with a common leading axis of N rows; it is zero-padded to a
    multiple of ``chunk`` (at most N), ``fn`` maps a (chunk, ...) pytree to a pytree of
    (chunk, ...) arrays, and the result is trimmed back to N rows. Equal to ``fn(xs)`` whenever
    ``fn`` treats rows independently.
    """
    count = jax.tree.leaves(xs)[0].shape[0]
    chunk = max(1, min(chunk, count))
    chunks = -(-count // chunk)

    def split(x):
        padded = jnp.concatenate([x, jnp.zeros((chunks * chunk - count,) + x.shape[1:], x.dtype)])
        return padded.reshape((chunks, chunk) + x.shape[1:])

    out = jax.lax.map(fn, jax.tree.map(split, xs))
    return jax.tree.map(lambda y: y.reshape((chunks * chunk,) + y.shape[2:])[:count], out)


MEMORY_BUDGET_ENV = "JAXDD_MEMORY_BUDGET"
"""Environment variable: bytes one chunked computation may use (``4G``, ``512M``, ``2000000000``)."""

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text: str) -> int:
    """``'4G'`` -> 4 * 2**30; ``'512M'``, ``'100K'``, plain integers (bytes); optional trailing ``B``/``iB``.

    Raises:
        ValueError: not a positive size (one line).
    """
    cleaned = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = cleaned[-1:] if cleaned[-1:] in _UNITS and cleaned[-1:] else ""
    try:
        value = float(cleaned[: len(cleaned) - len(unit)])
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(f"bad memory size {text!r}: expected a positive number of bytes such as 4G, 512M or 1000000")
    return int(value * _UNITS[unit])


def memory_budget(device: Any = None) -> int:
    """Bytes that one chunked computation (:func:`map_rows`) may use on ``device`` (default: the first).

    ``$JAXDD_MEMORY_BUDGET`` when set; otherwise a quarter of the memory XLA may allocate on an
    accelerator (``memory_stats()['bytes_limit']``) and an eighth of the physical memory on a CPU
    (which shares it with the host program, the data and the other processes).
    """
    text = os.environ.get(MEMORY_BUDGET_ENV)
    if text:
        return parse_bytes(text)
    device = device or jax.devices()[0]
    limit = (device.memory_stats() or {}).get("bytes_limit") if device.platform != "cpu" else None
    if limit:
        return int(limit) // 4
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 8


def traced_bytes(fn: Callable[..., Any], *args: Any) -> int:
    """Sum of the sizes of every intermediate array in the jaxpr of ``fn(*args)`` (nothing runs).

    An upper bound on the memory XLA needs for the call when it keeps every intermediate alive
    (as reverse-mode differentiation keeps residuals); fusion and buffer reuse make the true peak
    smaller. Sub-jaxprs (``jit``, ``custom_vjp``, loop bodies) count once, as the loop's
    carried values do.
    """
    return _jaxpr_bytes(jax.make_jaxpr(fn)(*args).jaxpr)


def _jaxpr_bytes(jaxpr: Any) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        subs = [getattr(p, "jaxpr", p) for p in eqn.params.values() if hasattr(getattr(p, "jaxpr", p), "eqns")]
        if subs:
            total += sum(_jaxpr_bytes(sub) for sub in subs)
            continue
        for var in eqn.outvars:
            shape = getattr(var.aval, "shape", ())
            total += math.prod(shape) * getattr(var.aval.dtype, "itemsize", 8)
    return total


def chunk_for(row_bytes: int, rows: int, chunk: Optional[int] = None, budget: Optional[int] = None) -> int:
    """Rows per chunk: ``chunk`` when given, else as many rows as ``budget`` (default
    :func:`memory_budget`) holds at ``row_bytes`` each; between 1 and ``rows``.

    Raises:
        ValueError: ``chunk`` is below 1.
    """
    if chunk is not None:
        if chunk < 1:
            raise ValueError(f"chunk size must be at least 1 (got {chunk})")
        return min(chunk, rows)
    budget = memory_budget() if budget is None else budget
    return max(1, min(rows, budget // max(row_bytes, 1)))


def map_rows(fn: Callable[..., Any], xs: tuple, chunk: int, remat: bool = False) -> Any:
    """``jax.vmap(fn)(*xs)`` when ``chunk`` covers every row, else ``chunk`` rows at a time.

    The chunked form is one ``lax.map(..., batch_size=chunk)`` (the remainder as one smaller
    ``vmap``), so only one chunk's intermediates are live; with ``remat`` the chunk body is a
    ``jax.checkpoint``, so reverse-mode differentiation keeps each chunk's inputs rather than its
    intermediates and recomputes them chunk by chunk. Rows are computed independently either way,
    so both forms give the same values (to float rounding: XLA may fuse the two programs
    differently).

    Args:
        fn: maps one row of each of ``xs`` to a pytree.
        xs: a tuple of pytrees with a common leading axis (typed keys allowed).
        chunk: rows per chunk (:func:`chunk_for`).
        remat: checkpoint the chunk body (for a map inside a differentiated function).
    """
    rows = jax.tree.leaves(xs)[0].shape[0]
    if chunk >= rows:
        return jax.vmap(fn)(*xs)
    body = jax.checkpoint(lambda row: fn(*row)) if remat else (lambda row: fn(*row))
    return jax.lax.map(body, xs, batch_size=chunk)


def _device_put(leaf: Any, sharding: NamedSharding) -> jax.Array:
    """``jax.device_put``; typed keys travel as their key data (a key array cannot be put on
    another process's devices directly)."""
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(jax.device_put(jax.random.key_data(leaf), sharding), impl=jax.random.key_impl(leaf))
    return jax.device_put(leaf, sharding)


def _size(shape: dict, entry: Any) -> int:
    names = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(shape.get(name, 0) for name in names)


def _fits(shape: dict, dims: tuple, spec: P) -> tuple:
    """``spec`` with the entries a mesh of axis sizes ``shape`` cannot apply to ``dims`` set to None."""
    out = []
    for index, entry in enumerate(tuple(spec)[: len(dims)]):
        size = _size(shape, entry) if entry is not None else 0
        out.append(entry if size and dims[index] % size == 0 else None)
    return tuple(out)


__all__ = [
    "AXES", "DATA", "MEMORY_BUDGET_ENV", "MODEL", "chunk_for", "constrain", "make_mesh", "map_chunks", "map_rows",
    "memory_budget", "parse_bytes", "parse_mesh", "replicate", "shard_data", "traced_bytes",
]
