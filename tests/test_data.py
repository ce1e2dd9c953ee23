"""Tests for jaxdd.data: registry, loading, confusion guards and ZCA."""

import gzip
import hashlib
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import data
from jaxdd.data import (DATASETS, DataError, available_datasets, denormalize, load_dataset, zca_apply,
                        zca_fit, zca_invert)
from jaxdd.sampling import class_counts

REAL_DATA = Path(os.environ.get("JAXDD_DATA_DIR")
                 or Path(__file__).resolve().parents[2] / "shared" / "data")
IDX = data._IDX_FILES


def need(*parts):
    path = REAL_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not present: {path} (set JAXDD_DATA_DIR to a folder like "
                    "../shared/data)")
    return path


def raw_pixels(ds, x):
    return np.asarray(denormalize(x, ds.info, ds.zca))


# ---------------------------------------------------------------------------------- registry


def test_registry_is_consistent():
    assert set(DATASETS) == {"digits", "digits28", "mnist", "fashion_mnist", "usps", "cifar10", "cifar10_gray28", "cifar100",
                             "svhn_cropped"}
    for name, info in DATASETS.items():
        assert info.name == name
        h, w, c = info.image_shape
        assert len(info.mean) == len(info.std) == c
        assert len(info.class_names) == info.num_classes == len(set(info.class_names))
        assert all(0 < m < 1 for m in info.mean) and all(0 < s < 1 for s in info.std)
        assert info.source
    assert DATASETS["mnist"].mean == (0.1307,) and DATASETS["mnist"].std == (0.3081,)
    assert DATASETS["cifar10"].std == (0.2023, 0.1994, 0.2010)
    assert DATASETS["cifar100"].num_classes == 100
    assert DATASETS["usps"].image_shape == (28, 28, 1)


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        load_dataset("nope")


# ------------------------------------------------------------------------------------ digits


def test_digits_loads_normalised_with_fixed_split():
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1347, 8, 8, 1) and ds.x_test.shape == (450, 8, 8, 1)
    assert ds.x_train.dtype == jnp.float32 and ds.y_train.dtype == jnp.int32
    assert ds.zca is None
    np.testing.assert_array_equal(class_counts(ds.y_train, 10),
                                  [133, 136, 133, 137, 136, 136, 136, 134, 131, 135])
    # The registry mean/std were measured on this very split, so it is standardised exactly.
    assert abs(float(ds.x_train.mean())) < 1e-5 and abs(float(ds.x_train.std()) - 1) < 1e-5
    again = load_dataset("digits")
    for a, b in ((ds.x_train, again.x_train), (ds.y_train, again.y_train),
                 (ds.x_test, again.x_test), (ds.y_test, again.y_test)):
        np.testing.assert_array_equal(a, b)


def test_digits_constants_match_the_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, _, _, _ = train_test_split(x / 16.0, y, test_size=0.25, random_state=0, stratify=y)
    info = DATASETS["digits"]
    assert info.mean[0] == pytest.approx(x_tr.mean(), abs=1e-12)
    assert info.std[0] == pytest.approx(x_tr.std(), abs=1e-12)


def test_denormalize_recovers_pixels():
    ds = load_dataset("digits")
    pix = raw_pixels(ds, ds.x_test)
    assert pix.min() >= 0 and pix.max() <= 1
    # digits pixels are multiples of 1/16
    np.testing.assert_allclose(pix * 16, np.round(pix * 16), atol=1e-4)


# --------------------------------------------------------------------------------------- ZCA


def whitened_cov(z):
    flat = np.asarray(z, np.float64).reshape(len(z), -1)
    flat = flat - flat.mean(0)
    return flat.T @ flat / len(flat)


def test_zca_round_trip_and_whitened_covariance():
    ds = load_dataset("digits", zca=True)
    plain = load_dataset("digits")
    z = ds.zca
    assert z.whiten.shape == (64, 64) and z.mean.shape == (64,)
    # Test uses the train whitening; inverting gives the normalised images back.
    np.testing.assert_allclose(ds.x_test, zca_apply(plain.x_test, z), atol=1e-5)
    np.testing.assert_allclose(zca_invert(ds.x_train, z), plain.x_train, atol=1e-4)
    np.testing.assert_allclose(zca_invert(zca_apply(plain.x_test, z), z), plain.x_test,
                               atol=1e-4)
    np.testing.assert_allclose(raw_pixels(ds, ds.x_test), raw_pixels(plain, plain.x_test),
                               atol=1e-4)
    # Documented: whitened train covariance is U diag(l / (l + 0.1 mean(l))) U^T.
    cov = whitened_cov(ds.x_train)
    flat = np.asarray(plain.x_train, np.float64).reshape(len(plain.x_train), -1)
    lam, u = np.linalg.eigh(np.cov(flat.T, bias=True))
    lam = np.clip(lam, 0, None)
    expected = (u * (lam / (lam + 0.1 * lam.mean()))) @ u.T
    np.testing.assert_allclose(cov, expected, atol=1e-4)
    eig = np.linalg.eigvalsh(cov)
    assert eig.max() <= 1 + 1e-4 and eig[-10:].min() > 0.9  # leading directions are white


def test_zca_without_regulariser_whitens_exactly():
    k1, k2 = jax.random.split(jax.random.key(0))
    mix = jax.random.normal(k2, (16, 16))  # correlated features with unequal variances
    x = (jax.random.normal(k1, (500, 16)) @ mix + 2.0).reshape(500, 4, 4, 1)
    z = zca_fit(x, reg=0.0)
    np.testing.assert_allclose(whitened_cov(zca_apply(x, z)), np.eye(16), atol=1e-3)
    np.testing.assert_allclose(zca_invert(zca_apply(x, z), z), x, atol=1e-4)


# --------------------------------------------------------------------- guards (no real data)


def write_npz(path, x_train, y_train, x_test=None, y_test=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=x_train, y_train=y_train,
             x_test=x_train if x_test is None else x_test,
             y_test=y_train if y_test is None else y_test)


def fake_images(mean, shape, n=40, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 2 * mean, (n, *shape)) * 255).round().astype(np.uint8)


def test_npz_source_is_read_and_checked(tmp_path):
    labels = np.arange(40) % 10
    write_npz(tmp_path / "fashion_mnist" / "fashion_mnist.npz",
              fake_images(0.2861, (28, 28)), labels)
    ds = load_dataset("fashion_mnist", data_dir=tmp_path)
    assert ds.x_train.shape == (40, 28, 28, 1) and ds.y_train.dtype == jnp.int32
    assert available_datasets(tmp_path)["fashion_mnist"].startswith("npz: ")


def test_npz_with_other_content_is_refused(tmp_path):
    labels = np.arange(40) % 10
    # MNIST-like pixels (mean 0.13) filed as Fashion-MNIST.
    write_npz(tmp_path / "fashion_mnist" / "fashion_mnist.npz", fake_images(0.1307, (28, 28)),
              labels)
    with pytest.raises(DataError, match="pixel mean .* not fashion_mnist"):
        load_dataset("fashion_mnist", data_dir=tmp_path)
    write_npz(tmp_path / "mnist" / "mnist.npz", fake_images(0.1307, (32, 32, 3)), labels)
    with pytest.raises(DataError, match=r"shape \(32, 32, 3\)"):
        load_dataset("mnist", data_dir=tmp_path)
    write_npz(tmp_path / "usps" / "usps.npz", fake_images(0.2546, (28, 28)), labels % 5)
    with pytest.raises(DataError, match="5 classes"):
        load_dataset("usps", data_dir=tmp_path)
    np.savez(tmp_path / "usps" / "usps.npz", x=labels)
    with pytest.raises(DataError, match="missing arrays"):
        load_dataset("usps", data_dir=tmp_path)


def test_unofficial_idx_files_are_refused(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for f in IDX:
        (folder / f).write_bytes(b"not mnist")
    with pytest.raises(DataError, match="not the official file"):
        load_dataset("mnist", data_dir=tmp_path)


def write_idx(path: Path, values: np.ndarray, header: bytes | None = None) -> None:
    head = header if header is not None else bytes([0, 0, 8, values.ndim])
    dims = np.asarray(values.shape, ">u4").tobytes()
    path.write_bytes(gzip.compress(head + dims + values.astype(np.uint8).tobytes()))


def test_idx_reader_parses_header_and_refuses_bad_files(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "ok.gz", images)
    np.testing.assert_array_equal(data._read_idx(tmp_path / "ok.gz"), images)
    write_idx(tmp_path / "float.gz", images, header=bytes([0, 0, 0x0D, 3]))
    with pytest.raises(DataError, match="not an idx file of unsigned bytes"):
        data._read_idx(tmp_path / "float.gz")
    short = gzip.compress(bytes([0, 0, 8, 1]) + np.asarray([5], ">u4").tobytes() + b"abc")
    (tmp_path / "short.gz").write_bytes(short)
    with pytest.raises(DataError, match=r"header says \(5,\), but it holds 3 values"):
        data._read_idx(tmp_path / "short.gz")


def test_tfds_order_sorts_by_salted_md5():
    order = data._tfds_order("train", 50)
    digests = [hashlib.md5(f"train{i}".encode()).hexdigest() for i in order]
    assert sorted(order.tolist()) == list(range(50)) and digests == sorted(digests)
    assert not np.array_equal(order, data._tfds_order("test", 50))  # the split salts the hash


def test_missing_data_message_names_dataset_and_places(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXDD_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataError) as err:
        load_dataset("usps", data_dir=tmp_path)
    msg = str(err.value)
    for part in ("'usps'", str(tmp_path / "usps" / "usps.npz"), str(tmp_path / "usps" / "usps.h5"),
                 "x_train", "train/data"):
        assert part in msg, (part, msg)
    monkeypatch.delenv("JAXDD_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="no data root"):
        load_dataset("usps")


def test_missing_tfds_dataset_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXDD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "_reachable", lambda url, timeout=5.0: False)  # never download
    with pytest.raises(DataError) as err:
        load_dataset("cifar100", data_dir=tmp_path)
    msg = str(err.value)
    for part in ("'cifar100'", str(tmp_path / "cifar100" / "cifar100.npz"),
                 "tensorflow-datasets 'cifar100'", "no network", "x_test"):
        assert part in msg, (part, msg)
    assert available_datasets(tmp_path)["cifar100"].startswith("not local")


# ---------------------------------------------------------------------------- real data


TFDS_FIRST_LABELS = {
    "mnist": ([4, 1, 0, 7, 8, 1, 2, 7, 1, 6, 6, 4], [2, 0, 4, 8, 7, 6, 0, 6, 3, 1, 8, 0]),
    "fashion_mnist": ([2, 1, 8, 4, 1, 9, 2, 2, 0, 2, 6, 9], [4, 4, 9, 7, 5, 1, 0, 5, 7, 4, 0, 8]),
}
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.mark.data
@pytest.mark.parametrize("name, mean", [("mnist", 0.1307), ("fashion_mnist", 0.2860)])
def test_mnist_family_offline(name, mean):
    need(name, IDX[0])
    ds = load_dataset(name, data_dir=REAL_DATA)
    # Row order as a tensorflow-datasets preparation of the same files gives it (compared
    # array for array with tfds 4.9 when the direct reader replaced it): first labels per split.
    np.testing.assert_array_equal(ds.y_train[:12], TFDS_FIRST_LABELS[name][0])
    np.testing.assert_array_equal(ds.y_test[:12], TFDS_FIRST_LABELS[name][1])
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.y_train.dtype == jnp.int32
    counts = np.asarray(class_counts(ds.y_train, 10))
    if name == "mnist":
        np.testing.assert_array_equal(counts, MNIST_TRAIN_COUNTS)
    else:
        np.testing.assert_array_equal(counts, [6000] * 10)
        np.testing.assert_array_equal(class_counts(ds.y_test, 10), [1000] * 10)
    info = ds.info
    assert float(ds.x_train.mean()) * info.std[0] + info.mean[0] == pytest.approx(mean, abs=1e-4)


@pytest.mark.data
def test_mnist_files_under_fashion_mnist_are_refused(tmp_path):
    src = need("mnist")
    (tmp_path / "fashion_mnist").mkdir()
    for f in IDX:
        (tmp_path / "fashion_mnist" / f).symlink_to(src / f)
    with pytest.raises(DataError, match="official mnist file"):
        load_dataset("fashion_mnist", data_dir=tmp_path)


@pytest.mark.data
def test_usps_resized_to_28():
    need("usps", "usps.h5")
    ds = load_dataset("usps", data_dir=REAL_DATA)
    assert ds.x_train.shape == (7291, 28, 28, 1) and ds.x_test.shape == (2007, 28, 28, 1)
    np.testing.assert_array_equal(class_counts(ds.y_train, 10),
                                  [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644])
    assert abs(float(ds.x_train.mean())) < 1e-4 and abs(float(ds.x_train.std()) - 1) < 1e-4


@pytest.mark.data
def test_cifar10_npz():
    need("cifar10", "cifar10.npz")
    ds = load_dataset("cifar10", data_dir=REAL_DATA)
    assert ds.x_train.shape == (50000, 32, 32, 3) and ds.x_test.shape == (10000, 32, 32, 3)
    np.testing.assert_array_equal(class_counts(ds.y_test, 10), [1000] * 10)
    mean = np.asarray(ds.x_train.mean(axis=(0, 1, 2))) * ds.info.std + np.asarray(ds.info.mean)
    np.testing.assert_allclose(mean, [0.49140, 0.48216, 0.44653], atol=1e-4)


@pytest.mark.data
def test_available_datasets_real():
    need("mnist")
    avail = available_datasets(REAL_DATA)
    assert set(avail) == set(DATASETS)
    assert avail["digits"].startswith("embedded")
    assert avail["mnist"].startswith("official files")
    if (REAL_DATA / "usps" / "usps.h5").exists():
        assert avail["usps"].startswith("h5")
    if (REAL_DATA / "cifar10" / "cifar10.npz").exists():
        assert avail["cifar10"].startswith("npz")
