"""jaxdd's files: synthetic sets, and the atomic writers and checks every jaxdd file goes through.

A set is a folder with ``synset.npz`` (arrays), ``synset.json`` (metadata) and ``synset.png``
(grid). The JSON records what is needed to use and to undo the set: dataset, image shape,
normalisation, ZCA (its matrices travel in the npz), label kind, learned step sizes, method and
config, seed, versions, the run's identity, a SHA-256 of the arrays and one of the metadata itself.

Guarantees:

- Writes are atomic (:func:`write_file_atomically`, :func:`write_folder_atomically`): a reader, or
  a crash at any instant, sees the old files or all the new ones, never a mix or a part.
- Nothing inconsistent is written: :func:`save_synset` runs the same checks as the loader
  (:func:`validate_synset`), NaN/inf images included.
- Every load checks the files against each other and the metadata against the arrays (image shape,
  class count, label kind, step sizes, ZCA matrices, the dataset registry's shape); any failure is
  one :class:`FileCheckError` with a one-line message.
"""

from __future__ import annotations

import ctypes
import datetime
import hashlib
import io as _io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Mapping, Optional, Union

import numpy as np

from jaxdd.types import SynSet

FORMAT_VERSION = 2
"""Version of the set files written now; version 1 (no metadata hash) is still read."""
READABLE_VERSIONS = (1, 2)
ARRAYS_FILE, META_FILE, GRID_FILE = "synset.npz", "synset.json", "synset.png"

Content = Union[bytes, str, Callable[[BinaryIO], None]]
"""A file's content for the atomic writers: bytes, text (UTF-8), or a function writing to a file."""


class FileCheckError(ValueError):
    """A jaxdd file (set, checkpoint, generator) is missing, corrupt, or disagrees with its metadata."""


class SynSetError(FileCheckError):
    """A set file is missing, corrupt or inconsistent."""


# --------------------------------------------------------------------------------------------
# Atomic writers


def _write_content(file: BinaryIO, content: Content) -> None:
    if isinstance(content, str):
        content = content.encode()
    if isinstance(content, (bytes, bytearray, memoryview)):
        file.write(content)
    else:
        content(file)
    file.flush()
    os.fsync(file.fileno())


def _fsync_folder(folder: Path) -> None:
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def write_file_atomically(path: str | os.PathLike, content: Content) -> Path:
    """Replaces the file ``path`` by ``content`` as one change.

    The content goes to a temporary file in the same folder, is flushed to disk, and is renamed
    over ``path`` (a POSIX rename is atomic), so ``path`` always holds either the old or the whole
    new content; a failure removes the temporary file and leaves the old one.

    Args:
        path: the file (its folder is created if needed).
        content: bytes, text, or ``write(binary_file)``.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            _write_content(file, content)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two paths in one step with Linux's ``renameat2(RENAME_EXCHANGE)``; False if unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_folder_atomically(
    folder: str | os.PathLike, files: Mapping[str, Content], remove: Iterable[str] = ()
) -> Path:
    """Writes several files into ``folder`` as one change: all of them or none.

    A staging folder beside ``folder`` receives the new files and hard links to the folder's other
    entries (for example a checkpoint); the two folders are then swapped in one step
    (``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere two renames, the old folder kept under a
    hidden name beside it until the new one is in place) and the old one is deleted. Readers and
    crashes see the old folder or the new one, never a mix of old and new files.

    Args:
        folder: the folder (created if absent; its parent must be writable).
        files: file name -> content (bytes, text, or ``write(binary_file)``).
        remove: names of existing entries not to carry over (e.g. an output no longer produced).

    Returns:
        ``folder``.
    """
    folder = Path(os.path.realpath(folder))
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} exists and is not a folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.jaxdd-", dir=folder.parent))
    try:
        skip = set(files) | set(remove)
        if folder.is_dir():
            for entry in folder.iterdir():
                if entry.name in skip:
                    continue
                target = staging / entry.name
                if entry.is_symlink():
                    os.symlink(os.readlink(entry), target)
                elif entry.is_dir():
                    shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
                else:
                    _link_or_copy(str(entry), str(target))
        for name, content in files.items():
            with open(staging / name, "wb") as file:
                _write_content(file, content)
        _fsync_folder(staging)
        if not folder.exists():
            os.rename(staging, folder)
        elif not _exchange(staging, folder):
            aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.jaxdd-old-", dir=folder.parent))
            os.rename(folder, aside / "old")
            try:
                os.rename(staging, folder)
            except BaseException:
                os.rename(aside / "old", folder)
                raise
            shutil.rmtree(aside, ignore_errors=True)
        _fsync_folder(folder.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after a swap this is the old folder
    return folder


# --------------------------------------------------------------------------------------------
# Hashes, identities and checks shared by every file kind


def content_hash(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of ``arrays`` (order-independent)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(memoryview(value).cast("B") if value.size else b"")
    return digest.hexdigest()


def array_fingerprint(*arrays: Any, max_bytes: int = 1 << 28) -> str:
    """A short SHA-256 fingerprint of arrays (e.g. the training data a run loaded).

    Shapes and dtypes always count; the bytes count in full up to ``max_bytes`` per array (MNIST's
    training images, 188 MB, hash in about 0.2 s on one CPU core), and beyond that through an evenly
    strided subset of rows of at most ``max_bytes``.
    """
    digest = hashlib.sha256()
    for array in arrays:
        value = np.asarray(array)
        digest.update(f"{value.dtype.str}|{value.shape}|".encode())
        if value.nbytes > max_bytes and value.ndim:
            stride = -(-value.nbytes // max_bytes)
            value = value[::stride]
        value = np.ascontiguousarray(value)
        digest.update(memoryview(value).cast("B") if value.size else b"")
    return digest.hexdigest()[:16]


def _json_default(value):
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return list(np.asarray(value).tolist()) if isinstance(value, np.ndarray) else list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def canonical(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, NumPy scalars Python numbers).

    Raises:
        TypeError: ``value`` holds something JSON cannot store.
    """
    return json.loads(json.dumps(value, default=_json_default))


def meta_hash(meta: Mapping[str, Any]) -> str:
    """SHA-256 of a metadata dict in canonical JSON (sorted keys), its own ``meta_sha256`` left out."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=_json_default).encode()).hexdigest()


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, sort_keys=True, default=_json_default)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def identity_diff(stored: Any, current: Any, prefix: str = "") -> list[str]:
    """The fields where two run identities differ, as ``"name: stored -> current"`` strings.

    Nested dicts are compared field by field (``config.lr: 0.1 -> 0.5``); the comparison is on
    canonical JSON values, so a tuple equals the list it is stored as.
    """
    stored, current = canonical(stored), canonical(current)
    if isinstance(stored, dict) and isinstance(current, dict):
        found = []
        for name in sorted(set(stored) | set(current), key=str):
            missing = "(absent)"
            a, b = stored.get(name, missing), current.get(name, missing)
            if a != b:
                if isinstance(a, dict) and isinstance(b, dict):
                    found += identity_diff(a, b, f"{prefix}{name}.")
                else:
                    found.append(f"{prefix}{name}: {a if a is missing else _short(a)} -> {b if b is missing else _short(b)}")
        return found
    return [] if stored == current else [f"{prefix.rstrip('.') or 'identity'}: {_short(stored)} -> {_short(current)}"]


def read_npz(path: str | os.PathLike, error: type[Exception] = FileCheckError) -> dict[str, np.ndarray]:
    """Reads every array of an ``.npz`` file (no pickles) or raises ``error`` with one line.

    Truncated, flipped or otherwise corrupt files (zip structure, CRC, ``.npy`` headers) all end
    in ``error``; the zip CRC of each member is checked as it is read.
    """
    try:
        stored = np.load(path, allow_pickle=False)
        if not isinstance(stored, np.lib.npyio.NpzFile):
            raise ValueError("not an npz archive")
        with stored:
            return {name: stored[name] for name in stored.files}
    except FileNotFoundError:
        raise error(f"{path} is missing") from None
    except Exception as problem:  # zip, CRC, npy-header parsing (even SyntaxError, TokenError): all mean corrupt
        reason = str(problem).splitlines()[0][:120] if str(problem) else ""
        raise error(f"{path} is corrupt or truncated ({type(problem).__name__}{': ' + reason if reason else ''})") from None


def read_json(path: str | os.PathLike, error: type[Exception] = FileCheckError) -> Any:
    """Reads a JSON file or raises ``error`` with one line (missing, not UTF-8, invalid, too deep)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as problem:
        reason = str(problem).splitlines()[0][:120] if str(problem) else type(problem).__name__
        raise error(f"{path} is not valid JSON ({reason})") from None


def registry_mismatch(
    dataset: Any, image_shape: Any, num_classes: Any = None, mean: Any = None, std: Any = None
) -> Optional[str]:
    """What disagrees with the dataset registry, as text (None when all agrees or the name is not registered).

    Files name a dataset; when the name is a registered one, its image shape, class count and
    normalisation (those given) must be the registry's, so that a file cannot claim a dataset its
    arrays do not come from.
    """
    from jaxdd.data import DATASETS

    info = DATASETS.get(dataset) if isinstance(dataset, str) else None
    if info is None:
        return None
    if list(image_shape) != list(info.image_shape):
        return f"dataset {dataset!r} has images {list(info.image_shape)}, the file says {list(image_shape)}"
    if num_classes is not None and num_classes != info.num_classes:
        return f"dataset {dataset!r} has {info.num_classes} classes, the file says {num_classes}"
    for name, given, registered in (("mean", mean, info.mean), ("std", std, info.std)):
        if given is not None and not np.allclose(np.asarray(given, np.float64), registered, rtol=1e-6, atol=0):
            return f"dataset {dataset!r} has {name} {list(registered)}, the file says {given}"
    return None


# --------------------------------------------------------------------------------------------
# Synthetic sets


def versions() -> dict[str, str]:
    """Versions of jaxdd and the libraries that shape its numbers."""
    import importlib.metadata as md

    found = {}
    for package in ("jaxdd", "jax", "jaxlib", "flax", "optax", "numpy"):
        try:
            found[package] = md.version(package)
        except md.PackageNotFoundError:
            found[package] = "unknown"
    return found


def synset_arrays(synset: SynSet, extra_arrays: Optional[dict] = None) -> dict[str, np.ndarray]:
    """The arrays stored in ``synset.npz``."""
    arrays = {"images": np.asarray(synset.images, np.float32), "labels": np.asarray(synset.labels)}
    if synset.step_sizes is not None:
        arrays["step_sizes"] = np.asarray(synset.step_sizes, np.float32)
    for name, value in (extra_arrays or {}).items():
        if name in arrays:
            raise ValueError(f"extra array name {name!r} is reserved")
        arrays[name] = np.asarray(value)
    return arrays


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buffer = _io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def save_synset(
    out_dir: str | os.PathLike,
    synset: SynSet,
    meta: dict[str, Any],
    extra_arrays: Optional[dict[str, Any]] = None,
    grid: bool = True,
) -> Path:
    """Checks a set and writes ``synset.npz``, ``synset.json`` and ``synset.png`` into ``out_dir`` atomically.

    The set is checked exactly as :func:`load_synset` checks it (NaN/inf images, shapes against the
    metadata and the dataset registry, labels, step sizes) before anything touches the disk, and
    the three files replace an older set in ``out_dir`` in one step (:func:`write_folder_atomically`);
    other files there (a checkpoint) stay.

    Args:
        out_dir: folder (created if needed).
        synset: the set.
        meta: at least ``dataset``, ``image_shape``, ``num_classes``, ``mean`` and ``std``;
            anything JSON-serialisable more (method, config, seed, arch, zca, identity...).
        extra_arrays: more arrays for the npz (ZCA matrices ``zca_mean``/``zca_inverse``,
            DD's fixed initialisation ...).
        grid: also write the PNG grid (without it, an older ``synset.png`` is removed).

    Returns:
        The folder.

    Raises:
        SynSetError: the set is inconsistent or not finite; nothing is written.
        TypeError: ``meta`` holds something JSON cannot store; nothing is written.
    """
    out_dir = Path(out_dir)
    for field in ("dataset", "image_shape", "num_classes", "mean", "std"):
        if field not in meta:
            raise SynSetError(f"set metadata needs {field!r}")
    arrays = synset_arrays(synset, extra_arrays)
    labels = arrays["labels"]
    full_meta = canonical({
        "format_version": FORMAT_VERSION,
        **meta,
        "num_images": int(arrays["images"].shape[0]) if arrays["images"].ndim else 0,
        "label_kind": "soft" if labels.ndim == 2 else "hard",
        "has_step_sizes": "step_sizes" in arrays,
        "arrays": sorted(arrays),
        "versions": versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "content_sha256": content_hash(arrays),
    })
    full_meta["meta_sha256"] = meta_hash(full_meta)
    validate_synset(arrays, full_meta, f"refusing to save the set for {out_dir}")
    files: dict[str, Content] = {
        ARRAYS_FILE: _npz_bytes(arrays),
        META_FILE: json.dumps(full_meta, indent=2) + "\n",
    }
    if grid:
        files[GRID_FILE] = lambda file: save_grid(file, arrays["images"], labels, full_meta, arrays)
    write_folder_atomically(out_dir, files, remove=() if grid else (GRID_FILE,))
    return out_dir


def load_synset(path: str | os.PathLike) -> tuple[SynSet, dict, dict[str, np.ndarray]]:
    """Loads and validates a set written by :func:`save_synset`.

    Args:
        path: the folder, or its ``synset.npz`` / ``synset.json``.

    Returns:
        (synset, meta, extra_arrays) with numpy arrays.

    Raises:
        SynSetError: missing files, unreadable or corrupt content, a hash that does not match,
            or metadata that disagrees with the arrays or the dataset registry (one line).
    """
    path = Path(path)
    folder = path.parent if path.suffix in (".npz", ".json") else path
    arrays_path, meta_path = folder / ARRAYS_FILE, folder / META_FILE
    for required in (arrays_path, meta_path):
        if not required.is_file():
            raise SynSetError(f"no synthetic set at {folder}: {required.name} is missing")
    meta = read_json(meta_path, SynSetError)
    arrays = read_npz(arrays_path, SynSetError)
    validate_synset(arrays, meta, str(folder))
    synset = SynSet(arrays.pop("images"), arrays.pop("labels"), arrays.pop("step_sizes", None))
    return synset, meta, arrays


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def validate_synset(arrays: Mapping[str, np.ndarray], meta: Any, where: str) -> None:
    """Checks a set's metadata against its arrays; raises :class:`SynSetError` with one line.

    Checked: the format version; the metadata hash (version 2) and the arrays' hash; image shape
    (N, *image_shape) with N = num_images >= 1 and float32 finite values; the image shape and class
    count against the dataset registry (for registered names); mean/std per channel; hard labels
    (N,) integers in [0, num_classes) or soft labels (N, num_classes) finite floats, as
    ``label_kind`` says; step sizes present as ``has_step_sizes`` says, non-empty, finite;
    ``eval_overrides`` (protocol changes the set asks for) a mapping to finite numbers, strings or
    booleans; the ZCA matrices of a whitened set; the stored array names.

    Args:
        arrays: the npz content.
        meta: the parsed JSON.
        where: the folder (or action) named in the message.
    """

    def fail(reason: str):
        raise SynSetError(f"{where}: {reason}")

    if not isinstance(meta, dict) or not (_is_int(meta.get("format_version")) and meta["format_version"] in READABLE_VERSIONS):
        fail(f"{META_FILE} is not a jaxdd set file (format_version {FORMAT_VERSION} expected)")
    if (meta["format_version"] >= 2 or "meta_sha256" in meta) and meta.get("meta_sha256") != meta_hash(meta):
        fail(f"{META_FILE} does not match its own hash (edited or corrupt)")
    for name in ("images", "labels"):
        if name not in arrays:
            fail(f"{ARRAYS_FILE} has no {name!r} array")
    if meta.get("content_sha256") != content_hash(arrays):
        fail(f"arrays do not match the hash in {META_FILE} (corrupt or edited)")
    if meta.get("arrays", sorted(arrays)) != sorted(arrays):
        fail(f"{ARRAYS_FILE} holds {sorted(arrays)}, {META_FILE} lists {meta.get('arrays')}")
    shape, num_classes, dataset = meta.get("image_shape"), meta.get("num_classes"), meta.get("dataset")
    if not isinstance(dataset, str) or not dataset:
        fail(f"dataset {dataset!r} is not a name")
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(d) and d >= 1 for d in shape)):
        fail(f"image_shape {shape!r} is not [height, width, channels]")
    if not (_is_int(num_classes) and num_classes >= 1):
        fail(f"num_classes {num_classes!r} is not a positive integer")
    for field in ("mean", "std"):
        value = meta.get(field)
        if not (isinstance(value, list) and len(value) == shape[2] and all(_is_number(v) for v in value)):
            fail(f"{field} {value!r} is not one number per channel ({shape[2]})")
    if not all(v > 0 for v in meta["std"]):
        fail(f"std {meta['std']} is not positive")
    images, labels = arrays["images"], arrays["labels"]
    if images.ndim != 4 or list(images.shape[1:]) != shape:
        fail(f"images {images.shape} do not match image_shape {shape}")
    mismatch = registry_mismatch(dataset, shape, num_classes, meta["mean"], meta["std"])
    if mismatch:
        fail(mismatch)
    if images.dtype != np.float32:
        fail(f"images are {images.dtype}, float32 expected")
    if images.shape[0] < 1:
        fail("the set has no images")
    if meta.get("num_images", images.shape[0]) != images.shape[0]:
        fail(f"{images.shape[0]} images, {META_FILE} says {meta.get('num_images')}")
    if labels.shape[:1] != images.shape[:1]:
        fail(f"labels {labels.shape} for {images.shape[0]} images")
    kind = "soft" if labels.ndim == 2 else "hard"
    if meta.get("label_kind", kind) != kind:
        fail(f"{META_FILE} says {meta.get('label_kind')} labels, the arrays hold {kind} labels {labels.shape}")
    if kind == "hard":
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            fail(f"hard labels must be (N,) integers, got {labels.dtype} {labels.shape}")
        if labels.min() < 0 or labels.max() >= num_classes:
            fail(f"labels outside [0, {num_classes})")
    else:
        if labels.shape[1] != num_classes or not np.issubdtype(labels.dtype, np.floating):
            fail(f"soft labels {labels.dtype} {labels.shape} do not match {num_classes} classes")
        if not np.all(np.isfinite(labels)):
            fail("soft labels contain NaN or inf")
    steps = arrays.get("step_sizes")
    if bool(meta.get("has_step_sizes", steps is not None)) != (steps is not None):
        fail(f"{META_FILE} has_step_sizes={meta.get('has_step_sizes')} but the arrays {'hold' if steps is not None else 'lack'} step sizes")
    if steps is not None and (steps.ndim < 1 or steps.size < 1 or not np.issubdtype(steps.dtype, np.floating) or not np.all(np.isfinite(steps))):
        fail(f"step sizes must be a non-empty finite float array, got {steps.dtype} {steps.shape}")
    overrides = meta.get("eval_overrides", {})
    if not (isinstance(overrides, dict) and all(isinstance(v, (str, bool)) or _is_number(v) for v in overrides.values())):
        fail(f"eval_overrides {overrides!r} is not a mapping of protocol fields to numbers, strings or booleans")
    zca_mean, zca_inverse = arrays.get("zca_mean"), arrays.get("zca_inverse")
    if meta.get("zca"):
        size = int(np.prod(shape))
        if zca_mean is None or zca_inverse is None or zca_mean.shape != (size,) or zca_inverse.shape != (size, size):
            fail(f"a ZCA set needs zca_mean ({size},) and zca_inverse ({size}, {size})")
    elif zca_mean is not None or zca_inverse is not None:
        fail(f"{META_FILE} says zca={meta.get('zca')!r} but the arrays hold ZCA matrices")
    if not np.all(np.isfinite(images)):
        fail("images contain NaN or inf")


def to_pixels(images: np.ndarray, meta: dict, arrays: Optional[dict] = None) -> np.ndarray:
    """Undoes ZCA (if the set was whitened) and normalisation; returns [0, 1] pixels, clipped."""
    images = np.asarray(images, np.float32)
    arrays = arrays or {}
    if meta.get("zca") and "zca_inverse" in arrays:
        flat = images.reshape(images.shape[0], -1) @ np.asarray(arrays["zca_inverse"]).T
        images = (flat + np.asarray(arrays.get("zca_mean", 0.0)).reshape(1, -1)).reshape(images.shape)
    mean = np.asarray(meta["mean"], np.float32)
    std = np.asarray(meta["std"], np.float32)
    return np.clip(images * std + mean, 0.0, 1.0)


def image_grid(pixels: np.ndarray, rows: int, scale: int = 1, pad: int = 1) -> np.ndarray:
    """Tiles (N, H, W, C) pixels in [0, 1] into a uint8 grid of ``rows`` rows (row-major)."""
    count, height, width, channels = pixels.shape
    cols = max(1, -(-count // rows))
    cell_h, cell_w = height * scale + pad, width * scale + pad
    grid = np.ones((rows * cell_h + pad, cols * cell_w + pad, channels), np.float32)
    for index in range(count):
        row, col = divmod(index, cols)
        tile = np.repeat(np.repeat(pixels[index], scale, 0), scale, 1)
        grid[pad + row * cell_h : pad + row * cell_h + height * scale, pad + col * cell_w : pad + col * cell_w + width * scale] = tile
    grid = (grid * 255).round().astype(np.uint8)
    return grid[..., 0] if channels == 1 else grid


def save_grid(path: str | os.PathLike | BinaryIO, images: np.ndarray, labels: np.ndarray, meta: dict, arrays: Optional[dict] = None) -> None:
    """Writes the set as a PNG grid: one row per class (argmax of soft labels), de-normalised."""
    from PIL import Image

    classes = labels.argmax(1) if labels.ndim == 2 else labels
    num_classes = int(meta["num_classes"])
    order = np.argsort(classes, kind="stable")
    per_class = np.bincount(classes, minlength=num_classes)
    cols = max(1, int(per_class.max()))
    pixels = to_pixels(images, meta, arrays)
    canvas = np.zeros((num_classes * cols,) + pixels.shape[1:], np.float32) + 1.0
    slot = np.zeros(num_classes, int)
    for index in order:
        c = classes[index]
        canvas[c * cols + slot[c]] = pixels[index]
        slot[c] += 1
    scale = max(1, 64 // max(pixels.shape[1], 1))
    Image.fromarray(image_grid(canvas, num_classes, scale=scale)).save(path, format="PNG")
