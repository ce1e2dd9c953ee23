"""The command never writes a set that lies, never loses a finished set, and ends every bad input
or bad file in one line on stderr with exit status 2 (no traceback, nothing half-written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import real_data_dir
from jaxdd import data, io
from jaxdd.cli import main
from jaxdd.distill import CHECKPOINT_FILE

# A quick iterative run on the embedded digits (a few seconds).
FAST_DM = ["distill", "dm", "--preset", "smoke", "--ipc", "1", "--iterations", "3", "--batch-real", "8",
           "--dsa-strategy", "none", "--arch-options", "width=8,depth=1", "--no-progress", "--checkpoint-every", "2"]


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(code, stderr, needle=""):
    assert code == 2, stderr
    assert stderr.count("\n") == 1 and stderr.startswith("jaxdd: error:") and "Traceback" not in stderr, stderr
    assert needle in stderr, stderr


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished dm run on digits, seed 7: its folder (set + checkpoint)."""
    out = tmp_path_factory.mktemp("run") / "dm"
    assert main([*FAST_DM, "--seed", "7", "--out", str(out)]) == 0
    return out


def test_a_finished_set_is_never_overwritten_silently(finished, tmp_path, capsys):
    before = _files(finished)
    _one_line_error(*_run([*FAST_DM, "--seed", "7", "--out", finished], capsys)[::2], "holds a finished set; add --overwrite")
    assert _files(finished) == before


@pytest.mark.parametrize(
    "change,needle",
    [
        (["--seed", "8"], "seed: 7 -> 8"),
        (["--arch-options", "width=16,depth=1"], 'arch_options.width: 8 -> 16'),
        (["--arch", "ConvNetW32", "--arch-options", ""], 'arch: "ConvNet" -> "ConvNetW32"'),
        (["--iterations", "4"], "config.iterations: 3 -> 4"),
        (["--dataset", "mnist"], 'dataset: "digits" -> "mnist"'),
    ],
    ids=["seed", "arch options", "arch", "config", "dataset"],
)
def test_resume_of_another_run_is_refused_naming_the_fields(finished, capsys, change, needle):
    if "mnist" in change and real_data_dir() is None:
        pytest.skip("MNIST files are not here")
    if "mnist" in change:  # prepare MNIST first: its one-time "preparing ..." lines are not part of the error
        data.load_dataset("mnist", str(real_data_dir()))
        capsys.readouterr()
    before = _files(finished)
    _one_line_error(*_run([*FAST_DM, "--seed", "7", "--out", finished, "--resume", *change], capsys)[::2], needle)
    assert _files(finished) == before


def test_resume_of_the_same_run_rewrites_the_identical_set(finished, tmp_path, capsys):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name, data in _files(finished).items():
        (copy / name).write_bytes(data)
    code, _, stderr = _run([*FAST_DM, "--seed", "7", "--out", copy, "--resume"], capsys)
    assert code == 0, stderr
    old, new = json.loads((finished / io.META_FILE).read_text()), json.loads((copy / io.META_FILE).read_text())
    assert new["content_sha256"] == old["content_sha256"] and new["identity"] == old["identity"]
    assert (copy / io.ARRAYS_FILE).read_bytes() == (finished / io.ARRAYS_FILE).read_bytes()

    code, _, stderr = _run([*FAST_DM, "--seed", "8", "--out", copy, "--overwrite"], capsys)
    assert code == 0, stderr
    replaced = json.loads((copy / io.META_FILE).read_text())
    assert replaced["seed"] == 8 and replaced["content_sha256"] != old["content_sha256"]
    assert not [p for p in tmp_path.iterdir() if ".jaxdd-" in p.name]


@pytest.mark.parametrize("damage", ["truncated", "flipped", "other run"])
def test_a_bad_checkpoint_is_one_line(finished, tmp_path, capsys, damage):
    out = tmp_path / "unfinished"
    out.mkdir()
    checkpoint = (finished / CHECKPOINT_FILE).read_bytes()
    if damage == "truncated":
        checkpoint = checkpoint[: len(checkpoint) // 2]
    elif damage == "flipped":
        checkpoint = checkpoint[:300] + bytes([checkpoint[300] ^ 0xFF]) + checkpoint[301:]
    (out / CHECKPOINT_FILE).write_bytes(checkpoint)
    seed = "8" if damage == "other run" else "7"
    needle = {"truncated": "corrupt or truncated", "flipped": "corrupt", "other run": "seed: 7 -> 8"}[damage]
    _one_line_error(*_run([*FAST_DM, "--seed", seed, "--out", out, "--resume"], capsys)[::2], needle)
    _one_line_error(*_run([*FAST_DM, "--seed", seed, "--out", out], capsys)[::2], "unfinished run; add --resume")
    assert _files(out) == {CHECKPOINT_FILE: checkpoint}


def _relabel(folder: Path, rehash: bool, **changes) -> None:
    meta = json.loads((folder / io.META_FILE).read_text())
    meta.update(changes)
    if rehash:
        meta["meta_sha256"] = io.meta_hash(meta)
    (folder / io.META_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "edit,needle",
    [
        (dict(rehash=True, dataset="mnist"), "dataset 'mnist' has images [28, 28, 1], the file says [8, 8, 1]"),
        (dict(rehash=True, dataset="mnist", image_shape=[28, 28, 1]), "images (10, 8, 8, 1) do not match image_shape [28, 28, 1]"),
        (dict(rehash=False, dataset="mnist"), "does not match its own hash"),
        (dict(rehash=True, num_classes=3), "has 10 classes, the file says 3"),
        (dict(rehash=True, label_kind="soft"), "says soft labels"),
    ],
    ids=["relabelled mnist", "mnist shape too", "edited", "class count", "label kind"],
)
@pytest.mark.parametrize("command", ["evaluate", "export", "resume"])
def test_a_set_that_disagrees_with_itself_is_one_line_for_every_command(finished, tmp_path, capsys, edit, needle, command):
    folder = tmp_path / "set"
    folder.mkdir()
    for name in (io.ARRAYS_FILE, io.META_FILE):
        (folder / name).write_bytes((finished / name).read_bytes())
    _relabel(folder, **edit)
    argv = {
        "evaluate": ["evaluate", folder, "--models", "1", "--epochs", "1"],
        "export": ["export", folder, "--to", "npz", "--out", tmp_path / "exported.npz"],
        "resume": [*FAST_DM, "--seed", "7", "--out", folder, "--resume"],
    }[command]
    before = _files(folder)
    _one_line_error(*_run(argv, capsys)[::2], needle)
    assert _files(folder) == before and not (tmp_path / "exported.npz").exists()


VALUES = st.sampled_from(["", "0", "-1", "nan", "inf", "1e400", str(10**30), "x", "digits", "dm", "a=b", ",,", "é", "--", "none"])
FLAGS = st.sampled_from(["--ipc", "--dataset", "--method", "--arch", "--preset", "--seed", "--mesh", "--checkpoint-every", "--arch-options",
                         "--model-init", "--iterations", "--lr-img", "--batch-real", "--dsa-strategy", "--config", "--bogus"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(FLAGS, VALUES), min_size=1, max_size=4), bad=st.sampled_from([
    ["--ipc", "0"], ["--dataset", "imagenet9"], ["--arch", "Nope"], ["--method", "magic"], ["--preset", "huge"], ["--mesh", "data=0"],
    ["--ipc", "x"], ["--seed", "nan"], ["--config", "/nonexistent.json"], ["--model-init", "zeros"], ["--arch-options", "=3"],
]))
def test_command_lines_with_a_bad_value_end_in_one_line(tmp_path_factory, capsys, pairs, bad):
    """Any mix of flags and odd values with at least one bad value: one line, exit 2, no output folder."""
    out = tmp_path_factory.mktemp("cli") / "out"
    argv = ["distill", "dm", "--preset", "smoke", *[item for pair in pairs for item in pair], *bad, "--out", str(out), "--no-progress"]
    code, _, stderr = _run(argv, capsys)
    _one_line_error(code, stderr)
    assert not out.exists()


@pytest.mark.parametrize(
    "case,needle",
    [
        ("import a file that is not a set", "pickled"),
        ("generator JSON invalid", "is not valid JSON"),
        ("generator parameters truncated", "do not match the recorded architecture"),
        ("pretrain onto a finished generator", "holds a finished generator; add --overwrite"),
        ("pretrain onto an unfinished run", "unfinished run; add --resume"),
    ],
)
def test_other_commands_refuse_bad_files_in_one_line(tmp_path, capsys, case, needle):
    generator = tmp_path / "generator"
    generator.mkdir()
    (generator / "generator.json").write_text('{"format": "jaxdd-mgdd-generator-v2", "generator": {"channels": 1, "width": 4, "depth": 1, "embed": 8, "gate": 0.01}}')
    (generator / "generator.msgpack").write_bytes(b"\x81\xa1")
    garbage = tmp_path / "set.npz"
    garbage.write_bytes(b"garbage")
    if case == "generator JSON invalid":
        (generator / "generator.json").write_text('{"format": 1')
    if case == "pretrain onto an unfinished run":
        (generator / "generator.json").unlink()
        (generator / CHECKPOINT_FILE).write_bytes(b"checkpoint")
    argv = {
        "import a file that is not a set": ["import", garbage, "--out", tmp_path / "out", "--dataset", "digits"],
        "generator JSON invalid": ["distill", "mgdd", "--preset", "smoke", "--generator", generator, "--out", tmp_path / "out", "--no-progress"],
        "pretrain onto a finished generator": ["pretrain-generator", "--sources", "digits", "--preset", "smoke", "--out", generator, "--no-progress"],
    }
    argv["generator parameters truncated"] = argv["generator JSON invalid"]
    argv["pretrain onto an unfinished run"] = argv["pretrain onto a finished generator"]
    before = _files(generator)
    _one_line_error(*_run(argv[case], capsys)[::2], needle)
    assert _files(generator) == before and not (tmp_path / "out").exists()
