"""``RESULTS.md`` and its plots, generated from the committed result files.

    python -m experiments.report                     # RESULTS.md + experiments/results/plots/*.png
    python -m experiments.report --results DIR --benchmarks DIR --out FILE --plots DIR

For every cell of the seed papers' tables (DD Tables 1-2, DC Tables 1-3 with the DSA / DM
columns, the MGDD comparison) it writes the paper's number beside ours: the preset, the
evaluation models and seed, mean +- std, the compute it took (device, wall time) and the command
that produced it. A cell with no result says "not run", with the reason where one is known.
Results that match no paper cell (e.g. DM on MNIST) are listed after the paper's cells. Where a
cell was measured more than once, the most faithful run wins (preset paper > cpu > other >
smoke, then more evaluation models); the headline cells run at the papers' own protocols
(``paper_cells.json``, experiments/paper_cells.py) also get a section of their own, first.
Plots: accuracy against images per class (one PNG per dataset) and accuracy against wall time.
Reads JSON only: no JAX, nothing is recomputed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
BENCHMARKS = ROOT / "benchmarks" / "results"
PRESET_RANK = {"paper": 0, "cpu": 1, "smoke": 3}
"""Lower is more faithful to the paper; unknown presets rank 2."""


class Ours(NamedTuple):
    """One of our measurements of a cell (accuracies in %)."""

    mean: float
    std: Optional[float]
    models: Optional[int]
    preset: Optional[str]
    seed: Optional[int | str]
    """The run's seed, or the seeds a pooled measurement spans ("0, 1")."""
    device: str
    wall: dict
    command: str
    source: str
    detail: str = ""


class Table(NamedTuple):
    """A paper table: rows x columns of cells, each cell a key of :func:`collect`'s index."""

    title: str
    reference: str
    rows: tuple
    columns: tuple
    paper: dict
    key: Callable[[str, str], tuple]
    reason: Callable[[str, str], Optional[str]]


# --------------------------------------------------------------------------- the papers' numbers

DC_DATASETS = ("mnist", "fashion_mnist", "svhn_cropped", "cifar10", "cifar100")
DC_METHODS = ("random", "herding", "kcenter", "forgetting", "dc", "dsa", "dm")
DC_TABLE1 = {
    # DC Table 1 (random / herding / k-center / forgetting / DC), DSA's and DM's papers for their columns.
    ("mnist", 1): ("64.9", "89.2", "89.3", "35.5", "91.7 +- 0.5", "88.7", None),
    ("mnist", 10): ("95.1", "93.7", "84.4", "68.1", "97.4 +- 0.2", "97.8", None),
    ("mnist", 50): ("97.9", "94.9", "97.4", "88.2", "98.8 +- 0.2", "99.2", None),
    ("fashion_mnist", 1): ("51.4", "67.0", "66.9", "42.0", "70.5 +- 0.6", "70.6", None),
    ("fashion_mnist", 10): ("73.8", "71.1", "54.7", "53.9", "82.3 +- 0.4", "84.6", None),
    ("fashion_mnist", 50): ("82.5", "71.9", "68.3", "55.0", "83.6 +- 0.4", "88.7", None),
    ("svhn_cropped", 1): ("14.6", "20.9", "21.0", "12.1", "31.2 +- 1.4", "27.5", None),
    ("svhn_cropped", 10): ("35.1", "50.5", "14.0", "16.8", "76.1 +- 0.6", "79.2", None),
    ("svhn_cropped", 50): ("70.9", "72.6", "20.1", "27.2", "82.3 +- 0.3", "84.4", None),
    ("cifar10", 1): ("14.4", "21.5", "21.5", "13.5", "28.3 +- 0.5", "28.8", "26.0"),
    ("cifar10", 10): ("26.0", "31.6", "14.7", "23.3", "44.9 +- 0.5", "52.1", "48.9"),
    ("cifar10", 50): ("43.4", "40.4", "27.0", "23.3", "53.9 +- 0.5", "60.6", "63.0"),
    ("cifar100", 1): (None, None, None, None, "12.8", "13.9", "11.4"),
    ("cifar100", 10): (None, None, None, None, "25.2", "32.3", "29.7"),
    ("cifar100", 50): (None, None, None, None, None, "42.8", "43.6"),
}
WHOLE_DATASET = {"mnist": "99.6", "fashion_mnist": "93.5", "svhn_cropped": "95.4", "cifar10": "84.8"}

CROSS_ARCHS = ("MLP", "ConvNet", "LeNet", "AlexNet", "VGG11", "ResNet18")
CROSS_ARCH = {  # DC Table 2: MNIST, 1 img/cls; rows condensed with, columns evaluated on
    "MLP": ("70.5", "63.9", "77.3", "70.9", "53.2", "80.9"),
    "ConvNet": ("69.6", "91.7", "85.3", "85.1", "83.4", "90.0"),
    "LeNet": ("71.0", "90.3", "85.0", "84.7", "80.3", "89.0"),
    "AlexNet": ("72.1", "87.5", "84.0", "82.7", "81.2", "88.9"),
    "VGG11": ("70.3", "90.1", "83.9", "83.4", "81.7", "89.1"),
    "ResNet18": ("73.6", "91.6", "86.4", "85.4", "83.4", "89.4"),
}

DD_COLUMNS = ("fixed_10x3", "random_10x3", "random_real", "optimized_real", "kmeans", "average_real",
              "knn_random_real", "knn_kmeans")
DD_TABLE1 = {  # DD Table 1 (MNIST LeNet, CIFAR-10 AlexCifarNet; 10 img/cls as 10 steps x 3 epochs)
    "mnist": ("96.6", "79.5 +- 8.1", "68.6 +- 9.8", "73.0 +- 7.6", "76.4 +- 9.5", "77.1 +- 2.7", "71.5 +- 2.1",
              "92.2 +- 0.1"),
    "cifar10": ("54.0", "36.8 +- 1.2", "21.3 +- 1.5", "23.4 +- 1.3", "22.5 +- 3.1", "22.3 +- 0.7", "18.8 +- 1.3",
                "29.4 +- 0.3"),
}
DD_EXTRA = {("mnist", "fixed_1x3"): "93.76"}
"""DD's text: fixed init, MNIST 10 images (1 step x 3 epochs) 12.90% -> 93.76%."""

DD_ADAPT_COLUMNS = ("fixed_pretrained", "random_pretrained", "random_real", "optimized_real", "kmeans",
                    "average_real", "no_adaptation", "full_target")
DD_TABLE2 = {  # DD Table 2: few-shot domain adaptation, 100 images, 10 GD steps x 3 epochs
    "mnist-usps": ("97.9", "95.4 +- 1.8", "94.9 +- 0.8", "95.2 +- 0.7", "92.2 +- 1.6", "93.9 +- 0.8", "90.4 +- 3.0",
                   "97.3 +- 0.3"),
    "usps-mnist": ("93.2", "92.7 +- 1.4", "87.1 +- 2.9", "87.6 +- 2.1", "85.6 +- 3.1", "78.4 +- 5.0", "67.5 +- 3.9",
                   "98.6 +- 0.5"),
    "svhn-mnist": ("96.2", "85.2 +- 4.7", "84.6 +- 2.1", "85.2 +- 1.2", "85.8 +- 1.2", "74.9 +- 2.6", "51.6 +- 2.8",
                   "98.6 +- 0.5"),
}

DC_VS_DD = {  # DC Table 3: DD's architectures (LeNet on MNIST, AlexCifarNet on CIFAR-10); DD: random init
    "mnist / 1": (None, "85.0 +- 1.6"),
    "mnist / 10": ("79.5 +- 8.1", "93.9 +- 0.6"),
    "cifar10 / 1": (None, "24.2 +- 0.9"),
    "cifar10 / 10": ("36.8 +- 1.2", "39.1 +- 1.2"),
}

MGDD_METHODS = ("dc", "dsa", "idc", "mtt", "dm", "frepo", "mgdd")
MGDD_TABLE = {  # MGDD poster: the same number of training / adaptation steps for every method
    ("mnist", 1): ("88.7", "87.7", "76.1", "73.1", "87.8", "64.8", "87.8"),
    ("mnist", 50): (None, "98.3", "98.4", "96.6", "98.0", "98.5", "98.6"),
    ("fashion_mnist", 10): ("79.8", "79.0", "82.9", "80.1", "83.0", "81.2", "83.4"),
    ("fashion_mnist", 50): (None, "86.9", "87.0", "86.2", "86.8", "85.9", "87.2"),
    ("cifar10", 1): (None, "28.1", "25.3", "36.8", "26.8", None, "42.6"),
    ("cifar10", 10): (None, "48.7", "49.5", "50.8", "48.8", "49.4", "58.9"),
    ("cifar10", 50): (None, "56.0", "61.7", "56.5", None, "61.8", "66.8"),
    ("cifar100", 1): ("12.4", "13.8", "15.4", "13.2", "11.9", "10.1", "20.8"),
    ("cifar100", 10): ("21.1", "31.3", "28.9", "30.2", "30.0", "26.6", "32.2"),
}
MGDD_SPEEDUP_PAPER = "about 22x"

OFFLINE = {"svhn_cropped", "cifar100", "svhn-mnist"}
"""Datasets (or adaptation directions) whose files are not available offline here."""


def _offline(name: str) -> Optional[str]:
    return "dataset not available offline here (no files in ../shared/data)" if name in OFFLINE else None


def _dc_reason(row: str, column: str) -> Optional[str]:
    dataset, ipc = row.split(" / ")
    if _offline(dataset):
        return _offline(dataset)
    if column == "forgetting":
        return "forgetting is not in the cpu preset of experiments/dc_table.py"
    if column == "whole dataset" or ipc == "50":
        return "in experiments/dc_table.py's paper preset only (a GPU run)"
    if dataset == "cifar10":
        return ("not run yet at the cpu preset (python -m experiments.dc_table --preset cpu --datasets cifar10 "
                "--resume; about 20-40 min a matching method on 2 cores)")
    return None


def _cross_reason(row: str, column: str) -> Optional[str]:
    if row in ("ConvNet", "MLP", "LeNet"):
        return "not run yet (python -m experiments.dc_cross_arch --preset cpu --resume)"
    return "the AlexNet-, VGG- and ResNet-condensed rows are in experiments/dc_cross_arch.py's paper preset only"


def _mgdd_reason(row: str, column: str) -> Optional[str]:
    dataset = row.split(" / ")[0]
    if column in ("idc", "mtt"):
        return _offline(dataset) or "not in experiments/mtt_idc_table.py's cpu cells (MNIST, Fashion-MNIST at 1, 10)"
    return _offline(dataset) or ("not in the cpu preset's pairs (MNIST <-> Fashion-MNIST)" if dataset == "cifar10"
                                 else None)


def _dc_vs_dd_reason(row: str, column: str) -> Optional[str]:
    dataset, ipc = _split_ipc(row)
    if column == "dd":
        preset = "cpu_cifar10" if dataset == "cifar10" else "cpu"
        return f"not run yet (python -m experiments.dd_table --preset {preset} --part random_10x3)"
    command = f"python -m experiments.dc_vs_dd --preset cpu --datasets {dataset} --ipcs {ipc} --resume"
    if dataset == "cifar10":  # XLA's cost analysis: 66.1 against 2.58 MFLOP per 32x32 image
        return (f"not run: AlexCifarNet costs 26x ConvNet-16's FLOPs per image, and DC through ConvNet-16 took 418 s "
                f"here at 1 img/cls, so a cell is hours on 2 CPU cores ({command})")
    return f"not run yet ({command})"


def _dd_reason(row: str, column: str) -> Optional[str]:
    if row == "cifar10":
        part = column if column in ("fixed_10x3", "random_10x3") else "baselines"
        return f"not run yet (python -m experiments.dd_table --preset cpu_cifar10 --part {part})"
    return "selection of the best real sets not implemented in experiments/dd_adaptation.py" \
        if column == "optimized_real" else _offline(row)


def _grid(table: dict, methods: tuple) -> tuple[dict, tuple]:
    """``{(dataset, ipc): values}`` -> ``{('dataset / ipc', method): paper}`` and the row labels."""
    rows = tuple(f"{dataset} / {ipc}" for dataset, ipc in table)
    paper = {(row, m): v for row, values in zip(rows, table.values()) for m, v in zip(methods, values) if v is not None}
    return paper, rows


def _split_ipc(row: str) -> tuple[str, int]:
    dataset, ipc = row.split(" / ")
    return dataset, int(ipc)


def _dc_key(row: str, column: str) -> tuple:
    """DC Table 1 cell -> result key; the whole-dataset accuracy belongs to the 1 img/cls row only."""
    dataset, ipc = _split_ipc(row)
    if column == "whole dataset":
        return ("dc_whole", dataset) if ipc == 1 else ("dc_whole", dataset, ipc)
    return ("dc", dataset, ipc, column)


def paper_tables() -> list[Table]:
    """The seed papers' tables, as :class:`Table` specs (keys index :func:`collect`'s results)."""
    dc_paper, dc_rows = _grid(DC_TABLE1, DC_METHODS)
    dc_paper.update({(f"{d} / 1", "whole dataset"): v for d, v in WHOLE_DATASET.items()})
    mgdd_paper, mgdd_rows = _grid(MGDD_TABLE, MGDD_METHODS)
    dd1 = {(row, col): v for row, values in DD_TABLE1.items() for col, v in zip(DD_COLUMNS, values)}
    dd1.update(DD_EXTRA)
    dd2 = {(row, col): v for row, values in DD_TABLE2.items() for col, v in zip(DD_ADAPT_COLUMNS, values)}
    cross = {(row, col): v for row, values in CROSS_ARCH.items() for col, v in zip(CROSS_ARCHS, values)}
    dcdd = {(row, col): v for row, values in DC_VS_DD.items() for col, v in zip(("dd", "dc"), values)}
    return [
        Table("DC Table 1 (+ DSA, DM): ConvNet, test accuracy %", "Zhao et al. ICLR 2021; DSA ICML 2021; DM WACV 2023",
              dc_rows, DC_METHODS + ("whole dataset",), dc_paper, _dc_key, _dc_reason),
        Table("DC Table 2: cross-architecture, MNIST 1 img/cls (rows condensed with, columns evaluated on)",
              "Zhao et al. ICLR 2021", CROSS_ARCHS, CROSS_ARCHS, cross,
              lambda r, c: ("cross", "mnist", r, c), _cross_reason),
        Table("DC Table 3: DC against DD on DD's architectures (LeNet on MNIST, AlexCifarNet on CIFAR-10; "
              "DD: random init, 100 images, 10 steps x 3 epochs)", "Zhao et al. ICLR 2021",
              tuple(DC_VS_DD), ("dd", "dc"), dcdd, lambda r, c: ("dcdd", *_split_ipc(r), c), _dc_vs_dd_reason),
        Table("DD Table 1: MNIST LeNet / CIFAR-10 AlexCifarNet, 100 images (10 steps x 3 epochs; fixed_1x3: 10 images)",
              "Wang et al. 2018", tuple(DD_TABLE1), DD_COLUMNS + ("fixed_1x3",), dd1,
              lambda r, c: ("dd1", r, c), _dd_reason),
        Table("DD Table 2: few-shot domain adaptation, LeNet, 100 images (10 steps x 3 epochs)", "Wang et al. 2018",
              tuple(DD_TABLE2), DD_ADAPT_COLUMNS, dd2, lambda r, c: ("dd2", r, c), _dd_reason),
        Table("MGDD comparison: the same number of training / adaptation steps", "Liu & Wang NeurIPS 2023 (poster)",
              mgdd_rows, MGDD_METHODS, mgdd_paper, lambda r, c: ("mgdd", *_split_ipc(r), c), _mgdd_reason),
    ]


# --------------------------------------------------------------------------- our results


def _percent(value, already: bool) -> Optional[float]:
    """Percent from a file's value: fractions (0-1) unless the file stores percents (``already``)."""
    if value is None:
        return None
    return float(value) if already else 100.0 * float(value)


def _devices(record: dict) -> str:
    machine = record.get("machine")
    devices = (machine.get("devices") if isinstance(machine, dict) else None) or record.get("devices") or []
    return ", ".join(devices) or "unknown"


def _ours(entry: dict, record: dict, source: str, wall: dict, *, percent: bool = False, **extra) -> Ours:
    mean, std = entry.get("mean", entry.get("accuracy")), entry.get("std")
    models = entry.get("models") or entry.get("eval_models") or (len(entry["accs"]) if "accs" in entry else None)
    if models is None and "sets" in entry:
        extra["detail"] = f"std over {entry['sets']} sets; " + extra.get("detail", "")
    return Ours(mean=_percent(mean, percent), std=_percent(std, percent), models=models,
                preset=record.get("preset"), seed=record.get("seed"), device=_devices(record),
                wall={k: float(v) for k, v in wall.items() if v is not None},
                command=entry.get("command") or record.get("command", "?"),
                source=source, **extra)


def load_dc_table(record: dict, source: str) -> Iterator[tuple[tuple, Ours]]:
    """``dc_table_<preset>.json``: cells by (dataset, ipc, method) and the whole-dataset accuracies."""
    for cell in record.get("cells", []):
        wall = {"distill": cell.get("distill_time_s"), "eval": cell.get("eval_time_s")}
        arch = cell.get("arch", {})
        epochs = cell.get("protocol", {}).get("epochs", "?")
        detail = f"{arch.get('name', '')} width {arch.get('width', '')}; {epochs} eval epochs; " \
                 f"{cell.get('test_images', '?')} test images"
        key = ("dc", cell["dataset"], int(cell["ipc"]), cell["method"])
        yield key, _ours(cell, record, source, wall, detail=detail)
    for dataset, whole in record.get("whole_dataset", {}).items():
        entry = {"mean": whole["acc"], "models": 1, "command": whole.get("command")}
        yield ("dc_whole", dataset), _ours(entry, record, source, {}, detail=f"{whole.get('epochs')} epoch(s)")


def load_baselines(record: dict, source: str) -> Iterator[tuple[tuple, Ours]]:
    """``baselines_<dataset>.json``: random real sets count for DC Table 1's random column."""
    for row in record.get("rows", []):
        if row.get("method") == "random":
            detail = f"{record.get('arch')}; {record.get('protocol', {}).get('epochs', '?')} eval epochs"
            yield ("dc", record["dataset"], int(row["ipc"]), "random"), _ours(
                row, record, source, {"eval": row.get("wall_time_s")}, detail=detail)


def load_cross_arch(record: dict, source: str) -> Iterator[tuple[tuple, Ours]]:
    """``dc_cross_arch_<preset>.json``: cells by (dataset, condensed with, evaluated on)."""
    for cell in record.get("cells", []):
        wall = {"distill": cell.get("distill_time_s"), "eval": cell.get("eval_time_s")}
        yield ("cross", record.get("dataset"), cell["condensed_with"], cell["evaluated_on"]), _ours(
            cell, record, source, wall)


def load_dc_vs_dd(record: dict, source: str) -> Iterator[tuple[tuple, Ours]]:
    """``dc_vs_dd_<preset>.json``: DC on DD's architectures, by (dataset, ipc)."""
    for cell in record.get("cells", []):
        wall = {"distill": cell.get("distill_time_s"), "eval": cell.get("eval_time_s")}
        epochs = cell.get("protocol", {}).get("epochs", "?")
        yield ("dcdd", cell["dataset"], int(cell["ipc"]), "dc"), _ours(
            cell, record, source, wall, detail=f"{cell['arch']}; {epochs} eval epochs")


def _provenance(record: dict) -> dict:
    prov = dict(record.get("provenance", {}))
    prov.setdefault("devices", [])
    return prov


def load_dd_table(record: dict, source: str) -> Iterator[tuple[tuple, Ours]]:
    """``dd_table_<preset>_<part>.json``: a DD run (fixed / random init) or the baselines part."""
    prov = _provenance(record)
    dataset = prov.get("preset_config", {}).get("dataset", "mnist")
    part = record.get("part")
    if part == "baselines":
        for column in DD_COLUMNS[2:]:
            if column in record:
                entry = record[column]
                yield ("dd1", dataset, column), _ours(entry, prov, source, {}, percent=True,
                                                      detail=entry.get("selection", entry.get("note", "")))
    elif part:
        entry = {**record, "models": record.get("eval_models", 1)}
        detail = f"{record.get('steps')} steps x {record.get('epochs')} epochs, {record.get('images')} images"
        ours = _ours(entry, prov, source, {"distill": record.get("distill_seconds")}, percent=True, detail=detail)
        yield ("dd1", dataset, part), ours
        if part == "random_10x3":  # DC Table 3's DD column: DD's random-init result
            yield ("dcdd", dataset, 10, "dd"), ours


def load_dd_adaptation(record: dict, source: str) -> Iterator[tuple[tuple, Ours]]:
    """``dd_adaptation_<preset>_<direction>.json``: one entry per column of DD Table 2."""
    prov = _provenance(record)
    for column in DD_ADAPT_COLUMNS:
        entry = record.get(column)
        if isinstance(entry, dict) and "accuracy" in entry:
            entry = {**entry, "models": entry.get("models", 1)}
            yield ("dd2", record["direction"], column), _ours(
                entry, prov, source, {"distill": entry.get("distill_seconds")}, percent=True)


def load_mgdd(record: dict, source: str) -> Iterator[tuple[tuple, Ours]]:
    """``mgdd_<preset>.json``: the same-budget table rows by (target, ipc, method)."""
    header = record.get("header", {})
    base = {**header, "seed": header.get("seed")}
    for row in record.get("table", []):
        sources = {entry.get("target"): entry.get("sources", []) for entry in record.get("pretrain", [])}
        source_name = row.get("source") or "+".join(sources.get(row["target"], [])) or "?"
        detail = f"{source_name} -> {row.get('target')}, {row.get('steps')} steps, eval " \
                 f"{row.get('protocol', {}).get('name', '?')}"
        yield ("mgdd", row["target"], int(row["ipc"]), row["method"]), _ours(
            row, base, source, {"distill": row.get("seconds")}, detail=detail)


def load_mtt_idc(record: dict, source: str) -> Iterator[tuple[tuple, Ours]]:
    """``mtt_idc_<preset>.json``: the MTT and IDC cells, for the MGDD table's columns of those methods.

    Its DC and DM cells (the same 90 s budget) stay out: the MGDD table's DC and DM columns come from
    ``mgdd_<preset>.json``'s same-step runs.
    """
    for cell in record.get("cells", []):
        if cell["method"] not in ("mtt", "idc"):
            continue
        arch = cell.get("arch", {})
        detail = f"{arch.get('name', '')} width {arch.get('width', '')}; {cell.get('steps_run')} steps in a " \
                 f"{cell.get('budget_s')} s budget; {cell.get('protocol', {}).get('epochs', '?')} eval epochs"
        yield ("mgdd", cell["dataset"], int(cell["ipc"]), cell["method"]), _ours(
            cell, record, source, {"distill": cell.get("distill_time_s"), "eval": cell.get("eval_time_s")},
            detail=detail)


def paper_cell_key(cell: dict) -> tuple:
    """The paper-table key of a ``paper_cells.json`` cell: DD's Table 1 columns, else DC Table 1's."""
    if cell["method"] == "dd":
        return ("dd1", cell["dataset"], cell["cell"].removeprefix("dd_"))
    return ("dc", cell["dataset"], int(cell["ipc"]), cell["method"])


def _paper_cell_seed(cell: dict, record: dict):
    return cell.get("seeds", {}).get("seed", record.get("seed"))


def load_paper_cells(record: dict, source: str) -> Iterator[tuple[tuple, Ours]]:
    """``paper_cells.json`` (experiments/paper_cells.py): the headline cells at the papers' protocols.

    A cell run from several seeds counts once, as its pooled models (``over_seeds``), wall times summed.
    """
    pooled = {c["cell"]: c for c in record.get("over_seeds", [])}
    runs: dict[str, list[dict]] = {}
    for cell in record.get("cells", []):
        runs.setdefault(cell["cell"], []).append(cell)
    for name, cells in runs.items():
        first, wall_s = cells[0], [c.get("wall_s", {}) for c in cells]
        protocol = first.get("protocol", {})
        detail = f"protocol `{record.get('preset')}`; eval '{protocol.get('name', '?')}', " \
                 f"{protocol.get('epochs', '?')} epochs; {first.get('verdict', {}).get('rule', '')}"
        wall = {k: sum(w[k] for w in wall_s) if all(w.get(k) is not None for w in wall_s) else None
                for k in ("distill", "eval")}
        entry = {**first, **pooled[name]} if name in pooled else first
        seed = ", ".join(map(str, pooled[name]["seeds"])) if name in pooled else _paper_cell_seed(first, record)
        yield paper_cell_key(first), _ours(entry, record, source, wall, percent=True, detail=detail)._replace(seed=seed)


def paper_cells_markdown(results_dir: Path, commands: Commands) -> list[str]:
    """The section on the headline cells at the papers' own protocols, when ``paper_cells.json`` exists."""
    path = results_dir / "paper_cells.json"
    if not path.exists():
        return []
    try:
        record = json.loads(path.read_text())
    except ValueError:
        return []
    lines = ["## Headline cells at the papers' protocols (`paper`)", "",
             "Each method's `paper` preset unchanged, evaluated under its paper's protocol "
             "(experiments/paper_cells.py; curves against outer iterations in paper_cells.md). "
             "These come before the `cpu` runs of the same cells in the tables below.", "",
             "| cell | seed | ours | paper | inside the paper's bar | models | wall time | command |",
             "|---|---|---|---|---|---|---|---|"]
    for cell in record.get("cells", []):
        wall = _fmt_wall({k: float(v) for k, v in cell.get("wall_s", {}).items() if v is not None})
        lines.append(f"| {cell['cell']} | {_paper_cell_seed(cell, record)} | {_fmt_pct(cell)} | {cell.get('paper', '-')} | "
                     f"{_inside(cell)} | {cell.get('models', '-')} | {wall} | [{commands.cite(cell.get('command', '?'))}] |")
    for cell in record.get("over_seeds", []):
        lines.append(f"| {cell['cell']}, pooled | {', '.join(map(str, cell['seeds']))} | {_fmt_pct(cell)} | "
                     f"{cell.get('paper', '-')} | {_inside(cell)} | {cell.get('models', '-')} | - | - |")
    return lines + [""]


def _fmt_pct(cell: dict) -> str:
    return f"**{cell['mean']:.1f} +- {cell['std']:.1f}**"


def _inside(cell: dict) -> str:
    return {True: "yes", False: "no"}.get(cell.get("verdict", {}).get("inside"), "-")


LOADERS: dict[str, Callable[[dict, str], Iterator[tuple[tuple, Ours]]]] = {
    r"paper_cells\.json": load_paper_cells,
    r"dc_table_.*\.json": load_dc_table,
    r"baselines_.*\.json": load_baselines,
    r"dc_cross_arch_.*\.json": load_cross_arch,
    r"dc_vs_dd_.*\.json": load_dc_vs_dd,
    r"dd_table_.*\.json": load_dd_table,
    r"dd_adaptation_.*\.json": load_dd_adaptation,
    r"mgdd_.*\.json": load_mgdd,
    r"mtt_idc_.*\.json": load_mtt_idc,
}
"""File-name pattern -> loader of (cell key, :class:`Ours`) pairs."""


def rank(ours: Ours) -> tuple:
    """Sort key: most faithful preset first, then the most evaluation models."""
    return PRESET_RANK.get(ours.preset, 2), -(ours.models or 0)


def collect(results_dir: Path) -> tuple[dict[tuple, list[Ours]], list[str]]:
    """Every result in ``results_dir`` by cell key (best first), and the files that could not be read."""
    index: dict[tuple, list[Ours]] = {}
    problems = []
    for path in sorted(results_dir.glob("*.json")):
        loader = next((fn for pattern, fn in LOADERS.items() if re.fullmatch(pattern, path.name)), None)
        if loader is None:
            continue
        try:
            for key, ours in loader(json.loads(path.read_text()), path.name):
                if ours.mean is not None:
                    index.setdefault(key, []).append(ours)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            problems.append(f"{path.name}: {type(error).__name__}: {error}")
    for candidates in index.values():
        candidates.sort(key=rank)
    return index, problems


def mgdd_speedups(results_dir: Path) -> list[str]:
    """MGDD's time against DC's first snapshot at least as accurate (the paper: about 22x)."""
    lines = []
    for path in sorted(results_dir.glob("mgdd_*.json")):
        try:
            record = json.loads(path.read_text())
            if isinstance(record.get("speedup"), dict):  # mgdd_summary.json: the ratios, already computed
                lines += [f"- {cell} img/cls ({path.name}): speed-up at equal accuracy {ratio:.2f}x "
                          f"(paper: {MGDD_SPEEDUP_PAPER})" for cell, ratio in sorted(record["speedup"].items())]
                continue
            rows = {(r["target"], r["ipc"], r["method"]): r for r in record.get("table", [])}
            for target, ipc in sorted({(r["target"], r["ipc"]) for r in record.get("speedup", [])}):
                ours = rows.get((target, ipc, "mgdd"))
                snaps = sorted((r for r in record["speedup"] if (r["target"], r["ipc"]) == (target, ipc)),
                               key=lambda r: r["iterations"])
                reached = next((s for s in snaps if ours and s["mean"] >= ours["mean"]), None)
                if ours and reached:
                    lines.append(f"- {target}, {ipc} img/cls ({path.name}): MGDD {100 * ours['mean']:.1f} % in "
                                 f"{ours['seconds']:.0f} s; DC from scratch reaches it after {reached['iterations']} "
                                 f"iterations in {reached['seconds']:.0f} s: speed-up "
                                 f"{reached['seconds'] / ours['seconds']:.2f}x (paper: {MGDD_SPEEDUP_PAPER}).")
        except (KeyError, TypeError, ValueError) as error:
            lines.append(f"- {path.name}: could not read the speed-up rows ({error})")
    return lines


# --------------------------------------------------------------------------- markdown


class Commands:
    """Numbers the distinct commands so that table cells can cite them as [c1], [c2], ..."""

    def __init__(self):
        self.ids: dict[str, str] = {}

    def cite(self, command: str) -> str:
        return self.ids.setdefault(command, f"c{len(self.ids) + 1}")

    def lines(self) -> list[str]:
        return [f"- [{cid}] `{command}`" for command, cid in self.ids.items()]


def _fmt_ours(o: Ours) -> str:
    return f"{o.mean:.1f}" + (f" +- {o.std:.1f}" if o.std else "")


def _count(n: Optional[int], noun: str) -> str:
    return "-" if n is None else f"{n} {noun}{'' if n == 1 else 's'}"


def _fmt_wall(wall: dict) -> str:
    if not wall:
        return "-"
    return " + ".join(f"{k} {v:.0f} s" for k, v in wall.items())


DETAIL_HEADER = ["| cell | paper | ours | preset | models, seed | device | wall time | command; details |",
                 "|---|---|---|---|---|---|---|---|"]


def _detail(label: str, paper: Optional[str], ours: list, commands: Commands) -> str:
    """cell | paper | ours | preset | models, seed | device | wall time | command; details."""
    best = ours[0]
    runs = f" ({len(ours)} runs; the most faithful shown, by preset then models)" if len(ours) > 1 else ""
    seed = best.seed if best.seed is not None else "?"
    cells = [label, paper or "-", f"**{_fmt_ours(best)}**", f"{best.preset or '-'}{runs}",
             f"{_count(best.models, 'model')}, seed {seed}", best.device, _fmt_wall(best.wall),
             f"[{commands.cite(best.command)}] {best.detail}".strip()]
    return "| " + " | ".join(cells) + " |"


class Reasons:
    """Numbers the distinct reasons why cells were not run, for a legend under each table."""

    def __init__(self):
        self.ids: dict[str, str] = {}

    def cite(self, reason: Optional[str]) -> str:
        return "not run" + (f" [r{self.ids.setdefault(reason, str(len(self.ids) + 1))}]" if reason else "")

    def lines(self) -> list[str]:
        return [f"[r{rid}] {reason}." for reason, rid in self.ids.items()]


def table_markdown(table: Table, index: dict, commands: Commands) -> tuple[list[str], set]:
    """A paper table: the grid of 'ours (paper)', the reasons of cells not run, then every run cell's details.

    Returns the lines and the result keys it showed.
    """
    grid = [f"| | {' | '.join(table.columns)} |", "|---" * (len(table.columns) + 1) + "|"]
    details, used, reasons = [], set(), Reasons()
    for row in table.rows:
        cells = []
        for column in table.columns:
            key, paper = table.key(row, column), table.paper.get((row, column))
            ours = index.get(key)
            if ours:
                used.add(key)
                details.append(_detail(f"{row} / {column}", paper, ours, commands))
            text = f"**{_fmt_ours(ours[0])}**" if ours else (reasons.cite(table.reason(row, column)) if paper else "")
            cells.append(text + (f" ({paper})" if paper else ""))
        grid.append(f"| {row} | {' | '.join(cells)} |")
    lines = [f"### {table.title}", "", f"Paper: {table.reference}. Cells: **ours** (paper).", ""] + grid + [""]
    if reasons.ids:
        lines += [" ".join(reasons.lines()), ""]
    if details:
        lines += DETAIL_HEADER + details + [""]
    return lines, used


def extra_markdown(index: dict, used: set, commands: Commands) -> list[str]:
    """Our results that match no paper cell (other datasets, methods, architectures)."""
    rest = sorted((k for k in index if k not in used), key=str)
    if not rest:
        return []
    lines = ["### Our results without a paper cell", ""] + DETAIL_HEADER
    lines += [_detail(" / ".join(str(k) for k in key), None, index[key], commands) for key in rest]
    return lines + [""]


def _link(path: Path, out_dir: Path) -> str:
    return f"[{path.name}]({Path(os.path.relpath(path, out_dir)).as_posix()})"


def benchmark_markdown(bench_dir: Path, out_dir: Path) -> list[str]:
    """The speed tables of every ``benchmarks.run`` results file (newest date first)."""
    lines = ["## Speed against eager PyTorch (benchmarks/results)", ""]
    files = [p for p in bench_dir.glob("*.json") if _is_run_file(p)]
    records = sorted(((json.loads(p.read_text()), p) for p in files),
                     key=lambda rp: (rp[0]["session"]["date"], rp[1].name), reverse=True)
    for record, path in records:
        if "sizes" in record:  # a benchmarks.paper file: its own table
            lines += paper_sizes_markdown(record, path, out_dir)
            continue
        info = record["session"]
        lines += [f"### {path.stem} ({info['mode']}; `{record['command']}`)", "",
                  f"Devices {', '.join(info['devices'])}; sizes, memory, FLOPs and per-repeat times in "
                  f"{_link(path.with_suffix('.md'), out_dir)}.", "",
                  "| bench | JAX | PyTorch | ratio (> 1: JAX faster) | goal | met? |", "|---|---|---|---|---|---|"]
        for name, r in record["benches"].items():
            s = r.get("summary")
            if not s:
                lines.append(f"| {name} | {r.get('skipped') or r.get('error')} | | | | |")
                continue
            ratio = "-" if s["ratio"] is None else f"{s['ratio']:.2f}x"
            goal = "-" if s["goal"] is None else f">= {s['goal']:g}x"
            met = "-" if s["met"] is None else ("yes" if s["met"] else "no")
            lines.append(f"| {name} | {_speed(r, s['jax_median_s'])} | {_speed(r, s['torch_median_s'])} | {ratio} "
                         f"| {goal} | {met} |")
        lines.append("")
    others = sorted(p.name for p in bench_dir.glob("*.md") if not _is_run_file(p.with_suffix(".json")))
    if others:
        lines += ["Other benchmark tables: " + ", ".join(_link(bench_dir / n, out_dir) for n in others), ""]
    return lines if files or others else []


def paper_sizes_markdown(record: dict, path: Path, out_dir: Path) -> list[str]:
    """The table of one ``benchmarks.paper`` file: medians, speed and memory ratios per bench."""
    lines = [f"### {path.stem} (papers' sizes, size set '{record['sizes']}')", "",
             f"Sizes, commands, compile times and per-repeat times in {_link(path.with_suffix('.md'), out_dir)}.", "",
             "| bench | JAX (s/call) | PyTorch (s/call) | speed ratio (> 1: JAX faster) | JAX / PyTorch peak RSS |",
             "|---|---|---|---|---|"]
    for name, bench in record["benches"].items():
        if not bench.get("ratio"):
            lines.append(f"| {name} | {bench['jax'].get('error', '-')} | {bench['torch'].get('error', '-')} | - | - |")
            continue
        lines.append(f"| {name} | {bench['jax_median_s']:.3f} | {bench['torch_median_s']:.3f} | "
                     f"{bench['ratio']:.2f}x | {bench['memory_ratio']:.2f}x |")
    return lines + [""]


def continual_markdown(results_dir: Path, out_dir: Path, commands: Commands) -> list[str]:
    """DC's continual-learning application (its Fig. 4): every ``continual*.json`` summary beside its
    ``_full`` record, one table per file (accuracy after each stage) and its PNG."""
    lines = []
    for path in sorted(results_dir.glob("continual*.json")):
        if path.stem.endswith("_full"):
            continue
        try:
            summary = json.loads(path.read_text())
            full_path = path.with_name(f"{path.stem}_full.json")
            full = json.loads(full_path.read_text()) if full_path.exists() else {}
            run_commands = full.get("run_commands", {})
            head = " | ".join(f"T{i + 1} ({name})" for i, name in enumerate(summary["sequence"]))
            lines += [f"`{path.name}`: {summary.get('measure', 'mean test accuracy on the seen tasks')}, "
                      f"{summary['ipc']} img/cls, preset {full.get('preset', '?')}; mean +- std over "
                      f"{len(summary['runs'][0]['stage_accs'][0])} models.", "",
                      f"| memory | KD | {head} | command |", "|---|---|" + "---|" * (len(summary["sequence"]) + 1)]
            for run in summary["runs"]:
                cells = " | ".join(f"{100 * statistics.fmean(models):.1f} +- {100 * statistics.pstdev(models):.1f}"
                                   for models in run["stage_accs"])
                command = run_commands.get(f"{run['method']}_kd{int(run['kd'])}", full.get("command"))
                cite = f"[{commands.cite(command)}]" if command else "-"
                lines.append(f"| {run['method']} | {'yes' if run['kd'] else 'no'} | {cells} | {cite} |")
            picture = path.with_suffix(".png")
            if picture.exists():
                lines += ["", f"![{picture.stem}]({Path(os.path.relpath(picture, out_dir)).as_posix()})"]
            lines.append("")
        except (KeyError, TypeError, ValueError) as error:
            lines += [f"- {path.name}: could not read the continual-learning runs ({error})", ""]
    return (["### DC's application: continual learning with condensed memories (its Fig. 4)", ""] + lines) if lines else []


def _speed(result: dict, seconds: Optional[float]) -> str:
    """Seconds per step, or models x epochs per second for an evaluation."""
    if seconds is None:
        return "-"
    if result.get("unit") == "model-epoch":
        return f"{result['work'] / seconds:.2f} model-epochs/s"
    return f"{seconds:.3f} s/step"


def _is_run_file(path: Path) -> bool:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "session" in record and "benches" in record


def markdown(index: dict, problems: list, results_dir: Path, bench_dir: Path, plots: list[Path],
             out_dir: Path) -> str:
    commands = Commands()
    lines = ["# Results", "",
             "Generated by `python -m experiments.report` from the JSON files in `experiments/results` and "
             "`benchmarks/results`; do not edit by hand. Accuracies in %, mean +- std over the evaluation models "
             "(population std). 'ours' is the most faithful run of a cell (preset paper > cpu > smoke, then more "
             "models); the `cpu` presets shrink networks, iterations and evaluation epochs (see each experiment's "
             "docstring and docs/), so they are not the papers' protocols. Wall time: distillation and evaluation "
             "seconds as recorded (including compilation).", ""]
    used: set = set()
    lines += paper_cells_markdown(results_dir, commands)
    lines += ["## The seed papers' tables", ""]
    for table in paper_tables():
        table_lines, table_used = table_markdown(table, index, commands)
        lines += table_lines
        used |= table_used
    speedups = mgdd_speedups(results_dir)
    if speedups:
        lines += ["### MGDD: time to distill against DC from scratch", ""] + speedups + [""]
    lines += continual_markdown(results_dir, out_dir, commands)
    lines += extra_markdown(index, used, commands)
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({Path(os.path.relpath(p, out_dir)).as_posix()})" for p in plots]
        lines += [""]
    lines += benchmark_markdown(bench_dir, out_dir)
    lines += ["## Commands", ""] + commands.lines() + [""]
    if problems:
        lines += ["## Files that could not be read", ""] + [f"- {p}" for p in problems] + [""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots


def paper_value(text: Optional[str]) -> Optional[float]:
    """The mean of a paper cell such as '79.5 +- 8.1' (None for none)."""
    if not text:
        return None
    match = re.match(r"\s*([0-9.]+)", text)
    return float(match.group(1)) if match else None


IPC_SERIES = {"dc": (DC_TABLE1, DC_METHODS, ""), "mgdd": (MGDD_TABLE, MGDD_METHODS, " [same budget]")}
"""Result family -> (paper table, its methods, label suffix) for the accuracy-vs-img/cls plots."""


def ipc_series(index: dict) -> dict[str, dict[str, dict]]:
    """dataset -> series label -> {'ours': {ipc: %}, 'paper': {ipc: %}} (DC Table 1, MGDD comparison)."""
    series: dict = {}
    for key, ours in index.items():
        if key[0] in IPC_SERIES:
            family, dataset, ipc, method = key
            table, methods, suffix = IPC_SERIES[family]
            entry = series.setdefault(dataset, {}).setdefault(method + suffix, {"ours": {}, "paper": {}})
            entry["ours"][ipc] = ours[0].mean
            for (paper_dataset, paper_ipc), values in table.items():
                value = paper_value(dict(zip(methods, values)).get(method))
                if paper_dataset == dataset and value is not None:
                    entry["paper"][paper_ipc] = value
    return series


def plot_ipc(series: dict, plots_dir: Path) -> list[Path]:
    """One PNG per dataset: accuracy against img/cls, ours solid, the paper dashed (same colour)."""
    import matplotlib.pyplot as plt

    paths = []
    for dataset, methods in sorted(series.items()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, (method, data) in enumerate(sorted(methods.items())):
            colour = f"C{i % 10}"
            for kind, style in (("ours", "o-"), ("paper", "s--")):
                points = sorted(data[kind].items())
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], style, color=colour,
                            label=f"{method} ({kind})", alpha=1.0 if kind == "ours" else 0.5)
        ax.set(xscale="log", xlabel="images per class", ylabel="test accuracy (%)",
               title=f"{dataset}: ours (solid) and the papers (dashed)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        paths.append(plots_dir / f"accuracy_vs_ipc_{dataset}.png")
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)
    return paths


def _time_point(key: tuple) -> tuple[str, str]:
    """(method, dataset) of a result key, for the wall-time plot."""
    if key[0] in ("dc", "mgdd"):
        return key[3], key[1]
    if key[0] in ("dd1", "dd2"):
        return f"dd {key[2]}", key[1]
    return key[0], str(key[1])


def plot_time(index: dict, plots_dir: Path) -> list[Path]:
    """Accuracy against the wall time of each result (distillation + evaluation): colour method, marker dataset."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    points = [(*_time_point(key), sum(ours[0].wall.values()), ours[0].mean) for key, ours in index.items()
              if sum(ours[0].wall.values()) > 0]
    if not points:
        return []
    methods = sorted({p[0] for p in points})
    datasets = sorted({p[1] for p in points})
    markers = "os^vDP*Xph"
    fig, ax = plt.subplots(figsize=(8, 5))
    for method, dataset, seconds, accuracy in points:
        ax.scatter(seconds, accuracy, color=plt.cm.tab20(methods.index(method) % 20),
                   marker=markers[datasets.index(dataset) % len(markers)])
    handles = [Line2D([], [], color=plt.cm.tab20(i % 20), marker="o", linestyle="", label=m)
               for i, m in enumerate(methods)]
    handles += [Line2D([], [], color="grey", marker=markers[i % len(markers)], linestyle="", label=d)
                for i, d in enumerate(datasets)]
    ax.set(xscale="log", xlabel="wall time of the result: distillation + evaluation (s)",
           ylabel="test accuracy (%)", title="accuracy against wall time (colour: method, marker: dataset)")
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    path = plots_dir / "accuracy_vs_time.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


def make_plots(index: dict, plots_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    plots_dir.mkdir(parents=True, exist_ok=True)
    return plot_ipc(ipc_series(index), plots_dir) + plot_time(index, plots_dir)


# --------------------------------------------------------------------------- entry point


def generate(results_dir: Path = RESULTS, bench_dir: Path = BENCHMARKS, out: Path = ROOT / "RESULTS.md",
             plots_dir: Optional[Path] = None) -> str:
    """Writes ``out`` (and the plots) from the result files; returns the markdown."""
    results_dir, bench_dir, out = Path(results_dir), Path(bench_dir), Path(out)
    plots_dir = Path(plots_dir) if plots_dir is not None else results_dir / "plots"
    index, problems = collect(results_dir)
    plots = make_plots(index, plots_dir)
    text = markdown(index, problems, results_dir, bench_dir, plots, out.parent)
    out.write_text(text)
    return text


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="experiment result files")
    parser.add_argument("--benchmarks", type=Path, default=BENCHMARKS, help="benchmark result files")
    parser.add_argument("--out", type=Path, default=ROOT / "RESULTS.md")
    parser.add_argument("--plots", type=Path, default=None, help="PNG folder (default RESULTS_DIR/plots)")
    args = parser.parse_args(argv)
    generate(args.results, args.benchmarks, args.out, args.plots)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
