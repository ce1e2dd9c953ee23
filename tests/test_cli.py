"""The `jaxdd` command: the happy path on embedded digits and every error path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal, NamedTuple, Optional

import pytest

from jaxdd.cli import main


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_distill_then_evaluate_json(tmp_path, capsys):
    out = tmp_path / "rand"
    code, stdout, _ = _run(["distill", "--method", "random", "--dataset", "digits", "--ipc", "2", "--out", str(out), "--seed", "3"], capsys)
    assert code == 0 and str(out) in stdout
    assert {p.name for p in out.iterdir()} >= {"synset.npz", "synset.json", "synset.png"}
    meta = json.loads((out / "synset.json").read_text())
    assert meta["method"] == "random" and meta["seed"] == 3 and meta["num_images"] == 20
    code, stdout, _ = _run(["evaluate", str(out), "--models", "2", "--epochs", "5", "--json", "--arch", "MLP"], capsys)
    assert code == 0
    result = json.loads(stdout)
    assert set(result) >= {"accs", "mean", "std", "protocol", "arch", "models"}
    assert len(result["accs"]) == 2 and result["arch"] == "MLP" and result["protocol"] == "dc"
    assert 0.0 <= result["mean"] <= 1.0


def test_average_baseline_is_the_class_mean(tmp_path, capsys, digits):
    import numpy as np

    out = tmp_path / "avg"
    assert _run(["distill", "--method", "average", "--ipc", "1", "--out", str(out)], capsys)[0] == 0
    with np.load(out / "synset.npz") as stored:
        images, labels = stored["images"], stored["labels"]
    x, y = np.asarray(digits.x_train), np.asarray(digits.y_train)
    for c in range(10):
        np.testing.assert_allclose(images[labels == c][0], x[y == c].mean(0), atol=1e-5)


def test_datasets_lists_the_registry(capsys):
    code, stdout, _ = _run(["datasets"], capsys)
    assert code == 0
    for name in ("digits", "mnist", "fashion_mnist", "usps", "cifar10", "cifar100", "svhn_cropped"):
        assert name in stdout


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["distill", "--dataset", "imagenet9"], "unknown dataset"),
        (["distill", "--method", "magic"], "unknown method"),
        (["distill", "--arch", "Transformer9"], "unknown architecture"),
        (["distill", "--ipc", "0"], "--ipc must be at least 1"),
        (["distill", "--ipc", "100000"], "larger than the smallest class"),
        (["evaluate", "/nonexistent/set"], "missing"),
        (["evaluate", "{corrupt}"], "corrupt"),
        (["distill", "--out", "{file}/sub"], "not a writable folder"),
    ],
)
def test_error_paths_are_one_line_without_output(tmp_path, capsys, argv, needle):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "synset.npz").write_bytes(b"not a zip")
    (corrupt / "synset.json").write_text('{"format_version": 1}')
    a_file = tmp_path / "file"
    a_file.write_text("x")
    argv = [a.replace("{corrupt}", str(corrupt)).replace("{file}", str(a_file)) for a in argv]
    if argv[0] == "distill" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    code, stdout, stderr = _run(argv, capsys)
    assert code == 2
    assert stderr.count("\n") == 1 and stderr.startswith("jaxdd: error:") and needle in stderr, stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_no_arguments_runs_the_main_job(tmp_path):
    """`jaxdd` alone distils on the embedded default and says where it wrote (a real process)."""
    env = {**os.environ, "JAXDD_DATA_DIR": str(tmp_path / "no-data")}
    done = subprocess.run([sys.executable, "-m", "jaxdd.cli"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    written = [p for p in (tmp_path / "runs").iterdir()]
    assert len(written) == 1 and (written[0] / "synset.json").is_file()
    assert str(Path("runs") / written[0].name) in done.stdout


def test_method_help_shows_only_its_options_with_the_preset_defaults(capsys):
    """Flags and help come from the config's fields and docstring; defaults follow --preset/--ipc."""
    for argv in (["distill", "--method", "dc", "--preset", "smoke", "--help"], ["distill", "dc", "--preset", "smoke", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        text = capsys.readouterr().out
        assert "dc options (defaults: preset smoke" in text and "--lr-img" in text and "--outer-loop" in text
        assert "--distill-lr" not in text and "--feature-epochs" not in text  # dd's, herding's
        options = text[text.index("dc options"):]
        assert "(default: 30)" in options[options.index("--iterations"):].split("--outer-loop")[0]
    with pytest.raises(SystemExit):
        main(["distill", "--method", "dc", "--preset", "paper", "--help"])
    paper = capsys.readouterr().out
    paper = paper[paper.index("dc options"):]
    assert "(default: 1000)" in paper[paper.index("--iterations"):].split("--outer-loop")[0]


def test_config_file_reproduces_a_run_and_flags_override_it(tmp_path, capsys):
    import numpy as np

    first = tmp_path / "first"
    assert _run(["distill", "kmeans", "--ipc", "2", "--iterations", "3", "--seed", "4", "--out", str(first)], capsys)[0] == 0
    meta = json.loads((first / "synset.json").read_text())
    assert meta["config"] == {"iterations": 3} and meta["model_init"] == "torch" and meta["arch_options"] == {}
    again = tmp_path / "again"
    assert _run(["distill", "--config", str(first / "synset.json"), "--out", str(again)], capsys)[0] == 0
    with np.load(first / "synset.npz") as a, np.load(again / "synset.npz") as b:
        assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["labels"], b["labels"])
    assert json.loads((again / "synset.json").read_text())["config"] == meta["config"]
    override = tmp_path / "override"
    assert _run(["distill", "--config", str(first / "synset.json"), "--iterations", "5", "--out", str(override)], capsys)[0] == 0
    assert json.loads((override / "synset.json").read_text())["config"] == {"iterations": 5}


def test_yaml_config_file(tmp_path, capsys):
    pytest.importorskip("yaml")
    path = tmp_path / "run.yaml"
    path.write_text("method: kmeans\nipc: 1\nseed: 2\nconfig:\n  iterations: 2\n")
    assert _run(["distill", "--config", str(path), "--out", str(tmp_path / "out")], capsys)[0] == 0
    meta = json.loads((tmp_path / "out" / "synset.json").read_text())
    assert (meta["method"], meta["ipc"], meta["seed"], meta["config"]) == ("kmeans", 1, 2, {"iterations": 2})


@pytest.mark.parametrize("content,needle", [
    ('{"method": "kmeans", "config": {"iterashuns": 3}}', "has no option iterashuns"),
    ('{"method": "kmeans", "config": {"iterations": "many"}}', "iterations: expected int"),
    ('[1, 2]', "expected a mapping"),
    ('{"method": "kmeans",', "not valid JSON"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, capsys, content, needle):
    path = tmp_path / "run.json"
    path.write_text(content)
    code, _, stderr = _run(["distill", "--config", str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and stderr.count("\n") == 1 and needle in stderr, stderr
    assert not (tmp_path / "out").exists()


def test_set_records_the_architecture_and_evaluate_rebuilds_it(tmp_path, capsys):
    """The init scheme and the architecture's options travel with the set (DD defaults to its own init)."""
    out = tmp_path / "avg"
    argv = ["distill", "average", "--ipc", "1", "--arch-options", "width=8,depth=2", "--model-init", "dd", "--out", str(out)]
    assert _run(argv, capsys)[0] == 0
    meta = json.loads((out / "synset.json").read_text())
    assert meta["arch_options"] == {"width": 8, "depth": 2} and meta["model_init"] == "dd"
    code, stdout, _ = _run(["evaluate", str(out), "--models", "1", "--epochs", "1", "--json"], capsys)
    result = json.loads(stdout)
    assert code == 0 and result["arch_options"] == {"width": 8, "depth": 2} and result["model_init"] == "dd"
    from jaxdd import methods

    assert methods.get_method("dd").model_init == "dd"


class Toy(NamedTuple):
    """A toy config.

    Attributes:
        steps: how many.
        rate: a float.
        sizes: sizes, comma-separated
            on the command line.
        cap: optional cap.
        mode: one of two.
        flag: a switch.
    """

    steps: int = 1
    rate: float = 0.5
    sizes: tuple[int, ...] = (1,)
    cap: Optional[int] = 3
    mode: Literal["a", "b"] = "a"
    flag: bool = False


def test_config_arguments_parse_every_field_type():
    import argparse

    from jaxdd.cli import add_config_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Toy, Toy())
    assert "sizes, comma-separated on the command line (default: 1)" in " ".join(parser.format_help().split())
    args = parser.parse_args(["--steps", "4", "--sizes", "2,5", "--cap", "none", "--mode", "b", "--flag"])
    assert config_from_args(Toy, Toy(), args) == Toy(4, 0.5, (2, 5), None, "b", True)
    assert config_from_args(Toy, Toy(), parser.parse_args([])) == Toy()
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])


def test_every_method_config_is_typed_and_documented():
    import typing

    from jaxdd import methods

    methods._load_builtin_methods()
    for spec in methods.METHODS.values():
        if spec.config_type is None:
            continue
        for preset in methods.PRESETS:
            try:
                config = spec.default_config(preset, 10, "mnist")
            except ValueError:
                continue
            assert isinstance(config, spec.config_type), spec.name
        for field in methods.config_fields(spec.config_type):
            assert field.doc, f"{spec.name}: field {field.name} has no Attributes: entry"
            assert field.type is not typing.Any and field.type is not tuple, f"{spec.name}.{field.name}: {field.type}"
