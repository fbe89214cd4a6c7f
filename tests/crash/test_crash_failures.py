"""Durable backoff across a real SIGKILL (DESIGN §10: a crash does not reset a backoff).

The child program is ``tests/crash/failures_workload.py``: a step that fails until its fourth
attempt, and a message that fails on each of its three attempts, both ``DELAY`` seconds apart.
The parent SIGKILLs the child as soon as it says (``BACKOFF``) that both have recorded the
failure of their second attempt (both are then in backoff), restarts it, lets it finish, and
reads the attempts' log. It checks that the step's attempts go on from their journaled count
(1, 2, 3, 4: not 1 again after the kill), that the message makes exactly its three attempts,
and that no attempt, before or after the kill, came sooner than ``DELAY`` after the previous
one (the rest of the backoff was waited out, not forgotten: a restart takes well under
``DELAY``).
"""

from __future__ import annotations

import itertools
import queue
import time
from pathlib import Path

from tests.crash import failures_workload as workload
from tests.support import crash_harness as support
from tests.support.crash_harness import Child

PROGRAM = Path(__file__).resolve().parent / "failures_workload.py"
#: A run must reach its kill point, or finish, within this many seconds.
TIMEOUT = 45.0
no_orphans = support.no_orphans


def read_log(log: Path) -> list[tuple[str, int, float]]:
    """The attempts in the log: ``(what, attempt, time)``."""
    if not log.exists():
        return []
    lines = [line.split(" ") for line in log.read_text().splitlines()]
    return [(what, int(attempt), float(at)) for what, attempt, at in lines]


def wait_for_line(child: Child, wanted: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            line = child.lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if line == wanted:
            return
        if line is None:
            break
    raise AssertionError(f"the child did not print {wanted}; stderr:\n{child.stderr_text()}")


def test_a_kill_in_backoff_keeps_attempt_counts_and_delays(
    tmp_path: Path, no_orphans: None, backend: str
) -> None:
    """After a SIGKILL in backoff, attempts go on from their count and wait out their delay."""
    root, log = tmp_path / "rt", tmp_path / "attempts.log"
    args = ["run", str(root), str(log)]
    first = Child(PROGRAM, args, tmp_path / "stderr-1.txt", backend=backend)
    try:
        wait_for_line(first, "BACKOFF", time.monotonic() + TIMEOUT)
        assert first.kill()
        killed_at = time.time()
    finally:
        first.finish()
    second = Child(PROGRAM, args, tmp_path / "stderr-2.txt", backend=backend)
    try:
        wait_for_line(second, "DONE", time.monotonic() + TIMEOUT)
        second.proc.wait(timeout=support.REAP_TIMEOUT)
    finally:
        second.finish()
    assert second.proc.returncode == 0, second.stderr_text()

    attempts = read_log(log)
    steps = [(n, at) for what, n, at in attempts if what == "step"]
    messages = [(n, at) for what, n, at in attempts if what == "message"]
    assert [n for n, _ in steps] == [1, 2, 3, 4]  # the count went on after the kill
    assert [n for n, _ in messages] == [1, 2, 3]  # three attempts in all, then dead-lettered
    for calls in (steps, messages):
        assert calls[1][1] < killed_at < calls[2][1]  # the kill landed in the second backoff
        gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(calls)]
        assert min(gaps) >= workload.DELAY - 1e-3, gaps  # never sooner, kill or not
