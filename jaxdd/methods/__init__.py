"""The method registry and the one config mechanism every method follows.

A method module defines

- a config type ``XConfig`` (a ``NamedTuple`` or frozen dataclass) whose fields are annotated
  (``int``, ``float``, ``str``, ``bool``, ``Optional[int]``, ``tuple[int, ...]``, ``Literal[...]``)
  and documented in a Google ``Attributes:`` section of its class docstring;
- ``default_config(preset, ipc, dataset) -> XConfig`` for the presets ``smoke`` | ``cpu`` |
  ``paper`` (raising ``ValueError`` with one line for combinations it does not support);
- ``make(request: DistillRequest)``, which reads the resolved config from ``request.config``,

and registers a :class:`MethodSpec`. The command line derives every flag and its help from the
config's fields (:func:`config_fields`); :func:`resolve_config` is the single preset/override
mechanism used by the command, the experiments and user code alike.

A method is either *direct* (``make`` returns a finished :class:`~jaxdd.types.SynSet`,
e.g. random real, class mean, coresets) or *iterative* (``make`` returns an
:class:`IterativeMethod` that :func:`jaxdd.distill.run` drives).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from typing import Any, Callable, Literal, Mapping, NamedTuple, Optional, Union

from jaxdd.types import Array, Model, PRNGKey, SynSet

PRESETS = ("smoke", "cpu", "paper")
"""Preset names every method's ``default_config`` accepts."""

REQUEST_FIELDS = ("num_classes", "ipc")
"""Config fields that belong to the request, not to the user: :func:`resolve_config` and
:func:`request_config` fill them from the data and ``--ipc``; they are never flags."""


@dataclasses.dataclass(frozen=True)
class DistillRequest:
    """Everything a method builder may use; built by the command line or by user code.

    Attributes:
        images: (N, H, W, C) real training images, normalised, on device.
        labels: (N,) int32 real training labels.
        num_classes: number of classes.
        model: the network used for distillation.
        ipc: images per class to produce.
        preset: 'smoke', 'cpu' or 'paper' (the defaults ``config`` was resolved from).
        key: typed PRNG key for the whole run.
        config: the method's resolved config (see :func:`resolve_config`); None takes the
            preset's defaults (:func:`request_config`).
        dataset: registry name of the dataset ('' for a user's own arrays).
        arch: registry name of ``model`` ('' for a user's own model).
        progress: show progress bars on stderr for long work a direct method does while it is
            built (e.g. the coresets' feature network); iterative methods are shown by the driver.
    """

    images: Array
    labels: Array
    num_classes: int
    model: Model
    ipc: int
    preset: str
    key: PRNGKey
    config: Any = None
    dataset: str = ""
    arch: str = ""
    progress: bool = False


class IterativeMethod(NamedTuple):
    """A method as pure functions, driven by :func:`jaxdd.distill.run`.

    Attributes:
        init: ``init(key) -> state`` (a pytree of arrays).
        step: ``step(state, real, key) -> (state, metrics)``: pure and jittable; ``real``
            is the pytree ``real_data`` below; ``metrics`` a dict of scalars with at least 'loss'.
        to_synset: ``to_synset(state) -> SynSet``.
        real_data: pytree of device arrays passed to every step (never closed over).
        num_steps: outer iterations to run.
        config: JSON-serialisable dict describing the run as the method built it (stored in
            synset.json under ``run``; the resolved config itself is stored under ``config``).
        extra_arrays: ``extra_arrays(state) -> dict[str, array]`` saved beside the set
            (e.g. DD's fixed initial parameters); ``None`` for none.
    """

    init: Callable[[PRNGKey], Any]
    step: Callable[[Any, Any, PRNGKey], tuple[Any, dict]]
    to_synset: Callable[[Any], SynSet]
    real_data: Any
    num_steps: int
    config: dict
    extra_arrays: Callable[[Any], dict] | None = None


class MethodSpec(NamedTuple):
    """A registered method.

    Attributes:
        name: the ``--method`` name.
        description: one line for ``--help``.
        make: ``make(request) -> SynSet | (SynSet, dict) | IterativeMethod``.
        config_type: the method's config class (None: the method has no options).
        default_config: ``default_config(preset, ipc, dataset) -> config_type``.
        eval_kwargs: optional ``eval_kwargs(meta, extra_arrays, model) -> dict`` of keyword
            arguments for :func:`jaxdd.evaluate.evaluate_synset` that a set of this method needs
            (e.g. DD's fixed initial parameters), used by ``jaxdd evaluate``.
        default_protocol: evaluation protocol used when ``jaxdd evaluate`` is given none.
        model_init: initialisation scheme (``jaxdd.models.INIT_SCHEMES``) the command builds the
            network with when the user names none; None: the architecture's own default.
        eval_overrides: optional ``eval_overrides(extra_arrays) -> dict`` of
            :class:`~jaxdd.train.Protocol` fields that a set of this method is trained with under
            ``default_protocol``, read from what the run learned (e.g. MTT's learned step size as
            ``lr``). ``jaxdd distill`` records them in the set's metadata (``eval_overrides``)
            beside ``eval_protocol``; ``jaxdd evaluate`` applies them when no ``--protocol`` is
            given, explicit flags (``--lr``) winning.
    """

    name: str
    description: str
    make: Callable[[DistillRequest], Union[SynSet, tuple, IterativeMethod]]
    config_type: Optional[type] = None
    default_config: Optional[Callable[[str, int, str], Any]] = None
    eval_kwargs: Callable[[dict, dict, Model], dict] | None = None
    default_protocol: str = "dc"
    model_init: Optional[str] = None
    eval_overrides: Callable[[dict], dict] | None = None


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Adds ``spec`` to :data:`METHODS` (the last registration of a name wins)."""
    if (spec.config_type is None) != (spec.default_config is None):
        raise ValueError(f"method {spec.name!r}: config_type and default_config go together")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """Returns the registered method ``name`` or raises ``ValueError`` listing the known ones."""
    _load_builtin_methods()
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def _load_builtin_methods() -> None:
    """Imports the method modules so that they register themselves."""
    import importlib

    for module in BUILTIN_METHOD_MODULES:
        importlib.import_module(module)


BUILTIN_METHOD_MODULES: list[str] = [
    "jaxdd.methods.baselines",
    "jaxdd.methods.coresets",
    "jaxdd.methods.dc",
    "jaxdd.methods.dm",
    "jaxdd.methods.dd",
    "jaxdd.methods.frepo",
    "jaxdd.methods.idc",
    "jaxdd.methods.mgdd",
    "jaxdd.methods.mtt",
]
"""Modules imported on first lookup; each calls :func:`register` at import time."""


# ----------------------------------------------------------------------------------------------
# Configs: fields, types, docs, resolution


class ConfigField(NamedTuple):
    """One user-settable field of a config type.

    Attributes:
        name: the field name (``inner_steps``; on the command line ``--inner-steps``).
        type: its annotation, resolved (``int``, ``Optional[int]``, ``tuple[int, ...]`` ...).
        doc: its text from the class docstring's ``Attributes:`` section.
    """

    name: str
    type: Any
    doc: str


def _field_names(config_type: type) -> tuple[str, ...]:
    if dataclasses.is_dataclass(config_type):
        return tuple(f.name for f in dataclasses.fields(config_type))
    if hasattr(config_type, "_fields"):
        return tuple(config_type._fields)
    raise TypeError(f"{config_type.__name__} is neither a NamedTuple nor a dataclass")


def field_docs(config_type: type) -> dict[str, str]:
    """``{field: text}`` from the Google ``Attributes:`` section of the class docstring."""
    docs: dict[str, str] = {}
    inside, base, current = False, None, None
    for line in (inspect.getdoc(config_type) or "").splitlines():
        if line.strip() == "Attributes:":
            inside = True
            continue
        if not inside or not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            break
        base = indent if base is None else base
        match = re.match(r"([\w, ]+?)(?:\s*\(.*?\))?:\s*(.*)", line.strip())
        if indent == base and match:
            names = [n.strip() for n in match.group(1).split(",")]
            for name in names:
                docs[name] = match.group(2)
            current = names
        elif current:
            for name in current:
                docs[name] = f"{docs[name]} {line.strip()}".strip()
    return docs


def config_fields(config_type: type) -> tuple[ConfigField, ...]:
    """The user-settable fields of ``config_type`` (all but :data:`REQUEST_FIELDS`), in order."""
    hints = typing.get_type_hints(config_type)
    docs = field_docs(config_type)
    return tuple(
        ConfigField(name, hints[name], docs.get(name, ""))
        for name in _field_names(config_type)
        if name not in REQUEST_FIELDS
    )


def replace(config: Any, **changes: Any) -> Any:
    """``config`` with ``changes`` (NamedTuple ``_replace`` or ``dataclasses.replace``)."""
    if dataclasses.is_dataclass(config):
        return dataclasses.replace(config, **changes)
    return config._replace(**changes)


def config_to_dict(config: Any) -> dict:
    """The config's fields as a JSON-serialisable dict (tuples become lists)."""
    if config is None:
        return {}
    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config._asdict()
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _optional(tp: Any) -> tuple[bool, Any]:
    """(whether ``None`` is allowed, the type without ``None``)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != len(typing.get_args(tp)):
            return True, args[0] if len(args) == 1 else Union[tuple(args)]
    return False, tp


def type_name(tp: Any) -> str:
    """A short human name for a field type (``int``, ``int or none``, ``comma-separated ints``...)."""
    optional, tp = _optional(tp)
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = [a for a in typing.get_args(tp) if a is not Ellipsis] or [str]
        name = f"comma-separated {args[0].__name__}s"
    elif origin is Literal:
        name = "|".join(str(a) for a in typing.get_args(tp))
    else:
        name = getattr(tp, "__name__", str(tp))
    return f"{name} or none" if optional else name


def parse_value(text: str, tp: Any, name: str = "value") -> Any:
    """Parses command-line ``text`` as a value of field type ``tp``; ``ValueError`` (one line) if not."""
    optional, tp = _optional(tp)
    if optional and text.strip().lower() in ("none", "null"):
        return None
    return coerce(text, tp, name)


def _scalar(value: Any, tp: Any, name: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if value == choice or (isinstance(value, str) and str(choice) == value.strip()):
                return choice
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(map(str, choices))}")
    else:
        return value
    raise ValueError(f"{name}: expected {type_name(tp)}, got {value!r}")


def coerce(value: Any, tp: Any, name: str = "value") -> Any:
    """``value`` (from a flag, a JSON or YAML file) as field type ``tp``; ``ValueError`` if it is not one.

    Strings are parsed (``'0.1'`` for a float, ``'1,2'`` for a tuple, ``'none'`` for an optional),
    lists become tuples, ints are accepted for floats; anything else is refused.
    """
    optional, tp = _optional(tp)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("none", "null")):
        if optional:
            return None
        raise ValueError(f"{name}: expected {type_name(tp)}, got none")
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"{name}: expected {type_name(tp)}, got {value!r}")
        element_types = [args[0]] * len(items) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(element_types) != len(items):
            raise ValueError(f"{name}: expected {len(element_types)} values, got {len(items)}")
        return tuple(_scalar(v, t, name) for v, t in zip(items, element_types))
    return _scalar(value, tp, name)


def resolve_config(
    spec: MethodSpec,
    preset: str,
    ipc: int,
    dataset: str = "",
    overrides: Optional[Mapping[str, Any]] = None,
    num_classes: Optional[int] = None,
) -> Any:
    """The method's config: the preset's defaults for (ipc, dataset), then ``overrides``.

    This is the one preset/override mechanism: the command line's flags, a ``--config`` file and
    library callers all pass their values here as ``overrides``.

    Args:
        spec: a registered method.
        preset: 'smoke', 'cpu' or 'paper'.
        ipc: images per class.
        dataset: registry name of the dataset ('' if none), for per-dataset defaults.
        overrides: ``{field: value}``; values are coerced to the field's type (strings parsed).
        num_classes: fills a ``num_classes`` field of the config, if it has one.

    Returns:
        A ``spec.config_type`` instance, or None for a method without options.

    Raises:
        ValueError: unknown preset, an unknown field or a value of the wrong type (one line).
    """
    overrides = dict(overrides or {})
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    if spec.config_type is None:
        if overrides:
            raise ValueError(f"method {spec.name} takes no options (got {', '.join(sorted(overrides))})")
        return None
    fields = {f.name: f for f in config_fields(spec.config_type)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(
            f"method {spec.name} has no option {', '.join(unknown)}; known: {', '.join(fields) or 'none'}"
        )
    config = spec.default_config(preset, ipc, dataset)
    changes = {k: coerce(v, fields[k].type, k) for k, v in overrides.items()}
    names = _field_names(spec.config_type)
    if "ipc" in names:
        changes["ipc"] = ipc
    if "num_classes" in names and num_classes is not None:
        changes["num_classes"] = num_classes
    return replace(config, **changes)


def request_config(request: DistillRequest, default_config: Callable[[str, int, str], Any]) -> Any:
    """``request.config`` (or the preset's defaults if it is None) with :data:`REQUEST_FIELDS`
    taken from the request; what every ``make`` reads."""
    config = request.config
    if config is None:
        config = default_config(request.preset, request.ipc, request.dataset)
    names = _field_names(type(config))
    changes = {"num_classes": request.num_classes, "ipc": request.ipc}
    return replace(config, **{k: v for k, v in changes.items() if k in names})
