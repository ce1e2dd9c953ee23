"""FLOPs of a jitted function, and the device's measured matmul peak.

XLA's cost analysis (``jax.jit(f).lower(...).compile().cost_analysis()``) counts the body of a
``while`` loop once, whatever its trip count (checked: a ``lax.scan`` of 10 matmuls reports the
FLOPs of one), and every jaxdd step is built from ``lax.scan``. So beside XLA's number we count
the matrix-multiply and convolution FLOPs of the jaxpr, multiplying each ``scan`` body by its
length. Elementwise work, reductions and linear solves are not counted; on CPU jaxdd's
convolutions are im2col matmuls and show up as ``dot_general``.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.extend import core


def xla_flops(compiled) -> float | None:
    """``flops`` from a compiled executable's cost analysis (None where the backend gives none)."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    value = (analysis or {}).get("flops")
    return float(value) if value is not None else None


def _dot_flops(eqn) -> float:
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
    rhs_free = [d for i, d in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch]
    return 2.0 * math.prod(lhs) * math.prod(rhs_free)


def _conv_flops(eqn) -> float:
    rhs = eqn.invars[1].aval.shape
    out = eqn.outvars[0].aval.shape
    rhs_spec = eqn.params["dimension_numbers"].rhs_spec
    per_output = rhs[rhs_spec[1]] * math.prod(rhs[d] for d in rhs_spec[2:])
    return 2.0 * math.prod(out) * per_output


def _sub_jaxprs(value) -> list:
    """The jaxprs held by an equation parameter (a jaxpr, a closed jaxpr, or a tuple of them)."""
    if isinstance(value, core.ClosedJaxpr):
        return [value.jaxpr]
    if isinstance(value, core.Jaxpr):
        return [value]
    if isinstance(value, (tuple, list)):
        return [j for v in value for j in _sub_jaxprs(v)]
    return []


def jaxpr_flops(jaxpr) -> float:
    """Matmul + convolution FLOPs of a jaxpr; ``scan`` bodies times their length, ``cond`` its costliest branch."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "cond":
            total += max(jaxpr_flops(j) for j in _sub_jaxprs(eqn.params["branches"]))
        else:
            inner = sum(jaxpr_flops(j) for value in eqn.params.values() for j in _sub_jaxprs(value))
            total += inner * (eqn.params["length"] if name == "scan" else 1)
    return total


def traced_flops(fn: Callable, *args: Any) -> float:
    """:func:`jaxpr_flops` of ``fn(*args)`` (traced, not compiled)."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def matmul_peak(size: int, repeats: int = 5) -> dict:
    """Measured float32 matmul throughput on the default device: the 'peak' of achieved fractions.

    Default precision, as the benchmarked steps use (on NVIDIA GPUs that allows TF32).

    Args:
        size: n of the (n, n) @ (n, n) product (2 n^3 FLOPs).
        repeats: timed products after one warm-up; the median counts.
    """
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        matmul(a).block_until_ready()
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    return {"size": size, "dtype": "float32", "seconds": seconds, "flops_per_s": 2.0 * size**3 / seconds}


__all__ = ["jaxpr_flops", "matmul_peak", "traced_flops", "xla_flops"]
