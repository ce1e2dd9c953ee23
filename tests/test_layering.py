"""The import rules of docs/ARCHITECTURE.md ("Layers"), checked on the source (every import
statement, at module level or inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jaxdd"

LAYERS = {
    "core": {"jaxdd.types"},
    "primitives": {
        "jaxdd.sampling", "jaxdd.sharding", "jaxdd.progress", "jaxdd.augment", "jaxdd.train", "jaxdd.evaluate",
        "jaxdd.krr", "jaxdd.coreset", "jaxdd.experts", "jaxdd.continual",
    },
    "methods": {"jaxdd.methods"},  # and every jaxdd.methods.<name>
    "driver": {"jaxdd.distill", "jaxdd.io"},
    "zoo": {"jaxdd.data", "jaxdd.models"},
    "application": {"jaxdd", "jaxdd.cli", "jaxdd.export", "jaxdd.quickstart"},
}
"""Every module of the package, by layer (a new module must be placed here)."""

ZOO_AND_COMMAND = {"jaxdd.data", "jaxdd.models", "jaxdd.cli", "jaxdd.export", "argparse"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    if module.startswith("jaxdd.methods."):
        return "methods"
    return next((layer for layer, names in LAYERS.items() if module in names), "unplaced")


def _imports(path: Path) -> set[str]:
    """Modules named by the file's import statements (``from jaxdd import x`` gives ``jaxdd.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module in ("jaxdd", "jaxdd.methods"):
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "argparse" or name.startswith("jaxdd")}


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_layer():
    known = set().union(*LAYERS.values())
    missing = [m for m in MODULES if m not in known and not m.startswith("jaxdd.methods.")]
    assert not missing, f"place {missing} in a layer of tests/test_layering.py and docs/ARCHITECTURE.md"


@pytest.mark.parametrize("module", [m for m in MODULES if _layer(m) in ("core", "primitives", "methods")])
def test_methods_and_primitives_know_no_datasets_models_or_command_line(module):
    bad = _imports(MODULES[module]) & ZOO_AND_COMMAND
    assert not bad, f"{module} imports {sorted(bad)}: take arrays and a Model instead"


@pytest.mark.parametrize("module", [m for m in MODULES if _layer(m) in ("core", "primitives")])
def test_primitives_know_no_method(module):
    bad = {name for name in _imports(MODULES[module]) if name.startswith(("jaxdd.methods", "jaxdd.distill"))}
    assert not bad, f"{module} imports {sorted(bad)}"


@pytest.mark.parametrize("module", sorted(LAYERS["zoo"]))
def test_models_and_data_know_nothing_of_distillation(module):
    bad = _imports(MODULES[module]) - {"jaxdd.types"}
    assert not bad, f"{module} imports {sorted(bad)}"


def test_core_imports_no_other_module_of_the_package():
    bad = _imports(MODULES["jaxdd.types"])
    assert not bad, f"jaxdd.types imports {sorted(bad)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_the_application_and_the_file_checks_know_the_zoo(module):
    """Datasets and architectures are picked by the application; io.py reaches the registry only to
    check a file's dataset name, shape and normalisation."""
    if _layer(module) != "application" and module != "jaxdd.io":
        assert not _imports(MODULES[module]) & LAYERS["zoo"], module


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_the_application_parses_arguments_and_the_library_never_imports_its_scripts(module):
    if _layer(module) != "application":
        assert not _imports(MODULES[module]) & {"argparse", "jaxdd.cli"}, module
    tree = ast.parse(MODULES[module].read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    assert not [n for n in names if n.split(".")[0] in ("experiments", "benchmarks", "tests")], module
