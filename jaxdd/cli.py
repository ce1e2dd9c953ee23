"""The ``jaxdd`` command: the main job, ``distill``, ``evaluate``, ``export``, ``import``, ``datasets``,
``pretrain-generator`` (MGDD's meta generator).

``jaxdd`` alone runs the main job (:mod:`jaxdd.quickstart`): distil the embedded digits with DM,
then ``evaluate --against-random``. Results go to stdout; jaxdd's own messages and progress bars
go to stderr (logger ``jaxdd``), and ``--quiet`` keeps only warnings and errors there.

``jaxdd distill --method M`` derives M's flags and their help from M's config
(:func:`add_config_arguments`): the defaults shown are the chosen preset's for the chosen
``--ipc`` and ``--dataset``, read in a first pass before the full parse. ``--config FILE``
(JSON, or YAML when PyYAML is installed; a set's ``synset.json`` is one) supplies the run's
settings and config values, which flags override.

Bad input ends with one line on stderr (``jaxdd: error: ...``), exit status 2 and no partial
output; a diverged run ends with exit status 3 and keeps its last good checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from jaxdd.methods import PRESETS

DEFAULT_JOB = {"method": "random", "dataset": "digits", "ipc": 10, "preset": "cpu"}
"""What ``jaxdd`` with no arguments distils (embedded data, no download)."""

RUN_KEYS = ("method", "dataset", "ipc", "preset", "arch", "model_init", "arch_options", "seed", "zca")
"""Settings of a run read from a ``--config`` file besides its ``config`` mapping (other keys of a
``synset.json``, e.g. its wall time, are ignored)."""

MESH_HELP = "device mesh, e.g. data=4,model=2: real batches split on data, stacked models on model (default: one device)"

CONFIG_DEST = "config:"
"""Prefix of the argparse ``dest`` of config-derived flags (keeps them apart from the command's own)."""


class CLIError(Exception):
    """A user error reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are a :class:`CLIError` (one line, exit 2), not usage text."""

    def error(self, message: str):
        raise CLIError(f"{self.prog}: {message} (see {self.prog} --help)")


def _mesh(spec: Optional[str]):
    """The ``--mesh`` option as a ``jax.sharding.Mesh`` (None without it); bad specs are a CLIError."""
    if spec is None:
        return None
    from jaxdd import sharding

    try:
        return sharding.parse_mesh(spec)
    except ValueError as error:
        raise CLIError(f"--mesh: {error}") from None


# ----------------------------------------------------------------------------------------------
# Flags derived from a config type (also used by other commands, e.g. pretrain-generator)


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "empty"
    if value == "":
        return "''"
    return str(value)


def add_config_arguments(parser: argparse.ArgumentParser, config_type: type, defaults: Any, title: Optional[str] = None) -> None:
    """Adds one flag per field of ``config_type`` (``inner_steps`` -> ``--inner-steps``).

    Help text is the field's ``Attributes:`` entry with its type and its value in ``defaults``;
    tuples are comma-separated, optionals take ``none``, booleans have ``--no-`` forms. A flag
    the user does not give leaves no attribute, so :func:`config_from_args` keeps the default.
    """
    from jaxdd import methods

    group = parser.add_argument_group(title or f"{config_type.__name__} options")
    for field in methods.config_fields(config_type):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        doc = field.doc.replace("``", "").rstrip(".")
        text = f"{doc} (default: {_show(default)})".replace("%", "%%")
        dest = CONFIG_DEST + field.name
        if field.type is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, dest=dest, help=text)
            continue

        def parse(text: str, tp=field.type, name=flag) -> Any:
            try:
                return methods.parse_value(text, tp, name)
            except ValueError as error:
                raise argparse.ArgumentTypeError(str(error)) from None

        kind = methods.type_name(field.type)
        parse.__name__ = kind
        metavar = "{" + kind.replace("|", ",") + "}" if "|" in kind else kind.upper().replace(" ", "_")
        group.add_argument(flag, type=parse, default=argparse.SUPPRESS, dest=dest, metavar=metavar, help=text)


def config_overrides(config_type: type, args: argparse.Namespace) -> dict:
    """``{field: value}`` for the config flags the user gave."""
    from jaxdd import methods

    names = (CONFIG_DEST + f.name for f in methods.config_fields(config_type))
    return {dest[len(CONFIG_DEST):]: getattr(args, dest) for dest in names if hasattr(args, dest)}


def config_from_args(config_type: type, defaults: Any, args: argparse.Namespace) -> Any:
    """``defaults`` with the values of the config flags the user gave (see :func:`add_config_arguments`)."""
    from jaxdd import methods

    return methods.replace(defaults, **config_overrides(config_type, args))


def load_config_file(path: str) -> dict:
    """A run file (JSON, or YAML with PyYAML): top-level :data:`RUN_KEYS` and a ``config`` mapping."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as error:
        raise CLIError(f"--config {path}: {error.strerror or error}") from None
    if file.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise CLIError(f"--config {path}: reading YAML needs PyYAML (pip install pyyaml); or use JSON") from None
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise CLIError(f"--config {path}: not valid YAML ({str(error).splitlines()[0]})") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise CLIError(f"--config {path}: not valid JSON ({error})") from None
    if not isinstance(values, dict) or not isinstance(values.get("config", {}), dict):
        raise CLIError(f"--config {path}: expected a mapping with an optional 'config' mapping")
    return values


def _file_config(run_file: dict, spec) -> dict:
    """The file's config values, less the fields the request fills (``ipc``, ``num_classes``)."""
    from jaxdd import methods

    return {k: v for k, v in run_file.get("config", {}).items() if k not in methods.REQUEST_FIELDS}


def _first_pass(argv: Sequence[str]) -> tuple[dict, dict]:
    """Phase one of ``distill``: (job settings, run file) from the flags, the --config file, the defaults."""
    pre = _Parser(prog="jaxdd distill", add_help=False, allow_abbrev=False)
    for flag in ("--method", "--preset", "--dataset", "--ipc", "--config"):
        pre.add_argument(flag)
    known, _ = pre.parse_known_args(argv)
    run_file = load_config_file(known.config) if known.config else {}
    job = {}
    for name in ("method", "preset", "dataset", "ipc"):
        value = getattr(known, name)
        job[name] = value if value is not None else run_file.get(name, DEFAULT_JOB[name])
    try:
        job["ipc"] = int(job["ipc"])
    except (TypeError, ValueError):
        job["ipc"] = DEFAULT_JOB["ipc"]  # the full parse reports a bad --ipc
    return job, run_file


def _method_defaults(job: dict, run_file: dict):
    """(spec, config defaults shown in --help) for the job; unknown method or preset is a CLIError."""
    from jaxdd import methods

    try:
        spec = methods.get_method(job["method"])
        if job["preset"] not in PRESETS:
            raise ValueError(f"unknown preset {job['preset']!r}; known: {', '.join(PRESETS)}")
        defaults = methods.resolve_config(spec, job["preset"], job["ipc"], job["dataset"], _file_config(run_file, spec))
    except ValueError as error:
        raise CLIError(str(error)) from None
    return spec, defaults


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The full parser; ``distill``'s method flags are those of the method ``argv`` selects."""
    from jaxdd import methods

    parser = _Parser(
        prog="jaxdd",
        description="Dataset distillation in JAX. Without a command: the main job (DM on the embedded "
        "digits, 1 img/cls, compared with random real images under the same protocol; about a minute).",
        parents=[_common_options()],
    )
    commands = parser.add_subparsers(dest="command")

    distill = commands.add_parser(
        "distill",
        parents=[_common_options()],
        help="distil a synthetic set and write synset.{npz,json,png}",
        allow_abbrev=False,
        description="Distil a synthetic set. `jaxdd distill --method M --help` lists M's options with "
        "their defaults for the chosen --preset, --ipc and --dataset.",
    )
    job, run_file = ({**DEFAULT_JOB}, {})
    if argv and argv[0] == "distill":
        job, run_file = _first_pass(argv[1:])
    methods._load_builtin_methods()
    distill.add_argument("--method", default=job["method"], help=f"one of: {', '.join(sorted(methods.METHODS))} (default: {DEFAULT_JOB['method']})")
    distill.add_argument("--dataset", default=job["dataset"], help="a name from `jaxdd datasets` (default: digits, embedded)")
    distill.add_argument("--ipc", type=int, default=job["ipc"], help="images per class")
    distill.add_argument("--preset", default=job["preset"], choices=PRESETS, help="size of the run: smoke (seconds), cpu (minutes on 2 cores), paper (the published protocol)")
    distill.add_argument("--config", default=None, help="a run file (.json; .yaml with PyYAML), e.g. a set's synset.json: its settings and config values; flags override them")
    distill.add_argument("--arch", default=run_file.get("arch", "ConvNet"), help="network used for distillation (default: ConvNet)")
    distill.add_argument("--arch-options", default=run_file.get("arch_options"), type=_arch_options, help="architecture options as key=value,... (e.g. width=16,depth=2,norm=none)")
    distill.add_argument("--model-init", default=run_file.get("model_init"), choices=("torch", "flax", "dd"), help="initialisation scheme of the network (default: the method's, else the architecture's)")
    distill.add_argument("--seed", type=int, default=run_file.get("seed", 0))
    distill.add_argument("--data-dir", default=None, help="local data root (default: $JAXDD_DATA_DIR)")
    distill.add_argument("--zca", action="store_true", default=bool(run_file.get("zca", False)), help="distil in ZCA-whitened space")
    distill.add_argument("--out", default=None, help="output folder (default: runs/<method>-<dataset>-ipc<K>)")
    distill.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out (refused if it belongs to another run)")
    distill.add_argument("--overwrite", action="store_true", help="replace the finished set (or discard the unfinished run) in --out")
    distill.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    distill.add_argument("--no-progress", action="store_true", help="no progress bar")
    distill.add_argument("--mesh", default=None, help=MESH_HELP)
    if argv and argv[0] == "distill":
        spec, defaults = _method_defaults(job, run_file)
        if spec.config_type is not None:
            title = f"{spec.name} options (defaults: preset {job['preset']}, {job['ipc']} img/cls, {job['dataset']})"
            add_config_arguments(distill, spec.config_type, defaults, title)

    evaluate = commands.add_parser("evaluate", help="train fresh networks on a set and test them on real data", parents=[_common_options()])
    evaluate.add_argument("path", help="a folder with synset.npz and synset.json")
    evaluate.add_argument("--arch", default=None, help="network to train (default: the one the set was distilled with, with its options and init)")
    evaluate.add_argument("--arch-options", default=None, type=_arch_options, help="options of --arch as key=value,... (default: the set's, when --arch is not given)")
    evaluate.add_argument("--model-init", default=None, choices=("torch", "flax", "dd"), help="initialisation scheme (default: the set's)")
    evaluate.add_argument("--models", type=int, default=10, help="number of fresh networks")
    evaluate.add_argument("--protocol", default=None, help="dc, dsa, frepo, dd, ... (default: the method's)")
    evaluate.add_argument("--epochs", type=int, default=None, help="override the protocol's epochs")
    evaluate.add_argument("--steps", type=int, default=None, help="GD steps per epoch for --protocol dd on sets without learned step sizes")
    evaluate.add_argument("--lr", type=float, default=None, help="override the protocol's learning rate")
    evaluate.add_argument("--plain-protocol", action="store_true", help="train under the protocol alone, without the changes the set's file asks for under its default protocol (eval_overrides, e.g. MTT's learned lr); --protocol drops them too")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--data-dir", default=None)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--against-random", action="store_true", help="also train the same networks (same keys, same protocol) on random real images of the same size; print both and the gain, and draw them in <set>/accuracy.png")
    evaluate.add_argument("--mesh", default=None, help=MESH_HELP)

    datasets = commands.add_parser("datasets", help="the dataset registry and what is available here", parents=[_common_options()])
    datasets.add_argument("--data-dir", default=None)

    export = commands.add_parser("export", help="write a set for other code: PyTorch .pt (NCHW, as the DC/DSA/DM res_*.pt files), NCHW .npz, or PNG folders per class", parents=[_common_options()])
    export.add_argument("path", help="a folder with synset.npz and synset.json")
    export.add_argument("--to", required=True, choices=("torch", "npz", "png"), help="torch needs PyTorch; npz writes the same arrays with NumPy only")
    export.add_argument("--out", default=None, help="file or folder to write (default: inside the set's folder)")

    imports = commands.add_parser("import", help="turn a released .pt set of the DC/DSA/DM code (or an exported .npz) into a jaxdd set", parents=[_common_options()])
    imports.add_argument("file", help="res_*.pt ({'data': [[image_syn, label_syn], ...]}; needs PyTorch) or an NCHW .npz")
    imports.add_argument("--out", default=None, help="output folder (default: runs/imported-<file name>)")
    imports.add_argument("--overwrite", action="store_true", help="replace the set already in --out")
    imports.add_argument("--dataset", default=None, help="registry name (default: from the file or its name, e.g. res_DC_MNIST_ConvNet_1ipc.pt)")
    imports.add_argument("--experiment", type=int, default=0, help="which [images, labels] pair of the file (default: 0)")
    imports.add_argument("--mean", type=_floats, default=None, help="normalisation of the file's images, per channel, comma-separated (default: the reference code's for the dataset)")
    imports.add_argument("--std", type=_floats, default=None, help="see --mean")
    _add_pretrain_parser(commands)
    _add_experts_parser(commands)
    return parser


PRETRAIN_ARCH = {"smoke": ("ConvNet", {"width": 16, "depth": 2}), "cpu": ("ConvNetW32", {}), "paper": ("ConvNet", {})}
"""Random-feature network of ``pretrain-generator`` per preset (registry name, options)."""


def _add_pretrain_parser(commands) -> None:
    """``jaxdd pretrain-generator``: its flags, the pre-training config's derived from PretrainConfig."""
    from jaxdd.methods import mgdd

    pretrain = commands.add_parser(
        "pretrain-generator", parents=[_common_options()],
        help="meta-train an MGDD generator on one or more source datasets (first-order MAML)",
        description="Meta-train an MGDD generator on the pooled classes of --sources (disjoint class ids) with "
        "first-order MAML, driven like every method (progress bar, checkpoints, --resume, NaN stop). Writes "
        "generator.{msgpack,json} and the held-out meta-validation curve pretrain_curve.{json,png} to --out.",
    )
    pretrain.add_argument("--sources", required=True, help="comma-separated dataset names pooled as one source, e.g. fashion_mnist,usps,cifar10_gray28")
    pretrain.add_argument("--preset", default="cpu", choices=PRESETS, help="size of the run (the defaults shown below are cpu's)")
    pretrain.add_argument("--arch", default=None, help="random-feature network (needs `embed`; default by preset: ConvNet width 16 depth 2 / ConvNetW32 / ConvNet)")
    pretrain.add_argument("--arch-options", default=None, type=_arch_options, help="architecture options as key=value,...")
    pretrain.add_argument("--out", required=True, help="output folder of the generator")
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--data-dir", default=None, help="local data root (default: $JAXDD_DATA_DIR)")
    pretrain.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    pretrain.add_argument("--overwrite", action="store_true", help="replace the generator (or discard the unfinished run) in --out")
    pretrain.add_argument("--checkpoint-every", type=int, default=25, help="iterations between checkpoints")
    pretrain.add_argument("--stop-at", type=int, default=None, help="stop after this many iterations and write the generator as it is then (a later --resume continues)")
    pretrain.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(pretrain, mgdd.PretrainConfig, mgdd.default_pretrain_config("cpu"), "pre-training options (defaults: preset cpu)")


def cmd_pretrain_generator(args: argparse.Namespace) -> int:
    import jax

    from jaxdd import data
    from jaxdd.methods import mgdd

    sources = [s for s in args.sources.split(",") if s]
    unknown = [s for s in sources if s not in data.DATASETS]
    if not sources or unknown:
        raise CLIError(f"--sources: unknown dataset(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(sorted(data.DATASETS))}")
    infos = [data.DATASETS[s] for s in sources]
    if len({info.image_shape for info in infos}) != 1:
        raise CLIError(f"--sources must share one image shape; got {', '.join(f'{s} {i.image_shape}' for s, i in zip(sources, infos))}")
    try:
        config = config_from_args(mgdd.PretrainConfig, mgdd.default_pretrain_config(args.preset), args)
    except ValueError as error:
        raise CLIError(str(error)) from None
    arch, options = PRETRAIN_ARCH[args.preset]
    if args.arch is not None:
        arch, options = args.arch, {}
    options = {**options, **(args.arch_options or {})}
    out = Path(args.out)
    _check_output_folder(out)
    if (out / "generator.json").exists() and not (args.resume or args.overwrite):
        raise CLIError(f"{out} holds a finished generator; add --overwrite to replace it, or use another --out")
    if (out / "checkpoint.npz").exists() and not (args.resume or args.overwrite):
        raise CLIError(f"{out} holds the checkpoint of an unfinished run; add --resume to continue it, or --overwrite to start over")
    root = _data_dir(args.data_dir)
    try:
        loaded = [data.load_dataset(s, root) for s in sources]
    except ValueError as error:
        raise CLIError(str(error)) from None
    images, labels, num_classes = mgdd.pool_sources([(d.x_train, d.y_train, d.info.num_classes) for d in loaded])
    pooled = data.DatasetInfo("+".join(sources), infos[0].image_shape, num_classes, infos[0].mean, infos[0].std, "pooled sources", ())
    model, _ = _build_model(arch, pooled, None, options)
    generator = mgdd.generator_from_config(infos[0].image_shape[-1], config)
    key = jax.random.key(args.seed)
    description = {"sources": sources, "arch": arch, "arch_options": options, "preset": args.preset, "seed": args.seed}
    method = mgdd.make_pretrain(generator, model, images, labels, num_classes, config, jax.random.fold_in(key, 0), description)
    record = mgdd.pretrain_generator(
        method, generator, str(out), jax.random.fold_in(key, 1), meta={**description, "source": "+".join(sources)},
        resume=args.resume, progress=not (args.no_progress or args.quiet), checkpoint_every=args.checkpoint_every,
        stop_at=args.stop_at,
    )
    print(
        f"jaxdd: generator meta-trained on {'+'.join(sources)} ({record['iterations']} iterations, {record['seconds']:.1f} s "
        f"this run); held-out loss {record['heldout_loss_start']:.4f} -> {record['heldout_loss_end']:.4f} "
        f"(no generator: {record['identity_loss']:.4f}) -> {out}/generator.msgpack, generator.json, pretrain_curve.png",
        flush=True,
    )
    return 0


def _add_experts_parser(commands) -> None:
    """``jaxdd experts``: expert trajectories for MTT / IDC (:func:`jaxdd.experts.ensure_experts`)."""
    experts = commands.add_parser(
        "experts", parents=[_common_options()], help="train expert trajectories on real data (for --method mtt / idc)",
        description="Train N networks on the real training data in one vmapped program (plain SGD, DSA; MTT's "
        "buffer.py protocol) and save their parameters after every epoch into one file, atomically; the same "
        "command again resumes an unfinished file. distill --method mtt / idc read it with --experts FILE (the "
        "default --out is where they look by default).",
    )
    experts.add_argument("--dataset", required=True, help="registered dataset")
    experts.add_argument("--arch", default="ConvNet", help="architecture (default ConvNet)")
    experts.add_argument("--arch-options", default=None, type=_arch_options, help="architecture options as key=value,...")
    experts.add_argument("--num-experts", type=int, default=10, help="experts N (default 10; the paper: 100)")
    experts.add_argument("--epochs", type=int, default=50, help="epochs per expert (default 50)")
    experts.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default 0.01)")
    experts.add_argument("--batch", type=int, default=256, help="minibatch size (default 256)")
    experts.add_argument("--no-augment", action="store_true", help="no DSA (default: the dataset's DSA strategy, per sample)")
    experts.add_argument("--zca", action="store_true", help="train on ZCA-whitened data (for distil --zca)")
    experts.add_argument("--seed", type=int, default=0, help="key of the run (default 0, what distil uses)")
    experts.add_argument("--data-dir", default=None, help="local data root (default: $JAXDD_DATA_DIR)")
    experts.add_argument("--out", default=None, help="the expert file (default: runs/experts/<dataset>-<arch>-<N>x<E>-<hash>.npz)")


def cmd_experts(args: argparse.Namespace) -> int:
    from jaxdd import augment, data, experts

    if args.dataset not in data.DATASETS:
        raise CLIError(f"unknown dataset {args.dataset!r}; known: {', '.join(sorted(data.DATASETS))}")
    if args.num_experts < 1 or args.epochs < 1:
        raise CLIError("--num-experts and --epochs must be at least 1")
    info = data.DATASETS[args.dataset]
    try:
        dataset = data.load_dataset(args.dataset, _data_dir(args.data_dir), zca=args.zca)
    except ValueError as error:
        raise CLIError(str(error)) from None
    model, _ = _build_model(args.arch, info, None, args.arch_options)
    strategy = augment.dsa_strategy(args.dataset)
    protocol = experts.expert_protocol(None if args.no_augment else ("dsa" if "flip" in strategy else "dsa_noflip"),
                                       epochs=args.epochs, lr=args.lr, batch_size=args.batch)
    path = args.out or experts.default_path(dataset.x_train, model, args.num_experts, args.epochs, args.dataset, args.arch)
    def log(message: str) -> None:
        if not args.quiet:
            print(f"jaxdd: {message}", file=sys.stderr)

    run = experts.ensure_experts(model, dataset.x_train, dataset.y_train, protocol, args.num_experts, path, seed=args.seed,
                                 description={"dataset": args.dataset, "arch": args.arch}, log=log)
    print(f"jaxdd: {args.num_experts} experts x {run.num_epochs} epochs on {args.dataset} "
          f"({run.meta['seconds']:.1f} s of training) -> {path}  (use: jaxdd distill --method mtt --experts {path})")
    return 0


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="results only: no progress bars or messages on stderr (warnings and errors stay)")
    return common


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _arch_options(text: str) -> dict:
    """``width=16,norm=none`` -> ``{'width': 16, 'norm': 'none'}`` (ints, floats and booleans parsed)."""
    options: dict = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
        value = value.strip()
        if value.lower() in ("true", "false"):
            parsed: Any = value.lower() == "true"
        else:
            try:
                parsed = int(value)
            except ValueError:
                try:
                    parsed = float(value)
                except ValueError:
                    parsed = value
        options[name.strip()] = parsed
    return options


def _normalise_argv(argv: list[str]) -> list[str]:
    """``jaxdd distill dc ...`` means ``jaxdd distill --method dc ...``."""
    if len(argv) > 1 and argv[0] == "distill" and not argv[1].startswith("-"):
        return ["distill", "--method", argv[1], *argv[2:]]
    return argv


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv == ["--quiet"]:
        return main_job(quiet=bool(argv))
    argv = _normalise_argv(argv)
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
    except CLIError as error:
        _report(error)
        return 2
    if args.command is None:
        parser.print_help()
        return 2
    args.quiet = getattr(args, "quiet", False)
    _setup_messages(args.quiet)
    commands = {"distill": cmd_distill, "evaluate": cmd_evaluate, "datasets": cmd_datasets, "export": cmd_export, "import": cmd_import,
                "pretrain-generator": cmd_pretrain_generator, "experts": cmd_experts}
    try:
        return commands[args.command](args)
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


def main_job(quiet: bool = False) -> int:
    """``jaxdd`` alone: distil :data:`jaxdd.quickstart.MAIN_JOB`, then evaluate it against random real."""
    from jaxdd import quickstart

    job, how = quickstart.MAIN_JOB, quickstart.MAIN_EVAL
    out = f"runs/{job['method']}-{job['dataset']}-ipc{job['ipc']}"
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in job["config"].items()]
    quiet_flag = ["--quiet"] if quiet else []
    _setup_messages(quiet)
    logging.getLogger("jaxdd").info(
        "the main job: %s on the embedded %s, %d img/cls, then the same networks on as many random real images "
        "(about a minute on 2 CPU cores; `jaxdd --help` for the rest)", job["method"].upper(), job["dataset"], job["ipc"])
    code = main(["distill", "--method", job["method"], "--dataset", job["dataset"], "--ipc", str(job["ipc"]),
                 "--preset", job["preset"], *flags, "--out", out, "--overwrite", *quiet_flag])
    if code:
        return code
    return main(["evaluate", out, "--against-random", "--protocol", how["protocol"], "--epochs", str(how["epochs"]),
                 "--models", str(how["models"]), *quiet_flag])


class _StderrLines(logging.Handler):
    """Each record as one line ``jaxdd: ...`` on the *current* ``sys.stderr``; stdout is flushed
    first, so a result line and a message never interleave."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.flush()
            sys.stderr.write(f"jaxdd: {record.getMessage()}\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def _setup_messages(quiet: bool) -> None:
    """Routes the ``jaxdd`` logger to stderr: INFO and up, or only warnings with ``--quiet``."""
    logger = logging.getLogger("jaxdd")
    if not any(isinstance(handler, _StderrLines) for handler in logger.handlers):
        logger.addHandler(_StderrLines())
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def _data_dir(flag: Optional[str]) -> Optional[Path]:
    """The data root; a ``--data-dir`` that is not a folder is an error, never a silent fallback."""
    from jaxdd import data

    if flag is not None and not Path(flag).expanduser().is_dir():
        raise CLIError(f"--data-dir {flag}: no such folder")
    return data.resolve_data_dir(flag)


def _report(error: BaseException) -> None:
    """Prints an error as one line (multi-line messages, e.g. the places a dataset was sought, joined)."""
    lines = (line.strip() for line in str(error).splitlines())
    text = "; ".join(line.removeprefix("- ") for line in lines if line)
    print(f"jaxdd: error: {text}", file=sys.stderr)


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


def _check_previous_run(out: Path, resume: bool, overwrite: bool) -> Optional[dict]:
    """Refuses to silently replace a finished set or an unfinished run in ``out``.

    Returns the finished set's metadata when ``out`` holds one (``--resume`` may then only re-write
    the identical set; the caller compares identities), else None.
    """
    from jaxdd import distill, io

    has_set = (out / io.META_FILE).exists() or (out / io.ARRAYS_FILE).exists()
    has_checkpoint = (out / distill.CHECKPOINT_FILE).exists()
    if has_set and not (resume or overwrite):
        raise CLIError(f"{out} holds a finished set; add --overwrite to replace it, or use another --out")
    if has_checkpoint and not has_set and not (resume or overwrite):
        raise CLIError(f"{out} holds the checkpoint of an unfinished run; add --resume to continue it, or --overwrite to start over")
    if not has_set or overwrite:
        return None
    try:
        return io.load_synset(out)[1]
    except io.SynSetError as error:
        raise CLIError(f"{error}; add --overwrite to replace it") from None


def _build_model(arch: str, info, init: Optional[str], options: Optional[dict]):
    """(Model, resolved init scheme) for a registered architecture; bad names or options are a CLIError."""
    from jaxdd import models

    if arch not in models.ARCHITECTURES:
        raise CLIError(f"unknown architecture {arch!r}; known: {', '.join(sorted(models.ARCHITECTURES))}")
    options = dict(options or {})
    try:
        model = models.get_model(arch, info.image_shape, info.num_classes, init=init, **options)
        scheme = init or models.ARCHITECTURES[arch](num_classes=info.num_classes, **options).init_scheme
    except (TypeError, ValueError) as error:
        raise CLIError(f"{arch}: {error}") from None
    return model, scheme


def cmd_distill(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from jaxdd import data, distill, io, methods, sampling
    from jaxdd.types import SynSet

    try:
        spec = methods.get_method(args.method)
    except ValueError as error:
        raise CLIError(str(error)) from None
    if args.dataset not in data.DATASETS:
        raise CLIError(f"unknown dataset {args.dataset!r}; known: {', '.join(sorted(data.DATASETS))}")
    if args.ipc < 1:
        raise CLIError(f"--ipc must be at least 1 (got {args.ipc})")
    info = data.DATASETS[args.dataset]
    run_file = load_config_file(args.config) if args.config else {}
    overrides = _file_config(run_file, spec)
    if spec.config_type is not None:
        overrides.update(config_overrides(spec.config_type, args))
    try:
        config = methods.resolve_config(spec, args.preset, args.ipc, args.dataset, overrides, num_classes=info.num_classes)
    except ValueError as error:
        raise CLIError(str(error)) from None
    model, model_init = _build_model(args.arch, info, args.model_init or spec.model_init, args.arch_options)
    mesh = _mesh(args.mesh)
    out = Path(args.out or f"runs/{args.method}-{args.dataset}-ipc{args.ipc}")
    existed = _check_output_folder(out)
    finished = _check_previous_run(out, args.resume, args.overwrite)

    try:
        dataset = data.load_dataset(args.dataset, _data_dir(args.data_dir), zca=args.zca)
    except ValueError as error:
        raise CLIError(str(error)) from None
    smallest = int(np.min(np.asarray(sampling.class_counts(dataset.y_train, info.num_classes))))
    if args.ipc > smallest:
        raise CLIError(f"--ipc {args.ipc} is larger than the smallest class of {args.dataset} ({smallest} training images)")
    # What the run is: recorded in the set's metadata, and in its identity, which a resume or a
    # rerun into the same folder must match (with the data's fingerprint and the mesh's shape).
    run_options = {
        "method": args.method,
        "config": methods.config_to_dict(config),
        "dataset": args.dataset,
        "zca": bool(args.zca),
        "arch": args.arch,
        "arch_options": dict(args.arch_options or {}),
        "model_init": model_init,
        "ipc": args.ipc,
        "preset": args.preset,
        "seed": args.seed,
    }
    identity = {
        "format_version": io.FORMAT_VERSION,
        **run_options,
        "data": io.array_fingerprint(dataset.x_train, dataset.y_train),
        "mesh": None if mesh is None else dict(mesh.shape),
    }
    if finished is not None and not args.overwrite:
        differences = io.identity_diff(finished.get("identity"), identity)
        if differences:
            raise CLIError(f"{out} holds a finished set of another run ({'; '.join(differences)}); add --overwrite to replace it, or use another --out")

    key = jax.random.key(args.seed)
    request = methods.DistillRequest(
        images=dataset.x_train,
        labels=dataset.y_train,
        num_classes=info.num_classes,
        model=model,
        ipc=args.ipc,
        preset=args.preset,
        key=jax.random.fold_in(key, 0),
        config=config,
        dataset=args.dataset,
        arch=args.arch,
        progress=not (args.no_progress or args.quiet),
    )
    started = time.perf_counter()
    made = spec.make(request)
    extra_arrays: dict = {}
    run: dict = {}
    try:
        if isinstance(made, methods.IterativeMethod):
            state = distill.run(
                made,
                jax.random.fold_in(key, 1),
                checkpoint_dir=out,
                checkpoint_every=args.checkpoint_every,
                resume=args.resume,
                identity=identity,
                progress=not (args.no_progress or args.quiet),
                mesh=mesh,
            )
            synset = made.to_synset(state)
            run = dict(made.config)
            if made.extra_arrays is not None:
                extra_arrays.update(made.extra_arrays(state))
        elif isinstance(made, SynSet):
            synset = made
        else:
            synset, run = made
        if dataset.zca is not None:
            extra_arrays.update({"zca_mean": dataset.zca.mean, "zca_inverse": dataset.zca.unwhiten})
        eval_overrides = spec.eval_overrides(extra_arrays) if spec.eval_overrides else {}
        meta = {
            **run_options,
            "image_shape": list(info.image_shape),
            "num_classes": info.num_classes,
            "mean": list(info.mean),
            "std": list(info.std),
            "mesh": args.mesh,
            "run": run,
            "eval_protocol": spec.default_protocol,
            **({"eval_overrides": eval_overrides} if eval_overrides else {}),
            "identity": identity,
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
        f"  (evaluate: jaxdd evaluate {out}; rerun: jaxdd distill --config {out}/synset.json)",
        flush=True,
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import dataclasses

    import jax
    import jax.numpy as jnp

    from jaxdd import data, evaluate, io, methods, train

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
    if args.arch:
        arch, arch_options = args.arch, args.arch_options
    else:
        arch, arch_options = meta.get("arch") or "ConvNet", {**meta.get("arch_options", {}), **(args.arch_options or {})}
    methods._load_builtin_methods()
    spec = methods.METHODS.get(meta.get("method", ""))
    protocol_name = args.protocol or meta.get("eval_protocol") or "dc"
    explicit = {"epochs": args.epochs, "lr": args.lr, "trainer": train.CycledGD(steps=args.steps) if args.steps else None}
    explicit = {k: v for k, v in explicit.items() if v is not None}
    from_set = {} if args.protocol or args.plain_protocol else dict(meta.get("eval_overrides") or {})
    unknown = sorted(set(from_set) - {field.name for field in dataclasses.fields(train.Protocol)})
    if unknown:
        raise CLIError(f"set {args.path} asks for unknown protocol fields {', '.join(unknown)} (eval_overrides); --plain-protocol ignores them")
    from_set = {k: v for k, v in from_set.items() if k not in explicit}
    try:
        protocol = evaluate.get_protocol(protocol_name, name, **{**from_set, **explicit})
    except ValueError as error:
        raise CLIError(str(error)) from None
    protocol_text = protocol.name + "".join(f", the set's {k}={v:.6g}" if isinstance(v, float) else f", the set's {k}={v}" for k, v in from_set.items())
    info = data.DATASETS[name]
    model, model_init = _build_model(arch, info, args.model_init or meta.get("model_init"), arch_options)
    try:
        dataset = data.load_dataset(name, _data_dir(args.data_dir), zca=bool(meta.get("zca")))
    except ValueError as error:
        raise CLIError(str(error)) from None
    kwargs = spec.eval_kwargs(meta, extras, model) if spec is not None and spec.eval_kwargs else {}
    if synset.step_sizes is not None and "step_sizes" not in kwargs:
        kwargs["step_sizes"] = jnp.asarray(synset.step_sizes)
    started = time.perf_counter()
    images, labels = jnp.asarray(synset.images), jnp.asarray(synset.labels)
    comparison = None
    if args.against_random:
        from jaxdd import quickstart

        comparison = quickstart.compare_to_random(
            jax.random.key(args.seed), model, images, labels, dataset.x_train, dataset.y_train, dataset.x_test,
            dataset.y_test, protocol, args.models, info.num_classes, mesh=mesh, progress=not args.quiet, **kwargs,
        )
        result = comparison.synthetic
        folder = Path(args.path).parent if Path(args.path).suffix in (".npz", ".json") else Path(args.path)
        chart = folder / "accuracy.png"
        label = str(meta.get("method", "set")).upper()
        io.write_file_atomically(chart, lambda file: quickstart.save_comparison_chart(file, comparison, label))
    else:
        logging.getLogger("jaxdd").info("training %d %s models on %d images (%s), protocol %s ...", args.models, arch, images.shape[0], name, protocol_text)
        result = evaluate.evaluate_synset(
            jax.random.key(args.seed), model, images, labels, dataset.x_test, dataset.y_test, protocol, args.models, mesh=mesh,
            progress=not args.quiet, **kwargs
        )
    elapsed = time.perf_counter() - started
    if args.json:
        print(json.dumps({
            **result.as_dict(),
            "protocol": protocol.name,
            "protocol_config": dataclasses.asdict(protocol),
            "set_overrides": from_set,
            "arch": arch,
            "arch_options": dict(arch_options or {}),
            "model_init": model_init,
            "models": args.models,
            "dataset": name,
            "seed": args.seed,
            "mesh": args.mesh,
            "set": str(args.path),
            "wall_time_s": round(elapsed, 3),
            **({} if comparison is None else {"random_real": comparison.random.as_dict(), "gain": comparison.gain, "chart": str(chart)}),
        }), flush=True)
    elif comparison is not None:
        lines = quickstart.comparison_lines(comparison, label, arch, name)
        lines[-1] += f"   ({elapsed:.1f} s; chart: {chart})"
        if from_set:
            lines.append(f"protocol {protocol_text} (both sets; --plain-protocol: without)")
        print("\n".join(lines), flush=True)
    else:
        print(f"{100 * result.mean:.2f} +- {100 * result.std:.2f} % test accuracy ({arch}, {name}, protocol {protocol_text}, {args.models} models, {elapsed:.1f} s)", flush=True)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from jaxdd import export

    written = export.export_synset(args.path, args.to, args.out)
    print(f"jaxdd: {args.to} export of {args.path} -> {written}", flush=True)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from jaxdd import export, io

    if (args.mean is None) != (args.std is None):
        raise CLIError("--mean and --std go together")
    out = Path(args.out or f"runs/imported-{Path(args.file).stem}")
    _check_output_folder(out)
    _check_previous_run(out, resume=False, overwrite=args.overwrite)
    export.import_reference(args.file, out, dataset=args.dataset, experiment=args.experiment, mean=args.mean, std=args.std)
    _, meta, _ = io.load_synset(out)
    source = meta["imported"]["source_normalisation"]
    print(
        f"jaxdd: imported {args.file} (experiment {args.experiment} of {meta['imported']['experiments_in_file']}, "
        f"{meta['num_images']} images, {meta['dataset']}, normalised by mean {source['mean']} / std {source['std']}) -> {out}"
        f"  (evaluate: jaxdd evaluate {out})",
        flush=True,
    )
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from jaxdd import data

    available = data.available_datasets(_data_dir(args.data_dir))
    print(f"{'name':<14} {'shape':<12} {'classes':>7}  available")
    for name, info in data.DATASETS.items():
        shape = "x".join(str(d) for d in info.image_shape)
        print(f"{name:<14} {shape:<12} {info.num_classes:>7}  {available.get(name, 'no')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
