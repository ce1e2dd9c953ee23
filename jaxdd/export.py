"""Sets that travel: export a jaxdd set to the PyTorch layout, PNG folders or NCHW ``.npz``, and
import the ``.pt`` sets released by the DC / DSA / DM reference code.

The PyTorch layout is the one the reference code (Zhao et al., ``DatasetCondensation``) saves in
its ``res_*.pt`` files and that DD-Ranking and most PyTorch training code read: a dict
``{'data': [[image_syn, label_syn], ...], 'accs_all_exps': {...}}`` with one ``[images, labels]``
pair per experiment, ``image_syn`` an (N, C, H, W) float32 tensor normalised per channel by the
dataset's mean and std, and ``label_syn`` an (N,) int64 tensor, sorted by class. jaxdd writes
one experiment and adds its own keys beside ``data`` (``dataset``, ``mean``, ``std``, ``zca``,
``meta``; ``step_sizes``, ``zca_mean`` and ``zca_inverse`` when the set has them); soft labels
travel as an (N, num_classes) float32 tensor. Only ``--to torch`` needs PyTorch; ``--to npz``
writes the same arrays (``images`` NCHW float32, ``labels`` int64 or float32) with NumPy.

Images are exported in the space they were distilled in: normalised, and ZCA-whitened if the
set is (then the ZCA matrices travel with them, as MTT's released sets keep their images
whitened). PNG folders hold displayable pixels (whitening and normalisation undone, clipped).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from jaxdd import io
from jaxdd.types import SynSet

FORMATS = ("torch", "npz", "png")

REFERENCE_NAMES: dict[str, str] = {
    "MNIST": "mnist",
    "FashionMNIST": "fashion_mnist",
    "SVHN": "svhn_cropped",
    "CIFAR10": "cifar10",
    "CIFAR100": "cifar100",
}
"""The reference code's ``--dataset`` names -> jaxdd's registry names."""

REFERENCE_NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2861,), (0.3530,)),
    "svhn_cropped": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
}
"""(mean, std) with which the DC / DSA / DM code (``utils.get_dataset``) normalised its images."""


class ExportError(ValueError):
    """A set cannot be exported or imported as asked (missing PyTorch, a file that does not fit)."""


def _torch():
    try:
        import torch
    except ImportError:
        raise ExportError("this needs PyTorch, which is not installed (pip install torch); "
                          "--to npz writes the same NCHW arrays without it") from None
    return torch


def to_nchw(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> (N, C, H, W) float32, contiguous."""
    return np.ascontiguousarray(np.transpose(np.asarray(images, np.float32), (0, 3, 1, 2)))


def from_nchw(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N, H, W, C) float32, contiguous."""
    return np.ascontiguousarray(np.transpose(np.asarray(images, np.float32), (0, 2, 3, 1)))


def reference_arrays(synset: SynSet, meta: dict, extras: dict) -> dict[str, np.ndarray]:
    """A set's arrays in the PyTorch layout: NCHW float32 images, int64 (or float32 soft) labels.

    Args:
        synset: the set as loaded by :func:`jaxdd.io.load_synset` (NHWC images).
        meta: its metadata.
        extras: its extra arrays (ZCA matrices are passed on).

    Returns:
        ``images``, ``labels``, ``mean``, ``std`` and, where the set has them, ``step_sizes``,
        ``zca_mean``, ``zca_inverse``.
    """
    labels = np.asarray(synset.labels)
    arrays = {
        "images": to_nchw(synset.images),
        "labels": labels.astype(np.float32) if labels.ndim == 2 else labels.astype(np.int64),
        "mean": np.asarray(meta["mean"], np.float32),
        "std": np.asarray(meta["std"], np.float32),
    }
    if synset.step_sizes is not None:
        arrays["step_sizes"] = np.asarray(synset.step_sizes, np.float32)
    if meta.get("zca"):
        for name in ("zca_mean", "zca_inverse"):
            if name in extras:
                arrays[name] = np.asarray(extras[name], np.float32)
    return arrays


def reference_file_name(meta: dict) -> str:
    """``res_<METHOD>_<DATASET>_<arch>_<ipc>ipc.pt``: the reference's file name (its dataset names
    where it has the dataset, e.g. ``MNIST``; jaxdd's registry name otherwise)."""
    names = {v: k for k, v in REFERENCE_NAMES.items()}
    dataset = names.get(meta.get("dataset"), meta.get("dataset", "set"))
    parts = [str(meta.get("method") or "jaxdd").upper(), dataset, str(meta.get("arch") or "ConvNet")]
    ipc = meta.get("ipc")
    return "res_" + "_".join(parts) + (f"_{ipc}ipc" if ipc else "") + ".pt"


def export_synset(path: str | os.PathLike, fmt: str, out: Optional[str | os.PathLike] = None) -> Path:
    """Writes a jaxdd set in another layout.

    Args:
        path: the set's folder (or its ``synset.npz`` / ``synset.json``).
        fmt: ``'torch'`` (a ``.pt`` file in the reference layout; needs PyTorch), ``'npz'`` (the
            same NCHW arrays, NumPy only, with ``dataset`` and ``zca`` as 0-d arrays) or
            ``'png'`` (a folder per class, ``0``, ``1``, ... zero-padded beyond ten classes so
            that name order is label order, one PNG per image, and ``classes.txt`` with the
            class names; soft labels go by their argmax, the labels themselves in
            ``soft_labels.npy``).
        out: where to write (default: inside the set's folder, ``res_*.pt``, ``synset_nchw.npz``
            or ``png/``).

    Returns:
        The file or folder written.

    Raises:
        ExportError: unknown format, or ``'torch'`` without PyTorch installed.
        jaxdd.io.SynSetError: the set is missing or corrupt.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    synset, meta, extras = io.load_synset(path)
    folder = Path(path)
    folder = folder.parent if folder.suffix in (".npz", ".json") else folder
    if fmt == "png":
        target = Path(out) if out is not None else folder / "png"
        _write_png_folders(target, synset, meta, extras)
        return target
    arrays = reference_arrays(synset, meta, extras)
    if fmt == "npz":
        target = Path(out) if out is not None else folder / "synset_nchw.npz"
        names = {"dataset": np.asarray(meta["dataset"]), "zca": np.asarray(bool(meta.get("zca")))}
        return io.write_file_atomically(target, lambda f: np.savez(f, **arrays, **names))
    torch = _torch()
    target = Path(out) if out is not None else folder / reference_file_name(meta)
    payload: dict[str, Any] = {
        "data": [[torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"])]],
        "accs_all_exps": {},
        "dataset": meta["dataset"],
        "zca": bool(meta.get("zca")),
        "meta": json.loads(json.dumps(meta, default=str)),
    }
    for name in ("mean", "std", "step_sizes", "zca_mean", "zca_inverse"):
        if name in arrays:
            payload[name] = torch.from_numpy(arrays[name])
    return io.write_file_atomically(target, lambda f: torch.save(payload, f))


def _write_png_folders(target: Path, synset: SynSet, meta: dict, extras: dict) -> None:
    """Builds the class folders beside ``target``, then puts them in its place in one rename."""
    from PIL import Image

    labels = np.asarray(synset.labels)
    classes = labels.argmax(1) if labels.ndim == 2 else labels.astype(np.int64)
    pixels = (io.to_pixels(synset.images, meta, extras) * 255).round().astype(np.uint8)
    num_classes = int(meta["num_classes"])
    width = len(str(num_classes - 1))
    per_image = len(str(max(len(classes) - 1, 0)))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for c in range(num_classes):
            (staging / f"{c:0{width}d}").mkdir()
        for index, (image, c) in enumerate(zip(pixels, classes)):
            image = image[..., 0] if image.shape[-1] == 1 else image
            Image.fromarray(image).save(staging / f"{int(c):0{width}d}" / f"{index:0{per_image}d}.png")
        names = _class_names(meta.get("dataset"), num_classes)
        (staging / "classes.txt").write_text("".join(f"{c:0{width}d} {n}\n" for c, n in enumerate(names)))
        if labels.ndim == 2:
            np.save(staging / "soft_labels.npy", labels.astype(np.float32))
        if target.exists():
            shutil.rmtree(target)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _class_names(dataset: Optional[str], num_classes: int) -> list[str]:
    from jaxdd import data

    info = data.DATASETS.get(dataset or "")
    return list(info.class_names) if info is not None else [str(c) for c in range(num_classes)]


# ----------------------------------------------------------------------------------------- import


def parse_reference_name(file: str | os.PathLike) -> dict[str, Any]:
    """What a reference file name says: ``res_[METHOD_]DATASET_MODEL_<k>ipc.pt``.

    Returns:
        ``{'dataset': jaxdd name or None, 'method': lower-case or None, 'arch': str or None,
        'ipc': int or None}``.
    """
    found: dict[str, Any] = {"dataset": None, "method": None, "arch": None, "ipc": None}
    tokens = Path(file).stem.split("_")
    if tokens and tokens[0] == "res":
        tokens = tokens[1:]
    if tokens and (match := re.fullmatch(r"(\d+)ipc", tokens[-1])):
        found["ipc"] = int(match.group(1))
        tokens = tokens[:-1]
    for i, token in enumerate(tokens):
        if token in REFERENCE_NAMES:
            found["dataset"] = REFERENCE_NAMES[token]
            found["method"] = "_".join(tokens[:i]).lower() or None
            found["arch"] = "_".join(tokens[i + 1:]) or None
            break
    return found


def _read_pairs(file: Path) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict]:
    """The [images, labels] pairs of a ``.pt`` (reference layout) or NCHW ``.npz`` file."""
    if file.suffix == ".npz":
        with np.load(file, allow_pickle=False) as stored:
            if "images" not in stored.files or "labels" not in stored.files:
                raise ExportError(f"{file}: an NCHW .npz needs 'images' and 'labels' arrays "
                                  f"(has {sorted(stored.files)})")
            extra = {k: stored[k] for k in stored.files if k not in ("images", "labels")}
            return [(stored["images"], stored["labels"])], extra
    torch = _torch()
    try:
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors all mean: not a readable .pt
        raise ExportError(f"{file} is not a readable PyTorch file ({type(error).__name__}: "
                          f"{error})") from None
    if isinstance(loaded, dict) and "data" in loaded:
        pairs, rest = loaded["data"], {k: v for k, v in loaded.items() if k != "data"}
    elif isinstance(loaded, (list, tuple)) and len(loaded) == 2 and hasattr(loaded[0], "shape"):
        pairs, rest = [loaded], {}
    else:
        raise ExportError(f"{file}: expected {{'data': [[image_syn, label_syn], ...]}} (the "
                          "DC/DSA/DM res_*.pt layout) or [image_syn, label_syn]")
    out = []
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ExportError(f"{file}: every entry of 'data' must be [image_syn, label_syn]")
        out.append(tuple(t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
                         for t in pair))
    extra = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in rest.items()}
    return out, extra


def import_reference(
    file: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dataset: Optional[str] = None,
    experiment: int = 0,
    mean: Optional[tuple[float, ...]] = None,
    std: Optional[tuple[float, ...]] = None,
) -> Path:
    """Turns a released set into a jaxdd set folder (``synset.npz/json/png``).

    Reads the reference layout ``{'data': [[image_syn, label_syn], ...]}`` (one pair per
    experiment; ``experiment`` picks one) of a ``.pt`` file (needs PyTorch), or an NCHW ``.npz``
    written by :func:`export_synset`. The images were normalised by the reference code's
    mean/std (:data:`REFERENCE_NORMALISATION`, or ``mean``/``std`` if given); they are brought
    to jaxdd's normalisation of the dataset, ``x = ((x_src * std_src + mean_src) - mean) / std``
    (the identity for every dataset both codes share), and the source normalisation, file name,
    SHA-256 and experiment are recorded in ``synset.json`` under ``imported``.

    Args:
        file: the ``.pt`` or ``.npz`` file.
        out: the folder to write.
        dataset: jaxdd registry name; default from the file (its ``dataset`` key, or the
            reference's file name ``res_[METHOD_]DATASET_MODEL_<k>ipc.pt``).
        experiment: which ``[images, labels]`` pair of the file.
        mean, std: the normalisation the file's images carry, if not the reference code's.

    Returns:
        The folder written.

    Raises:
        ExportError: unreadable file, unknown dataset, images or labels that do not fit it.
    """
    from jaxdd import data

    file = Path(file)
    if not file.is_file():
        raise ExportError(f"no file {file}")
    pairs, extra = _read_pairs(file)
    named = parse_reference_name(file)
    dataset = dataset or (str(extra["dataset"]) if "dataset" in extra else None) or named["dataset"]
    if dataset is None:
        raise ExportError(f"{file}: cannot tell the dataset from the file; name it (--dataset)")
    if dataset not in data.DATASETS:
        raise ExportError(f"unknown dataset {dataset!r}; known: {', '.join(data.DATASETS)}")
    info = data.DATASETS[dataset]
    if not 0 <= experiment < len(pairs):
        raise ExportError(f"{file} holds {len(pairs)} experiment(s); --experiment {experiment} "
                          "is out of range")
    images, labels = pairs[experiment]
    h, w, c = info.image_shape
    if images.ndim != 4 or tuple(images.shape[1:]) != (c, h, w):
        raise ExportError(f"{file}: images have shape {tuple(images.shape)}, but {dataset} "
                          f"images are (N, {c}, {h}, {w}) in this layout")
    if labels.shape[0] != images.shape[0]:
        raise ExportError(f"{file}: {labels.shape[0]} labels for {images.shape[0]} images")
    if labels.ndim == 1:
        labels = labels.astype(np.int64)
        if labels.min(initial=0) < 0 or labels.max(initial=0) >= info.num_classes:
            raise ExportError(f"{file}: labels outside [0, {info.num_classes}) of {dataset}")
        labels = labels.astype(np.int32)
    elif labels.ndim != 2 or labels.shape[1] != info.num_classes:
        raise ExportError(f"{file}: labels of shape {tuple(labels.shape)} fit neither hard "
                          f"(N,) nor soft (N, {info.num_classes}) labels of {dataset}")
    if not np.all(np.isfinite(images)):
        raise ExportError(f"{file}: images contain NaN or inf")
    zca = bool(np.asarray(extra.get("zca", False)))
    src_mean, src_std = _source_normalisation(file, info, extra, mean, std)
    x = from_nchw(images)
    target_mean, target_std = np.asarray(info.mean, np.float32), np.asarray(info.std, np.float32)
    if not (np.array_equal(src_mean, target_mean) and np.array_equal(src_std, target_std)):
        if zca:
            raise ExportError(f"{file}: ZCA-whitened images with another normalisation than "
                              f"jaxdd's {dataset} cannot be brought into its space")
        x = ((x * src_std + src_mean) - target_mean) / target_std
    step_sizes = extra.get("step_sizes")
    synset = SynSet(x.astype(np.float32), labels.astype(np.float32) if labels.ndim == 2 else labels,
                    None if step_sizes is None else np.asarray(step_sizes, np.float32))
    zca_arrays = {k: np.asarray(extra[k], np.float32) for k in ("zca_mean", "zca_inverse")
                  if zca and k in extra}
    stored = extra.get("meta") if isinstance(extra.get("meta"), dict) else {}
    method = named["method"] or stored.get("method") or "imported"
    meta = {
        "dataset": dataset,
        "image_shape": list(info.image_shape),
        "num_classes": info.num_classes,
        "mean": list(info.mean),
        "std": list(info.std),
        "zca": zca,
        "method": method,
        "arch": _known_arch(named["arch"] or stored.get("arch")),
        "ipc": named["ipc"] or int(images.shape[0]) // info.num_classes,
        "eval_protocol": stored.get("eval_protocol") or ("dc" if method in ("dc", "imported") else "dsa"),
        "imported": {
            "file": file.name,
            "sha256": _sha256(file),
            "layout": "NCHW [image_syn, label_syn] (DC/DSA/DM reference code)",
            "experiment": experiment,
            "experiments_in_file": len(pairs),
            "source_normalisation": {"mean": [float(v) for v in src_mean],
                                     "std": [float(v) for v in src_std]},
            "reference_accuracies": _accuracies(extra.get("accs_all_exps")),
        },
    }
    return io.save_synset(out, synset, meta, zca_arrays or None)


def _source_normalisation(file, info, extra, mean, std) -> tuple[np.ndarray, np.ndarray]:
    """The (mean, std) the file's images carry: given, recorded in the file, or the reference's."""
    if mean is None and "mean" in extra and "std" in extra:
        mean, std = extra["mean"], extra["std"]
    if mean is None or std is None:
        if info.name not in REFERENCE_NORMALISATION:
            raise ExportError(f"the reference code has no normalisation for {info.name}; give the "
                              "file's mean and std (--mean, --std)")
        mean, std = REFERENCE_NORMALISATION[info.name]
    mean, std = np.asarray(mean, np.float32).reshape(-1), np.asarray(std, np.float32).reshape(-1)
    channels = info.image_shape[2]
    if mean.size != channels or std.size != channels or np.any(std <= 0):
        raise ExportError(f"{file}: mean/std need {channels} value(s) each (std > 0), got "
                          f"{mean.tolist()} / {std.tolist()}")
    return mean, std


def _known_arch(name: Optional[str]) -> str:
    from jaxdd import models

    return name if name in models.ARCHITECTURES else "ConvNet"


def _accuracies(accs: Any) -> Optional[dict]:
    if not isinstance(accs, dict):
        return None
    return {str(k): [float(a) for a in v] for k, v in accs.items()}


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


__all__ = ["FORMATS", "REFERENCE_NAMES", "REFERENCE_NORMALISATION", "ExportError", "export_synset",
           "from_nchw", "import_reference", "parse_reference_name", "reference_arrays",
           "reference_file_name", "to_nchw"]
