"""Crash harness: SIGKILL a workload at random instants, restart it, check DESIGN §7 invariants 1-3.

The child program is ``tests/crash_workload.py``. Each run sends messages from three senders to
four worker actors (each send acknowledged by an ``ACK s i`` line printed right after
``await ref.send(...)`` returned); every applied message is forwarded actor-to-actor to a sink
and to the next worker in a ring. The parent kills the child at a random moment (during startup
and recovery, while sending, after some acknowledgements, or while the actors drain their
mailboxes and outboxes), restarts it where each sender's acknowledgements stopped (so the message
in flight is sent again under the same idempotency key), and after the last, unkilled run reads
every actor's logs and compares them with a plain-Python model:

1. every acknowledged send is applied (none lost);
2. no message is applied twice (the logs have no unique constraint, so a duplicate shows);
3. each sender's messages are applied by each actor in send order;
4. each forwarded message is applied exactly once, in the order its origin applied its messages.

The seed is fixed and printed on failure; set ``TORPOR_CRASH_SEED`` to try another one. Timing is
not deterministic, so a seed reproduces the kill schedule, not the exact kill instants.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests import crash_workload as workload

WORKLOAD = Path(__file__).resolve().parent / "crash_workload.py"
REPO = WORKLOAD.parent.parent
DEFAULT_SEED = 20_260_101
DEFAULT_KILLS = 50
#: A run that is not killed must print DONE and exit within this many seconds.
RUN_TIMEOUT = 60.0
#: Waiting for a killed child to be reaped and its stdout to reach end of file.
REAP_TIMEOUT = 10.0


@attrs.define
class Run:
    """What one child run did, for the failure message."""

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
    phase: str = ""  # where the kill landed: startup, opening, sending, draining, closing
    opened_at: float | None = None  # monotonic time of OPEN
    open_to_ready: float | None = None  # seconds from OPEN to READY

    def __str__(self) -> str:
        fate = f"killed while {self.phase}" if self.killed else f"exit {self.returncode}"
        return (
            f"run {self.number}: mode={self.mode} end={self.end} starts={self.starts} "
            f"ready={self.ready} acks={self.acks} done={self.done} {fate} {self.seconds:.2f}s"
        )


@attrs.define
class Model:
    """The parent's plain-Python model: what was acknowledged, and by which run."""

    end: int = 0
    acked: list[int] = attrs.Factory(lambda: [0] * workload.SENDERS)
    acked_in: dict[tuple[int, int], int] = attrs.Factory(dict)


class Child:
    """One child process; its stdout lines arrive on a queue from a reader thread."""

    def __init__(self, args: list[str], stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        self._stderr = stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKLOAD), *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
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
        text = self.stderr_path.read_text(errors="replace")
        return text[-4000:]


def plan_kill(rng: random.Random, history: list[Run]) -> tuple[str, float | int | None]:
    """Pick when to kill the next run: a mode and its parameter."""
    roll = rng.random()
    if roll < 0.05:
        return "startup", rng.uniform(0.05, 0.3)  # seconds after spawn: mostly imports
    if roll < 0.15:
        # Seconds after OPEN: opening the files, the recovery scan, the first recovered turns.
        seen = sorted(r.open_to_ready for r in history[-10:] if r.open_to_ready is not None)
        typical = seen[len(seen) // 2] if seen else 0.01
        return "open", rng.uniform(0.0, typical * 1.5)
    if roll < 0.35:
        return "ready", rng.uniform(0.0, 0.03)  # just after open: recovery, first turns
    if roll < 0.6:
        return "ready", rng.uniform(0.0, 0.6)  # seconds after READY
    if roll < 0.85:
        return "acks", rng.randint(1, 600)  # after this many ACK lines
    return "drain", rng.uniform(0.0, 0.05)  # seconds after the last send was acknowledged


def run_child(
    tmp: Path, root: Path, model: Model, number: int, plan: tuple[str, Any], history: list[Run]
) -> Run:
    """Start one ``run`` child, kill it per ``plan`` (mode "final": never); update the model."""
    mode, param = plan
    starts = [a + 1 for a in model.acked]
    run = Run(number, mode, model.end, starts)
    history.append(run)
    child = Child(
        ["run", str(root), str(model.end), *map(str, starts)], tmp / f"stderr-{number}.txt"
    )
    began = time.monotonic()
    kill_at = began + param if mode == "startup" else None
    limit = began + RUN_TIMEOUT
    pending = set(range(workload.SENDERS))
    pending -= {s for s in pending if model.acked[s] >= model.end}

    def kill() -> None:
        if run.done:
            run.phase = "closing"
        elif run.ready:
            run.phase = "sending" if pending else "draining"
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
                    f"child run {number} did not finish in {RUN_TIMEOUT}s (hung?); stderr:\n"
                    f"{child.stderr_text()}"
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
        child.finish()
    run.returncode = child.proc.returncode
    run.seconds = time.monotonic() - began
    if not run.killed and (run.returncode != 0 or not run.done):
        raise AssertionError(
            f"child run {number} exited {run.returncode} without being killed "
            f"(done={run.done}); stderr:\n{child.stderr_text()}"
        )
    return run


def read_state(tmp: Path, root: Path) -> dict[str, Any]:
    child = Child(["verify", str(root)], tmp / "stderr-verify.txt")
    lines = []
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"verify did not finish in {RUN_TIMEOUT}s")
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


def check_state(state: dict[str, Any], model: Model) -> list[str]:
    """Compare the actors' logs with the model; return every violation found (empty: all good)."""
    errors: list[str] = []
    workers: dict[str, Any] = state["workers"]
    keys = [workload.worker_key(w) for w in range(workload.WORKERS)]
    where: dict[tuple[int, int], list[str]] = {}
    for w, key in enumerate(keys):
        log = workers.get(key)
        if log is None:
            errors.append(f"worker {key} missing from the state")
            continue
        applied = log["applied"]
        if log["n"] != len(applied):
            errors.append(
                f"{key}: kv counter n={log['n']} but {len(applied)} applied rows (partial turn)"
            )
        last: dict[int, int] = {}
        bad_idx = [(p, row[0]) for p, row in enumerate(applied, 1) if row[0] != p]
        if bad_idx:
            errors.append(
                f"{key}: row {bad_idx[0][0]} has idx {bad_idx[0][1]} (counter and rows disagree; "
                f"{len(bad_idx)} such rows)"
            )
        for _, s, i in applied:
            where.setdefault((s, i), []).append(key)
            if not (0 <= s < workload.SENDERS and 1 <= i <= model.end):
                errors.append(f"{key}: applied unknown message ({s}, {i})")
                continue
            if workload.worker_key(workload.target(s, i)) != key:
                errors.append(f"{key}: applied ({s}, {i}), which was sent to another worker")
            if s in last and i < last[s]:  # i == last[s]: a duplicate, reported below
                errors.append(
                    f"invariant 3 (order): {key} applied ({s}, {i}) after ({s}, {last[s]})"
                )
            last[s] = max(i, last.get(s, 0))
        # Forwarded messages: one per applied message, in the origin's order, to both receivers.
        expected_sink = [[key, idx, s, i] for idx, s, i in applied]
        got_sink = [row for row in state["sink"] if row[0] == key]
        errors.extend(_compare_forwarded(f"sink from {key}", expected_sink, got_sink))
        nxt = workers.get(keys[(w + 1) % len(keys)])
        if nxt is not None:
            expected_relay = [[key, idx] for idx, _, _ in applied]
            got_relay = [row for row in nxt["relayed"] if row[0] == key]
            errors.extend(
                _compare_forwarded(
                    f"relay {key}->{keys[(w + 1) % len(keys)]}", expected_relay, got_relay
                )
            )
    unknown_origins = {row[0] for row in state["sink"]} - set(keys)
    if unknown_origins:
        errors.append(f"sink got messages from unknown origins {sorted(unknown_origins)}")
    for s in range(workload.SENDERS):
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
    for s in range(workload.SENDERS):
        if model.acked[s] != model.end:
            errors.append(f"sender {s} ended at ACK {model.acked[s]}, not {model.end}")
    for key, letters in state["dead_letters"].items():
        if letters:
            errors.append(f"{key} has {len(letters)} dead letters: {letters[:3]}")
    if state["reports"]:
        errors.append(f"runtime reports: {state['reports'][:3]}")
    # The invariants first: other findings are often their consequences.
    errors.sort(key=lambda e: not e.startswith("invariant"))
    return errors


def _compare_forwarded(what: str, expected: list[Any], got: list[Any]) -> list[str]:
    if expected == got:
        return []
    for position, (want, have) in enumerate(zip(expected, got, strict=False)):
        if want != have:
            return [
                f"forwarding ({what}): message {position + 1} is {have}, expected {want} "
                f"({len(got)} received, {len(expected)} applied by the origin)"
            ]
    return [f"forwarding ({what}): {len(got)} received, {len(expected)} applied by the origin"]


def crash_and_check(tmp: Path, kills: int, seed: int) -> str:
    """Run the workload until ``kills`` SIGKILLs landed, then once more to completion, and check.

    Returns a one-line summary. Raises AssertionError with the seed on any violation.
    """
    rng = random.Random(seed)
    root = tmp / "rt"
    model = Model()
    history: list[Run] = []
    landed = 0
    number = 0

    def context() -> str:
        recent = "\n".join(str(r) for r in history[-8:])
        return (
            f"seed={seed} (TORPOR_CRASH_SEED), kills={landed}, runs={number}, end={model.end}, "
            f"runtime dir {root}\nlast runs:\n{recent}"
        )

    try:
        while landed < kills:
            number += 1
            # Usually give every sender more to send; sometimes not, so that a run only recovers
            # and drains (and may finish cleanly before its kill).
            if rng.random() < 0.8 or model.end == 0:
                model.end = max(model.end, max(model.acked) + rng.randint(50, 800))
            run = run_child(tmp, root, model, number, plan_kill(rng, history), history)
            landed += run.killed
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{context()}") from None
    # The final run must finish; if it does not, the logs usually say why, so check them anyway.
    errors = []
    number += 1
    try:
        run_child(tmp, root, model, number, ("final", None), history)
    except AssertionError as exc:
        errors.append(f"the final, unkilled run failed: {exc}")
    try:
        errors.extend(check_state(read_state(tmp, root), model))
    except AssertionError as exc:
        errors.append(str(exc))
    if errors:
        raise AssertionError(
            f"{len(errors)} failure(s):\n" + "\n".join(errors[:30]) + f"\n{context()}"
        )
    assert landed >= kills
    phases: dict[str, int] = {}
    for r in history:
        if r.killed:
            phases[r.phase] = phases.get(r.phase, 0) + 1
    return (
        f"seed {seed}: {landed} kills {phases} in {number} runs, "
        f"{model.end * workload.SENDERS} messages sent"
    )


def _seed() -> int:
    return int(os.environ.get("TORPOR_CRASH_SEED", DEFAULT_SEED))


def _children_of_this_process() -> list[int]:
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
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me:
            found.append(int(entry.name))
    return found


@pytest.fixture
def no_orphans() -> Iterator[None]:
    before = set(_children_of_this_process())
    yield
    left = set(_children_of_this_process()) - before
    assert not left, f"child processes left behind: {sorted(left)}"


def test_crash_kills_lose_nothing(
    tmp_path: Path, request: pytest.FixtureRequest, no_orphans: None
) -> None:
    """SIGKILL at random instants never loses an acknowledged send, duplicates or reorders one."""
    kills = request.config.getoption("--crash-kills") or DEFAULT_KILLS
    print(crash_and_check(tmp_path, kills, _seed()))


@pytest.mark.slow
def test_crash_500_kills(tmp_path: Path, no_orphans: None) -> None:
    """Five hundred SIGKILLs in a row leave no acknowledged send lost, duplicated or reordered."""
    print(crash_and_check(tmp_path, 500, _seed() + 1))


def _clean_state(model: Model) -> dict[str, Any]:
    """A state that satisfies every invariant for ``model`` (for testing the checker)."""
    workers: dict[str, dict[str, Any]] = {
        workload.worker_key(w): {"n": 0, "applied": [], "relayed": []}
        for w in range(workload.WORKERS)
    }
    sink: list[list[Any]] = []
    for i in range(1, model.end + 1):
        for s in range(workload.SENDERS):
            w = workload.target(s, i)
            key = workload.worker_key(w)
            log = workers[key]
            log["n"] += 1
            log["applied"].append([log["n"], s, i])
            sink.append([key, log["n"], s, i])
            nxt = workload.worker_key((w + 1) % workload.WORKERS)
            workers[nxt]["relayed"].append([key, log["n"]])
    return {
        "workers": workers,
        "sink": sink,
        "dead_letters": {key: [] for key in workers},
        "reports": [],
    }


def test_checker_catches_violations() -> None:
    """The checker reports a lost, a duplicated and a reordered message, and bad forwards."""
    model = Model(end=20, acked=[20] * workload.SENDERS)
    model.acked_in = {(s, i): 1 for s in range(workload.SENDERS) for i in range(1, 21)}
    assert check_state(_clean_state(model), model) == []

    lost = _clean_state(model)
    del lost["workers"]["w0"]["applied"][-1]
    lost["workers"]["w0"]["n"] -= 1
    assert any("invariant 1" in e for e in check_state(lost, model))

    duplicated = _clean_state(model)
    log = duplicated["workers"]["w1"]["applied"]
    log.append([len(log) + 1, *log[0][1:]])
    duplicated["workers"]["w1"]["n"] += 1
    assert any("invariant 2" in e for e in check_state(duplicated, model))

    reordered = _clean_state(model)
    log = reordered["workers"]["w2"]["applied"]
    first = next(p for p, row in enumerate(log) if row[1] == log[0][1] and p > 0)
    log[0][1:], log[first][1:] = log[first][1:], log[0][1:]
    assert any("invariant 3" in e for e in check_state(reordered, model))

    forwarded_twice = _clean_state(model)
    forwarded_twice["sink"].append(forwarded_twice["sink"][0])
    assert any("forwarding (sink from" in e for e in check_state(forwarded_twice, model))

    relay_lost = _clean_state(model)
    relay_lost["workers"]["w3"]["relayed"].pop(0)
    assert any("forwarding (relay" in e for e in check_state(relay_lost, model))
