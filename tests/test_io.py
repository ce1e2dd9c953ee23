"""Set files round-trip exactly; corrupt or mismatched files are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from jaxdd.io import SynSetError, load_synset, meta_hash, save_synset, to_pixels
from jaxdd.types import SynSet

META = {"dataset": "toy", "image_shape": [8, 8, 1], "num_classes": 3, "mean": [0.3], "std": [0.4], "method": "test", "seed": 7}


def _set(soft=False, steps=False):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 8, 8, 1)).astype(np.float32)
    labels = np.repeat(np.arange(3), 2).astype(np.int32)
    if soft:
        labels = rng.dirichlet(np.ones(3), size=6).astype(np.float32)
    return SynSet(images, labels, rng.uniform(size=5).astype(np.float32) if steps else None)


@pytest.mark.parametrize("soft,steps", [(False, False), (True, True)])
def test_round_trip_is_exact(tmp_path, soft, steps):
    synset = _set(soft, steps)
    extra = {"theta0_w": np.arange(12.0).reshape(3, 4)}
    save_synset(tmp_path / "s", synset, META, extra)
    loaded, meta, extras = load_synset(tmp_path / "s")
    np.testing.assert_array_equal(loaded.images, synset.images)
    np.testing.assert_array_equal(loaded.labels, synset.labels)
    if steps:
        np.testing.assert_array_equal(loaded.step_sizes, synset.step_sizes)
    else:
        assert loaded.step_sizes is None
    np.testing.assert_array_equal(extras["theta0_w"], extra["theta0_w"])
    assert meta["label_kind"] == ("soft" if soft else "hard") and meta["seed"] == 7 and meta["versions"]["jax"]
    grid = Image.open(tmp_path / "s" / "synset.png")
    columns = np.bincount(np.asarray(synset.labels).reshape(6, -1).argmax(1) if soft else synset.labels).max()
    assert grid.size == (columns * 65 + 1, 3 * 65 + 1)  # a row per class, 8 px scaled x8, 1 px padding


def test_grid_undoes_normalisation(tmp_path):
    pixels = np.full((3, 8, 8, 1), 0.5, np.float32)
    images = (pixels - 0.3) / 0.4
    np.testing.assert_allclose(to_pixels(images, META), pixels, atol=1e-6)
    save_synset(tmp_path, SynSet(images, np.arange(3, dtype=np.int32)), META)
    grid = np.asarray(Image.open(tmp_path / "synset.png"))
    assert grid.min() == 128  # every cell is a 0.5-grey image; padding is white (255)


def test_zca_is_undone_for_display():
    rng = np.random.default_rng(1)
    pixels = rng.uniform(size=(4, 2, 2, 1)).astype(np.float32)
    normalised = (pixels - 0.3) / 0.4
    matrix = rng.normal(size=(4, 4)).astype(np.float64) + 3 * np.eye(4)
    mean = rng.normal(size=4)
    whitened = ((normalised.reshape(4, -1) - mean) @ matrix.T).reshape(normalised.shape)
    arrays = {"zca_mean": mean, "zca_inverse": np.linalg.inv(matrix)}
    np.testing.assert_allclose(to_pixels(whitened, {**META, "zca": True}, arrays), pixels, atol=1e-5)


def test_missing_and_corrupt_files_are_refused(tmp_path):
    with pytest.raises(SynSetError, match="missing"):
        load_synset(tmp_path / "nothing")
    save_synset(tmp_path / "a", _set(), META)
    data = (tmp_path / "a" / "synset.npz").read_bytes()
    (tmp_path / "a" / "synset.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(SynSetError, match="corrupt"):
        load_synset(tmp_path / "a")

    save_synset(tmp_path / "b", _set(), META)
    with np.load(tmp_path / "b" / "synset.npz") as stored:
        arrays = dict(stored)
    arrays["images"][0, 0, 0, 0] += 1.0
    np.savez(tmp_path / "b" / "synset.npz", **arrays)
    with pytest.raises(SynSetError, match="hash"):
        load_synset(tmp_path / "b")

    save_synset(tmp_path / "c", _set(), META)
    (tmp_path / "c" / "synset.json").write_text("{not json")
    with pytest.raises(SynSetError, match="JSON"):
        load_synset(tmp_path / "c")

    save_synset(tmp_path / "d", _set(), META)
    meta = json.loads((tmp_path / "d" / "synset.json").read_text())
    meta["image_shape"] = [28, 28, 1]
    (tmp_path / "d" / "synset.json").write_text(json.dumps(meta))
    with pytest.raises(SynSetError, match="its own hash"):
        load_synset(tmp_path / "d")
    meta["meta_sha256"] = meta_hash(meta)  # an edit that also fixes the metadata hash
    (tmp_path / "d" / "synset.json").write_text(json.dumps(meta))
    with pytest.raises(SynSetError, match="image_shape"):
        load_synset(tmp_path / "d")


def test_failed_save_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        save_synset(tmp_path / "e", _set(), {**META, "config": {"bad": object()}})
    assert not (tmp_path / "e").exists() and list(tmp_path.iterdir()) == []
