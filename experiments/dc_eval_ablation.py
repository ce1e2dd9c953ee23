"""DC's evaluation protocol, former vs reference, on the MNIST 1 img/cls random-real cell.

The random-real set of ``experiments.dc_table`` (preset ``cpu``: ConvNet width 16, 10 models,
300 epochs, the same keys) is evaluated under the four combinations of schedule ('step_half':
jaxdd's former E epochs, lr x0.1 from E//2, momentum kept; 'dc_reference': the reference's E + 1
epochs, lr x0.1 and momentum reset after epoch E//2 + 1) and MNIST augmentation ('dc_mnist_noise':
crop/scale/rotate/noise, the former default; 'dc_mnist': the reference's crop/scale/rotate), for
the set drawn by the current sampler and, with ``--old-sampler``, the set drawn by the class
sampler the earlier table used (``data.sample_per_class`` of commit f079d5f).

    python -m experiments.dc_eval_ablation --data-dir /work/shared/data
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp

from experiments.common import write_json
from jaxdd import coreset, data, evaluate, models
from jaxdd.coreset import class_sorted_labels


def old_random_real(key, images, labels, num_classes, ipc):
    """The former ``coreset.random_real``: per class c, key split(key, C)[c], top-k of uniform scores."""

    def one(k, c):
        scores = jnp.where(labels == c, jax.random.uniform(k, labels.shape), -1.0)
        return images[jax.lax.top_k(scores, ipc)[1]]

    chosen = jax.vmap(one)(jax.random.split(key, num_classes), jnp.arange(num_classes))
    return chosen.reshape((-1,) + images.shape[1:]), class_sorted_labels(num_classes, ipc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--name", default="dc_eval_ablation_cpu")
    args = parser.parse_args()
    dataset = data.load_dataset("mnist", data_dir=args.data_dir)
    info = dataset.info
    model = models.get_model("ConvNet", info.image_shape, info.num_classes, width=16)
    key = jax.random.key(0)
    data_key = jax.random.fold_in(key, 3)  # dc_table's PRESET_DATASETS.index('mnist')
    cell_key = jax.random.fold_in(jax.random.fold_in(data_key, 1), 0)  # ipc 1, method 'random'
    sets = {
        "current_sampler": tuple(coreset.random_real(cell_key, dataset.x_train, dataset.y_train, 10, 1)[:2]),
        "old_sampler": old_random_real(cell_key, dataset.x_train, dataset.y_train, 10, 1),
    }
    rows = []
    for set_name, (images, labels) in sets.items():
        for schedule in ("step_half", "dc_reference"):
            for augment in ("dc_mnist_noise", "dc_mnist"):
                protocol = evaluate.get_protocol("dc", "mnist", epochs=300, schedule=schedule, augment=augment)
                started = time.perf_counter()
                result = evaluate.evaluate_synset(jax.random.fold_in(cell_key, 2), model, images, labels,
                                                  dataset.x_test, dataset.y_test, protocol, args.models)
                rows.append({"set": set_name, "schedule": schedule, "augment": augment, **result.as_dict(),
                             "seconds": round(time.perf_counter() - started, 1)})
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "accs"}), flush=True)
                write_json(args.name, {"models": args.models, "arch": {"name": "ConvNet", "width": 16}, "rows": rows})


if __name__ == "__main__":
    main()
