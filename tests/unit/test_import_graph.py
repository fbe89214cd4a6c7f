"""The engine's import graph has no circle: a lower room never imports an upper one (not even
for type annotations), so each can be read, tested and changed on its own."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("runtime", "actors")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    paths = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    known = {_module(p) for p in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        name = _module(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                wanted = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                wanted = [f"{base}.{alias.name}" for alias in node.names] + [base]
            else:
                continue
            for target in wanted:
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        order[node] = low[node] = len(order)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in order:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], order[nxt])
        if low[node] == order[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return found


def test_the_engine_has_no_import_circle() -> None:
    """No module of runtime/ or actors/ imports, even for annotations, one that imports it back."""
    assert _circles(_graph()) == []


def test_the_circle_check_finds_a_circle() -> None:
    """The check sees a circle when there is one (two modules importing each other)."""
    assert _circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def _importers_of(room: str, graph: dict[str, set[str]]) -> set[str]:
    """The modules outside package ``room`` that import it or one of its modules."""
    inside = (room, f"{room}.")
    return {
        module
        for module, edges in graph.items()
        if not module.startswith(inside) and any(e.startswith(inside) for e in edges)
    }


def test_only_the_command_line_imports_the_operator_tools() -> None:
    """Only runtime.cli imports runtime.ops, and nothing in runtime/ or actors/ imports the CLI."""
    # The engine never depends on the operator tools or the command line.
    graph = _graph()
    assert _importers_of("runtime.cli", graph) == set()
    assert _importers_of("runtime.ops", graph) <= {m for m in graph if m.startswith("runtime.cli")}


def test_the_room_check_sees_an_engine_module_importing_ops() -> None:
    """The room check names an engine module that imports runtime.ops."""
    graph = {"runtime.engine": {"runtime.ops.fork"}, "runtime.ops.fork": set()}
    assert _importers_of("runtime.ops", graph) == {"runtime.engine"}


def _rows() -> dict[str, int]:
    """Each room of docs/explanation/architecture.md's table (``files/``, ``turn.py``, ...) and
    its row, from the bottom up."""
    import re

    rows: dict[str, int] = {}
    text = (ROOT / "docs" / "explanation" / "architecture.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| `")]
    for number, line in enumerate(table):
        for name in re.findall(r"`([a-z_]+(?:\.py|/))`", line.split("|")[1]):
            rows[name] = number
    return rows


def _room(module: str) -> str | None:
    """The table's name for a module of runtime/ (``runtime.files.db`` is ``files/``)."""
    parts = module.split(".")
    if parts[0] != "runtime" or len(parts) < 2:
        return None
    if len(parts) > 2 or parts[1] in ("files", "replica", "ops", "cli", "bench", "http"):
        return f"{parts[1]}/"
    return f"{parts[1]}.py"


def _upward(graph: dict[str, set[str]], rows: dict[str, int]) -> list[str]:
    """The imports of a module from a room listed below its own in the table."""
    found = []
    for module, edges in graph.items():
        here = _room(module)
        if here is None:
            continue
        for target in edges:
            there = _room(target)
            if there is not None and rows[there] > rows[here]:
                found.append(f"{module} -> {target}")
    return sorted(found)


def test_each_room_imports_only_rooms_listed_above_it_in_the_architecture_page() -> None:
    """Every module of runtime/ has its room in architecture.md, and imports none listed below."""
    graph, rows = _graph(), _rows()
    assert sorted({r for m in graph if (r := _room(m)) is not None} - rows.keys()) == []
    assert _upward(graph, rows) == []


def test_the_order_check_names_an_import_from_below() -> None:
    """The order check names a module that imports one listed below it."""
    graph = {"runtime.turn": {"runtime.engine"}, "runtime.engine": set()}
    assert _upward(graph, {"turn.py": 0, "engine.py": 1}) == ["runtime.turn -> runtime.engine"]
