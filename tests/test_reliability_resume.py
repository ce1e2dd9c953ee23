"""Kill-and-resume for every iterative method: a run stopped at a random step (or killed with
SIGKILL) and resumed from its checkpoint ends with the uninterrupted run's state, bit for bit."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import tiny_mlp
from jaxdd import data, distill, methods

ITERATIVE = ["dc", "dsa", "dm", "dd", "frepo", "mgdd", "mgdd-pretrain", "mtt", "idc"]
"""Every iterative method; those not registered (yet) are skipped with a reason."""
QUICK = ("dm", "dd")
"""Cases run by default; the others (about 10 to 60 s each on 2 busy cores, mostly compilation) are marked slow."""
STEPS = 4


def _bits(state) -> list[np.ndarray]:
    return [
        np.asarray(jax.random.key_data(leaf)) if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key) else np.asarray(leaf)
        for leaf in jax.tree.leaves(state)
    ]


def _assert_bit_identical(a, b) -> None:
    for x, y in zip(_bits(a), _bits(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.atleast_1d(x).view(np.uint8), np.atleast_1d(y).view(np.uint8))


TINY = {
    "dc": {"iterations": STEPS, "outer_loop": 1, "inner_loop": 1, "batch_real": 8, "batch_train": 16},
    "dsa": {"iterations": STEPS, "outer_loop": 1, "inner_loop": 1, "batch_real": 8, "batch_train": 16, "dsa_strategy": "flip"},
    "dm": {"iterations": STEPS, "batch_real": 8, "dsa_strategy": "flip"},
    "dd": {"iterations": STEPS, "steps": 1, "epochs": 1, "num_inits": 1, "real_batch": 16},
    "frepo": {"iterations": STEPS, "batch_real": 16},
    "mgdd": {"adapt_steps": STEPS, "real_per_class": 4, "label_per_class": 4, "label_nets": 1, "max_per_class": 10, "init_sets": 1, "gen_width": 4},
    "mtt": {"iterations": STEPS, "syn_steps": 2, "expert_epochs": 1, "max_start_epoch": 1, "lr_img": 10.0, "num_experts": 1,
            "expert_train_epochs": 1, "experts": "{tmp}/experts.npz"},
    "idc": {"iterations": STEPS, "inner_loop": 1, "match_fc": True, "batch_real": 4, "batch_syn_max": 8, "net_data": 20, "net_batch": 10,
            "dsa_strategy": "flip", "net_dsa_strategy": "", "pretrain_from": 0, "pretrain_num": 1, "num_experts": 1,
            "expert_train_epochs": 1, "experts": "{tmp}/experts.npz"},
}
"""Each method's smoke preset made smaller still: the test is about the driver, not the method."""


@pytest.fixture(scope="module")
def digits():
    dataset = data.load_dataset("digits")
    x, y = np.asarray(dataset.x_train), np.asarray(dataset.y_train)
    keep = np.concatenate([np.flatnonzero(y == c)[:12] for c in range(10)])  # 12 per class
    return x[keep], y[keep], tiny_mlp()


def _mgdd_pretrain(digits) -> methods.IterativeMethod:
    from jaxdd.methods import mgdd

    if not hasattr(mgdd, "make_pretrain"):
        pytest.skip("MGDD pre-training is not an IterativeMethod in this tree")
    x, y, model = digits
    config = mgdd.default_pretrain_config("smoke")._replace(
        steps=STEPS, task_classes=4, pretrain_ipcs=(1,), real_per_class=3, label_per_class=3, label_nets=1,
        max_per_class=8, holdout_per_class=4, val_every=2, val_tasks=1, gen_width=4, gen_depth=1, gen_embed=8)
    generator = mgdd.generator_from_config(1, config)
    return mgdd.make_pretrain(generator, model, x, y, 10, config, jax.random.key(11))


def _method(name: str, digits, tmp: Path) -> methods.IterativeMethod:
    if name == "mgdd-pretrain":
        return _mgdd_pretrain(digits)
    try:
        spec = methods.get_method(name)
    except ValueError:
        pytest.skip(f"method {name} is not registered in this tree")
    x, y, model = digits
    known = {field.name for field in methods.config_fields(spec.config_type)}
    overrides = {k: v.format(tmp=tmp) if isinstance(v, str) else v for k, v in TINY.get(name, {}).items() if k in known}
    config = methods.resolve_config(spec, "smoke", 1, "digits", overrides, num_classes=10)
    request = methods.DistillRequest(x, y, 10, model, 1, "smoke", jax.random.key(11), config=config, dataset="digits")
    made = spec.make(request)
    if not isinstance(made, methods.IterativeMethod):
        pytest.skip(f"method {name} is not iterative here")
    return made._replace(num_steps=min(made.num_steps, STEPS))


@pytest.mark.parametrize("name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in ITERATIVE])
def test_stopped_and_resumed_run_is_bit_identical(tmp_path, digits, name):
    method = _method(name, digits, tmp_path)
    stop = random.Random(name).randrange(1, method.num_steps)  # a fixed "random" step per method
    key, identity = jax.random.key(5), {"dataset": "digits", "seed": 5}
    straight = distill.run(method, key, progress=False)
    run_dir = tmp_path / "run"
    distill.run(method, key, checkpoint_dir=run_dir, checkpoint_every=1, identity=identity, stop_at=stop, progress=False)
    assert int(np.load(run_dir / distill.CHECKPOINT_FILE)["__step__"]) == stop
    resumed = distill.run(method, key, checkpoint_dir=run_dir, checkpoint_every=2, identity=identity, resume=True, progress=False)
    _assert_bit_identical(straight, resumed)
    _assert_bit_identical(method.to_synset(straight), method.to_synset(resumed))


KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    import jax
    sys.path.insert(0, {tests!r})
    from test_distill import toy_method
    from jaxdd.distill import run

    def kill(step, metrics):
        if step == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)

    run(toy_method(num_steps=40), jax.random.key(0), checkpoint_dir={out!r}, checkpoint_every=3, sync_every=1,
        identity={{"seed": 0}}, on_step=kill, progress=False)
    """
)


def test_a_sigkilled_run_resumes_bit_identical(tmp_path):
    from test_distill import toy_method

    kill_at = random.Random(0).randrange(5, 35)
    script = KILLED_RUN.format(tests=str(Path(__file__).parent), kill_at=kill_at, out=str(tmp_path))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    with np.load(tmp_path / distill.CHECKPOINT_FILE) as stored:
        assert 0 < int(stored["__step__"]) <= kill_at + 1
    assert [p.name for p in tmp_path.iterdir()] == [distill.CHECKPOINT_FILE]  # no temporary file left
    resumed = distill.run(toy_method(num_steps=40), jax.random.key(0), checkpoint_dir=tmp_path, identity={"seed": 0}, resume=True, progress=False)
    _assert_bit_identical(distill.run(toy_method(num_steps=40), jax.random.key(0), progress=False), resumed)
