"""Datasets: a registry, offline-first loading and ZCA whitening (sampling: :mod:`jaxdd.sampling`).

Images leave this module as float32 NHWC device arrays normalised per channel,
``x = (pixel - mean) / std`` with pixels in [0, 1] and the registry's mean/std (the
constants of the reference code, REFERENCE section 1), labels as int32.

Where the data comes from, in this order (the first that exists is used; a file that
exists but holds the wrong data is refused, never skipped):

1. ``<root>/<name>/<name>.npz`` with ``x_train, y_train, x_test, y_test`` (the Keras layout:
   images (N, H, W) or (N, H, W, C), uint8 in [0, 255] or float in [0, 1]; labels (N,) or (N, 1)).
2. ``<root>/usps/usps.h5`` for USPS: ``train/data`` (7291, 256) float in [0, 1],
   ``train/target``; ``test/data`` (2007, 256), ``test/target``.
3. ``<root>/<name>/`` holding the official files (MNIST, Fashion-MNIST idx ``.gz``): checked
   against the published sha256 and read directly (no TensorFlow; under a second).
4. tensorflow-datasets: a dataset already prepared in the cache ``$JAXDD_CACHE_DIR`` (default
   ``~/.cache/jaxdd``, under ``tfds/``), else a download (needs a network; skipped at once when
   the download host cannot be reached).

Arrays read through tensorflow-datasets are kept decoded in ``<cache>/decoded/<name>.npz`` once
they pass the checks below, so later loads import no TensorFlow (about 1 s instead of 10+).

``<root>`` is the ``data_dir`` argument, else ``$JAXDD_DATA_DIR``. ``digits`` (scikit-learn's
8x8 handwritten digits) and ``digits28`` (the same resized to 28x28) are embedded and need no files. Every source is checked for image shape,
class count and train pixel mean (within ``MEAN_TOLERANCE`` of the registry mean), so two
datasets with the same file names (MNIST and Fashion-MNIST) cannot be confused silently.

TensorFlow is imported lazily, only on the tensorflow-datasets path, and is hidden from GPUs.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

MEAN_TOLERANCE = 0.01
"""Largest accepted |train pixel mean - registry mean| per channel (raw pixels in [0, 1])."""

ZCA_REG = 0.1
"""ZCA regulariser of KIP / FRePo / MTT, relative to the mean eigenvalue."""

DIGITS_TEST_SIZE = 0.25
DIGITS_SPLIT_SEED = 0


class DataError(ValueError):
    """A dataset is missing, unreadable, or holds other data than its name says."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset.

    Attributes:
        name: registry key, also the name of the dataset's sub-folder of the data root.
        image_shape: (H, W, C) of the images as loaded.
        num_classes: number of classes; labels are 0 .. num_classes - 1.
        mean: per-channel mean of the train pixels in [0, 1] used for normalisation.
        std: per-channel std used for normalisation.
        source: where the data comes from and how to supply it offline.
        class_names: one name per class, in label order.
    """

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    class_names: tuple[str, ...]


class ZCA(NamedTuple):
    """A fitted ZCA whitening, ``z = (x - mean) @ whiten``, ``x = z @ unwhiten + mean``.

    Attributes:
        mean: (D,) per-feature mean of the (normalised) train images, D = H * W * C.
        whiten: (D, D) symmetric whitening matrix ``U diag((l + reg * mean(l))^-1/2) U^T``.
        unwhiten: (D, D) its inverse ``U diag((l + reg * mean(l))^1/2) U^T``.
    """

    mean: Array
    whiten: Array
    unwhiten: Array


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset on the default device.

    Attributes:
        info: the registry entry.
        x_train: (N, H, W, C) float32, normalised (and whitened when ``zca`` is set).
        y_train: (N,) int32.
        x_test: (M, H, W, C) float32, same transform as ``x_train``.
        y_test: (M,) int32.
        zca: the whitening fitted on ``x_train`` (applied to both splits), or None.
    """

    info: DatasetInfo
    x_train: Array
    y_train: Array
    x_test: Array
    y_test: Array
    zca: Optional[ZCA] = None


_DIGIT_NAMES = tuple(str(i) for i in range(10))
_CIFAR100_NAMES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
    "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch "
    "crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo "
    "keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse "
    "mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy "
    "porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper "
    "snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television "
    "tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()

DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "digits", (8, 8, 1), 10,
            # Measured once on the fixed train split below (1347 images), pixels / 16.
            (0.305224718123608,), (0.37600559619100277,),
            "scikit-learn load_digits (UCI optical digits, 1797 images 8x8, embedded); "
            "pixels / 16; fixed stratified split train_test_split(test_size=0.25, "
            "random_state=0): 1347 / 450",
            _DIGIT_NAMES),
        DatasetInfo(
            "digits28", (28, 28, 1), 10,
            # Measured on the 1347 train images of `digits` after the resize.
            (0.30522472,), (0.32459265,),
            "scikit-learn load_digits, the `digits` split (1347 / 450) resized bilinearly from "
            "8x8 to 28x28 (embedded), so that it can start a sequence of 28x28 digit domains "
            "with MNIST and USPS (continual learning)",
            _DIGIT_NAMES),
        DatasetInfo(
            "mnist", (28, 28, 1), 10, (0.1307,), (0.3081,),
            "MNIST (LeCun, Cortes, Burges), tfds 'mnist'; offline: the four official idx .gz files "
            "(train-images-idx3-ubyte.gz ...) in <root>/mnist/, or <root>/mnist/mnist.npz",
            _DIGIT_NAMES),
        DatasetInfo(
            "fashion_mnist", (28, 28, 1), 10, (0.2861,), (0.3530,),
            "Fashion-MNIST (Zalando, 2017), tfds 'fashion_mnist'; offline: the four official idx "
            ".gz files in <root>/fashion_mnist/, or <root>/fashion_mnist/fashion_mnist.npz",
            ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
             "Bag", "Ankle boot")),
        DatasetInfo(
            "usps", (28, 28, 1), 10,
            # Measured on the 7291 train images (16x16, [0, 1]) bilinearly resized to 28x28.
            # DD's 0.1597 / 0.2573 belong to another file (CoGAN's usps_28x28.pkl, 7438 / 1860
            # re-split) and do not fit these images (their mean is 0.2546).
            (0.2546452,), (0.3522313,),
            "USPS (Hull, 1994), 7291 train / 2007 test 16x16 digits resized bilinearly to 28x28 "
            "as in DD; offline: <root>/usps/usps.h5 (train/data (7291, 256) in [0, 1], "
            "train/target, test/data, test/target) or <root>/usps/usps.npz; not in tfds",
            _DIGIT_NAMES),
        DatasetInfo(
            "cifar10", (32, 32, 3), 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
            "CIFAR-10 (Krizhevsky, 2009), tfds 'cifar10'; offline: <root>/cifar10/cifar10.npz",
            ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck")),
        DatasetInfo(
            "cifar10_gray28", (28, 28, 1), 10,
            # Measured on the 50000 train images after the conversion below.
            (0.4808003,), (0.2317456,),
            "CIFAR-10 converted to one channel (ITU-R 601 luma 0.299 R + 0.587 G + 0.114 B) and "
            "resized bilinearly (antialiased) from 32x32 to 28x28, so that it can serve as a large, "
            "diverse source beside the 28x28 one-channel datasets; derived on load from "
            "<root>/cifar10/cifar10.npz (or <root>/cifar10_gray28/cifar10_gray28.npz)",
            ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck")),
        DatasetInfo(
            "cifar100", (32, 32, 3), 100, (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762),
            "CIFAR-100 fine labels (Krizhevsky, 2009), tfds 'cifar100'; offline: "
            "<root>/cifar100/cifar100.npz",
            tuple(_CIFAR100_NAMES)),
        DatasetInfo(
            "svhn_cropped", (32, 32, 3), 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
            "SVHN cropped digits (Netzer et al., 2011; train split only, no extra), tfds "
            "'svhn_cropped'; offline: <root>/svhn_cropped/svhn_cropped.npz",
            _DIGIT_NAMES),
    )
}

# tensorflow-datasets name and a URL on the download host (probed before downloading).
_TFDS = {
    "mnist": ("mnist", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    "fashion_mnist": ("fashion_mnist",
                      "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
    "cifar10": ("cifar10", "https://www.cs.toronto.edu/~kriz/"),
    "cifar100": ("cifar100", "https://www.cs.toronto.edu/~kriz/"),
    "svhn_cropped": ("svhn_cropped", "http://ufldl.stanford.edu/housenumbers/"),
}

_IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# sha256 of the official files (as published, and as checked in ../shared/data/README.md).
_OFFICIAL_SHA256 = {
    "mnist": dict(zip(_IDX_FILES, (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"))),
    "fashion_mnist": dict(zip(_IDX_FILES, (
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"))),
}


# ----------------------------------------------------------------------------------------------
# Locations


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Optional[Path]:
    """The data root: ``data_dir`` if given, else ``$JAXDD_DATA_DIR``, else None (no files)."""
    if data_dir is None:
        data_dir = os.environ.get("JAXDD_DATA_DIR") or None
    return None if data_dir is None else Path(data_dir).expanduser()


def _tfds_dir() -> Path:
    cache = os.environ.get("JAXDD_CACHE_DIR") or "~/.cache/jaxdd"
    return Path(cache).expanduser() / "tfds"


def _decoded_path(name: str) -> Path:
    """The arrays decoded from a tfds preparation, in the Keras npz layout."""
    return _tfds_dir().parent / "decoded" / f"{name}.npz"


def _tfds_prepared(tfds_name: str) -> Optional[Path]:
    """The prepared tfds folder of ``tfds_name`` in the cache, found without importing tfds."""
    infos = sorted((_tfds_dir() / tfds_name).glob("*/dataset_info.json"))
    return infos[-1].parent if infos else None


def available_datasets(data_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Where each registry entry would be loaded from, without reading any data.

    Args:
        data_dir: the data root (see ``resolve_data_dir``).

    Returns:
        ``{name: text}``: the local source found first, or why there is none.
    """
    root = resolve_data_dir(data_dir)
    out = {}
    for name in DATASETS:
        found = _local_source(name, root)
        if found is not None:
            out[name] = f"{found[0]}: {found[1]}"
        elif name in _TFDS and _decoded_path(name).is_file():
            out[name] = f"decoded tfds cache: {_decoded_path(name)}"
        elif name in _TFDS and (path := _tfds_prepared(_TFDS[name][0])) is not None:
            out[name] = f"tfds cache: {path}"
        elif name in _TFDS:
            out[name] = "not local (tensorflow-datasets download on a connected machine)"
        else:
            out[name] = "not available (supply the files, see DATASETS[name].source)"
    return out


def _local_source(name: str, root: Optional[Path]) -> Optional[tuple[str, Path]]:
    """(kind, path) of the first local source of ``name`` under ``root``, or None."""
    if name in ("digits", "digits28"):
        return "embedded", Path("sklearn.datasets.load_digits")
    if root is None:
        return None
    folder = root / name
    if (folder / f"{name}.npz").is_file():
        return "npz", folder / f"{name}.npz"
    if name == "usps" and (folder / "usps.h5").is_file():
        return "h5", folder / "usps.h5"
    if name in _OFFICIAL_SHA256 and all((folder / f).is_file() for f in _IDX_FILES):
        return "official files", folder
    if name in _DERIVED and (root / _DERIVED[name] / f"{_DERIVED[name]}.npz").is_file():
        return "derived", root / _DERIVED[name] / f"{_DERIVED[name]}.npz"
    return None


# ----------------------------------------------------------------------------------------------
# Readers: each returns raw (x_train, y_train, x_test, y_test), x NHWC uint8 or float32 in [0, 1].


def _check_images(x: np.ndarray, info: DatasetInfo, origin: str) -> np.ndarray:
    """NHWC images of the registry shape, uint8 in [0, 255] or float32 in [0, 1]."""
    if x.ndim == 3 and info.image_shape[2] == 1:
        x = x[..., None]
    if x.shape[1:] != info.image_shape:
        raise DataError(f"{origin}: images have shape {x.shape[1:]}, but {info.name} has "
                        f"{info.image_shape} (expected (N, H, W, C) NHWC arrays)")
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(f"{origin}: integer images must lie in [0, 255]")
        return x.astype(np.uint8)
    x = x.astype(np.float32, copy=False)
    if x.size and (x.min() < 0.0 or x.max() > 1.0):
        raise DataError(f"{origin}: float images must lie in [0, 1], found "
                        f"[{x.min():.3g}, {x.max():.3g}]")
    return x


def _pixels(x: np.ndarray) -> Array:
    """Device float32 pixels in [0, 1] (uint8 travels to the device before it is widened)."""
    y = jnp.asarray(x)
    return y.astype(jnp.float32) / 255.0 if y.dtype == jnp.uint8 else y


def _read_npz(info: DatasetInfo, path: Path):
    with np.load(path) as f:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
        if missing:
            raise DataError(f"{path}: missing arrays {sorted(missing)} (has {sorted(f.files)}); "
                            "expected x_train, y_train, x_test, y_test")
        return (_check_images(f["x_train"], info, str(path)), f["y_train"].reshape(-1),
                _check_images(f["x_test"], info, str(path)), f["y_test"].reshape(-1))


def _resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (half-pixel centres, like PIL) of (N, h, w, C) images."""
    n, _, _, c = x.shape
    return np.asarray(jax.image.resize(jnp.asarray(x), (n, *size, c), "linear"))


_DERIVED = {"cifar10_gray28": "cifar10"}
"""Datasets computed on load from another dataset's npz file: name -> parent name."""


def _read_gray28(info: DatasetInfo, path: Path):
    """CIFAR-10 (RGB 32x32 npz) -> luma ``0.299 R + 0.587 G + 0.114 B``, resized to 28x28."""
    parent = _read_npz(DATASETS[_DERIVED[info.name]], path)
    luma = np.asarray([0.299, 0.587, 0.114], np.float32)
    out = []
    for x, y in zip(parent[0::2], parent[1::2]):
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x
        out += [np.clip(_resize(x @ luma[:, None], info.image_shape[:2]), 0.0, 1.0), y]
    return tuple(out)


def _read_usps_h5(info: DatasetInfo, path: Path):
    import h5py

    with h5py.File(path, "r") as f:
        try:
            arrays = [(f[s]["data"][:], f[s]["target"][:]) for s in ("train", "test")]
        except KeyError as e:
            raise DataError(f"{path}: expected groups train/ and test/ with datasets data and "
                            f"target ({e})") from None
    out = []
    for x, y in arrays:
        if x.ndim != 2 or x.shape[1] != 256:
            raise DataError(f"{path}: data has shape {x.shape}, expected (N, 256) 16x16 images")
        x = _check_images(x.reshape(-1, 16, 16, 1),
                          dataclasses.replace(info, image_shape=(16, 16, 1)), str(path))
        out += [_resize(x, info.image_shape[:2]), y.reshape(-1)]
    return tuple(out)


def _read_digits(info: DatasetInfo):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x / 16.0, y, test_size=DIGITS_TEST_SIZE, random_state=DIGITS_SPLIT_SEED, stratify=y)
    shape = (-1, *info.image_shape)
    return (x_tr.reshape(shape).astype(np.float32), y_tr,
            x_te.reshape(shape).astype(np.float32), y_te)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_official_files(name: str, folder: Path) -> None:
    """Refuse files that are not this dataset's official ones (e.g. MNIST under fashion_mnist/)."""
    for fname in _IDX_FILES:
        digest = _sha256(folder / fname)
        if digest == _OFFICIAL_SHA256[name][fname]:
            continue
        owner = [other for other, sums in _OFFICIAL_SHA256.items() if digest in sums.values()]
        what = (f"it is the official {owner[0]} file" if owner
                else "it is not the official file (only those are read)")
        raise DataError(
            f"{folder / fname}: sha256 {digest[:12]}... does not match the official {name} "
            f"file: {what}. Put the official {name} files in {folder}, or supply "
            f"{folder / (name + '.npz')} with x_train, y_train, x_test, y_test.")


def _read_idx(path: Path) -> np.ndarray:
    """One gzipped idx file: 4 magic bytes (0, 0, type 0x08 = uint8, rank), rank big-endian
    uint32 sizes, then the values in C order (LeCun's MNIST page)."""
    raw = gzip.decompress(path.read_bytes())
    if raw[:3] != b"\x00\x00\x08":
        raise DataError(f"{path}: not an idx file of unsigned bytes (magic {raw[:4].hex()})")
    rank = raw[3]
    shape = tuple(int(n) for n in np.frombuffer(raw, ">u4", count=rank, offset=4))
    values = np.frombuffer(raw, np.uint8, offset=4 + 4 * rank)
    if values.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says {shape}, but it holds {values.size} values")
    return values.reshape(shape)


def _tfds_order(split: str, n: int) -> np.ndarray:
    """The row order tensorflow-datasets gives examples ``0..n-1`` of ``split``: ascending
    128-bit md5 of ``split + str(index)`` (its ``hashing.Hasher`` with the split as salt).

    Reading the idx files in this order yields arrays equal to a tfds preparation's, so sets,
    seeds and results keep the meaning they had when MNIST came through tfds."""
    salted = hashlib.md5(split.encode())

    def key(index: int) -> bytes:
        h = salted.copy()
        h.update(str(index).encode())
        return h.digest()  # big-endian bytes sort as the 128-bit integers do

    return np.asarray(sorted(range(n), key=key))


def _read_idx_files(info: DatasetInfo, folder: Path):
    """The four official idx files of MNIST or Fashion-MNIST, read directly (under 1 s) in
    tensorflow-datasets' row order (``_tfds_order``)."""
    out = []
    for split, (images, labels) in (("train", _IDX_FILES[:2]), ("test", _IDX_FILES[2:])):
        x, y = _read_idx(folder / images), _read_idx(folder / labels)
        if len(x) != len(y):
            raise DataError(f"{folder}: {split} has {len(x)} images and {len(y)} labels")
        order = _tfds_order(split, len(x))
        out += [_check_images(x[order, :, :, None], info, str(folder)), y[order]]
    return tuple(out)


def _import_tfds():
    """tensorflow_datasets, imported quietly: no TF/absl log lines, no tfds progress bars.

    jaxdd reports its own progress on stderr; TensorFlow's C++ logs (``TF_CPP_MIN_LOG_LEVEL``;
    ``TF_ENABLE_ONEDNN_OPTS=0`` for the oneDNN notice TF prints before its logging starts; both
    read when TF loads, so only if the caller has not imported it; TF only decodes integer
    pixels here, which oneDNN does not change), its Python logger, absl's INFO lines and tfds's
    download/extraction bars are switched off. Values a user set in the environment stay.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf
    from absl import logging as absl_logging

    tf.get_logger().setLevel("ERROR")
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:  # Keep TensorFlow off the GPUs: their memory belongs to JAX.
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF already initialised by the caller; leave it as it is.
        pass
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    return tfds


def _reachable(url: str, timeout: float = 5.0) -> bool:
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:  # the host answered
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return True


def _read_tfds(name: str, tried: list[str]):
    """(raw arrays, origin) from tensorflow-datasets, or None after noting in ``tried`` why."""
    tfds_name, probe = _TFDS[name]
    info = DATASETS[name]
    decoded = _decoded_path(name)
    if decoded.is_file():
        return _read_npz(info, decoded), (f"{decoded} (decoded from tensorflow-datasets; delete "
                                          "it to read the tfds data again)")
    place = f"tensorflow-datasets '{tfds_name}' in {_tfds_dir()}"
    if _tfds_prepared(tfds_name) is None and not _reachable(probe):
        tried.append(f"{place}: not prepared, and no network to download it ({probe} "
                     "unreachable)")
        return None
    try:
        tfds = _import_tfds()
    except ImportError as e:
        tried.append(f"{place}: tensorflow / tensorflow-datasets not installed ({e})")
        return None
    builder = tfds.builder(tfds_name, data_dir=str(_tfds_dir()))
    if not builder.is_prepared():
        # One download folder per dataset: tfds extracts a file to
        # <download_dir>/extracted/GZIP.<file name>, and MNIST and Fashion-MNIST share file
        # names, so a shared folder would hand the second dataset the first one's images.
        download_dir = _tfds_dir() / "downloads" / name
        import contextlib
        import io
        import logging
        import time

        log = logging.getLogger(__name__)
        log.info("downloading and preparing %s with tensorflow-datasets (once; later loads take "
                 "about 1 s) ...", name)
        started = time.perf_counter()
        try:
            # tfds prints its own lines to stdout; jaxdd's stdout carries results only.
            with contextlib.redirect_stdout(io.StringIO()):
                builder.download_and_prepare(download_dir=str(download_dir))
        except Exception as e:  # tfds raises many kinds; name the failure, keep the cause.
            tried.append(f"{place}: download and preparation failed: {type(e).__name__}: {e}")
            return None
        log.info("prepared %s in %.0f s", name, time.perf_counter() - started)
    out = []
    for split in ("train", "test"):
        d = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        out += [d["image"], d["label"]]
    place = (f"tensorflow-datasets '{tfds_name}' prepared in {builder.data_dir} (if that "
             "preparation is stale or wrong, delete the folder to prepare it again)")
    raw = (_check_images(out[0], info, place), out[1], _check_images(out[2], info, place), out[3])
    _check_content(info, (_pixels(raw[0]), raw[1], _pixels(raw[2]), raw[3]), place)
    # Keep the decoded arrays: later loads then need neither TensorFlow nor decoding (seconds).
    decoded.parent.mkdir(parents=True, exist_ok=True)
    tmp = decoded.with_name(f".{decoded.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, x_train=out[0], y_train=out[1], x_test=out[2], y_test=out[3])
    os.replace(tmp, decoded)
    return raw, place


def _check_content(info: DatasetInfo, raw, origin: str) -> None:
    """Labels, class count and train pixel mean (of device pixels in [0, 1]) must fit ``info``."""
    x_tr, y_tr, x_te, y_te = raw
    for split, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        if len(x) == 0 or len(x) != len(y):
            raise DataError(f"{origin}: {split} has {len(x)} images and {len(y)} labels")
        if y.min() < 0 or y.max() >= info.num_classes:
            raise DataError(f"{origin}: {split} labels span [{y.min()}, {y.max()}], but "
                            f"{info.name} has classes 0..{info.num_classes - 1}")
    found = len(np.unique(y_tr))
    if found != info.num_classes:
        raise DataError(f"{origin}: train has {found} classes, {info.name} has "
                        f"{info.num_classes}")
    mean = np.asarray(jnp.mean(x_tr, axis=(0, 1, 2)), np.float64)
    if np.max(np.abs(mean - np.asarray(info.mean))) > MEAN_TOLERANCE:
        raise DataError(
            f"{origin}: train pixel mean {np.round(mean, 4).tolist()} differs from {info.name}'s "
            f"{list(info.mean)} by more than {MEAN_TOLERANCE}: these are not {info.name} images "
            "(another dataset under this name?)")


def _missing_message(name: str, root: Optional[Path], tried: list[str]) -> str:
    info = DATASETS[name]
    h, w, c = info.image_shape
    where = (f"the data root {root}" if root is not None else
             "no data root (pass data_dir=... or set JAXDD_DATA_DIR)")
    how = (f"To supply it offline, put under the data root a folder {name}/ holding "
           f"{name}.npz with x_train (N, {h}, {w}{'' if c == 1 else ', ' + str(c)}) uint8 in "
           "[0, 255] or float in [0, 1], y_train (N,) int, x_test, y_test (the Keras layout)")
    if name in _OFFICIAL_SHA256:
        how += f", or the four official files {', '.join(_IDX_FILES)}"
    if name == "usps":
        how += (", or usps.h5 with train/data (7291, 256) in [0, 1], train/target, test/data, "
                "test/target")
    lines = "\n".join(f"  - {t}" for t in tried)
    return (f"dataset '{name}' is not available ({where}). Tried:\n{lines}\n{how}. "
            f"Source: {info.source}.")


def _read_raw(name: str, root: Optional[Path]):
    info = DATASETS[name]
    if name == "digits":
        return _read_digits(info), "scikit-learn load_digits"
    if name == "digits28":
        x_tr, y_tr, x_te, y_te = _read_digits(DATASETS["digits"])
        return (_resize(x_tr, info.image_shape[:2]), y_tr, _resize(x_te, info.image_shape[:2]), y_te), \
            "scikit-learn load_digits, resized to 28x28"
    tried = []
    if root is None:
        tried.append("local files: no data root given (data_dir argument or JAXDD_DATA_DIR)")
    else:
        folder = root / name
        found = _local_source(name, root)
        if found is None:
            tried.append(f"{folder / (name + '.npz')}: not found")
            if name == "usps":
                tried.append(f"{folder / 'usps.h5'}: not found")
            if name in _OFFICIAL_SHA256:
                missing = [f for f in _IDX_FILES if not (folder / f).is_file()]
                tried.append(f"{folder}: official files missing ({', '.join(missing)})")
        elif found[0] == "npz":
            return _read_npz(info, found[1]), str(found[1])
        elif found[0] == "h5":
            return _read_usps_h5(info, found[1]), str(found[1])
        elif found[0] == "derived":
            return _read_gray28(info, found[1]), f"{found[1]} (converted to {name})"
        else:
            _check_official_files(name, folder)
            return _read_idx_files(info, folder), f"{folder} (official idx files)"
    if name in _TFDS:
        got = _read_tfds(name, tried)
        if got is not None:
            return got
    else:
        tried.append("tensorflow-datasets: has no such dataset")
    raise DataError(_missing_message(name, root, tried))


# ----------------------------------------------------------------------------------------------
# Loading


def load_dataset(name: str, data_dir: str | os.PathLike | None = None,
                 zca: bool = False) -> Dataset:
    """Load a registered dataset, normalised (and optionally ZCA-whitened), onto the device.

    ``x = (pixel - info.mean) / info.std`` per channel with pixels in [0, 1]; with ``zca`` a
    ``ZCA`` is fitted on the normalised train images (``zca_fit`` with ``ZCA_REG``) and applied
    to train and test.

    Args:
        name: a key of ``DATASETS``.
        data_dir: the data root, else ``$JAXDD_DATA_DIR`` (see the module docstring for the
            folder layout); not needed for ``digits``.
        zca: whether to whiten (KIP, FRePo and MTT do so on RGB data).

    Returns:
        A ``Dataset``.

    Raises:
        DataError: unknown name; no source found (the message lists every place tried and how to
            supply the files); or a source holding other data (wrong checksums, shape, classes or
            pixel mean).
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; known: {', '.join(DATASETS)}")
    info = DATASETS[name]
    root = resolve_data_dir(data_dir)
    (x_tr, y_tr, x_te, y_te), origin = _read_raw(name, root)
    x_tr, x_te = _pixels(x_tr), _pixels(x_te)
    _check_content(info, (x_tr, y_tr, x_te, y_te), origin)
    mean = jnp.asarray(info.mean, jnp.float32)
    std = jnp.asarray(info.std, jnp.float32)
    x_tr = (x_tr - mean) / std
    x_te = (x_te - mean) / std
    fitted = None
    if zca:
        fitted = zca_fit(x_tr)
        x_tr, x_te = zca_apply(x_tr, fitted), zca_apply(x_te, fitted)
    return Dataset(info, x_tr, jnp.asarray(y_tr, jnp.int32), x_te, jnp.asarray(y_te, jnp.int32),
                   fitted)


# ----------------------------------------------------------------------------------------------
# ZCA whitening and display


def zca_fit(x: Array, reg: float = ZCA_REG) -> ZCA:
    """Fit ZCA whitening on images ``x`` (N, H, W, C), as in KIP / FRePo.

    With ``S = (x - mu)^T (x - mu) / N = U diag(l) U^T`` over the flattened features,
    ``whiten = U diag(l + reg * mean(l))^{-1/2} U^T`` (the regulariser scales with the mean
    eigenvalue, i.e. ``reg * trace(S) / D``, KIP's ``zca_reg``; Nguyen et al. 2021). The whitened
    train covariance is ``U diag(l / (l + reg * mean(l))) U^T``: the identity on directions of
    large variance, shrunk towards 0 on directions of small variance; it is exactly the identity
    for ``reg = 0`` and full-rank data.

    Args:
        x: (N, H, W, C) train images (normalised).
        reg: relative regulariser, >= 0.

    Returns:
        A ``ZCA`` (float32 arrays).
    """
    flat = jnp.reshape(x, (x.shape[0], -1)).astype(jnp.float32)
    mu = jnp.mean(flat, axis=0)
    centred = flat - mu
    cov = np.asarray(jnp.matmul(centred.T, centred, precision=lax.Precision.HIGHEST),
                     np.float64) / flat.shape[0]
    eigvals, u = np.linalg.eigh(cov)
    eigvals = np.clip(eigvals, 0.0, None) + reg * np.mean(np.clip(eigvals, 0.0, None))
    whiten = (u * eigvals ** -0.5) @ u.T
    unwhiten = (u * eigvals ** 0.5) @ u.T
    return ZCA(mu, jnp.asarray(whiten, jnp.float32), jnp.asarray(unwhiten, jnp.float32))


def zca_apply(x: Array, zca: ZCA) -> Array:
    """Whiten images: ``z = (x - mean) @ whiten``, same shape as ``x`` (N, H, W, C)."""
    flat = jnp.reshape(x, (x.shape[0], -1))
    return jnp.reshape(jnp.matmul(flat - zca.mean, zca.whiten, precision=lax.Precision.HIGHEST),
                       x.shape)


def zca_invert(z: Array, zca: ZCA) -> Array:
    """Undo ``zca_apply``: ``x = z @ unwhiten + mean``."""
    flat = jnp.reshape(z, (z.shape[0], -1))
    return jnp.reshape(jnp.matmul(flat, zca.unwhiten, precision=lax.Precision.HIGHEST) + zca.mean,
                       z.shape)


def denormalize(x: Array, info: DatasetInfo, zca: Optional[ZCA] = None) -> Array:
    """Back to displayable pixels: un-whiten (if ``zca``), ``x * std + mean``, clip to [0, 1].

    Args:
        x: (N, H, W, C) images in the dataset's normalised (whitened) space.
        info: the dataset's registry entry.
        zca: the whitening the images live in, or None.

    Returns:
        (N, H, W, C) float32 in [0, 1].
    """
    if zca is not None:
        x = zca_invert(x, zca)
    x = x * jnp.asarray(info.std, jnp.float32) + jnp.asarray(info.mean, jnp.float32)
    return jnp.clip(x, 0.0, 1.0)
