"""An MTT set is evaluated with its learned step size: saved in the set file, read back, used."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxdd.cli import main
from jaxdd.methods import mtt

TINY = ["--iterations", "3", "--syn-steps", "2", "--expert-epochs", "1", "--max-start-epoch", "1", "--lr-lr", "1e-5",
        "--num-experts", "1", "--expert-train-epochs", "1", "--dsa-strategy", "none"]
"""The smoke preset made smaller still; lr_lr large enough that the step size visibly moves."""


def _evaluate(capsys, *argv) -> dict:
    assert main(["evaluate", *argv, "--models", "1", "--epochs", "1", "--arch", "MLP", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def mtt_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("mtt") / "set"
    argv = ["distill", "--method", "mtt", "--dataset", "digits", "--ipc", "1", "--preset", "smoke", "--arch", "MLP",
            "--experts", str(out.parent / "experts.npz"), "--out", str(out), "--no-progress", *TINY]
    assert main(argv) == 0
    return out


def test_learned_lr_is_saved_in_the_set_file(mtt_set):
    meta = json.loads((mtt_set / "synset.json").read_text())
    learned = float(np.load(mtt_set / "synset.npz")["syn_lr"])
    assert learned > 0 and abs(learned - 0.01) > 1e-7  # it was learned, away from lr_teacher
    assert meta["eval_protocol"] == "dsa" and meta["eval_overrides"] == {"lr": learned}
    assert mtt.eval_overrides({"syn_lr": np.float32(-1.0)}) == {}  # a step size that cannot train is not used


def test_evaluate_trains_with_the_learned_lr_by_default(mtt_set, capsys):
    learned = json.loads((mtt_set / "synset.json").read_text())["eval_overrides"]["lr"]
    result = _evaluate(capsys, str(mtt_set))
    assert result["protocol"] == "dsa" and result["protocol_config"]["lr"] == learned
    assert result["set_overrides"] == {"lr": learned}
    assert main(["evaluate", str(mtt_set), "--models", "1", "--epochs", "1", "--arch", "MLP", "--quiet"]) == 0
    assert f"protocol dsa, the set's lr={learned:.6g}" in capsys.readouterr().out


@pytest.mark.parametrize("flags, lr", [(["--plain-protocol"], 0.01), (["--protocol", "dsa"], 0.01), (["--lr", "0.05"], 0.05)])
def test_a_protocol_or_an_explicit_flag_turns_it_off(mtt_set, capsys, flags, lr):
    result = _evaluate(capsys, str(mtt_set), *flags)
    assert result["protocol_config"]["lr"] == lr and result["set_overrides"] == {}
