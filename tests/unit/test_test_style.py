"""The tests' own style: each test says, in one line, the behaviour it checks (as attrs' do)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _faults(source: str, filename: str) -> list[str]:
    """Each test function of ``source`` without a docstring, or with one of more than one line."""
    faults = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if not node.name.startswith("test"):
            continue
        first = node.body[0]
        where = f"{filename}:{node.lineno} {node.name}"
        if ast.get_docstring(node, clean=False) is None:
            faults.append(f"{where}: no docstring")
        elif first.lineno != first.end_lineno:
            faults.append(f"{where}: a docstring of more than one line")
    return faults


def test_every_test_has_a_one_line_docstring() -> None:
    """Every test function under tests/ has a docstring, and it fits on one line."""
    faults = [
        fault
        for path in sorted(TESTS.rglob("test_*.py"))
        for fault in _faults(path.read_text(), str(path.relative_to(TESTS.parent)))
    ]
    assert faults == []


def test_the_style_check_names_a_missing_or_long_docstring() -> None:
    """The check names a test without a docstring and one whose docstring spans two lines."""
    source = (
        "def test_bare():\n    pass\n\n"
        'async def test_long():\n    """One line,\n    and another."""\n\n'
        'def test_fine():\n    """One line."""\n\n'
        "def helper():\n    pass\n"
    )
    assert _faults(source, "t.py") == [
        "t.py:1 test_bare: no docstring",
        "t.py:4 test_long: a docstring of more than one line",
    ]
