"""No import cycles in the service's code (chalicelib/, app.py, local/, infra/).

The graph is read from the source with ``ast``: every ``import`` and ``from ... import``, at
module level or inside a function, under ``TYPE_CHECKING`` or not (a lazy import that dodges a
cycle at run time is still a cycle in the design). ``from package import submodule`` depends on
the submodule, not on the package's ``__init__``.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("chalicelib", "local", "infra")

KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()
"""(importer, imported) edges left out of the check: the debts above, nothing new."""


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the service."""
    found = {"app": ROOT / "app.py"}
    for folder in SOURCES:
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The service's modules that ``name`` imports anywhere in its source."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
            found.update(submodules)
            if base in modules and len(submodules) < len(node.names):
                found.add(base)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (``a -> b -> a``), or None when there is none."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        return list(error.args[1])
    return None


def without(graph: dict[str, set[str]], edges: set[tuple[str, str]]) -> dict[str, set[str]]:
    return {name: {target for target in targets if (name, target) not in edges} for name, targets in graph.items()}


def test_the_graph_covers_the_service() -> None:
    graph = import_graph()
    assert {"app", "chalicelib.api.routes", "chalicelib.manager.reconcile", "local.run", "infra.template"} <= set(graph)
    assert "chalicelib.api.checkout" in graph["chalicelib.api.vms"]
    assert "chalicelib.config" in graph["chalicelib.providers.base"]


def test_there_is_no_import_cycle() -> None:
    cycle = cycle_in(without(import_graph(), KNOWN_CYCLE_EDGES))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_known_exceptions_are_still_cycles() -> None:
    """Each excepted edge exists and closes a cycle: once item 1 or 2 removes one, drop it above."""
    graph = import_graph()
    for importer, imported in KNOWN_CYCLE_EDGES:
        assert imported in graph[importer], f"{importer} no longer imports {imported}: drop the exception"
        cycle = cycle_in(without(graph, KNOWN_CYCLE_EDGES - {(importer, imported)}))
        assert cycle is not None and importer in cycle, (importer, imported)


@pytest.mark.parametrize(("source", "expected"), [
    ("import chalicelib.b\n", {"chalicelib.b"}),
    ("from chalicelib import b\n", {"chalicelib.b"}),
    ("from . import b\n", {"chalicelib.b"}),
    ("from .b import thing\n", {"chalicelib.b"}),
    ("from chalicelib import helper\n", {"chalicelib"}),  # a name of the package's __init__
    ("def lazy():\n    from chalicelib.b import thing\n", {"chalicelib.b"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from chalicelib.b import T\n", {"chalicelib.b"}),
    ("import os\nfrom redis import Redis\n", set()),
])
def test_every_kind_of_import_is_an_edge(tmp_path: Path, source: str, expected: set[str]) -> None:
    path = tmp_path / "a.py"
    path.write_text(source)
    modules = {"chalicelib": tmp_path / "__init__.py", "chalicelib.a": path, "chalicelib.b": tmp_path / "b.py"}
    assert imports_of("chalicelib.a", path, modules) == expected
    cycle = cycle_in({"chalicelib.a": expected, "chalicelib.b": {"chalicelib.a"}})
    assert (cycle is not None) == ("chalicelib.b" in expected)
