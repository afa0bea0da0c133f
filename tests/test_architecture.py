"""Architecture rules of the package, checked on its source with :mod:`ast` (issue 16).

1. **No import cycles** among uqkit's modules. Every ``import`` counts: at module level, deferred inside a
   function or a class, under ``try``/``if``, and ``importlib.import_module("uqkit...")`` with a literal
   name. Only imports under ``if TYPE_CHECKING:`` are left out, because they never run. The graph:

   - A node is a module; a package is its ``__init__.py`` and carries the package's name (``uqkit.nn``).
   - ``import uqkit.a.b`` and ``from uqkit.a import b`` where ``b`` is a submodule are edges to
     ``uqkit.a.b``; ``from uqkit.a import name`` where ``name`` is not a submodule is an edge to ``uqkit.a``
     (the name comes from its ``__init__``). Relative imports are resolved first.
   - Importing a module runs the ``__init__`` of every package above it first, so the edge to
     ``uqkit.a.b`` is also an edge to ``uqkit.a``, except where ``uqkit.a`` is a package that holds the
     importing module: that package is already being imported when the importer runs, and Python does not
     run it again. So ``uqkit/__init__.py`` importing ``uqkit.methods.predict`` and
     ``uqkit.methods.convert`` doing ``from uqkit import predict`` is a cycle (through the package), while
     ``uqkit.nn.reparam`` importing ``uqkit.nn.priors`` is not an import of ``uqkit.nn``.

   A cycle is printed as a chain of modules with the file and line of every import on it; every import that
   closes some cycle appears in at least one printed chain.

2. **No private helper crosses a module boundary.** A name starting with one underscore, imported
   (``from uqkit.a import _helper``) or read as an attribute of an imported uqkit module
   (``uqkit.a._helper``, ``module._helper``), fails. A helper that two modules use is public where it lives
   or moves to a shared module. *Private modules* (``uqkit/_validation.py``, ``uqkit/nn/_twins.py``,
   ``uqkit/nn/_posterior.py``, ...) are the other half of the rule: their underscore keeps them out of the
   public API, and their public names are exactly what they share inside uqkit, so any uqkit module may
   import those (never their ``_names``).

3. **No two classes share one name** anywhere in ``uqkit/`` (classes defined at any depth), so a name in a
   traceback, a docstring or a ``results.json`` means one thing.
"""

from __future__ import annotations

import ast
import collections
import functools
import itertools
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import uqkit

PACKAGE_ROOT = Path(uqkit.__file__).resolve().parent


@dataclass(frozen=True)
class Import:
    """One import of a module of the package: where it is, and what it reaches."""

    importer: str  # dotted name of the importing module
    path: Path
    line: int
    target: str  # the module it imports (a package's __init__ is the package's name)
    names: tuple[str, ...] = ()  # for ``from target import a, b``: the imported names that are not modules


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Map every module of the package rooted at ``root`` to its file (a package's is its ``__init__.py``)."""
    modules: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


@functools.cache
def _parse_source(path: Path, modified: int) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _parse(path: Path) -> ast.Module:
    """The syntax tree of ``path``, parsed once per version of the file."""
    return _parse_source(path, path.stat().st_mtime_ns)


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _resolve_relative(importer: str, is_package: bool, module: str | None, level: int) -> str:
    """The absolute name of ``from <level dots><module> import ...`` written in ``importer``."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]  # a module's relative imports start at its package
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` (they never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _import_module_argument(node: ast.Call) -> str | None:
    """The literal name in ``importlib.import_module("...")`` / ``import_module("...")``, else ``None``."""
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if called != "import_module" or not node.args:
        return None
    first = node.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def collect_imports(root: Path, package: str) -> list[Import]:
    """Every runtime import, in every module of the package, of another module of the package."""
    modules = module_names(root, package)
    imports: list[Import] = []
    for importer, path in modules.items():
        tree = _parse(path)
        is_package = path.name == "__init__.py"

        def add(target: str, line: int, names: tuple[str, ...] = (), importer=importer, path=path) -> None:
            imports.append(Import(importer, path, line, target, names))

        for node in _runtime_nodes(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules:
                        add(alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                source = _resolve_relative(importer, is_package, node.module, node.level)
                if source not in modules:
                    continue
                plain = []
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    if submodule in modules:
                        add(submodule, node.lineno)
                    else:
                        plain.append(alias.name)
                if plain or not node.names:
                    add(source, node.lineno, tuple(plain))
            elif isinstance(node, ast.Call):
                name = _import_module_argument(node)
                if name is not None and name in modules:
                    add(name, node.lineno)
    return imports


def import_graph(root: Path, package: str) -> dict[str, dict[str, list[Import]]]:
    """``graph[a][b]``: the imports by which running module ``a`` runs module ``b`` (see the module doc)."""
    modules = module_names(root, package)
    graph: dict[str, dict[str, list[Import]]] = {name: collections.defaultdict(list) for name in modules}
    for imp in collect_imports(root, package):
        parts = imp.target.split(".")
        reached = [".".join(parts[:k]) for k in range(1, len(parts))]  # the packages above the target
        for target in [*reached, imp.target]:
            holds_importer = imp.importer == target or imp.importer.startswith(target + ".")
            if holds_importer and target != imp.target:
                continue  # a package above the importer is already being imported: not run again
            graph[imp.importer][target].append(imp)
    return graph


def _strongly_connected(graph: dict[str, dict[str, list[Import]]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def find_cycles(graph: dict[str, dict[str, list[Import]]]) -> list[list[str]]:
    """Cycles of ``graph`` as chains ``[a, b, ..., a]``: for every edge inside a strongly connected
    component, the shortest cycle through it (deduplicated), so every import that closes a cycle is on a
    printed chain."""
    cycles: set[tuple[str, ...]] = set()
    for component in _strongly_connected(graph):
        members = set(component)
        for start in component:
            for succ in graph[start]:
                if succ not in members:
                    continue
                # shortest path succ -> start inside the component, by breadth-first search
                previous: dict[str, str | None] = {succ: None}
                queue = collections.deque([succ])
                while queue and start not in previous:
                    node = queue.popleft()
                    for nxt in sorted(graph[node]):
                        if nxt in members and nxt not in previous:
                            previous[nxt] = node
                            queue.append(nxt)
                path = [start]
                node: str | None = start
                while node != succ:
                    node = previous[node]
                    path.append(node)
                chain = [start, *reversed(path[1:])]  # start -> succ -> ... -> (back to) start
                smallest = chain.index(min(chain))
                cycles.add(tuple(chain[smallest:] + chain[:smallest]))
    return [[*cycle, cycle[0]] for cycle in sorted(cycles)]


def describe_cycle(cycle: list[str], graph: dict[str, dict[str, list[Import]]], root: Path) -> str:
    """``a -> b -> a`` with, under it, the file and line of each import on the chain."""
    lines = [" -> ".join(cycle)]
    for a, b in itertools.pairwise(cycle):
        imp = graph[a][b][0]
        how = "" if imp.target == b else f" (imports {imp.target}, which runs {b}/__init__.py first)"
        lines.append(f"    {a} -> {b}: {imp.path.relative_to(root.parent)}:{imp.line}{how}")
    return "\n".join(lines)


def private_name_imports(root: Path, package: str) -> list[str]:
    """Every read of another module's ``_name``: ``from m import _name``, or ``m._name`` on an imported
    module ``m``."""
    modules = module_names(root, package)
    found = []
    for imp in collect_imports(root, package):
        for name in imp.names:
            if name.startswith("_") and not name.startswith("__"):
                found.append(
                    f"{imp.importer} <- {imp.target}.{name} ({imp.path.relative_to(root.parent)}:{imp.line})"
                )
    for importer, path in modules.items():
        tree = _parse(path)
        is_package = path.name == "__init__.py"
        bound: dict[str, str] = {}  # local name -> the uqkit module it is bound to
        for node in _runtime_nodes(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules:
                        if alias.asname:
                            bound[alias.asname] = alias.name
                        else:
                            top = alias.name.split(".")[0]
                            bound[top] = top
            elif isinstance(node, ast.ImportFrom):
                source = _resolve_relative(importer, is_package, node.module, node.level)
                for alias in node.names:
                    if f"{source}.{alias.name}" in modules:
                        bound[alias.asname or alias.name] = f"{source}.{alias.name}"
        for node in _runtime_nodes(tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")) or node.attr.startswith(
                "__"
            ):
                continue
            owner = _dotted(node.value, bound, modules)
            if owner is not None and owner != importer and f"{owner}.{node.attr}" not in modules:
                found.append(
                    f"{importer} <- {owner}.{node.attr} ({path.relative_to(root.parent)}:{node.lineno})"
                )
    return sorted(found)


def _dotted(node: ast.expr, bound: dict[str, str], modules: dict[str, Path]) -> str | None:
    """The uqkit module an expression like ``uqkit.nn.reparam`` or an import alias names, else ``None``."""
    if isinstance(node, ast.Name):
        return bound.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _dotted(node.value, bound, modules)
        if owner is not None and f"{owner}.{node.attr}" in modules:
            return f"{owner}.{node.attr}"
    return None


def class_definitions(root: Path, package: str) -> dict[str, list[str]]:
    """Every class name defined in the package (at any depth), with where each definition is."""
    where: dict[str, list[str]] = collections.defaultdict(list)
    for name, path in module_names(root, package).items():
        for node in ast.walk(_parse(path)):
            if isinstance(node, ast.ClassDef):
                where[node.name].append(f"{name}:{node.lineno}")
    return where


# ---------------------------------------------------------------------------------------------------------
# The rules on uqkit itself
# ---------------------------------------------------------------------------------------------------------


def test_uqkit_has_no_import_cycles():
    graph = import_graph(PACKAGE_ROOT, "uqkit")
    cycles = find_cycles(graph)
    report = "\n".join(describe_cycle(cycle, graph, PACKAGE_ROOT) for cycle in cycles)
    if cycles:
        pytest.fail(
            f"{len(cycles)} import cycle(s) in uqkit/ (deferred imports count):\n{report}", pytrace=False
        )


def test_uqkit_imports_no_private_helpers_across_modules():
    found = private_name_imports(PACKAGE_ROOT, "uqkit")
    if found:
        pytest.fail(
            "private helpers read from another module (make them public where they live, or move them):\n"
            + "\n".join(found),
            pytrace=False,
        )


def test_uqkit_class_names_are_unique():
    clashes = {
        name: where for name, where in class_definitions(PACKAGE_ROOT, "uqkit").items() if len(where) > 1
    }
    if clashes:
        lines = [f"{name}: {', '.join(where)}" for name, where in sorted(clashes.items())]
        pytest.fail("classes that share one name:\n" + "\n".join(lines), pytrace=False)


# ---------------------------------------------------------------------------------------------------------
# The detectors on tiny packages written for the test: they must find what is there, and only that
# ---------------------------------------------------------------------------------------------------------


def _write_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkg"
    for relative, source in files.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return package


def _cycles(package: Path) -> list[list[str]]:
    return find_cycles(import_graph(package, "pkg"))


def test_detector_finds_a_cycle_deferred_inside_a_function(tmp_path):
    package = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg.b import g\n\ndef f():\n    return g()\n",
            "b.py": "def g():\n    from pkg import a\n    return a\n",
            "c.py": "import pkg.a\n",  # imports into the cycle, is not on it
        },
    )
    graph = import_graph(package, "pkg")
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]
    text = describe_cycle(["pkg.a", "pkg.b", "pkg.a"], graph, package)
    assert "pkg/a.py:1" in text and "pkg/b.py:2" in text


def test_detector_resolves_relative_imports_and_import_module(tmp_path):
    package = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "sub/__init__.py": "",
            "sub/x.py": "from . import y\n",
            "sub/y.py": "from ..z import helper\n",
            "z.py": ("import importlib\n\ndef helper():\n    return importlib.import_module('pkg.sub.x')\n"),
        },
    )
    assert _cycles(package) == [["pkg.sub.x", "pkg.sub.y", "pkg.z", "pkg.sub.x"]]


def test_detector_counts_a_package_init_that_reexports(tmp_path):
    # pkg/__init__ imports pkg.a, and pkg.a imports a name from the package: a cycle through the package.
    package = _write_package(
        tmp_path,
        {
            "__init__.py": "from pkg.a import A\nfrom pkg.b import B\n",
            "a.py": "class A:\n    pass\n",
            "b.py": "from pkg import A\n\nclass B(A):\n    pass\n",
        },
    )
    assert _cycles(package) == [["pkg", "pkg.b", "pkg"]]


def test_detector_counts_the_init_of_a_package_above_the_target(tmp_path):
    # pkg.low.x imports pkg.up.y; that runs pkg/up/__init__.py, which imports pkg.up.z, which imports
    # pkg.low.x.
    package = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "low/__init__.py": "",
            "low/x.py": "from pkg.up.y import Y\n",
            "up/__init__.py": "from pkg.up.z import Z\n",
            "up/y.py": "class Y:\n    pass\n",
            "up/z.py": "from pkg.low.x import Y as Z\n",
        },
    )
    assert _cycles(package) == [["pkg.low.x", "pkg.up", "pkg.up.z", "pkg.low.x"]]


def test_detector_accepts_a_package_without_cycles(tmp_path):
    # Sibling imports inside a package do not import the package's __init__ again; TYPE_CHECKING never runs.
    package = _write_package(
        tmp_path,
        {
            "__init__.py": "from pkg.sub import x\n",
            "sub/__init__.py": "from pkg.sub.x import X\nfrom pkg.sub.y import Y\n",
            "sub/x.py": "from pkg.sub.y import Y\n\nclass X(Y):\n    pass\n",
            "sub/y.py": (
                "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from pkg.sub.x import X\n\n"
                "class Y:\n    pass\n"
            ),
        },
    )
    assert _cycles(package) == []


def test_private_helper_detector(tmp_path):
    package = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "_shared.py": "def shared():\n    pass\n\ndef _hidden():\n    pass\n",
            "a.py": "from pkg._shared import shared\n\ndef f():\n    from pkg._shared import _hidden\n",
            "b.py": "import pkg._shared as s\nimport pkg._shared\n\ns._hidden()\npkg._shared._hidden()\n",
            "c.py": "def _own():\n    pass\n\n_own()\n__all__ = []\n",
        },
    )
    found = private_name_imports(package, "pkg")
    assert [line.split(" (")[0] for line in found] == [
        "pkg.a <- pkg._shared._hidden",
        "pkg.b <- pkg._shared._hidden",
        "pkg.b <- pkg._shared._hidden",
    ]


def test_class_name_detector(tmp_path):
    package = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "class Layer:\n    pass\n",
            "b.py": "def f():\n    class Layer:\n        pass\n",
        },
    )
    assert dict(class_definitions(package, "pkg")) == {"Layer": ["pkg.a:1", "pkg.b:2"]}


@pytest.mark.parametrize(
    ("importer", "is_package", "module", "level", "expected"),
    [
        ("pkg.sub.x", False, "y", 1, "pkg.sub.y"),
        ("pkg.sub.x", False, None, 2, "pkg"),
        ("pkg.sub", True, "y", 1, "pkg.sub.y"),
        ("pkg.sub", True, None, 2, "pkg"),
        ("pkg.a", False, "pkg.b", 0, "pkg.b"),
    ],
)
def test_relative_imports_resolve(importer, is_package, module, level, expected):
    assert _resolve_relative(importer, is_package, module, level) == expected
