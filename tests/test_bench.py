"""`torpor bench` runs end to end and reports each figure beside its raw apsw comparator."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.parametrize("suite", ["core", "supervisor"])
def test_bench_quick_reports_every_figure(suite: str) -> None:
    """The quick bench prints JSON with a positive torpor and raw value for each figure."""
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
        assert figure["torpor"] > 0, figure
