"""`torpor bench` runs end to end and reports each figure beside its raw apsw comparator."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest


@pytest.mark.parametrize("suite", ["core", "supervisor", "steps"])
def test_bench_quick_reports_every_figure(suite: str) -> None:
    """The quick bench prints JSON with a finite value for each figure (positive for times)."""
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "bench", suite, "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    names = [figure["name"] for figure in report["figures"]]
    assert len(names) >= 4
    for figure in report["figures"]:
        assert math.isfinite(figure["torpor"]), figure
        if figure["unit"] in ("msg/s", "µs", "ms", "s"):
            assert figure["torpor"] > 0, figure
