"""The ``jaxdd`` command: ``distill``, ``evaluate``, ``datasets``.

Bad input ends with one line on stderr (``jaxdd: error: ...``), exit status 2 and no partial
output; a diverged run ends with exit status 3 and keeps its last good checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

PRESETS = ("smoke", "cpu", "paper")
DEFAULT_JOB = {"method": "random", "dataset": "digits", "ipc": 10, "preset": "cpu"}
"""What ``jaxdd`` with no arguments distils (embedded data, no download)."""


MESH_HELP = "device mesh, e.g. data=4,model=2: real batches split on data, stacked models on model (default: one device)"


class CLIError(Exception):
    """A user error reported as one line, exit status 2."""


def _mesh(spec: Optional[str]):
    """The ``--mesh`` option as a ``jax.sharding.Mesh`` (None without it); bad specs are a CLIError."""
    if spec is None:
        return None
    from jaxdd import sharding

    try:
        return sharding.parse_mesh(spec)
    except ValueError as error:
        raise CLIError(f"--mesh: {error}") from None


def _method_flags() -> dict[str, dict]:
    """The union of all registered methods' flags (first declaration of a flag wins)."""
    from jaxdd import methods

    methods._load_builtin_methods()
    flags: dict[str, dict] = {}
    for spec in methods.METHODS.values():
        for flag, kwargs in spec.options:
            flags.setdefault(flag, dict(kwargs))
    return flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxdd", description="Dataset distillation in JAX.")
    commands = parser.add_subparsers(dest="command")

    distill = commands.add_parser("distill", help="distil a synthetic set and write synset.{npz,json,png}")
    distill.add_argument("--method", default=DEFAULT_JOB["method"], help="random, average, dc, dsa, dm, dd, mgdd, frepo, ...")
    distill.add_argument("--dataset", default=DEFAULT_JOB["dataset"], help="a name from `jaxdd datasets` (default: digits, embedded)")
    distill.add_argument("--ipc", type=int, default=DEFAULT_JOB["ipc"], help="images per class")
    distill.add_argument("--arch", default="ConvNet", help="network used for distillation")
    distill.add_argument("--preset", default=DEFAULT_JOB["preset"], choices=PRESETS)
    distill.add_argument("--seed", type=int, default=0)
    distill.add_argument("--data-dir", default=None, help="local data root (default: $JAXDD_DATA_DIR)")
    distill.add_argument("--zca", action="store_true", help="distil in ZCA-whitened space")
    distill.add_argument("--out", default=None, help="output folder (default: runs/<method>-<dataset>-ipc<K>)")
    distill.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    distill.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    distill.add_argument("--no-progress", action="store_true", help="no progress bar")
    distill.add_argument("--mesh", default=None, help=MESH_HELP)
    for flag, kwargs in _method_flags().items():
        distill.add_argument(flag, **kwargs)

    evaluate = commands.add_parser("evaluate", help="train fresh networks on a set and test them on real data")
    evaluate.add_argument("path", help="a folder with synset.npz and synset.json")
    evaluate.add_argument("--arch", default=None, help="network to train (default: the one the set was distilled with)")
    evaluate.add_argument("--models", type=int, default=10, help="number of fresh networks")
    evaluate.add_argument("--protocol", default=None, help="dc, dsa, frepo, dd, ... (default: the method's)")
    evaluate.add_argument("--epochs", type=int, default=None, help="override the protocol's epochs")
    evaluate.add_argument("--steps", type=int, default=None, help="GD steps per epoch for --protocol dd on sets without learned step sizes")
    evaluate.add_argument("--lr", type=float, default=None, help="override the protocol's learning rate")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--data-dir", default=None)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--mesh", default=None, help=MESH_HELP)

    datasets = commands.add_parser("datasets", help="the dataset registry and what is available here")
    datasets.add_argument("--data-dir", default=None)

    from jaxdd.methods import mgdd

    pretrain = commands.add_parser("pretrain-generator", help="meta-train an MGDD generator on a source dataset")
    mgdd.add_pretrain_arguments(pretrain)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv or ["distill"])
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return {"distill": cmd_distill, "evaluate": cmd_evaluate, "datasets": cmd_datasets, "pretrain-generator": _pretrain_generator}[args.command](args)
    except CLIError as error:
        _report(error)
        return 2
    except KeyboardInterrupt:
        print("jaxdd: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        from jaxdd.distill import NonFiniteError

        if isinstance(error, NonFiniteError):
            _report(error)
            return 3
        if isinstance(error, (ValueError, OSError)):
            _report(error)
            return 2
        raise


def _report(error: BaseException) -> None:
    """Prints an error as one line (multi-line messages, e.g. the places a dataset was sought, joined)."""
    lines = (line.strip() for line in str(error).splitlines())
    text = "; ".join(line.removeprefix("- ") for line in lines if line)
    print(f"jaxdd: error: {text}", file=sys.stderr)


def _pretrain_generator(args: argparse.Namespace) -> int:
    from jaxdd.methods import mgdd

    return mgdd.pretrain_main(args)


def _check_output_folder(out: Path) -> bool:
    """Fails early if ``out`` cannot be a writable folder; returns whether it exists already."""
    if out.exists():
        if not out.is_dir():
            raise CLIError(f"output {out} exists and is not a folder")
        if not os.access(out, os.W_OK):
            raise CLIError(f"output folder {out} is not writable")
        return True
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise CLIError(f"cannot create output folder {out}: {parent} is not a writable folder")
    return False


def cmd_distill(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from jaxdd import data, distill, io, methods, models
    from jaxdd.types import SynSet

    try:
        spec = methods.get_method(args.method)
    except ValueError as error:
        raise CLIError(str(error)) from None
    if args.dataset not in data.DATASETS:
        raise CLIError(f"unknown dataset {args.dataset!r}; known: {', '.join(sorted(data.DATASETS))}")
    if args.arch not in models.ARCHITECTURES:
        raise CLIError(f"unknown architecture {args.arch!r}; known: {', '.join(sorted(models.ARCHITECTURES))}")
    if args.ipc < 1:
        raise CLIError(f"--ipc must be at least 1 (got {args.ipc})")
    mesh = _mesh(args.mesh)
    out = Path(args.out or f"runs/{args.method}-{args.dataset}-ipc{args.ipc}")
    existed = _check_output_folder(out)

    info = data.DATASETS[args.dataset]
    try:
        dataset = data.load_dataset(args.dataset, data.resolve_data_dir(args.data_dir), zca=args.zca)
    except ValueError as error:
        raise CLIError(str(error)) from None
    smallest = int(np.min(np.asarray(data.class_counts(dataset.y_train, info.num_classes))))
    if args.ipc > smallest:
        raise CLIError(f"--ipc {args.ipc} is larger than the smallest class of {args.dataset} ({smallest} training images)")

    model = models.get_model(args.arch, info.image_shape, info.num_classes)
    key = jax.random.key(args.seed)
    method_options = {dest: getattr(args, dest) for dest in _method_dests(spec)}
    request = methods.DistillRequest(
        images=dataset.x_train,
        labels=dataset.y_train,
        num_classes=info.num_classes,
        model=model,
        ipc=args.ipc,
        preset=args.preset,
        key=jax.random.fold_in(key, 0),
        options=method_options,
        dataset=args.dataset,
        arch=args.arch,
    )
    started = time.perf_counter()
    made = spec.make(request)
    extra_arrays: dict = {}
    config: dict = {}
    try:
        if isinstance(made, methods.IterativeMethod):
            state = distill.run(
                made,
                jax.random.fold_in(key, 1),
                checkpoint_dir=out,
                checkpoint_every=args.checkpoint_every,
                resume=args.resume,
                progress=not args.no_progress,
                mesh=mesh,
            )
            synset = made.to_synset(state)
            config = dict(made.config)
            if made.extra_arrays is not None:
                extra_arrays.update(made.extra_arrays(state))
        elif isinstance(made, SynSet):
            synset = made
        else:
            synset, config = made
        if dataset.zca is not None:
            extra_arrays.update({"zca_mean": dataset.zca.mean, "zca_inverse": dataset.zca.unwhiten})
        meta = {
            "dataset": args.dataset,
            "image_shape": list(info.image_shape),
            "num_classes": info.num_classes,
            "mean": list(info.mean),
            "std": list(info.std),
            "zca": bool(args.zca),
            "method": args.method,
            "arch": args.arch,
            "ipc": args.ipc,
            "preset": args.preset,
            "seed": args.seed,
            "mesh": args.mesh,
            "options": method_options,
            "config": config,
            "eval_protocol": spec.default_protocol,
            "wall_time_s": round(time.perf_counter() - started, 3),
        }
        io.save_synset(out, synset, meta, extra_arrays)
    except distill.NonFiniteError:
        raise
    except BaseException:
        if not existed and not any(out.glob("checkpoint*")):
            shutil.rmtree(out, ignore_errors=True)
        raise
    count = int(synset.images.shape[0])
    print(
        f"jaxdd: {args.method} on {args.dataset}, {args.ipc} img/cls ({count} images) in "
        f"{meta['wall_time_s']:.1f} s -> {out}/synset.npz, synset.json, synset.png"
        f"  (evaluate: jaxdd evaluate {out})"
    )
    return 0


def _method_dests(spec) -> list[str]:
    dests = []
    for flag, kwargs in spec.options:
        dests.append(kwargs.get("dest", flag.lstrip("-").replace("-", "_")))
    return dests


def cmd_evaluate(args: argparse.Namespace) -> int:
    import dataclasses

    import jax
    import jax.numpy as jnp

    from jaxdd import data, evaluate, io, methods, models

    if args.models < 1:
        raise CLIError(f"--models must be at least 1 (got {args.models})")
    mesh = _mesh(args.mesh)
    try:
        synset, meta, extras = io.load_synset(args.path)
    except io.SynSetError as error:
        raise CLIError(str(error)) from None
    name = meta.get("dataset")
    if name not in data.DATASETS:
        raise CLIError(f"set {args.path} names unknown dataset {name!r}")
    arch = args.arch or meta.get("arch") or "ConvNet"
    if arch not in models.ARCHITECTURES:
        raise CLIError(f"unknown architecture {arch!r}; known: {', '.join(sorted(models.ARCHITECTURES))}")
    spec = methods.METHODS.get(meta.get("method", "")) if _methods_loaded() else None
    protocol_name = args.protocol or meta.get("eval_protocol") or "dc"
    try:
        protocol = evaluate.get_protocol(
            protocol_name, name, epochs=args.epochs, lr=args.lr, fixed_lr_steps=args.steps
        )
    except ValueError as error:
        raise CLIError(str(error)) from None
    info = data.DATASETS[name]
    try:
        dataset = data.load_dataset(name, data.resolve_data_dir(args.data_dir), zca=bool(meta.get("zca")))
    except ValueError as error:
        raise CLIError(str(error)) from None
    model = models.get_model(arch, info.image_shape, info.num_classes)
    kwargs = spec.eval_kwargs(meta, extras, model) if spec is not None and spec.eval_kwargs else {}
    if synset.step_sizes is not None and "step_sizes" not in kwargs:
        kwargs["step_sizes"] = jnp.asarray(synset.step_sizes)
    if not args.json:
        print(f"jaxdd: training {args.models} {arch} models on {synset.images.shape[0]} images ({name}), protocol {protocol.name} ...", file=sys.stderr)
    started = time.perf_counter()
    result = evaluate.evaluate_synset(
        jax.random.key(args.seed),
        model,
        jnp.asarray(synset.images),
        jnp.asarray(synset.labels),
        dataset.x_test,
        dataset.y_test,
        protocol,
        args.models,
        mesh=mesh,
        **kwargs,
    )
    elapsed = time.perf_counter() - started
    if args.json:
        print(json.dumps({
            **result.as_dict(),
            "protocol": protocol.name,
            "protocol_config": dataclasses.asdict(protocol),
            "arch": arch,
            "models": args.models,
            "dataset": name,
            "seed": args.seed,
            "mesh": args.mesh,
            "set": str(args.path),
            "wall_time_s": round(elapsed, 3),
        }))
    else:
        print(f"{100 * result.mean:.2f} +- {100 * result.std:.2f} % test accuracy ({arch}, {name}, protocol {protocol.name}, {args.models} models, {elapsed:.1f} s)")
    return 0


def _methods_loaded() -> bool:
    from jaxdd import methods

    methods._load_builtin_methods()
    return True


def cmd_datasets(args: argparse.Namespace) -> int:
    from jaxdd import data

    available = data.available_datasets(data.resolve_data_dir(args.data_dir))
    print(f"{'name':<14} {'shape':<12} {'classes':>7}  available")
    for name, info in data.DATASETS.items():
        shape = "x".join(str(d) for d in info.image_shape)
        print(f"{name:<14} {shape:<12} {info.num_classes:>7}  {available.get(name, 'no')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
