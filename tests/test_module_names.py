"""No module of uqkit is hidden by a package attribute of the same name (issue 16, item 4).

When ``uqkit/data/__init__.py`` re-exports a function ``f`` and ``uqkit/data/f.py`` exists, ``uqkit.data.f``
is the function and ``import uqkit.data.f as m`` gives the function, not the module: what a name means then
depends on import order. Two checks, one static and one at run time:

* the names bound at the top of each package's ``__init__.py`` (imports, ``def``, ``class``, assignments) that
  are also the name of one of its submodules must be imports of that very submodule;
* after importing every submodule, the package attribute of each submodule's name is that module.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
import types
from pathlib import Path

import pytest

import uqkit


def _packages() -> list[types.ModuleType]:
    found = [uqkit]
    for info in pkgutil.walk_packages(uqkit.__path__, "uqkit."):
        if info.ispkg:
            found.append(importlib.import_module(info.name))
    return found


def _top_level_bindings(tree: ast.Module) -> list[tuple[str, ast.stmt]]:
    """``(name, statement)`` for every name a module binds at its top level (inside ``if``/``try`` too)."""
    bound: list[tuple[str, ast.stmt]] = []
    statements = list(tree.body)
    while statements:
        node = statements.pop()
        if isinstance(node, ast.If | ast.Try):
            statements.extend(node.body + node.orelse + getattr(node, "finalbody", []))
            for handler in getattr(node, "handlers", []):
                statements.extend(handler.body)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.append((node.name, node))
        elif isinstance(node, ast.ImportFrom):
            bound.extend((alias.asname or alias.name, node) for alias in node.names)
        elif isinstance(node, ast.Import):
            bound.extend((alias.asname or alias.name.split(".")[0], node) for alias in node.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bound.extend((target.id, node) for target in targets if isinstance(target, ast.Name))
    return bound


def _imports_submodule(statement: ast.stmt, package: str, name: str) -> bool:
    """Whether ``statement`` binds ``name`` to the submodule ``package.name`` itself."""
    if isinstance(statement, ast.ImportFrom):
        source = "." * statement.level + (statement.module or "")
        return source in (package, ".") and any(
            alias.name == name and alias.asname in (None, name) for alias in statement.names
        )
    if isinstance(statement, ast.Import):
        return any(alias.name == f"{package}.{name}" and alias.asname == name for alias in statement.names)
    return False


@pytest.mark.parametrize("package", _packages(), ids=lambda package: package.__name__)
def test_no_package_name_shadows_a_submodule(package):
    submodules = {info.name for info in pkgutil.iter_modules(package.__path__)}
    tree = ast.parse(Path(package.__file__).read_text())
    shadowing = [
        f"{package.__name__}.{name} (line {statement.lineno})"
        for name, statement in _top_level_bindings(tree)
        if name in submodules and not _imports_submodule(statement, package.__name__, name)
    ]
    assert not shadowing, f"names bound in __init__.py that hide a submodule of the same name: {shadowing}"

    for name in sorted(submodules):
        module = importlib.import_module(f"{package.__name__}.{name}")
        attribute = getattr(package, name)
        assert attribute is module, (
            f"{package.__name__}.{name}: expected the module {module.__name__}, got {attribute!r}"
        )
        assert sys.modules[f"{package.__name__}.{name}"] is module


def test_the_check_finds_a_function_that_hides_its_module():
    """The static check flags ``from pkg.f import f`` next to ``f.py`` and accepts ``from pkg import f``."""
    tree = ast.parse("from uqkit.data.loader import loader\nfrom uqkit.data import toy\nfrom . import uci\n")
    bindings = dict(_top_level_bindings(tree))
    assert not _imports_submodule(bindings["loader"], "uqkit.data", "loader")
    assert _imports_submodule(bindings["toy"], "uqkit.data", "toy")
    assert _imports_submodule(bindings["uci"], "uqkit.data", "uci")
