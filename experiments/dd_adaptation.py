"""DD's Table 2 (Wang et al. 2018): few-shot domain adaptation MNIST <-> USPS with LeNet.

A LeNet pre-trained on the source is adapted to the target by 10 GD steps x 3 epochs on 100
images: DD images distilled on the target training set from (a) one fixed pre-trained network or
(b) a pool of pre-trained networks (p(theta_0) = uniform over the pool; the pool is trained as one
vmapped program), against target real-image baselines trained from the same pre-trained
networks with the same steps and a fixed step size chosen on held-out target *training* images,
no adaptation, and fine-tuning on the full target training set.

Usage::

    nice -n 10 python -m experiments.dd_adaptation --preset cpu --data-dir /work/shared/data --direction mnist-usps
    nice -n 10 python -m experiments.dd_adaptation --preset cpu --data-dir /work/shared/data --direction usps-mnist

Results: ``experiments/results/dd_adaptation_<preset>_<source>-<target>.json`` and ``dd_adaptation_<preset>.md``.
SVHN -> MNIST is not run: SVHN is not available offline here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.dd_table import pct, provenance, run_dd
from jaxdd import coreset, data, models
from jaxdd.evaluate import evaluate_synset, get_protocol, train_models
from jaxdd.train import CycledGD, Protocol
from jaxdd.types import Model

RESULTS = Path(__file__).resolve().parent / "results"

PRESETS = {
    "smoke": dict(pretrain_images=500, pretrain_epochs=1, pool=3, pool_test=1, iterations=5, real_batch=64,
                  eval_models=1, baseline_sets=1, val_size=200, lr_grid=(0.01, 0.1), full_target_epochs=1),
    "cpu": dict(pretrain_images=10000, pretrain_epochs=2, pool=6, pool_test=2, iterations=80, real_batch=256,
                eval_models=4, baseline_sets=3, val_size=1000, lr_grid=(0.003, 0.01, 0.03, 0.1), full_target_epochs=1),
    "paper": dict(pretrain_images=None, pretrain_epochs=10, pool=30, pool_test=10, iterations=None, real_batch=1024,
                  eval_models=10, baseline_sets=10, val_size=2000, lr_grid=(0.001, 0.003, 0.01, 0.03, 0.1),
                  full_target_epochs=10),
}

PAPER = {
    "mnist-usps": {"fixed_pretrained": 97.9, "random_pretrained": "95.4 +- 1.8", "random_real": "94.9 +- 0.8",
                   "optimized_real": "95.2 +- 0.7", "kmeans": "92.2 +- 1.6", "average_real": "93.9 +- 0.8",
                   "no_adaptation": "90.4 +- 3.0", "full_target": "97.3 +- 0.3"},
    "usps-mnist": {"fixed_pretrained": 93.2, "random_pretrained": "92.7 +- 1.4", "random_real": "87.1 +- 2.9",
                   "optimized_real": "87.6 +- 2.1", "kmeans": "85.6 +- 3.1", "average_real": "78.4 +- 5.0",
                   "no_adaptation": "67.5 +- 3.9", "full_target": "98.6 +- 0.5"},
}

PRETRAIN = Protocol(name="pretrain", optimizer="adam", lr=1e-3, momentum=0.0, weight_decay=0.0, epochs=2,
                    batch_size=128, schedule="constant")


def pool_model(model: Model, pool) -> Model:
    """``model`` whose ``init(key)`` draws a member of a stacked pool of parameters uniformly."""
    size = jax.tree.leaves(pool)[0].shape[0]

    def init(key):
        i = jax.random.randint(key, (), 0, size)
        return jax.tree.map(lambda a: a[i], pool)

    return Model(init, model.apply, model.embed)


def stacked_accuracy(model, stacked, x, y) -> np.ndarray:
    """Accuracy of each network of a stacked pytree."""
    from jaxdd.train import accuracy

    return np.asarray(jax.vmap(lambda p: accuracy(model, p, x, y))(stacked))


def run(direction: str, preset_name: str, data_dir, seed: int) -> dict:
    preset = PRESETS[preset_name]
    source, target = direction.split("-")
    src, tgt = data.load_dataset(source, data_dir), data.load_dataset(target, data_dir)
    info = data.DATASETS[target]
    model = models.get_model("LeNet", info.image_shape, info.num_classes, init="dd")
    key = jax.random.key(seed)
    steps, epochs, ipc = 10, 3, 10

    # pre-training on the source: the pool is one vmapped program; member 0 is "the" fixed network
    n_pre = min(preset["pretrain_images"] or src.x_train.shape[0], src.x_train.shape[0])
    pick = jax.random.permutation(jax.random.fold_in(key, 1), src.x_train.shape[0])[:n_pre]
    pretrain = dataclasses.replace(PRETRAIN, epochs=preset["pretrain_epochs"])
    pool = train_models(jax.random.fold_in(key, 2), model, src.x_train[pick], src.y_train[pick], pretrain,
                        preset["pool"] + preset["pool_test"])
    train_pool = jax.tree.map(lambda a: a[: preset["pool"]], pool)
    test_pool = jax.tree.map(lambda a: a[preset["pool"]:], pool)
    fixed = jax.tree.map(lambda a: a[0], pool)
    src_acc = stacked_accuracy(model, pool, src.x_test, src.y_test)
    no_adapt = stacked_accuracy(model, test_pool, tgt.x_test, tgt.y_test)
    fixed_no_adapt = stacked_accuracy(model, jax.tree.map(lambda a: a[None], fixed), tgt.x_test, tgt.y_test)[0]
    out = {"direction": direction, "steps": steps, "epochs": epochs, "images": ipc * info.num_classes,
           "pretrain": {**dataclasses.asdict(pretrain), "images": int(n_pre), "pool": preset["pool"],
                        "pool_test": preset["pool_test"], "source_test_accuracy": [pct(a) for a in src_acc]},
           "no_adaptation": {"accuracy": pct(no_adapt.mean()), "std": pct(no_adapt.std()),
                             "fixed_network": pct(fixed_no_adapt), "models": int(no_adapt.size)},
           "paper": PAPER[direction]}

    # DD with the fixed pre-trained network (theta_0 = that network)
    dd_preset = {"real_batch": preset["real_batch"], "num_inits": 1, "decay_every": 10**9, "arch": "LeNet"}
    method, state, seconds = run_dd(tgt, info, model, dd_preset, preset_name, "fixed", steps, epochs, ipc,
                                    preset["iterations"], seed, theta0=fixed)
    syn = method.to_synset(state)
    res = evaluate_synset(jax.random.fold_in(key, 3), model, syn.images, syn.labels, tgt.x_test, tgt.y_test,
                          get_protocol("dd"), num_models=1, init_params=fixed, step_sizes=syn.step_sizes)
    out["fixed_pretrained"] = {"accuracy": pct(res.mean), "distill_seconds": round(seconds, 1),
                               "config": method.config}

    # DD with random pre-trained networks: theta_0 ~ uniform(train pool); tested on the held-out pool
    method, state, seconds = run_dd(tgt, info, pool_model(model, train_pool), dd_preset, preset_name, "random",
                                    steps, epochs, ipc, preset["iterations"], seed)
    syn = method.to_synset(state)
    accs = [evaluate_synset(jax.random.fold_in(key, 4), model, syn.images, syn.labels, tgt.x_test, tgt.y_test,
                            get_protocol("dd"), num_models=1, init_params=jax.tree.map(lambda a: a[i], test_pool),
                            step_sizes=syn.step_sizes).mean for i in range(preset["pool_test"])]
    out["random_pretrained"] = {"accuracy": pct(np.mean(accs)), "std": pct(np.std(accs)), "models": len(accs),
                                "distill_seconds": round(seconds, 1), "config": method.config}

    # baselines on target images, from the held-out pre-trained networks, fixed step size from held-out train
    perm = jax.random.permutation(jax.random.fold_in(key, 5), tgt.x_train.shape[0])
    val, rest = perm[: preset["val_size"]], perm[preset["val_size"]:]
    x_val, y_val, x_pool, y_pool = tgt.x_train[val], tgt.y_train[val], tgt.x_train[rest], tgt.y_train[rest]

    def score(s, lr, x, y):
        protocol = get_protocol("dd", lr=lr, trainer=CycledGD(steps=steps), epochs=epochs)
        return [evaluate_synset(jax.random.fold_in(key, 6), model, s.images, s.labels, x, y, protocol, num_models=1,
                                init_params=jax.tree.map(lambda a: a[i], test_pool)).mean
                for i in range(preset["pool_test"])]

    random_sets = [coreset.random_real(jax.random.fold_in(key, 100 + i), x_pool, y_pool, info.num_classes, ipc)
                   for i in range(preset["baseline_sets"])]
    lr_scores = {lr: float(np.mean([score(s, lr, x_val, y_val) for s in random_sets])) for lr in preset["lr_grid"]}
    lr = max(lr_scores, key=lr_scores.get)
    out["baseline_fixed_lr"] = lr
    out["lr_validation_accuracy"] = {str(k): pct(v) for k, v in lr_scores.items()}

    def entry(sets):
        accs = np.concatenate([score(s, lr, tgt.x_test, tgt.y_test) for s in sets])
        return {"accuracy": pct(accs.mean()), "std": pct(accs.std()), "models": int(accs.size), "sets": len(sets)}

    out["random_real"] = entry(random_sets)
    out["average_real"] = entry([coreset.class_mean(x_pool, y_pool, info.num_classes, ipc)])
    x_np, y_np = np.asarray(x_pool), np.asarray(y_pool)
    km = [coreset.kmeans(jax.random.fold_in(key, 200 + c), jnp.asarray(x_np[y_np == c]),
                         jnp.zeros(int((y_np == c).sum()), jnp.int32), 1, ipc).images for c in range(info.num_classes)]
    out["kmeans"] = entry([coreset.SynSet(jnp.concatenate(km), coreset.class_sorted_labels(info.num_classes, ipc))])

    # fine-tuning the held-out pre-trained networks on the full target training set
    full = dataclasses.replace(PRETRAIN, epochs=preset["full_target_epochs"])
    tuned = jax.vmap(lambda k, p: train_models(k, model, tgt.x_train, tgt.y_train, full, 1, init_params=p))(
        jax.random.split(jax.random.fold_in(key, 7), preset["pool_test"]), test_pool)
    tuned = jax.tree.map(lambda a: a[:, 0], tuned)
    acc = stacked_accuracy(model, tuned, tgt.x_test, tgt.y_test)
    out["full_target"] = {"accuracy": pct(acc.mean()), "std": pct(acc.std()), "models": int(acc.size),
                          "protocol": dataclasses.asdict(full), "note": "fine-tuned from the pre-trained networks"}
    return out


COLUMNS = ("fixed_pretrained", "random_pretrained", "random_real", "average_real", "kmeans", "no_adaptation",
           "full_target")


def report(preset_name: str) -> str:
    lines = [f"Few-shot domain adaptation, LeNet, 100 images (10 steps x 3 epochs), preset `{preset_name}` "
             "(target test accuracy %)", "",
             "| | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    notes = []
    for direction in PAPER:
        path = RESULTS / f"dd_adaptation_{preset_name}_{direction}.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        cells = []
        for c in COLUMNS:
            e = r[c]
            cells.append(f"{e['accuracy']:.1f}" + (f" +- {e['std']:.1f}" if "std" in e else ""))
        lines.append(f"| {direction} jaxdd | " + " | ".join(cells) + " |")
        lines.append(f"| {direction} paper | " + " | ".join(str(PAPER[direction].get(c, "-")) for c in COLUMNS) + " |")
        notes.append(f"- {direction}: `{r['provenance']['command']}`; baseline step size {r['baseline_fixed_lr']}; "
                     f"source test accuracy of the pre-trained pool {r['pretrain']['source_test_accuracy']}")
    return "\n".join(lines + [""] + notes) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--direction", choices=sorted(PAPER), default="mnist-usps")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.report:
        result = run(args.direction, args.preset, args.data_dir, args.seed)
        prov = provenance(args)
        prov["command"] = "python -m experiments.dd_adaptation " + " ".join(sys.argv[1:])
        prov["preset_config"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in PRESETS[args.preset].items()}
        result["provenance"] = prov
        (RESULTS / f"dd_adaptation_{args.preset}_{args.direction}.json").write_text(json.dumps(result, indent=1, default=str))
    md = report(args.preset)
    (RESULTS / f"dd_adaptation_{args.preset}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
