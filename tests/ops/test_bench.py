"""`torpor bench` runs end to end and reports each figure beside its raw apsw comparator."""

from __future__ import annotations

import ctypes
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import apsw
import pytest


@pytest.mark.parametrize("suite", ["core", "supervisor", "steps", "runs"])
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
        if figure["unit"] in ("msg/s", "runs/s", "µs", "ms", "s"):
            assert figure["torpor"] > 0, figure


def test_bench_supervisor_reports_fresh_memory_two_file_baseline_and_targets() -> None:
    """The supervisor bench prints fresh-process memory, a two-file raw wake, targets met/missed."""
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "bench", "supervisor", "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for name in ("fds", "RSS", "SQLite heap"):
        assert f"{name} per awake actor, fresh process" in out
    assert "open data.db and mailbox.db of the same 200 hibernated actors" in out
    for target in ("wake latency p50 ≤ 1 ms", "wake latency p99 ≤ 5 ms", "≤ 256 KiB"):
        line = next(line for line in out.splitlines() if target in line)
        assert line.split()[0] in ("met", "MISSED"), line
    assert "targets missed: " in out
    assert not any(word in out.lower() for word in ("issue", "milestone"))


async def test_bench_supervisor_raw_wake_opens_files_as_the_runtime_does(tmp_path: Path) -> None:
    """The supervisor bench's raw wake opens an actor's two files with the runtime's settings."""
    from runtime.bench import supervisor as bench_supervisor
    from runtime.runtime import open_runtime

    def settings(conn: apsw.Connection) -> tuple[Any, ...]:
        flag = ctypes.c_int(-1)  # -1: query the flag
        conn.file_control("main", apsw.SQLITE_FCNTL_PERSIST_WAL, ctypes.addressof(flag))
        names = ("journal_mode", "synchronous", "page_size", "locking_mode", "busy_timeout")
        return (conn.vfsname("main"), flag.value, *(conn.pragma(name) for name in names))

    agent = bench_supervisor._types()
    async with open_runtime(tmp_path, types=[agent]) as rt:
        await rt.ref(agent, "a0").ask(agent.hi)
        (act,) = rt._engine.awake.values()
        ours = [settings(act.mailbox.conn), settings(act.data.conn)]
    opened = bench_supervisor._open_as_a_wake(tmp_path, "a0")
    try:
        raw = [settings(conn) for conn, _ in opened]
    finally:
        bench_supervisor._close_as_a_hibernation(opened)
    assert raw == ours
    assert ours[0][:2] == ("unix-excl", 1)


def test_bench_gateway_reports_http_beside_in_process() -> None:
    """torpor bench gateway --quick prints each figure over HTTP beside the same in process."""
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "bench", "gateway", "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)["figures"]
    assert [f["name"] for f in figures][:1] == ["asks/s, 16 callers"]
    for figure in figures:
        assert figure["http"] > 0 and figure["in_process"] > 0, figure
