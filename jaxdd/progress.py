"""Progress bars for work that runs inside one compiled program (host side, on stderr).

A jitted loop cannot draw a bar; it calls :func:`tick` through ``jax.debug.callback`` once per
unit of work (a trained model, an optimiser step), and :func:`progress_bar` shows a tqdm bar
while the block that runs the program is open. Without an open bar a tick does nothing, so the
compiled program, and its results, are the same whether a bar is shown or not.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Union

import jax

_OPEN: list = []
"""The bars open now; a tick advances the innermost."""


def tick(*_) -> None:
    """Advances the innermost open bar by one (a host function for ``jax.debug.callback``;
    its arguments only order the call after the work they come from)."""
    if _OPEN:
        _OPEN[-1].update(1)


@contextlib.contextmanager
def progress_bar(total: int, progress: Union[bool, str], label: str, unit: str) -> Iterator[None]:
    """A tqdm bar on stderr of ``total`` ``unit`` s while the block runs, if ``progress``.

    Args:
        total: ticks expected.
        progress: False for no bar; True for a bar named ``label``; a string names the bar itself.
        label: the bar's default name.
        unit: what one tick counts ('model', 'step').
    """
    if not progress:
        yield
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=progress if isinstance(progress, str) else label, unit=unit, dynamic_ncols=True)
    _OPEN.append(bar)
    try:
        yield
    finally:
        jax.effects_barrier()
        _OPEN.remove(bar)
        bar.close()
