"""Faults and bad inputs on set files and checkpoints (property-based): either the exact original
is read back or one clear one-line error is raised, and nothing is left half-written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxdd import io
from jaxdd.data import DATASETS
from jaxdd.distill import CHECKPOINT_FILE, CheckpointError, load_checkpoint, save_checkpoint
from jaxdd.types import SynSet

DIGITS = DATASETS["digits"]
META = {"dataset": "digits", "image_shape": [8, 8, 1], "num_classes": 10, "mean": list(DIGITS.mean), "std": list(DIGITS.std), "seed": 3}
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _set(kind: str):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(20, 8, 8, 1)).astype(np.float32)
    labels, steps, extra, meta = np.repeat(np.arange(10), 2).astype(np.int32), None, {}, dict(META)
    if kind == "soft":
        labels = rng.dirichlet(np.ones(10), size=20).astype(np.float32)
        steps = rng.uniform(size=4).astype(np.float32)
    if kind == "zca":
        extra = {"zca_mean": rng.normal(size=64), "zca_inverse": rng.normal(size=(64, 64))}
        meta["zca"] = True
    return SynSet(images, labels, steps), meta, extra


KINDS = ("hard", "soft", "zca")


def _saved(folder: Path, kind: str) -> dict[str, bytes]:
    synset, meta, extra = _set(kind)
    io.save_synset(folder, synset, meta, extra, grid=False)
    return {name: (folder / name).read_bytes() for name in (io.ARRAYS_FILE, io.META_FILE)}


def _assert_one_line(error: BaseException) -> None:
    text = str(error)
    assert text and "\n" not in text and len(text) < 600, text


def _assert_reads_original(folder: Path, kind: str) -> None:
    synset, meta, extra = _set(kind)
    loaded, loaded_meta, loaded_extra = io.load_synset(folder)
    np.testing.assert_array_equal(loaded.images, synset.images)
    np.testing.assert_array_equal(loaded.labels, synset.labels)
    assert (loaded.step_sizes is None) == (synset.step_sizes is None)
    if synset.step_sizes is not None:
        np.testing.assert_array_equal(loaded.step_sizes, synset.step_sizes)
    assert sorted(loaded_extra) == sorted(extra)
    for name in extra:
        np.testing.assert_array_equal(loaded_extra[name], extra[name])
    assert all(loaded_meta[k] == io.canonical(v) for k, v in meta.items())


def _load_or_refuse(folder: Path, kind: str) -> str:
    try:
        _assert_reads_original(folder, kind)
        return "original"
    except io.SynSetError as error:
        _assert_one_line(error)
        return "refused"


@FAST
@given(kind=st.sampled_from(KINDS), file=st.sampled_from((io.ARRAYS_FILE, io.META_FILE)), fraction=st.floats(0, 1, exclude_max=True))
def test_truncated_set_files_are_refused(tmp_path_factory, kind, file, fraction):
    folder = tmp_path_factory.mktemp("set")
    original = _saved(folder, kind)[file]
    kept = original[: int(fraction * len(original))]
    (folder / file).write_bytes(kept)
    assert _load_or_refuse(folder, kind) == ("original" if kept.strip() == original.strip() else "refused")


@FAST
@given(kind=st.sampled_from(KINDS), file=st.sampled_from((io.ARRAYS_FILE, io.META_FILE)), where=st.floats(0, 1, exclude_max=True), mask=st.integers(1, 255))
def test_flipped_bytes_in_set_files_read_back_the_original_or_are_refused(tmp_path_factory, kind, file, where, mask):
    folder = tmp_path_factory.mktemp("set")
    data = bytearray(_saved(folder, kind)[file])
    data[int(where * len(data))] ^= mask
    (folder / file).write_bytes(bytes(data))
    _load_or_refuse(folder, kind)  # a flip in zip padding or JSON whitespace may leave the content intact


EDITS = {
    "dataset": st.sampled_from([name for name in DATASETS if name != "digits"]),
    "image_shape": st.lists(st.integers(0, 64), min_size=0, max_size=4),
    "num_classes": st.one_of(st.integers(-3, 10**30), st.just(True), st.none(), st.text(max_size=3)),
    "label_kind": st.sampled_from(["hard", "soft", "", None]),
    "has_step_sizes": st.booleans(),
    "num_images": st.integers(-1, 10**20),
    "mean": st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=3),
    "std": st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=3),
    "zca": st.booleans(),
    "arrays": st.lists(st.sampled_from(["images", "labels", "step_sizes", "zca_mean"]), max_size=4),
    "format_version": st.one_of(st.integers(-1, 5), st.floats(allow_nan=False)),
    "seed": st.integers(),
}


@FAST
@given(kind=st.sampled_from(KINDS), data=st.data(), rehash=st.booleans())
def test_edited_metadata_is_refused(tmp_path_factory, kind, data, rehash):
    """Any edit breaks the metadata hash; an edit that also fixes the hash is caught by the checks."""
    folder = tmp_path_factory.mktemp("set")
    _saved(folder, kind)
    meta = json.loads((folder / io.META_FILE).read_text())
    field = data.draw(st.sampled_from(sorted(EDITS)) if not rehash else st.sampled_from(sorted(set(EDITS) - {"seed"})))
    value = data.draw(EDITS[field].filter(lambda v: v != meta.get(field) and not (field == "arrays" and sorted(v) == meta["arrays"])))
    if rehash and ((field == "format_version" and value == 1) or (field == "zca" and value == bool(meta.get("zca")))):
        return  # a consistent file: of the older format (no metadata hash), or zca=false written out on a set without ZCA
    meta[field] = value
    if rehash:
        meta["meta_sha256"] = io.meta_hash(meta)
    (folder / io.META_FILE).write_text(json.dumps(meta))
    assert _load_or_refuse(folder, kind) == "refused"


def _craft(folder: Path, change) -> None:
    """Rewrites the arrays with ``change(arrays)`` and fixes both hashes, as a deliberate forger would."""
    arrays = io.read_npz(folder / io.ARRAYS_FILE)
    change(arrays)
    np.savez(folder / io.ARRAYS_FILE, **arrays)
    meta = json.loads((folder / io.META_FILE).read_text())
    meta["content_sha256"] = io.content_hash(arrays)
    meta["meta_sha256"] = io.meta_hash(meta)
    (folder / io.META_FILE).write_text(json.dumps(meta))


FORGERIES = {
    "images float64": lambda a: a.update(images=a["images"].astype(np.float64)),
    "images float16": lambda a: a.update(images=a["images"].astype(np.float16)),
    "images 16x16": lambda a: a.update(images=np.zeros((20, 16, 16, 1), np.float32)),
    "images NaN": lambda a: a["images"].__setitem__((3, 2, 2, 0), np.nan),
    "images inf": lambda a: a["images"].__setitem__((0, 0, 0, 0), -np.inf),
    "no images": lambda a: a.update(images=np.zeros((0, 8, 8, 1), np.float32), labels=a["labels"][:0]),
    "labels of the wrong kind": lambda a: a.update(labels=a["labels"].astype(np.float32 if a["labels"].ndim == 1 else np.int32)),
    "labels bool": lambda a: a.update(labels=a["labels"] > 4),
    "labels out of range": lambda a: a["labels"].__setitem__(0, 10**6 if a["labels"].ndim == 1 else np.nan),
    "labels short": lambda a: a.update(labels=a["labels"][:-1]),
    "labels 3 classes": lambda a: a.update(labels=a["labels"][..., :3] if a["labels"].ndim == 2 else a["labels"][:, None]),
    "step sizes empty or added": lambda a: a.update(step_sizes=np.ones((0, 3), np.float32)),
    "step sizes removed": lambda a: a.pop("step_sizes", None) if "step_sizes" in a else a.update(step_sizes=np.ones(3, np.float32)),
    "zca matrices wrong": lambda a: a.update(zca_inverse=np.eye(3)),
    "images removed": lambda a: a.pop("images"),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_arrays_that_disagree_with_the_metadata_are_refused(tmp_path, kind, forgery):
    _saved(tmp_path, kind)
    _craft(tmp_path, FORGERIES[forgery])
    assert _load_or_refuse(tmp_path, kind) == "refused"


def test_a_digits_set_relabelled_mnist_is_refused(tmp_path):
    _saved(tmp_path, "hard")
    meta = json.loads((tmp_path / io.META_FILE).read_text())
    meta.update(dataset="mnist", meta_sha256=None)
    meta["meta_sha256"] = io.meta_hash(meta)
    (tmp_path / io.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(io.SynSetError, match=r"dataset 'mnist' has images \[28, 28, 1\], the file says \[8, 8, 1\]"):
        io.load_synset(tmp_path)


@FAST
@given(kind=st.sampled_from(KINDS), where=st.sampled_from(["images", "labels", "step_sizes"]), value=st.sampled_from([np.nan, np.inf, -np.inf]), index=st.integers(0, 10**6))
def test_nan_or_inf_anywhere_is_never_saved(tmp_path_factory, kind, where, value, index):
    folder = tmp_path_factory.mktemp("set")
    before = _saved(folder, "hard")  # an older good set is in the folder
    synset, meta, extra = _set(kind)
    target = getattr(synset, where)
    if target is None or (where == "labels" and kind != "soft"):
        return
    target.reshape(-1)[index % target.size] = value
    with pytest.raises(io.SynSetError) as error:
        io.save_synset(folder, synset, meta, extra)
    _assert_one_line(error.value)
    assert {name: (folder / name).read_bytes() for name in before} == before
    assert not [name for name in os.listdir(folder.parent) if ".jaxdd-" in name]  # no staging folder left


@pytest.mark.parametrize(
    "synset,meta",
    [
        (SynSet(np.zeros((0, 8, 8, 1)), np.zeros(0, np.int32)), META),
        (SynSet(np.zeros((2, 8, 8, 1)), np.array([0, 10])), META),
        (SynSet(np.zeros((2, 8, 8, 1)), np.array([0.0, 1.0])), META),
        (SynSet(np.zeros((2, 28, 28, 1)), np.array([0, 1])), META),
        (SynSet(np.zeros((2, 8, 8, 1)), np.array([0, 1]), np.ones((3, 0))), META),
        (SynSet(np.full((2, 8, 8, 1), 3e38), np.array([0, 1])), {**META, "num_classes": 10**40}),
        (SynSet(np.zeros((2, 8, 8, 1)), np.array([0, 1])), {**META, "mean": [0.5]}),
    ],
    ids=["empty", "label 10 of 10", "float hard labels", "mnist-sized digits", "empty step sizes", "huge class count", "wrong mean"],
)
def test_inconsistent_sets_are_never_saved(tmp_path, synset, meta):
    with pytest.raises(io.SynSetError) as error:
        io.save_synset(tmp_path / "s", synset, meta)
    _assert_one_line(error.value)
    assert not (tmp_path / "s").exists() and os.listdir(tmp_path) == []


def test_huge_finite_values_round_trip_exactly(tmp_path):
    images = np.array([3.4e38, -3.4e38, 1e-45, 0.0], np.float32).reshape(4, 1, 1, 1) * np.ones((4, 8, 8, 1), np.float32)
    synset = SynSet(images, np.array([0, 1, 2, 9], np.int32))
    io.save_synset(tmp_path, synset, {**META, "config": {"big": 10**30, "tiny": 1e-300, "text": "é" * 1000}})
    loaded, meta, _ = io.load_synset(tmp_path)
    np.testing.assert_array_equal(loaded.images, images)
    assert meta["config"] == {"big": 10**30, "tiny": 1e-300, "text": "é" * 1000}


@FAST
@given(fail_at=st.integers(0, 3), exchange=st.booleans())
def test_a_failed_overwrite_keeps_the_old_set_whole(tmp_path_factory, fail_at, exchange):
    """A failure while writing the new files (or before the swap) leaves the old set and the checkpoint intact."""
    folder = tmp_path_factory.mktemp("set")
    before = _saved(folder, "hard")
    (folder / CHECKPOINT_FILE).write_bytes(b"checkpoint")
    calls = {"n": 0}
    real_write = io._write_content

    def failing_write(file, content):
        if calls["n"] == fail_at:
            raise OSError("disk full")
        calls["n"] += 1
        real_write(file, content)

    synset, meta, extra = _set("soft")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(io, "_write_content", failing_write)
        if not exchange:
            patch.setattr(io, "_exchange", lambda a, b: False)
        try:
            io.save_synset(folder, synset, {**meta, "seed": 4}, extra)
            replaced = True
        except OSError:
            replaced = False
    assert replaced == (fail_at >= 3)  # npz, json, png: a fourth write never comes
    if replaced:
        assert io.load_synset(folder)[1]["seed"] == 4
    else:
        assert {name: (folder / name).read_bytes() for name in before} == before
        assert not (folder / io.GRID_FILE).exists()
    assert (folder / CHECKPOINT_FILE).read_bytes() == b"checkpoint"
    assert not [name for name in os.listdir(folder.parent) if ".jaxdd-" in name]


def test_overwrite_replaces_every_file_of_the_set(tmp_path):
    _saved(tmp_path, "soft")
    synset, meta, extra = _set("hard")
    io.save_synset(tmp_path, synset, meta, extra, grid=True)
    _assert_reads_original(tmp_path, "hard")
    io.save_synset(tmp_path, synset, meta, extra, grid=False)
    assert not (tmp_path / io.GRID_FILE).exists()


# --------------------------------------------------------------------------------------------
# Checkpoints

STATE = {
    "images": jnp.arange(24.0).reshape(2, 3, 4),
    "count": jnp.asarray(5, jnp.int32),
    "key": jax.random.key(4),
    "nested": (jnp.ones(3, jnp.float16), jnp.zeros((0, 2))),
}
IDENTITY = {"method_config": {"method": "toy", "lr": 0.1}, "dataset": "digits", "seed": 3}


def _same_state(a, b) -> bool:
    unwrap = lambda t: [np.asarray(jax.random.key_data(x)) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else np.asarray(x) for x in jax.tree.leaves(t)]  # noqa: E731
    return all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(unwrap(a), unwrap(b), strict=True))


def _load_checkpoint_or_refuse(path: Path, template=STATE, identity=IDENTITY) -> str:
    try:
        state, step = load_checkpoint(path, template, identity, num_steps=10)
    except CheckpointError as error:
        _assert_one_line(error)
        return "refused"
    assert step == 7 and _same_state(state, STATE)
    return "original"


@FAST
@given(fraction=st.floats(0, 1, exclude_max=True))
def test_truncated_checkpoints_are_refused(tmp_path_factory, fraction):
    path = tmp_path_factory.mktemp("ckpt") / CHECKPOINT_FILE
    save_checkpoint(path, STATE, 7, IDENTITY)
    data = path.read_bytes()
    path.write_bytes(data[: int(fraction * len(data))])
    assert _load_checkpoint_or_refuse(path) == "refused"


@FAST
@given(where=st.floats(0, 1, exclude_max=True), mask=st.integers(1, 255))
def test_flipped_bytes_in_checkpoints_read_back_the_original_or_are_refused(tmp_path_factory, where, mask):
    path = tmp_path_factory.mktemp("ckpt") / CHECKPOINT_FILE
    save_checkpoint(path, STATE, 7, IDENTITY)
    data = bytearray(path.read_bytes())
    data[int(where * len(data))] ^= mask
    path.write_bytes(bytes(data))
    _load_checkpoint_or_refuse(path)


CHECKPOINT_FORGERIES = {
    "leaf float64": lambda a: a.update(leaf_0=a["leaf_0"].astype(np.float64)),
    "leaf reshaped": lambda a: a.update(leaf_1=a["leaf_1"].reshape(6, 4)),
    "leaf removed": lambda a: a.pop("leaf_3"),
    "leaf added": lambda a: a.update(leaf_9=np.zeros(1)),
    "key as uint64": lambda a: a.update(key_2=a["key_2"].astype(np.uint64)),
    "step beyond the run": lambda a: a.update(__step__=np.asarray(11)),
    "step negative": lambda a: a.update(__step__=np.asarray(-1)),
    "step text": lambda a: a.update(__step__=np.asarray("seven")),
    "identity not JSON": lambda a: a.update(__identity__=np.asarray("{")),
    "identity of another seed": lambda a: a.update(__identity__=np.asarray(json.dumps({**IDENTITY, "seed": 4}))),
    "old format": lambda a: a.pop("__format__"),
}


@pytest.mark.parametrize("forgery", sorted(CHECKPOINT_FORGERIES))
def test_checkpoints_that_disagree_with_the_run_are_refused(tmp_path, forgery):
    path = tmp_path / CHECKPOINT_FILE
    save_checkpoint(path, STATE, 7, IDENTITY)
    arrays = io.read_npz(path)
    CHECKPOINT_FORGERIES[forgery](arrays)
    arrays.pop("__sha256__")
    arrays["__sha256__"] = np.asarray(io.content_hash(arrays))  # a consistent file, of another run or version
    np.savez(path, **arrays)
    assert _load_checkpoint_or_refuse(path) == "refused"
    assert _load_checkpoint_or_refuse(tmp_path / "absent.npz") == "refused"


@FAST
@given(field=st.sampled_from(["dataset", "seed", "arch", "zca", "data"]), value=st.one_of(st.integers(), st.text(max_size=5), st.booleans(), st.none()))
def test_any_identity_difference_is_refused_by_name(tmp_path_factory, field, value):
    path = tmp_path_factory.mktemp("ckpt") / CHECKPOINT_FILE
    save_checkpoint(path, STATE, 7, IDENTITY)
    other = {**IDENTITY, field: value}
    if io.canonical(other) == io.canonical(IDENTITY):
        return
    with pytest.raises(CheckpointError, match=rf"belongs to another run \({field}: "):
        load_checkpoint(path, STATE, other, num_steps=10)


def test_a_checkpoint_round_trips_exactly(tmp_path):
    save_checkpoint(tmp_path / CHECKPOINT_FILE, STATE, 7, IDENTITY)
    assert _load_checkpoint_or_refuse(tmp_path / CHECKPOINT_FILE) == "original"
    assert os.listdir(tmp_path) == [CHECKPOINT_FILE]
