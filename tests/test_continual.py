"""Continual learning: the distillation loss by hand, and the stage loop against direct training."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import coreset
from jaxdd.continual import (ContinualConfig, Task, build_memories, class_split_tasks, kd_loss, stage_key,
                             train_sequence, train_with_teacher)
from jaxdd.data import load_dataset
from jaxdd.evaluate import evaluate_synset, get_protocol
from jaxdd.models import get_model
from jaxdd.train import train_loop


def test_kd_loss_is_ce_plus_t2_scaled_kl_by_hand():
    z = np.array([[1.0, -0.5, 0.2], [0.3, 0.9, -1.2]])
    z_old = np.array([[0.5, 0.1, -0.3], [-0.2, 1.5, 0.4]])
    y = np.array([0, 2])
    t, lam = 2.0, 0.7

    def softmax(a):
        e = np.exp(a - a.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    ce = -np.log(softmax(z)[np.arange(2), y])
    q, p = softmax(z_old / t), softmax(z / t)
    kl = (q * np.log(q / p)).sum(-1)
    want = np.mean(ce + lam * t**2 * kl)
    with jax.enable_x64():
        got = kd_loss(jnp.asarray(z), jnp.asarray(y), jnp.asarray(z_old), t, lam)
        plain = kd_loss(jnp.asarray(z), jnp.asarray(y), jnp.asarray(z_old), t, 0.0)
        # The teacher is a constant and the distillation term vanishes when it agrees with the student.
        grad_teacher = jax.grad(lambda a: kd_loss(jnp.asarray(z), jnp.asarray(y), a, t, lam))(jnp.asarray(z_old))
        same = kd_loss(jnp.asarray(z), jnp.asarray(y), jnp.asarray(z), t, lam)
    np.testing.assert_allclose(float(got), want, rtol=1e-12)
    np.testing.assert_allclose(float(plain), ce.mean(), rtol=1e-12)
    np.testing.assert_allclose(float(same), ce.mean(), rtol=1e-12)
    assert float(got) > float(plain) + 0.05
    np.testing.assert_array_equal(np.asarray(grad_teacher), 0.0)
    # A distillation mask weights the KL term per example and leaves cross-entropy alone.
    with jax.enable_x64():
        masked = kd_loss(jnp.asarray(z), jnp.asarray(y), jnp.asarray(z_old), t, lam, distil_mask=jnp.asarray([0.0, 1.0]))
    np.testing.assert_allclose(float(masked), np.mean(ce + lam * t**2 * kl * [0.0, 1.0]), rtol=1e-12)


def test_distillation_on_no_image_is_plain_cross_entropy_training():
    ds = load_dataset("digits")
    model = get_model("MLP", (8, 8, 1), 10, width=16)
    images, labels = ds.x_train[:60], ds.y_train[:60]
    protocol = get_protocol("dc", epochs=3, batch_size=16)
    start, teacher = model.init(jax.random.key(1)), model.init(jax.random.key(2))
    key = jax.random.key(3)

    def distilled(on):
        return train_with_teacher(key, model, start, teacher, images, labels, protocol, 2.0, 1.0, distil_on=on)

    shuffle_key, _ = jax.random.split(key)
    plain = train_loop(model, start, images, labels, protocol, shuffle_key=shuffle_key)
    for a, b in zip(jax.tree.leaves(distilled(jnp.zeros(60, bool))), jax.tree.leaves(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(distilled(jnp.ones(60, bool))), jax.tree.leaves(distilled(None))):
        np.testing.assert_array_equal(a, b)
    # Distilling on the first half only is neither.
    half = distilled(jnp.arange(60) < 30)
    assert not np.allclose(jax.tree.leaves(half)[0], jax.tree.leaves(plain)[0])
    assert not np.allclose(jax.tree.leaves(half)[0], jax.tree.leaves(distilled(None))[0])


def _random_builder(key, images, labels, num_classes, ipc):
    s = coreset.random_real(key, images, labels, num_classes, ipc)
    return s.images, s.labels


@pytest.fixture(scope="module")
def digit_tasks():
    ds = load_dataset("digits")
    # Three domains from the embedded digits: as is, inverted, transposed.
    def domain(name, f):
        return Task(name, f(ds.x_train), ds.y_train, f(ds.x_test[:150]), ds.y_test[:150])

    return [domain("plain", lambda x: x), domain("inverted", lambda x: -x),
            domain("transposed", lambda x: jnp.swapaxes(x, 1, 2))]


def test_stage_three_trains_on_all_memories_and_kd_changes_training(digit_tasks):
    model = get_model("MLP", (8, 8, 1), 10, width=16)
    protocol = get_protocol("dc", epochs=8)
    key = jax.random.key(0)
    memories = build_memories(key, digit_tasks, _random_builder, ipc=2)
    # Labels of task 0 are kept: 2 images of each class.
    np.testing.assert_array_equal(np.bincount(np.asarray(memories[0].labels), minlength=10), 2)
    config = ContinualConfig(num_models=2, warm_start=False)
    plain = train_sequence(key, model, digit_tasks, memories, protocol, config)
    # Stage 3 (fresh start, no KD) equals training directly on M_1 u M_2 u M_3 -- the memory of
    # stage 1 is still in the training set -- tested on every task.
    union = [jnp.concatenate([m.images for m in memories]), jnp.concatenate([m.labels for m in memories])]
    for t, task in enumerate(digit_tasks):
        direct = evaluate_synset(stage_key(key, 2), model, *union, task.x_test, task.y_test, protocol, num_models=2)
        np.testing.assert_allclose(plain.task_accs[2, t], direct.accs, atol=1e-6)
    np.testing.assert_allclose(plain.stage_accs[2], plain.task_accs[2].mean(axis=0))
    assert np.isnan(plain.task_accs[0, 1:]).all() and np.isfinite(plain.task_accs[2]).all()

    # Two stages with distillation: stage 1 has no teacher (the same as without), stage 2 differs.
    distilled = train_sequence(key, model, digit_tasks[:2], memories[:2], protocol,
                               config._replace(kd=True, kd_weight=5.0))
    np.testing.assert_array_equal(distilled.task_accs[0], plain.task_accs[0, :2])
    assert not np.array_equal(distilled.task_accs[1], plain.task_accs[1, :2])
    # Distilling on the stage-1 memory's images only is a third training.
    old_only = train_sequence(key, model, digit_tasks[:2], memories[:2], protocol,
                              config._replace(kd=True, kd_weight=5.0, kd_old_only=True))
    assert not np.array_equal(old_only.task_accs[1], distilled.task_accs[1])
    assert not np.array_equal(old_only.task_accs[1], plain.task_accs[1, :2])


def test_class_split_tasks_and_memories_keep_global_labels(digit_tasks):
    plain = digit_tasks[0]
    tasks = class_split_tasks(plain.x_train, plain.y_train, plain.x_test, plain.y_test, [(0, 1), (7, 9)])
    assert set(np.unique(np.asarray(tasks[1].y_test))) == {7, 9}
    memories = build_memories(jax.random.key(1), tasks, _random_builder, ipc=3)
    np.testing.assert_array_equal(np.sort(np.asarray(memories[1].labels)), [7, 7, 7, 9, 9, 9])
    for memory, task in zip(memories, tasks):  # every memory image is a training image of its class
        flat = np.asarray(task.x_train).reshape(len(task.x_train), -1)
        for x, y in zip(np.asarray(memory.images).reshape(len(memory.images), -1), np.asarray(memory.labels)):
            match = np.flatnonzero((flat == x).all(axis=1))
            assert match.size and int(task.y_train[match[0]]) == y


def test_class_incremental_experiment_on_digits(tmp_path, monkeypatch):
    from experiments import common, dc_continual

    for module in (common, dc_continual):
        monkeypatch.setattr(module, "RESULTS", tmp_path)
    monkeypatch.setattr(dc_continual, "CACHE", tmp_path / "cache")
    # Two stages of five classes: the path of CIFAR-10's 5 x 2 with half the compilations.
    dc_continual.main(["--mode", "class", "--preset", "smoke", "--classes-per-stage", "5", "--methods", "random",
                       "--fresh-start"])
    tag = "class_smoke_digits_2x5_ipc2_seed0_fresh"
    summary = json.loads((tmp_path / f"continual_{tag}.json").read_text())
    assert summary["mode"] == "class" and summary["sequence"] == ["classes 0,1,2,3,4", "classes 5,6,7,8,9"]
    assert [(r["method"], r["kd"]) for r in summary["runs"]] == [("random", False), ("random", True)]
    for run in summary["runs"]:
        acc = np.asarray(run["stage_accs"])
        assert acc.shape == (2, 2) and (acc >= 0).all() and (acc <= 1).all()
    assert "| random | yes |" in (tmp_path / f"continual_{tag}.md").read_text()
    assert (tmp_path / f"continual_{tag}.png").is_file() and (tmp_path / f"continual_{tag}_full.json").is_file()

    memory_tag = tag.removesuffix("_fresh")  # one memory cache for every way of training on it
    memories = [np.load(tmp_path / "cache" / f"{memory_tag}_random_stage{s}.npz") for s in range(2)]
    for s, memory in enumerate(memories):  # each stage's memory holds only its own classes
        np.testing.assert_array_equal(np.sort(memory["labels"]), np.repeat(np.arange(5 * s, 5 * s + 5), 2))
    # Fresh start without KD: the last stage trains on both memories (stage 1's included) and
    # reports the accuracy on the test images of all seen classes, here the whole test split.
    preset = dc_continual.CLASS_PRESETS["smoke"]
    ds = load_dataset("digits")
    direct = evaluate_synset(
        stage_key(jax.random.key(0), 1), get_model("ConvNet", (8, 8, 1), 10, width=preset["width"]),
        jnp.concatenate([m["images"] for m in memories]), jnp.concatenate([m["labels"] for m in memories]),
        ds.x_test, ds.y_test, get_protocol("dc", epochs=preset["epochs"]), num_models=preset["models"])
    np.testing.assert_allclose(summary["runs"][0]["stage_accs"][-1], direct.accs, atol=1e-6)


def test_resume_keeps_other_methods_runs_with_their_commands(tmp_path):
    from types import SimpleNamespace

    from experiments import dc_continual

    full = {"command": "first", "preset": "cpu", "seed": 0, "continual": {"num_models": 5},
            "runs": [{"method": m, "kd": kd, "stage_accs": [[0.5]]} for m in ("random", "dc") for kd in (False, True)],
            "task_accs": {f"{m}_kd{kd}": [[[0.5]]] for m in ("random", "dc") for kd in (0, 1)},
            "run_commands": {"dc_kd1": "second"}}
    path = tmp_path / "continual_full.json"
    path.write_text(json.dumps(full))
    args = SimpleNamespace(preset="cpu", seed=0)
    kept = dc_continual.resumed_runs(path, args, 5, ["dc"])  # dc runs again: only random's are kept
    assert [(r["method"], r["kd"], r["command"]) for r in kept] == [("random", False, "first"), ("random", True, "first")]
    assert all(r["task_accs"] == [[[0.5]]] for r in kept)
    assert [r["command"] for r in dc_continual.resumed_runs(path, args, 5, ["random"])] == ["first", "second"]
    assert dc_continual.resumed_runs(tmp_path / "absent.json", args, 5, ["dc"]) == []
    with pytest.raises(SystemExit, match="made with preset, seed, models"):
        dc_continual.resumed_runs(path, args, 10, ["dc"])
