"""Small shared types: keys, parameters, the Model pair and the SynSet pytree."""

from __future__ import annotations

import contextvars
import functools
from typing import Any, Callable, NamedTuple, Optional

import jax

PRNGKey = jax.Array
"""A typed key from ``jax.random.key``."""

Params = Any
"""A pytree of parameters."""

Array = jax.Array

CONV_IMPLS = ("xla", "patches")
"""The two convolutions of :mod:`jaxdd.models`: XLA's own, and shifted slices plus one matmul."""

CALL_SITE_CONV: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("jaxdd_call_site_conv", default=None)
"""The convolution asked for by the :meth:`Model.with_conv` functions being traced now (None: the
backend's default). :func:`jaxdd.models.conv_impl` reads it while it traces a convolution."""


class Model(NamedTuple):
    """A network as two (three) pure functions; the core never touches a Flax object.

    Attributes:
        init: ``init(key) -> params``.
        apply: ``apply(params, x) -> logits`` with ``x`` of shape (N, H, W, C).
        embed: optional ``embed(params, x) -> features`` (N, F), the activations right
            before the final linear classifier (used by DM, kernel ridge and coresets).
    """

    init: Callable[[PRNGKey], Params]
    apply: Callable[[Params, Array], Array]
    embed: Optional[Callable[[Params, Array], Array]] = None

    def with_conv(self, impl: Optional[str]) -> "Model":
        """This model with ``apply`` and ``embed`` tracing their convolutions as ``impl``.

        The per-call-site choice of convolution: a method whose step measures faster with
        another convolution than the backend's default (``benchmarks/conv_sites.py``) wraps its
        model once. The choice acts while the functions are traced, so a jitted step built on
        the wrapped model compiles with it; ``$JAXDD_CONV`` still overrides every call site.

        Args:
            impl: one of :data:`CONV_IMPLS`, or None for this model unchanged.
        """
        if impl is None:
            return self
        if impl not in CONV_IMPLS:
            raise ValueError(f"convolution must be one of {CONV_IMPLS} (got {impl!r})")

        def scoped(fn: Optional[Callable]) -> Optional[Callable]:
            if fn is None:
                return None

            @functools.wraps(fn)
            def traced_with_impl(*args, **kwargs):
                token = CALL_SITE_CONV.set(impl)
                try:
                    return fn(*args, **kwargs)
                finally:
                    CALL_SITE_CONV.reset(token)

            return traced_with_impl

        return Model(self.init, scoped(self.apply), scoped(self.embed))


class SynSet(NamedTuple):
    """A synthetic training set, a pytree of arrays.

    Attributes:
        images: (N, H, W, C) in the dataset's normalised (and, if used, whitened) space.
        labels: (N,) int32 hard labels, or (N, num_classes) float32 soft labels.
        step_sizes: optional learned inner step sizes, one per unrolled step (DD).
    """

    images: Array
    labels: Array
    step_sizes: Optional[Array] = None
