"""What a new user meets first: the main job, every method's smoke preset with the defaults a user
gets, quiet output, and the first errors (a set that does not fit its dataset, a missing --data-dir).

Every method is run through the command line exactly as a user would (`jaxdd distill M --preset
smoke`, default network), then `jaxdd evaluate --against-random` trains the same networks on the
set and on random real images of the same size; the set must beat random real. The evaluation is
tiny (2 networks, 100 epochs where the protocol counts epochs), so these are smoke checks of
stability and direction, not measurements.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jaxdd import quickstart
from jaxdd.cli import main

# (method, img/cls, why it may lose to random real at this size). DD's steps hold one image per
# class each, so its smoke preset (10 steps) needs 10 img/cls.
CASES = [
    ("average", 1, None),
    ("kmeans", 1, None),
    ("dc", 1, None),
    ("dm", 1, None),
    pytest.param("herding", 1, None, marks=pytest.mark.slow),
    pytest.param("kcenter", 1, None, marks=pytest.mark.slow),
    pytest.param("forgetting", 1, "the most forgotten images are the hardest ones: DC's Table 1 has forgetting "
                 "at 35.5 % against random real at 64.9 % on MNIST with 1 img/cls", marks=pytest.mark.slow),
    pytest.param("dsa", 1, None, marks=pytest.mark.slow),
    pytest.param("dd", 10, None, marks=pytest.mark.slow),
    pytest.param("frepo", 1, None, marks=pytest.mark.slow),
    pytest.param("mgdd", 1, "the smoke preset pre-trains its generator for a few iterations only; measured "
                 "60.7 +- 1.3 % against random real 68.2 +- 0.8 % (3 networks)", marks=pytest.mark.slow),
]


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("method,ipc,known_miss", CASES)
def test_smoke_preset_with_user_defaults_beats_random_real(tmp_path, capsys, method, ipc, known_miss):
    out = tmp_path / method
    code, stdout, stderr = _run(["distill", method, "--dataset", "digits", "--ipc", str(ipc), "--preset", "smoke",
                                 "--out", str(out)], capsys)
    assert code == 0, stderr
    # Results on stdout (one line), everything else on stderr.
    assert stdout.count("\n") == 1 and stdout.startswith(f"jaxdd: {method} on digits"), stdout
    code, stdout, stderr = _run(["evaluate", str(out), "--against-random", "--models", "2", "--epochs", "100",
                                 "--json", "--quiet"], capsys)
    assert code == 0 and stderr == "", stderr
    result = json.loads(stdout)
    assert os.path.isfile(result["chart"])
    mean, random = result["mean"], result["random_real"]["mean"]
    assert mean > 0.2, f"{method}: {mean:.3f} is near chance (0.1): unstable on the default network"
    if known_miss is not None and mean <= random:
        pytest.xfail(f"{method} {mean:.3f} <= random real {random:.3f}: {known_miss}")
    assert mean > random, f"{method}: {mean:.3f} does not beat random real {random:.3f}"


def test_main_job_quiet_prints_only_the_results(tmp_path, capsys, monkeypatch):
    """`jaxdd --quiet`: the distillation line, both accuracies and the gain on stdout, nothing on stderr."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(quickstart.MAIN_JOB, "config", {"iterations": 20})
    monkeypatch.setitem(quickstart.MAIN_EVAL, "models", 2)
    monkeypatch.setitem(quickstart.MAIN_EVAL, "epochs", 100)  # as the cases above: one compilation
    code, stdout, stderr = _run(["--quiet"], capsys)
    assert code == 0 and stderr == "", stderr
    lines = stdout.splitlines()
    assert len(lines) == 4 and lines[0].startswith("jaxdd: dm on digits, 1 img/cls"), stdout
    assert lines[1].startswith("DM") and lines[2].startswith("random real") and lines[3].startswith("gain")
    assert "2 ConvNet models, protocol dc" in lines[1]
    folder = tmp_path / "runs" / "dm-digits-ipc1"
    assert {"synset.npz", "synset.json", "synset.png", "accuracy.png"} <= {p.name for p in folder.iterdir()}
    assert float(lines[3].split()[1]) > 0, "DM does not beat random real in the main job"


def test_a_set_relabelled_to_another_dataset_is_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "avg"
    assert _run(["distill", "average", "--ipc", "1", "--out", str(out), "--quiet"], capsys)[0] == 0
    meta = json.loads((out / "synset.json").read_text())
    meta["dataset"] = "mnist"  # digits images (8x8) named as MNIST (28x28)
    (out / "synset.json").write_text(json.dumps(meta))
    code, stdout, stderr = _run(["evaluate", str(out), "--models", "1", "--epochs", "1"], capsys)
    assert code == 2 and stdout == "", stdout
    assert stderr.count("\n") == 1 and stderr.startswith("jaxdd: error:") and "Traceback" not in stderr, stderr


@pytest.mark.parametrize("command", [["distill", "average", "--out", "{tmp}/out"], ["datasets"], ["evaluate", "{tmp}/set"]])
def test_a_missing_data_dir_is_an_error_not_a_fallback(tmp_path, capsys, command):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in command] + ["--data-dir", str(tmp_path / "nowhere")]
    if command[0] == "evaluate":
        assert _run(["distill", "average", "--ipc", "1", "--out", str(tmp_path / "set"), "--quiet"], capsys)[0] == 0
    code, stdout, stderr = _run(argv, capsys)
    assert code == 2 and stdout == ""
    assert stderr == f"jaxdd: error: --data-dir {tmp_path / 'nowhere'}: no such folder\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.data
def test_preparing_mnist_prints_no_third_party_output(tmp_path):
    """A first MNIST load (tensorflow-datasets preparing the official files) shows jaxdd's lines only."""
    from conftest import real_data_dir

    root = real_data_dir()
    if root is None or not (root / "mnist").is_dir():
        pytest.skip("no MNIST files under the data root")
    env = {**os.environ, "JAXDD_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    done = subprocess.run([sys.executable, "-m", "jaxdd.cli", "distill", "random", "--dataset", "mnist", "--ipc", "1",
                           "--data-dir", str(root), "--out", str(tmp_path / "out")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("jaxdd: random on mnist") and done.stdout.count("\n") == 1, done.stdout
    assert all(line.startswith("jaxdd: ") for line in done.stderr.splitlines()), done.stderr
    assert "preparing mnist" in done.stderr


NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "examples", "quickstart.ipynb")


def test_quickstart_notebook_runs_at_smoke_size(tmp_path):
    """examples/quickstart.ipynb, executed with a smoke-sized parameter cell on the embedded digits."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    params.source += ('\nDATASET, PRESET, ITERATIONS, EVAL_MODELS, EVAL_EPOCHS = "digits", "smoke", 20, 2, 50'
                      f'\nOUT = {str(tmp_path / "quickstart")!r}')
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    printed = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "random real" in printed and "gain" in printed, printed
    assert {"synset.png", "accuracy.png", "synset_nchw.npz"} <= {p.name for p in (tmp_path / "quickstart").iterdir()}
