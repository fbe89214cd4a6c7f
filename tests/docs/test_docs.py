"""Every Python code block in the README and docs/ runs, and every example runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def code_blocks() -> list[tuple[str, str]]:
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for i, match in enumerate(BLOCK.finditer(page.read_text())):
            found.append((f"{page.relative_to(ROOT)}#{i + 1}", match.group(1)))
    return found


@pytest.mark.parametrize(("where", "code"), code_blocks(), ids=[w for w, _ in code_blocks()])
def test_doc_code_block_runs(where: str, code: str, tmp_path: Path) -> None:
    """A code block in the docs is a complete program that runs without error."""
    script = tmp_path / "snippet.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{where} failed:\n{done.stdout}\n{done.stderr}"


def test_quickstart_example_runs(tmp_path: Path) -> None:
    """examples/quickstart.py runs end to end, including its kill -9 step."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), str(tmp_path / "qs")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "nothing acknowledged was lost" in done.stdout
    assert "alice: {'persona': 'helpful', 'notes': 2, 'tokens': 11}" in done.stdout


def test_reference_is_generated_from_current_docstrings() -> None:
    """docs/reference.md matches the public API's docstrings (regenerate with tools/)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_reference.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
