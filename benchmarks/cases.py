"""What ``python -m benchmarks.run`` measures: one builder per benchmark, sizes per mode.

A builder runs in its own process and returns named :class:`Case` objects: a JAX call (one
outer step of a method, jitted once through ``jax.jit(step).lower(...).compile()``, or one
whole evaluation), the eager PyTorch call of the same loop where there is one
(:mod:`benchmarks.torch_ref`), and what one call is worth (one step, or models x epochs).
Inputs are random normal MNIST-shaped images (28x28x1, 10 classes, balanced labels): timing
needs no dataset. Every network is DC's ConvNet of width 128.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.flops import traced_flops, xla_flops
from jaxdd import evaluate, models
from jaxdd.methods import dc, dd, dm, frepo, mgdd
from jaxdd.train import accuracy

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
WIDTH = 128
DSA_STRATEGY = "color_crop_cutout_scale_rotate"
DEVICE_COUNTS = (1, 2, 4, 8)

SIZES: dict[str, dict] = {
    # Minutes on 2 CPU cores (a width-128 ConvNet step costs ~0.1 GFLOP per 28x28 image forward):
    # tiny real batches, short loops, few models, epochs and test images.
    "quick": {
        "repeats": 3, "real_per_class": 100, "test_images": 100,
        "dc": {1: {"batch_real": 8}, 10: {"batch_real": 4, "outer_loop": 1}},
        "dsa": {"ipc": 1, "batch_real": 8},
        "dm": {"ipc": 10, "batch_real": 32},
        "dd": {"steps": 4, "epochs": 2, "real_batch": 64},
        "frepo": {"ipc": 10, "pool_size": 2, "batch_real": 64},
        "mgdd": {"preset": "cpu", "real_per_class": 10, "label_per_class": 10, "label_nets": 1, "inner_steps": 2,
                 "pretrain_ipcs": (1,)},
        "eval": {10: {"models": 2, "epochs": 3}, 1: {"models": 10, "epochs": 10}},
        "devices": {"eval_ipc": 10, "eval_models": 8, "eval_epochs": 1, "dc_batch_real": 4},
    },
    # A GPU host: the papers' loop sizes, 100 evaluation models of 300 epochs.
    "full": {
        "repeats": 5, "real_per_class": 600, "test_images": 10000,
        "dc": {1: {"batch_real": 256}, 10: {"batch_real": 256}, 50: {"batch_real": 256}},
        "dsa": {"ipc": 10, "batch_real": 256},
        "dm": {"ipc": 10, "batch_real": 256},
        "dd": {"steps": 10, "epochs": 3, "real_batch": 1024},
        "frepo": {"ipc": 10, "pool_size": 10, "batch_real": 1024},
        "mgdd": {"preset": "paper"},
        "eval": {10: {"models": 100, "epochs": 300}, 1: {"models": 100, "epochs": 300}},
        "devices": {"eval_ipc": 10, "eval_models": 16, "eval_epochs": 50, "dc_batch_real": 256},
    },
}
"""Per mode: repeats, real images per class, test images and each benchmark's sizes."""


@dataclasses.dataclass
class Case:
    """One measured pair.

    Attributes:
        jax_call: ``jax_call(r)`` runs unit ``r`` (0 is the warm-up) and blocks until done.
        sizes: what one call does, for the report.
        work: units of work per call (1 for a step; models x epochs for an evaluation).
        unit: 'step' (report seconds per step) or 'model-epoch' (report throughput).
        torch_call: the eager PyTorch unit (None: no reference for this loop).
        torch_warmup: a cheaper PyTorch warm-up (default: one ``torch_call``).
        compile_s: seconds to lower and compile the JAX program (None: part of the first call).
        flops: matmul + conv FLOPs of one JAX call (:func:`benchmarks.flops.traced_flops`).
        xla_flops: XLA's cost-analysis FLOPs (loop bodies counted once).
        note: anything a reader must know about the comparison.
    """

    jax_call: Callable[[int], None]
    sizes: dict
    work: float = 1.0
    unit: str = "step"
    torch_call: Optional[Callable[[], Any]] = None
    torch_warmup: Optional[Callable[[], Any]] = None
    compile_s: Optional[float] = None
    flops: Optional[float] = None
    xla_flops: Optional[float] = None
    note: str = ""


def synthetic_data(per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` random normal 28x28x1 images of each of 10 classes, labels class-sorted."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((NUM_CLASSES * per_class,) + IMAGE_SHAPE).astype(np.float32)
    return x, np.repeat(np.arange(NUM_CLASSES, dtype=np.int32), per_class)


def convnet() -> models.Model:
    return models.get_model("ConvNet", IMAGE_SHAPE, NUM_CLASSES, width=WIDTH)


def step_case(init, step, real, sizes: dict, out_shardings: Any = None, **fields) -> Case:
    """A method step ``step(state, real, key) -> (state, metrics)``, compiled ahead of time.

    The state is donated, as in :func:`jaxdd.distill.run`; call ``r`` uses ``fold_in(key, r)``.
    ``out_shardings`` (for states on a mesh) keeps every call's output where the next call's
    input must be.
    """
    key = jax.random.key(1)
    holder = [init(jax.random.key(0))]
    flops = traced_flops(step, holder[0], real, key)
    placement = {} if out_shardings is None else {"out_shardings": out_shardings}
    started = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0, **placement).lower(holder[0], real, key).compile()
    compile_s = time.perf_counter() - started

    def call(r: int) -> None:
        holder[0], metrics = compiled(holder[0], real, jax.random.fold_in(key, r))
        jax.block_until_ready((holder[0], metrics))

    return Case(call, sizes, compile_s=compile_s, flops=flops, xla_flops=xla_flops(compiled), **fields)


def torch_module():
    """:mod:`benchmarks.torch_ref`, or None where PyTorch is not installed."""
    try:
        from benchmarks import torch_ref
    except ImportError:
        return None
    return torch_ref


# --------------------------------------------------------------------------- method steps


def dc_cases(mode: str, ipcs: tuple[int, ...]) -> dict[str, Case]:
    """DC outer iterations (DCConfig's loops by img/cls unless the mode shortens them)."""
    size = SIZES[mode]
    x, y = synthetic_data(size["real_per_class"])
    torch_ref = torch_module()
    cases = {}
    for ipc in ipcs:
        config = dc.DCConfig(num_classes=NUM_CLASSES, ipc=ipc, init="noise", **size["dc"][ipc])
        method = dc.build(convnet(), jnp.asarray(x), jnp.asarray(y), config)
        outer, inner = config.loops
        sizes = {"ipc": ipc, "outer_loop": outer, "inner_loop": inner if outer > 1 else 0,
                 "batch_real": config.batch_real}
        torch_call = None if torch_ref is None else torch_ref.dc_iteration(
            x, y, NUM_CLASSES, ipc, outer_loop=outer, inner_loop=inner, batch_real=config.batch_real, width=WIDTH)
        cases[f"dc_ipc{ipc}"] = step_case(method.init, method.step, method.real_data, sizes, torch_call=torch_call)
    return cases


def dsa_cases(mode: str) -> dict[str, Case]:
    """DSA outer iterations (DC with Siamese augmentation); no PyTorch reference here."""
    size = SIZES[mode]
    x, y = synthetic_data(size["real_per_class"])
    ipc = size["dsa"]["ipc"]
    config = dc.DCConfig(num_classes=NUM_CLASSES, ipc=ipc, batch_real=size["dsa"]["batch_real"], init="noise",
                         dsa_strategy=DSA_STRATEGY)
    method = dc.build(convnet(), jnp.asarray(x), jnp.asarray(y), config)
    outer, inner = config.loops
    sizes = {"ipc": ipc, "outer_loop": outer, "inner_loop": inner, "batch_real": config.batch_real,
             "strategy": DSA_STRATEGY}
    return {f"dsa_ipc{ipc}": step_case(method.init, method.step, method.real_data, sizes,
                                       note="no PyTorch reference (DSA augmentation not ported)")}


def dm_cases(mode: str) -> dict[str, Case]:
    """DM iterations, without augmentation on both sides."""
    size = SIZES[mode]
    x, y = synthetic_data(size["real_per_class"])
    ipc, batch = size["dm"]["ipc"], size["dm"]["batch_real"]
    config = dm.DMConfig(num_classes=NUM_CLASSES, ipc=ipc, batch_real=batch, init="noise", dsa_strategy="")
    method = dm.build(convnet(), jnp.asarray(x), jnp.asarray(y), config)
    torch_ref = torch_module()
    torch_call = None if torch_ref is None else torch_ref.dm_iteration(x, y, NUM_CLASSES, ipc, batch_real=batch,
                                                                          width=WIDTH)
    sizes = {"ipc": ipc, "batch_real": batch, "augmentation": "none"}
    return {f"dm_ipc{ipc}": step_case(method.init, method.step, method.real_data, sizes, torch_call=torch_call)}


def dd_cases(mode: str) -> dict[str, Case]:
    """One DD outer step: fixed init, ``steps x epochs`` unrolled GD steps, 1 img/cls per step."""
    size = SIZES[mode]
    x, y = synthetic_data(size["real_per_class"])
    d = size["dd"]
    config = dd.DDConfig(steps=d["steps"], epochs=d["epochs"], ipc_per_step=1, init="fixed",
                         real_batch=d["real_batch"])
    init, step = dd.make_functions(config, convnet(), IMAGE_SHAPE, NUM_CLASSES)
    torch_ref = torch_module()
    torch_call = None if torch_ref is None else torch_ref.dd_iteration(
        x, y, NUM_CLASSES, steps=d["steps"], epochs=d["epochs"], real_batch=d["real_batch"], width=WIDTH)
    sizes = {**d, "images": d["steps"] * NUM_CLASSES, "unrolled_steps": config.unrolled_steps}
    return {"dd": step_case(init, step, (jnp.asarray(x), jnp.asarray(y)), sizes, torch_call=torch_call)}


def frepo_cases(mode: str) -> dict[str, Case]:
    """One FRePo step (KRR loss on a pool model, Adam on images and labels, one online model step)."""
    size = SIZES[mode]
    x, y = synthetic_data(size["real_per_class"])
    f = size["frepo"]
    config = frepo.FRePoConfig(pool_size=f["pool_size"], batch_real=f["batch_real"])
    rows = np.concatenate([np.flatnonzero(y == c)[: f["ipc"]] for c in range(NUM_CLASSES)])
    labels0 = jax.nn.one_hot(y[rows], NUM_CLASSES)
    init, step = frepo.make_frepo(convnet(), jnp.asarray(x[rows]), labels0, config)
    return {"frepo": step_case(init, step, (jnp.asarray(x), jnp.asarray(y)), dict(f),
                               note="no PyTorch reference (FRePo's reference is JAX)")}


def mgdd_cases(mode: str) -> dict[str, Case]:
    """One MGDD meta step: a first-order MAML iteration of generator pre-training."""
    size = SIZES[mode]
    x, y = synthetic_data(size["real_per_class"])
    overrides = {k: v for k, v in size["mgdd"].items() if k != "preset"}
    config = mgdd.default_pretrain_config(size["mgdd"]["preset"])
    config = config._replace(holdout_per_class=min(config.holdout_per_class, size["real_per_class"] // 4), **overrides)
    generator = mgdd.generator_from_config(IMAGE_SHAPE[-1], config)
    method = mgdd.make_pretrain(generator, convnet(), jnp.asarray(x), jnp.asarray(y), NUM_CLASSES, config, jax.random.key(2))
    sizes = {"preset": size["mgdd"]["preset"], **overrides, "inner_steps": config.inner_steps,
             "pretrain_ipcs": list(config.pretrain_ipcs), "gen_width": config.gen_width}
    return {"mgdd": step_case(method.init, method.step, method.real_data, sizes,
                              note="no PyTorch reference (MGDD has no public code)")}


# --------------------------------------------------------------------------- evaluation


def _eval_inputs(mode: str, ipc: int):
    size = SIZES[mode]
    x, y = synthetic_data(ipc, seed=1)
    x_test, _ = synthetic_data(size["test_images"] // NUM_CLASSES, seed=2)
    y_test = np.random.default_rng(3).integers(0, NUM_CLASSES, x_test.shape[0]).astype(np.int32)
    return x, y, x_test, y_test


def eval_flops(model, protocol, num_models: int, x, y, x_test, y_test) -> float:
    """Matmul + conv FLOPs of training ``num_models`` networks and testing each."""
    train = traced_flops(lambda k: evaluate.train_models(k, model, x, y, protocol, num_models), jax.random.key(0))
    test = traced_flops(lambda p: accuracy(model, p, x_test, y_test), model.init(jax.random.key(0)))
    return train + num_models * test


def eval_case(mode: str, ipc: int, num_models: int, epochs: int, *, with_torch: bool = True,
              **eval_kwargs) -> Case:
    """``evaluate_synset``: ``num_models`` fresh ConvNets, ``epochs`` epochs on ``ipc`` img/cls, tested."""
    x, y, x_test, y_test = _eval_inputs(mode, ipc)
    model = convnet()
    protocol = evaluate.get_protocol("dc", epochs=epochs, augment="none")
    arrays = [jnp.asarray(a) for a in (x, y, x_test, y_test)]
    key = jax.random.key(4)

    def call(r: int) -> None:
        evaluate.evaluate_synset(jax.random.fold_in(key, r), model, *arrays, protocol, num_models, **eval_kwargs)

    sizes = {"ipc": ipc, "set_size": int(x.shape[0]), "models": num_models, "epochs": epochs,
             "test_images": int(x_test.shape[0]), "protocol": "dc (SGD momentum 0.9, batch 256), no augmentation"}
    torch_ref = torch_module() if with_torch else None
    torch_call = torch_warmup = None
    if torch_ref is not None:
        torch_call = torch_ref.evaluation(x, y, x_test, y_test, NUM_CLASSES, num_models=num_models, epochs=epochs,
                                          width=WIDTH)
        torch_warmup = torch_ref.evaluation(x, y, x_test, y_test, NUM_CLASSES, num_models=1, epochs=1, width=WIDTH)
    return Case(call, sizes, work=num_models * epochs, unit="model-epoch", torch_call=torch_call,
                torch_warmup=torch_warmup, flops=eval_flops(model, protocol, num_models, *arrays),
                note="compile time is part of the first call")


def eval_cases(mode: str) -> dict[str, Case]:
    """Evaluation by img/cls: at 1 img/cls a model's minibatch is 10 images, so per-model kernels
    are small and training all models as one vmapped program matters most."""
    return {f"eval_ipc{ipc}": eval_case(mode, ipc, e["models"], e["epochs"]) for ipc, e in SIZES[mode]["eval"].items()}


# --------------------------------------------------------------------------- devices


def sharding_missing() -> Optional[str]:
    """Why device scaling cannot run with this jaxdd (None when it can)."""
    try:
        from jaxdd import sharding
    except ImportError:
        return "jaxdd.sharding is not available in this checkout"
    if not all(hasattr(sharding, name) for name in ("make_mesh", "replicate", "shard_data")):
        return "jaxdd.sharding lacks make_mesh / replicate / shard_data"
    if "mesh" not in inspect.signature(evaluate.evaluate_synset).parameters:
        return "jaxdd.evaluate.evaluate_synset takes no mesh= argument"
    return None


def device_cases(mode: str, count: int) -> dict[str, Case]:
    """Evaluation with the models on a ``model`` mesh axis; a DC step with the real data on ``data``.

    The evaluation's model count should be a multiple of every device count (a mesh pads the
    models to one).

    The DC step is placed as :func:`jaxdd.distill.run` places it on a mesh: state replicated,
    real images split over ``data``, traced under ``jax.set_mesh`` (so its constraints apply).
    """
    from jax.sharding import NamedSharding, PartitionSpec

    from jaxdd import sharding

    d = SIZES[mode]["devices"]
    evaluation = eval_case(mode, d["eval_ipc"], d["eval_models"], d["eval_epochs"], with_torch=False,
                           mesh=sharding.make_mesh(data=1, model=count))
    x, y = synthetic_data(SIZES[mode]["real_per_class"])
    config = dc.DCConfig(num_classes=NUM_CLASSES, ipc=1, batch_real=d["dc_batch_real"], init="noise")
    method = dc.build(convnet(), jnp.asarray(x), jnp.asarray(y), config)
    mesh = sharding.make_mesh(data=count, model=1)
    replicated = NamedSharding(mesh, PartitionSpec())
    with jax.set_mesh(mesh):
        state = sharding.replicate(mesh, method.init(jax.random.key(0)))
        real = sharding.shard_data(mesh, method.real_data, uneven="replicate")
        placement = (jax.tree.map(lambda _: replicated, state), replicated)
        step = step_case(lambda key: state, method.step, real, {"ipc": 1, "batch_real": config.batch_real,
                                                                "devices": count}, out_shardings=placement)
    return {f"devices{count}_eval": evaluation, f"devices{count}_dc_ipc1": step}


def builders(mode: str) -> dict[str, Callable[[], dict[str, Case]]]:
    """Benchmark name -> builder of its cases, for ``mode`` ('quick' or 'full')."""
    found = {
        "dc": lambda: dc_cases(mode, tuple(SIZES[mode]["dc"])),
        "dsa": lambda: dsa_cases(mode),
        "dm": lambda: dm_cases(mode),
        "dd": lambda: dd_cases(mode),
        "frepo": lambda: frepo_cases(mode),
        "mgdd": lambda: mgdd_cases(mode),
        "eval": lambda: eval_cases(mode),
    }
    for count in DEVICE_COUNTS:
        found[f"devices{count}"] = lambda count=count: device_cases(mode, count)
    return found


__all__ = ["Case", "DEVICE_COUNTS", "SIZES", "builders", "sharding_missing", "synthetic_data"]
