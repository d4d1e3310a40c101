"""The core's layering (docs/architecture.md): each module imports only from its own layer or
lower ones, no import circle, and only the entry layer imports the training loop.

Imports are read from the source (module level and ``if TYPE_CHECKING:`` blocks, which type
checkers and readers follow as well). Imports inside functions are how entry points and the
package's ``__getattr__`` defer torch-heavy modules; they are not edges here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ganforge

PACKAGE = Path(ganforge.__file__).parent

#: Lowest first. A new module must be placed in one (the test names it otherwise).
LAYERS: dict[str, set[str]] = {
    "contracts": {
        "ganforge",
        "ganforge.errors",
        "ganforge.components",
        "ganforge.critics",
        "ganforge.schema",
        "ganforge.runfiles",
        "ganforge.updates",
        "ganforge.tomlwriter",
        "ganforge.diagnostics",
        "ganforge.augment",
        "ganforge.streams",
        "ganforge.rows",
        "ganforge.schedules",
    },
    "config and plugin contract": {
        "ganforge.registry",
        "ganforge.recipe",
        "ganforge.data",
        "ganforge.clusters",
        "ganforge.averaging",
        "ganforge.hookspecs",
    },
    "services": {
        "ganforge.plugins",
        "ganforge.checkpoint",
        "ganforge.export",
        "ganforge.distributed",
        "ganforge.stopping",
        "ganforge.runlock",
        "ganforge.evaluation",
        "ganforge.tracking",
        "ganforge.report",
        "ganforge.paired",
    },
    "backends": {
        "ganforge.execution",
        "ganforge.execution.ddp",
        "ganforge.execution.zero",
        "ganforge.execution.fsdp",
    },
    "run assembly": {"ganforge.builder", "ganforge.state", "ganforge.outputs"},
    "the loop": {"ganforge.trainer"},
    "entry": {
        "ganforge.cli",
        "ganforge.testing",
        "ganforge.sampling",
        "ganforge.interpolation",
        "ganforge.__main__",
    },
}
RANK = {module: rank for rank, modules in enumerate(LAYERS.values()) for module in modules}
LAYER_NAMES = list(LAYERS)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _top_level_imports(body: list[ast.stmt]):
    """Import statements run at import time or seen by type checkers: module level, inside
    ``if``/``try`` blocks there, ``if TYPE_CHECKING:`` included; not inside functions."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            yield from _top_level_imports(node.body)
            yield from _top_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _top_level_imports(block)


def _known(name: str) -> str | None:
    """The package module ``name`` is or lies in (``ganforge.x.y`` -> ``ganforge.x``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.Import | ast.ImportFrom, package: str) -> set[str]:
    """The package modules one import statement imports, in ``package`` (relative imports
    resolved; ``from ganforge import state`` imports the module ``ganforge.state``)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, *([node.module] if node.module else [])])
        names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
    found = {_known(n) for n in names if n.split(".")[0] == "ganforge"}
    return found - {None}


def edges(name: str, source: str, top_level_only: bool = True) -> set[str]:
    """The package modules module ``name`` (whose text is ``source``) imports: at module
    level (``TYPE_CHECKING`` included), or anywhere with ``top_level_only=False``."""
    is_package = MODULES.get(name, Path()).name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    tree = ast.parse(source)
    nodes = (
        _top_level_imports(tree.body)
        if top_level_only
        else (n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)))
    )
    return set().union(*(_targets(node, package) for node in nodes)) - {name}


def imports_of(name: str) -> set[str]:
    """The package modules ``name`` imports at module level (``TYPE_CHECKING`` included)."""
    return edges(name, MODULES[name].read_text())


GRAPH = {name: imports_of(name) for name in MODULES}


def test_every_module_has_a_layer():
    unplaced = sorted(set(MODULES) - set(RANK))
    assert not unplaced, f"place these modules in a layer of tests/test_layers.py: {unplaced}"


def test_no_module_imports_from_a_higher_layer():
    upward = [
        f"{name} ({LAYER_NAMES[RANK[name]]}) imports {target} ({LAYER_NAMES[RANK[target]]})"
        for name, targets in GRAPH.items()
        for target in targets
        if name in RANK and target in RANK and RANK[target] > RANK[name]
    ]
    assert not upward, "\n".join(upward)


def test_only_the_entry_layer_imports_the_trainer():
    # Here imports inside functions count too: nothing below the entry layer may reach the
    # loop, even lazily.
    importers = {
        name
        for name, path in MODULES.items()
        if "ganforge.trainer" in edges(name, path.read_text(), top_level_only=False)
    }
    assert {"ganforge.cli", "ganforge.testing"} <= importers  # the reader sees lazy imports
    assert importers <= LAYERS["entry"], sorted(importers - LAYERS["entry"])


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_there_is_no_import_circle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize(
    "graph, circle",
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": set(), "c": {"c"}}, ["c", "c"]),
        ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, None),
    ],
)
def test_the_circle_finder_finds_circles(graph, circle):
    assert find_cycle(graph) == circle


def test_the_reader_sees_type_checking_relative_and_lazy_imports():
    source = """
from typing import TYPE_CHECKING
from . import ddp
from ..trainer import Trainer
if TYPE_CHECKING:
    from ganforge import state
def later():
    from ganforge.outputs import RunOutputs
"""
    found = edges("ganforge.execution.zero", source)
    # `from ganforge import state` runs the package's __init__ too: an edge to it.
    expected = {"ganforge", "ganforge.state", "ganforge.trainer"}
    assert found == expected | {"ganforge.execution", "ganforge.execution.ddp"}
    lazy = edges("ganforge.execution.zero", source, top_level_only=False)
    assert lazy == found | {"ganforge.outputs"}
    assert "ganforge.builder" in GRAPH["ganforge.state"]  # a real TYPE_CHECKING import
