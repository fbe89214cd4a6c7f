"""The one SIGKILL crash harness, shared by every crash test (``tests/crash/test_*.py``).

A harness starts its child program (``Child``: ``python -m tests.crash.<workload>`` from the
repository root), SIGKILLs it per a plan, restarts it, then checks invariants against what the
child acknowledged. Children report their acknowledgements one of two ways:

- On stdout, as ``ACK s i`` lines (test_crash, test_crash_steps, test_crash_timers):
  ``run_child`` kills a run per a plan, ``Campaign`` restarts it until enough kills landed and
  lets a last run finish, ``read_state`` reads the child's ``verify`` output, and
  ``check_order``/``check_sends`` check the acknowledged sends against a plain-Python ``Model``.
  ``Harness`` names the child program, timeouts and the async backend the child runs on
  (``tests/support/crash_child.py`` reads it from ``TORPOR_CRASH_BACKEND``).
- In an fsynced side file (test_crash_replication, test_machine_loss): ``run_side_file_child``
  kills a ``SideFileRun`` per its mode (seconds after the start or after READY, or once so many
  acknowledgements are in the side file) or lets it close; ``SideFileHarness`` names the child
  program and its timeouts. These harnesses check restores from the replica, their own.

``no_orphans`` fails a test that leaves a child process behind; ``invariants_first`` sorts the
invariant violations first; ``seed`` and ``kills_option`` read the seed and the kill count.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

REPO = Path(__file__).resolve().parents[2]
#: The environment variable that tells a child program its async backend ("trio", "asyncio").
BACKEND_ENV = "TORPOR_CRASH_BACKEND"
#: Waiting for a killed child to be reaped and its stdout to reach end of file.
REAP_TIMEOUT = 10.0


@attrs.frozen
class Harness:
    """One crash harness: its child program and how its runs are driven."""

    program: Path
    #: A run that is not killed must print DONE and exit within this many seconds.
    run_timeout: float
    #: Where a kill after READY lands once every send was acknowledged ("draining", "waiting").
    idle_phase: str
    #: On the ACK that reaches a kill's count, kill before that sender counts as finished (the
    #: kill is then reported as "sending" even if it was the last acknowledgement).
    kill_on_ack_before_discard: bool = False
    #: The async backend the child runs on.
    backend: str = "trio"


@attrs.define
class Run:
    """What one child run did, for the failure message (and a lateness report)."""

    number: int
    mode: str
    end: int
    starts: list[int]
    acks: int = 0
    ready: bool = False
    done: bool = False
    killed: bool = False
    returncode: int | None = None
    seconds: float = 0.0
    phase: str = ""  # where the kill landed: startup, opening, sending, the idle phase, closing
    opened_at: float | None = None  # monotonic time of OPEN
    open_to_ready: float | None = None  # seconds from OPEN to READY
    up_from: float | None = None  # wall time of READY
    up_to: float | None = None  # wall time of the kill or the exit

    def __str__(self) -> str:
        fate = f"killed while {self.phase}" if self.killed else f"exit {self.returncode}"
        return (
            f"run {self.number}: mode={self.mode} end={self.end} starts={self.starts} "
            f"ready={self.ready} acks={self.acks} done={self.done} {fate} {self.seconds:.2f}s"
        )


@attrs.define(kw_only=True)
class Model:
    """The parent's plain-Python model: what was acknowledged, and by which run."""

    end: int = 0
    acked: list[int]  # per sender, the last acknowledged message
    acked_in: dict[tuple[int, int], int] = attrs.Factory(dict)


Plan = tuple[str, Any]


def module_of(program: Path) -> str:
    """The dotted module name of a child program under the repository (``tests.crash.workload``)."""
    return ".".join(program.resolve().relative_to(REPO).with_suffix("").parts)


class Child:
    """One child process; its stdout lines arrive on a queue from a reader thread."""

    def __init__(
        self, program: Path, args: list[str], stderr_path: Path, *, backend: str = "trio"
    ) -> None:
        self.stderr_path = stderr_path
        self._stderr = stderr_path.open("wb")
        self.proc = subprocess.Popen(
            # As a module from the repository root, so that the child imports `tests.*`.
            [sys.executable, "-m", module_of(program), *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env={**os.environ, BACKEND_ENV: backend},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.partial = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            if raw.endswith(b"\n"):
                self.lines.put(raw.decode().rstrip("\n"))
            else:
                self.partial = raw  # cut by the kill: the child never finished printing it
        self.lines.put(None)

    def kill(self) -> bool:
        """SIGKILL the child if it has not exited; True if the kill landed on a live process."""
        if self.proc.poll() is not None:
            return False
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=REAP_TIMEOUT)
        return self.proc.returncode == -signal.SIGKILL

    def finish(self) -> None:
        """Reap the child (killing it if still alive) and close its pipes; always safe."""
        try:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=REAP_TIMEOUT)
            self._reader.join(timeout=REAP_TIMEOUT)
        finally:
            assert self.proc.stdout is not None
            self.proc.stdout.close()
            self._stderr.close()

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]


def kill_after_open(rng: random.Random, history: list[Run]) -> Plan:
    """Plan a kill a random time after OPEN, scaled by how long recent runs took to get READY."""
    seen = sorted(r.open_to_ready for r in history[-10:] if r.open_to_ready is not None)
    typical = seen[len(seen) // 2] if seen else 0.01
    return "open", rng.uniform(0.0, typical * 1.5)


def run_child(
    harness: Harness,
    tmp: Path,
    root: Path,
    model: Model,
    number: int,
    plan: Plan,
    history: list[Run],
) -> Run:
    """Start one ``run`` child, kill it per ``plan`` (mode "final": never); update the model.

    Modes: "startup" (seconds after spawn), "open" (after OPEN), "ready" (after READY), "acks"
    (after this many ACK lines), "drain" (seconds after the last send was acknowledged).
    """
    mode, param = plan
    starts = [a + 1 for a in model.acked]
    run = Run(number, mode, model.end, starts)
    history.append(run)
    child = Child(
        harness.program,
        ["run", str(root), str(model.end), *map(str, starts)],
        tmp / f"stderr-{number}.txt",
        backend=harness.backend,
    )
    began = time.monotonic()
    kill_at = began + param if mode == "startup" else None
    limit = began + harness.run_timeout
    pending = {s for s in range(len(model.acked)) if model.acked[s] < model.end}

    def kill() -> None:
        if run.done:
            run.phase = "closing"
        elif run.ready:
            run.phase = "sending" if pending else harness.idle_phase
        else:
            run.phase = "startup" if run.opened_at is None else "opening"
        run.killed = child.kill()

    try:
        while True:
            now = time.monotonic()
            if kill_at is not None and now >= kill_at and not run.killed:
                kill()
                kill_at = None
            if now >= limit:
                raise AssertionError(
                    f"child run {number} did not finish in {harness.run_timeout}s (hung?); "
                    f"stderr:\n{child.stderr_text()}"
                )
            wait = limit - now if kill_at is None else max(0.0, kill_at - now)
            try:
                line = child.lines.get(timeout=min(wait, 1.0))
            except queue.Empty:
                continue
            if line is None:
                break
            now = time.monotonic()
            if line == "OPEN":
                run.opened_at = now
                if mode == "open":
                    kill_at = now + param
            elif line == "READY":
                run.ready = True
                run.up_from = time.time()
                if run.opened_at is not None:
                    run.open_to_ready = now - run.opened_at
                if mode == "ready" or (mode == "drain" and not pending):
                    kill_at = now + param
            elif line.startswith("ACK "):
                _, s_text, i_text = line.split()
                s, i = int(s_text), int(i_text)
                assert i == model.acked[s] + 1, f"harness: ACK {s} {i} after {model.acked[s]}"
                model.acked[s] = i
                model.acked_in[(s, i)] = number
                run.acks += 1
                if i >= model.end and not harness.kill_on_ack_before_discard:
                    pending.discard(s)
                if mode == "acks" and run.acks == param and not run.killed:
                    kill()
                if i >= model.end:
                    pending.discard(s)
                    if mode == "drain" and not pending:
                        kill_at = now + param
            elif line == "DONE":
                run.done = True
            else:
                raise AssertionError(f"child run {number} printed {line!r}")
        child.proc.wait(timeout=REAP_TIMEOUT)
    finally:
        run.up_to = time.time()
        child.finish()
    run.returncode = child.proc.returncode
    run.seconds = time.monotonic() - began
    if not run.killed and (run.returncode != 0 or not run.done):
        raise AssertionError(
            f"child run {number} exited {run.returncode} without being killed "
            f"(done={run.done}); stderr:\n{child.stderr_text()}"
        )
    return run


def read_state(harness: Harness, tmp: Path, root: Path) -> dict[str, Any]:
    """Run the child's ``verify`` and parse the one ``STATE <json>`` line it prints."""
    child = Child(
        harness.program, ["verify", str(root)], tmp / "stderr-verify.txt", backend=harness.backend
    )
    lines = []
    try:
        deadline = time.monotonic() + harness.run_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"verify did not finish in {harness.run_timeout}s")
            try:
                line = child.lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if line is None:
                break
            lines.append(line)
        child.proc.wait(timeout=REAP_TIMEOUT)
    finally:
        child.finish()
    states = [line[len("STATE ") :] for line in lines if line.startswith("STATE ")]
    assert child.proc.returncode == 0 and len(states) == 1, (
        f"verify exited {child.proc.returncode}; stdout {lines[:3]!r}; stderr:\n"
        f"{child.stderr_text()}"
    )
    state: dict[str, Any] = json.loads(states[0])
    return state


@attrs.define
class Campaign:
    """A sequence of killed runs on one runtime directory, then a final run that must finish."""

    harness: Harness
    tmp: Path
    seed: int
    model: Model
    history: list[Run] = attrs.Factory(list)
    landed: int = 0
    number: int = 0

    @property
    def root(self) -> Path:
        return self.tmp / "rt"

    def context(self) -> str:
        recent = "\n".join(str(r) for r in self.history[-8:])
        return (
            f"seed={self.seed} (TORPOR_CRASH_SEED), backend={self.harness.backend}, "
            f"kills={self.landed}, runs={self.number}, "
            f"end={self.model.end}, runtime dir {self.root}\nlast runs:\n{recent}"
        )

    def kill_runs(
        self,
        kills: int,
        plan_kill: Callable[[random.Random, list[Run]], Plan],
        more: tuple[int, int],
    ) -> None:
        """Run the workload until ``kills`` SIGKILLs landed; raise with the context on failure.

        Usually each run gives every sender ``randint(*more)`` more messages to send; sometimes
        not, so that a run only recovers and drains (and may finish cleanly before its kill).
        """
        rng = random.Random(self.seed)
        try:
            while self.landed < kills:
                self.number += 1
                if rng.random() < 0.8 or self.model.end == 0:
                    self.model.end = max(self.model.end, max(self.model.acked) + rng.randint(*more))
                run = run_child(
                    self.harness,
                    self.tmp,
                    self.root,
                    self.model,
                    self.number,
                    plan_kill(rng, self.history),
                    self.history,
                )
                self.landed += run.killed
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.context()}") from None
        assert self.landed >= kills

    def final_run(self) -> list[str]:
        """The final, unkilled run; its failure, if any (check the logs anyway: they say why)."""
        self.number += 1
        try:
            run_child(
                self.harness,
                self.tmp,
                self.root,
                self.model,
                self.number,
                ("final", None),
                self.history,
            )
        except AssertionError as exc:
            return [f"the final, unkilled run failed: {exc}"]
        return []

    def read_state(self) -> dict[str, Any]:
        return read_state(self.harness, self.tmp, self.root)

    def fail(self, errors: list[str], summary: str = "") -> None:
        """Raise with the first errors, ``summary`` and the context, if there are any errors."""
        if errors:
            raise AssertionError(
                f"{len(errors)} failure(s):\n"
                + "\n".join(errors[:30])
                + (f"\n{summary}" if summary else "")
                + f"\n{self.context()}"
            )

    def phases(self) -> dict[str, int]:
        """How many kills landed in each phase."""
        phases: dict[str, int] = {}
        for r in self.history:
            if r.killed:
                phases[r.phase] = phases.get(r.phase, 0) + 1
        return phases


def check_order(
    key: str,
    applied: list[list[int]],
    model: Model,
    where: dict[tuple[int, int], list[str]],
    sent_to: Callable[[int, int], str],
    receiver: str,
) -> list[str]:
    """One actor's applied ``(idx, sender, i)`` rows: known, sent to it, in each sender's order.

    ``sent_to(s, i)`` is the key of the ``receiver`` that message ``i`` of sender ``s`` was sent to.

    Records in ``where`` which actors applied each message, for ``check_sends``.
    """
    errors: list[str] = []
    last: dict[int, int] = {}
    for _, s, i in applied:
        where.setdefault((s, i), []).append(key)
        if not (0 <= s < len(model.acked) and 1 <= i <= model.end):
            errors.append(f"{key}: applied unknown message ({s}, {i})")
            continue
        if sent_to(s, i) != key:
            errors.append(f"{key}: applied ({s}, {i}), which was sent to another {receiver}")
        if s in last and i < last[s]:  # i == last[s]: a duplicate, reported by check_sends
            errors.append(f"invariant 3 (order): {key} applied ({s}, {i}) after ({s}, {last[s]})")
        last[s] = max(i, last.get(s, 0))
    return errors


def check_sends(
    state: dict[str, Any], model: Model, where: dict[tuple[int, int], list[str]]
) -> list[str]:
    """Every acknowledged send applied exactly once; no dead letters, no runtime reports."""
    errors: list[str] = []
    for s in range(len(model.acked)):
        for i in range(1, model.end + 1):
            found = where.get((s, i), [])
            if len(found) > 1:
                errors.append(f"invariant 2 (exactly once): ({s}, {i}) applied {len(found)} times")
            elif not found:
                run = model.acked_in.get((s, i))
                if run is None:
                    errors.append(f"({s}, {i}) was never acknowledged nor applied (harness?)")
                else:
                    errors.append(
                        f"invariant 1 (no loss): ({s}, {i}) acknowledged in run {run} but never "
                        "applied"
                    )
        if model.acked[s] != model.end:
            errors.append(f"sender {s} ended at ACK {model.acked[s]}, not {model.end}")
    for key, letters in state["dead_letters"].items():
        if letters:
            errors.append(f"{key} has {len(letters)} dead letters: {letters[:3]}")
    if state["reports"]:
        errors.append(f"runtime reports: {state['reports'][:3]}")
    return errors


def invariants_first(errors: list[str]) -> None:
    """Sort the invariant violations first: other findings are often their consequences."""
    errors.sort(key=lambda e: not e.startswith("invariant"))


def seed(default: int) -> int:
    return int(os.environ.get("TORPOR_CRASH_SEED", default))


def kills_option(request: pytest.FixtureRequest, default: int) -> int:
    kills: int | None = request.config.getoption("--crash-kills")
    return kills or default


def children_of_this_process() -> list[int]:
    """PIDs of live (or unreaped) processes whose parent is this test process."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:
            found.append(int(entry.name))
    return found


@pytest.fixture
def no_orphans() -> Iterator[None]:
    """Fail the test if it leaves a child process behind."""
    before = set(children_of_this_process())
    yield
    left = set(children_of_this_process()) - before
    assert not left, f"child processes left behind: {sorted(left)}"


# -- children that acknowledge into a side file (replication, machine loss) ----------------------


@attrs.frozen
class SideFileHarness:
    """A harness whose child appends its acknowledgements to a side file (fsynced, so that they
    outlive the SIGKILL) instead of printing ``ACK`` lines; it prints ``OPEN``, ``READY``, maybe
    ``SENT`` (every send acknowledged) and ``DONE`` (closed cleanly)."""

    program: Path
    #: A child must print READY within this many seconds of its start.
    ready_timeout: float
    #: After READY, a run must reach its kill (mode "acks") or finish (mode "close") within this.
    work_timeout: float
    #: What an acknowledgement line of the side file starts with (b"": every line is one).
    ack_marker: bytes = b""
    #: How often a run waiting on the side file looks at it again.
    poll: float = 0.01


@attrs.define
class SideFileRun:
    """One run of a side-file child: how it ends, and what it did (for the failure message)."""

    number: int
    root: Path
    #: "startup": SIGKILL ``param`` seconds after the start; "ready": ``param`` seconds after
    #: READY; "acks": once ``param`` more acknowledgements are in the side file (or SENT);
    #: "close": never killed, it must print DONE and exit 0.
    mode: str
    param: float = 0.0
    ready: bool = False
    killed: bool = False
    done: bool = False
    phase: str = ""  # where the kill landed: "starting" (before READY) or "working"
    seconds: float = 0.0
    returncode: int | None = None

    def __str__(self) -> str:
        if self.mode == "close":
            plan = "close"
        elif self.mode == "acks":
            plan = f"kill after {self.param:.0f} acks"
        else:
            plan = f"kill {self.mode}+{self.param:.3f}s"
        fate = f"killed while {self.phase}" if self.killed else f"exit {self.returncode}"
        return (
            f"run {self.number} on {self.root.name}: {plan}, ready={self.ready}, "
            f"done={self.done}, {fate} after {self.seconds:.2f}s"
        )


def count_acks(path: Path, offset: int, marker: bytes = b"") -> int:
    """Acknowledgements (lines, or lines starting with ``marker``) appended after ``offset``."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            appended = f.read()
    except FileNotFoundError:
        return 0
    lines = appended.split(b"\n")[:-1]  # (a cut last line is not an acknowledgement yet)
    return sum(line.startswith(marker) for line in lines)


def run_side_file_child(
    harness: SideFileHarness,
    tmp: Path,
    run: SideFileRun,
    args: list[str],
    acks: Path,
    *,
    may_kill: Callable[[], bool] = lambda: True,
    on_ready: Callable[[], None] = lambda: None,
) -> None:
    """Start one child (``args`` after the program), SIGKILL it or let it close per ``run``.

    ``may_kill`` can hold a due "acks" kill back (it is asked again soon); ``on_ready`` runs when
    the child prints READY. Raises AssertionError if the child hangs, prints something unknown,
    exits before its kill, or (mode "close") does not finish cleanly."""
    offset = acks.stat().st_size if acks.exists() else 0
    child = Child(harness.program, args, tmp / f"stderr-{run.number}.txt")
    began = time.monotonic()
    kill_at = began + run.param if run.mode == "startup" else None
    limit = began + harness.ready_timeout
    sent = False
    try:
        while not run.killed:
            now = time.monotonic()
            if (
                run.mode == "acks"
                and run.ready
                and (sent or count_acks(acks, offset, harness.ack_marker) >= run.param)
                and may_kill()
            ):
                kill_at = now
            if kill_at is not None and now >= kill_at:
                run.phase = "working" if run.ready else "starting"
                run.killed = child.kill()
                if not run.killed:
                    break
                continue
            if kill_at is None and now >= limit:
                raise AssertionError(
                    f"child run {run.number} did not "
                    f"{'get READY' if not run.ready else 'reach its end'} in time; "
                    f"stderr:\n{child.stderr_text()}"
                )
            wait = harness.poll if run.mode == "acks" else (kill_at or limit) - now
            try:
                line = child.lines.get(timeout=max(0.0, min(wait, 0.5)))
            except queue.Empty:
                continue
            if line is None:
                break
            if line == "READY":
                run.ready = True
                limit = time.monotonic() + harness.work_timeout
                if run.mode == "ready":
                    kill_at = time.monotonic() + run.param
                on_ready()
            elif line == "SENT":
                sent = True
            elif line == "DONE":
                run.done = True
            elif line != "OPEN":
                raise AssertionError(f"child run {run.number} printed {line!r}")
        child.proc.wait(timeout=REAP_TIMEOUT)
    finally:
        run.seconds = time.monotonic() - began
        child.finish()
        run.returncode = child.proc.returncode
    if run.mode == "close" and (run.returncode != 0 or not run.done):
        raise AssertionError(
            f"child run {run.number} exited {run.returncode} (done={run.done}); stderr:\n"
            f"{child.stderr_text()}"
        )
    if run.mode != "close" and not run.killed:
        raise AssertionError(
            f"child run {run.number} exited {run.returncode} before its kill; stderr:\n"
            f"{child.stderr_text()}"
        )
