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
        "ganforge.schema",
        "ganforge.runfiles",
        "ganforge.updates",
        "ganforge.tomlwriter",
        "ganforge.diagnostics",
        "ganforge.augment",
        "ganforge.streams",
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


def imports_of(name: str) -> set[str]:
    """The package modules ``name`` imports at module level (``TYPE_CHECKING`` included)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _top_level_imports(ast.parse(path.read_text()).body):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            # `from ganforge import state` imports the module ganforge.state.
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for target in targets:
            module = _known(target) if target.split(".")[0] == "ganforge" else None
            if module is not None and module != name:
                found.add(module)
    return found


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
    def imports_trainer(path: Path) -> bool:
        for node in ast.walk(ast.parse(path.read_text())):
            from_package = isinstance(node, ast.ImportFrom) and node.module == "ganforge"
            if from_package and any(alias.name == "trainer" for alias in node.names):
                return True
            names = [node.module] if isinstance(node, ast.ImportFrom) else []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            if any(n and n.startswith("ganforge.trainer") for n in names):
                return True
        return False

    importers = {name for name, path in MODULES.items() if imports_trainer(path)}
    importers.discard("ganforge.trainer")
    assert {"ganforge.cli", "ganforge.testing"} <= importers  # the reader sees them
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


def test_the_reader_sees_type_checking_and_relative_imports():
    # The edges this test relies on reading: a TYPE_CHECKING import, a `from ganforge import
    # module`, and a relative import inside a subpackage.
    assert "ganforge.builder" in GRAPH["ganforge.state"]  # under TYPE_CHECKING
    assert "ganforge.state" in GRAPH["ganforge.trainer"]  # from ganforge import state
    assert "ganforge.execution" in GRAPH["ganforge.execution.ddp"]
