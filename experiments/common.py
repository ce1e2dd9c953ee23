"""Helpers shared by the experiment scripts: result records with the full protocol."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Callable

import jax

from jaxdd.io import versions

RESULTS = Path(__file__).resolve().parent / "results"


def command_line() -> str:
    """The command that is running, as it would be typed from the repository root."""
    return "python -m experiments." + Path(sys.argv[0]).stem + " " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def machine() -> dict:
    """Where a result was measured: platform, Python, the JAX devices, their kind and the CPU count."""
    return {"platform": platform.platform(), "python": platform.python_version(), "devices": [str(d) for d in jax.devices()],
            "device_kind": jax.devices()[0].device_kind, "cpu_count": os.cpu_count()}


def write_json(name: str, record: dict) -> Path:
    """Writes ``experiments/results/<name>.json`` with versions, machine and command."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    full = {"command": command_line(), "versions": versions(), "machine": machine(), **record}
    path.write_text(json.dumps(full, indent=2, default=lambda o: dataclasses.asdict(o) if dataclasses.is_dataclass(o) else str(o)) + "\n")
    return path


def resumed_cells(previous: dict, key: Callable[[dict], tuple] = lambda c: (c["dataset"], c["ipc"], c["method"])
                  ) -> dict[tuple, dict]:
    """A result file's cells by ``key(cell)`` (default (dataset, ipc, method)), each naming the
    command that ran it.

    Cells written before cells carried their command take the file's. A ``--resume`` run keeps
    these and adds its own cells with ``"command": command_line()``.
    """
    return {key(c): {"command": previous.get("command"), **c} for c in previous.get("cells", [])}


def resumed_file_cells(path: Path, seed: int, num_models: int, key: Callable[[dict], tuple]) -> dict[tuple, dict]:
    """:func:`resumed_cells` of the results file ``path`` (none if it does not exist), refusing a
    file run with another seed or number of evaluation models (its cells would not be this run's).

    Raises:
        SystemExit: one line naming the file's seed and models.
    """
    if not path.is_file():
        return {}
    previous = json.loads(path.read_text())
    if (previous["seed"], previous["models"]) != (seed, num_models):
        raise SystemExit(f"--resume: {path} has seed {previous['seed']} and {previous['models']} models per cell, "
                         f"not {seed} and {num_models}; run without --resume to replace it")
    return resumed_cells(previous, key=key)


def commands_markdown(cells: list[dict]) -> list[str]:
    """The commands that ran the cells, in order of first use: one line, or a list after resumed runs."""
    commands = list(dict.fromkeys(c["command"] for c in cells if c.get("command")))
    if len(commands) == 1:
        return [f"Command: `{commands[0]}`"]
    return ["Commands (each `--resume` run added the cells the file lacked; every cell names its own in the JSON):", "",
            *[f"- `{c}`" for c in commands]]


def pct(mean: float, std: float) -> str:
    return f"{100 * mean:.1f} +- {100 * std:.1f}"
