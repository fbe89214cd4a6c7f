"""Crash harness for durable steps: DESIGN §7 invariant 2 for steps, across real SIGKILLs.

The child program is ``tests/crash/steps_workload.py``. Three senders send acknowledged,
idempotent messages to four actors; each message's turn runs a workflow of twelve journaled
steps (sync and async step functions in turn), with a journaled ``self.uuid()`` and
``self.now()`` and a durable ``self.sleep`` long enough for the actor to hibernate in the middle
of the turn. Every step function appends ``pid key wid n acc tag`` to a step log and fsyncs it
before it does anything else. The parent SIGKILLs the child at random instants (while it starts,
opens and recovers, sends, or runs workflows), restarts it where each sender's acknowledgements
stopped, and finally lets one run finish. Then it reads every actor's state (a clean open of the
runtime) and the step log, and checks:

1. every acknowledged workflow finished exactly once: one row in the actor's table and its
   ``self.kv`` entry, with the result the step chain gives;
2. no journaled step ran twice: a step of a workflow appears twice in the log only if the
   earlier call was the last line its process wrote for that actor (the step in flight when the
   process was killed; an actor runs one step at a time, several actors run at once);
3. every step ran with the journaled result of the step before it, every step after the
   ``uuid``/``now`` values saw the same values (journaled, replayed identically), and each
   step's journaled result came from its last call.

The seed is fixed and printed on failure; set ``TORPOR_CRASH_SEED`` to try another one. Timing is
not deterministic, so a seed reproduces the kill schedule, not the exact kill instants.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.crash import steps_workload as workload
from tests.support import crash_harness as support
from tests.support.crash_harness import Model, Plan, Run

HARNESS = support.Harness(
    program=Path(__file__).resolve().parent / "steps_workload.py",
    run_timeout=45.0,  # a run that is not killed must print DONE and exit within this long
    idle_phase="running workflows",
)
DEFAULT_SEED = 20_261_125
DEFAULT_KILLS = 30
SLOW_KILLS = 300
no_orphans = support.no_orphans


def plan_kill(rng: random.Random, history: list[Run]) -> Plan:
    """Pick when to kill the next run: a mode and its parameter."""
    roll = rng.random()
    if roll < 0.05:
        return "startup", rng.uniform(0.05, 0.3)  # seconds after spawn: mostly imports
    if roll < 0.15:
        # Seconds after OPEN: opening the files, the recovery scan, the first replayed turns.
        return support.kill_after_open(rng, history)
    if roll < 0.3:
        return "ready", rng.uniform(0.0, 0.05)  # recovery: replays of the turns in flight
    if roll < 0.7:
        return "ready", rng.uniform(0.0, 0.6)  # sending, steps, sleeps, hibernation
    if roll < 0.85:
        return "acks", rng.randint(1, 25)  # after this many ACK lines
    return "drain", rng.uniform(0.0, 0.3)  # seconds after the last send: only workflows


@attrs.frozen
class Call:
    """One line of the step log: a call of a step function."""

    line: int
    pid: int
    key: str
    wid: str
    n: int
    acc: int
    tag: str


@attrs.define
class Findings:
    """Violations, and what the campaign exercised."""

    errors: list[str] = attrs.Factory(list)
    workflows: int = 0
    calls: int = 0
    in_flight_reruns: int = 0  # steps run again after a kill that landed while they ran

    def summary(self) -> str:
        return (
            f"{self.workflows} workflows, {self.calls} step calls, {self.in_flight_reruns} "
            "steps in flight at a kill ran again"
        )


def parse_log(text: str) -> tuple[list[Call], list[str]]:
    """The calls in the step log, and an error for each line that does not parse."""
    calls: list[Call] = []
    errors: list[str] = []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:
        errors.append(f"the step log ends with a cut line {lines[-1]!r} (one write per line?)")
        lines.pop()
    for number, line in enumerate(lines, 1):
        parts = line.split(" ")
        try:
            pid, key, wid, n, acc, tag = parts
            calls.append(Call(number, int(pid), key, wid, int(n), int(acc), tag))
        except ValueError:
            errors.append(f"step log line {number} does not parse: {line!r}")
    return calls, errors


def check(state: dict[str, Any], model: Model, log_text: str) -> Findings:
    """Compare the actors' state and the step log with the model; collect every violation."""
    found = Findings()
    calls, errors = parse_log(log_text)
    found.errors = errors
    found.calls = len(calls)
    expected = {
        workload.workflow_id(s, i): workload.actor_key(workload.target(s, i))
        for s in range(len(model.acked))
        for i in range(1, model.end + 1)
    }
    found.workflows = len(expected)
    for s in range(len(model.acked)):
        if model.acked[s] != model.end:
            errors.append(f"sender {s} ended at ACK {model.acked[s]}, not {model.end}")

    # The state: every workflow finished exactly once, on its actor, with the right result.
    finished: dict[str, list[tuple[str, list[Any]]]] = {}
    for key, dump in state["actors"].items():
        for row in dump["finished"]:
            finished.setdefault(row[0], []).append((key, row))
        for name, value in dump["kv"].items():
            wid = name.removeprefix("wf:")
            if expected.get(wid) != key:
                errors.append(f"{key}: kv entry {name} for a workflow not sent to it")
            elif value != workload.expected_result(wid):
                errors.append(f"{key}: kv {name} = {value}, expected the chain's result")
    for wid, key in expected.items():
        rows = finished.get(wid, [])
        if len(rows) > 1:
            errors.append(f"invariant 2 (exactly once): workflow {wid} finished {len(rows)} times")
        if not rows:
            errors.append(f"workflow {wid} (acknowledged) never finished")
            continue
        where, (_, acc, _, _) = rows[0]
        if where != key:
            errors.append(f"workflow {wid} finished on {where}, but was sent to {key}")
        if acc != workload.expected_result(wid):
            errors.append(f"workflow {wid} finished with {acc}, expected the chain's result")
        if f"wf:{wid}" not in state["actors"].get(key, {}).get("kv", {}):
            errors.append(f"workflow {wid} finished but {key} has no kv entry for it")
    for wid in set(finished) - set(expected):
        errors.append(f"unknown workflow {wid} finished")

    # The log: the calls of each step, and the process each call ran in.
    by_step: dict[tuple[str, int], list[Call]] = {}
    last_of: dict[tuple[int, str], int] = {}  # (pid, actor) -> its last line
    for call in calls:
        by_step.setdefault((call.wid, call.n), []).append(call)
        last_of[(call.pid, call.key)] = call.line
    for wid, key in expected.items():
        rows = finished.get(wid, [])
        tag = rows[0][1][2] if rows else None
        pids = [int(p) for p in rows[0][1][3].split()] if rows else []
        inputs = workload.expected_inputs(wid)
        for n in range(workload.STEPS):
            runs = by_step.pop((wid, n), [])
            if not runs:
                if rows:
                    errors.append(f"step {n} of workflow {wid} never ran, yet it finished")
                continue
            for earlier in runs[:-1]:
                if earlier.line != last_of[(earlier.pid, earlier.key)]:
                    errors.append(
                        f"invariant 2 (steps): step {n} of workflow {wid} ran again (line "
                        f"{runs[-1].line}) after it completed in pid {earlier.pid} (line "
                        f"{earlier.line}; that process went on to line "
                        f"{last_of[(earlier.pid, earlier.key)]} for {earlier.key})"
                    )
            if len({c.pid for c in runs}) < len(runs):
                errors.append(
                    f"invariant 2 (steps): step {n} of workflow {wid} ran "
                    f"{len(runs)} times, twice in one process (lines {[c.line for c in runs]})"
                )
            found.in_flight_reruns += len(runs) - 1
            for c in runs:
                if c.key != key:
                    errors.append(f"step {n} of workflow {wid} ran on {c.key}, not {key}")
                if c.acc != inputs[n]:
                    errors.append(
                        f"step {n} of workflow {wid} (line {c.line}) got {c.acc}, not the "
                        "journaled result of the step before it"
                    )
                want = "-" if n < workload.BEFORE else tag
                if want is not None and c.tag != want:
                    errors.append(
                        f"step {n} of workflow {wid} (line {c.line}) saw uuid/now {c.tag!r}, "
                        f"but the workflow finished with {want!r} (values not replayed)"
                    )
            if len(pids) == workload.STEPS and pids[n] != runs[-1].pid:
                errors.append(
                    f"step {n} of workflow {wid}: the journaled result came from pid {pids[n]}, "
                    f"but its last call ran in pid {runs[-1].pid}"
                )
        if rows and len(pids) != workload.STEPS:
            errors.append(f"workflow {wid} recorded {len(pids)} step results")
    for (wid, n), runs in by_step.items():
        errors.append(f"step {n} of unknown workflow {wid} ran (line {runs[0].line})")

    for key, letters in state["dead_letters"].items():
        if letters:
            errors.append(f"{key} has {len(letters)} dead letters: {letters[:3]}")
    if state["reports"]:
        errors.append(f"runtime reports: {state['reports'][:3]}")
    support.invariants_first(errors)
    return found


def crash_and_check(tmp: Path, kills: int, seed: int, backend: str = "trio") -> str:
    """Run the workload until ``kills`` SIGKILLs landed, then once more to completion, and check.

    The child runs on ``backend``. Returns a one-line summary. Raises AssertionError with the
    seed on any violation.
    """
    harness = attrs.evolve(HARNESS, backend=backend)
    campaign = support.Campaign(harness, tmp, seed, Model(acked=[0] * workload.SENDERS))
    campaign.kill_runs(kills, plan_kill, more=(2, 8))
    errors = campaign.final_run()
    found = Findings()
    try:
        log = workload.step_log(campaign.root).read_text()
        found = check(campaign.read_state(), campaign.model, log)
    except AssertionError as exc:
        errors.append(str(exc))
    errors.extend(found.errors)
    campaign.fail(errors, found.summary())
    return (
        f"seed {seed}: {campaign.landed} kills {campaign.phases()} in {campaign.number} runs, "
        f"{found.summary()}"
    )


def test_crash_kills_never_run_a_journaled_step_twice(
    tmp_path: Path, request: pytest.FixtureRequest, no_orphans: None, backend: str
) -> None:
    """SIGKILL at random instants re-runs only the step in flight; every workflow finishes once."""
    # (asyncio: half the kills by default, for the suite's time; --crash-kills sets both)
    kills = support.kills_option(
        request, DEFAULT_KILLS if backend == "trio" else DEFAULT_KILLS // 2
    )
    print(crash_and_check(tmp_path, kills, support.seed(DEFAULT_SEED), backend))


@pytest.mark.slow
def test_crash_steps_many_kills(tmp_path: Path, no_orphans: None) -> None:
    """Three hundred SIGKILLs in a row never re-run a completed step nor finish a workflow twice."""
    print(crash_and_check(tmp_path, SLOW_KILLS, support.seed(DEFAULT_SEED) + 1))


# -- the checker can fail -----------------------------------------------------------------------


def _clean(model: Model) -> tuple[dict[str, Any], list[str]]:
    """A state and a step log that satisfy every check for ``model``; pid 100 runs everything."""
    state: dict[str, Any] = {
        "actors": {
            workload.actor_key(a): {"finished": [], "kv": {}} for a in range(workload.ACTORS)
        },
        "dead_letters": {},
        "reports": [],
    }
    lines: list[str] = []
    for s in range(len(model.acked)):
        for i in range(1, model.end + 1):
            wid = workload.workflow_id(s, i)
            key = workload.actor_key(workload.target(s, i))
            tag = f"{s:032x}@{i}.5"
            for n, acc in enumerate(workload.expected_inputs(wid)):
                lines.append(f"100 {key} {wid} {n} {acc} {'-' if n < workload.BEFORE else tag}")
            result = workload.expected_result(wid)
            pids = " ".join(["100"] * workload.STEPS)
            state["actors"][key]["finished"].append([wid, result, tag, pids])
            state["actors"][key]["kv"][f"wf:{wid}"] = result
    return state, lines


def _errors(state: dict[str, Any], model: Model, lines: list[str]) -> list[str]:
    return check(state, model, "".join(line + "\n" for line in lines)).errors


def _rerun(lines: list[str], index: int, pid: int) -> list[str]:
    """``lines`` with line ``index`` run again by ``pid`` right after it, and every later line
    moved to ``pid`` (the process that took over after a kill)."""
    moved = [f"{pid} {line.split(' ', 1)[1]}" for line in lines[index:]]
    return [*lines[: index + 1], *moved]


def test_checker_accepts_a_step_rerun_after_a_kill_in_flight() -> None:
    """A step whose call was its process's last line for that actor may run again."""
    model = Model(end=3, acked=[3] * workload.SENDERS)
    state, lines = _clean(model)
    assert _errors(state, model, lines) == []
    # Lines of one workflow are consecutive here: cut the process after step 7 of the first.
    rerun = _rerun(lines, 7, pid=200)
    for dump in state["actors"].values():
        for row in dump["finished"]:
            pids = row[3].split()
            if row[0] == "0.1":
                row[3] = " ".join(pids[:7] + ["200"] * (workload.STEPS - 7))
            else:
                row[3] = " ".join(["200"] * workload.STEPS)
    found = check(state, model, "".join(line + "\n" for line in rerun))
    assert found.errors == []
    assert found.in_flight_reruns == 1


def test_checker_catches_violations() -> None:
    """The steps checker reports each kind of violation of exactly-once steps and replies."""
    # The violations: a completed step run again, a workflow applied twice, a lost one, a step fed a
    # wrong input, values not replayed, and a result from the wrong call.
    model = Model(end=3, acked=[3] * workload.SENDERS)

    state, lines = _clean(model)
    completed_twice = [*lines[:8], lines[6].replace("100 ", "200 ", 1), *lines[8:]]
    assert any(
        e.startswith("invariant 2 (steps): step 6 of workflow 0.1 ran again")
        for e in _errors(state, model, completed_twice)
    )

    same_process = [*lines[:8], lines[7]]  # ran twice in one process, the last line each time
    assert any("twice in one process" in e for e in _errors(state, model, same_process))

    state, lines = _clean(model)
    key = workload.actor_key(workload.target(1, 2))
    state["actors"][key]["finished"].append(
        next(row for row in state["actors"][key]["finished"] if row[0] == "1.2")
    )
    assert any(
        e == "invariant 2 (exactly once): workflow 1.2 finished 2 times"
        for e in _errors(state, model, lines)
    )

    state, lines = _clean(model)
    key = workload.actor_key(workload.target(2, 3))
    state["actors"][key]["finished"] = [
        row for row in state["actors"][key]["finished"] if row[0] != "2.3"
    ]
    assert "workflow 2.3 (acknowledged) never finished" in _errors(state, model, lines)

    state, lines = _clean(model)
    parts = lines[3].split(" ")
    parts[4] = "1"
    wrong_input = [*lines[:3], " ".join(parts), *lines[4:]]
    assert any("got 1, not the journaled result" in e for e in _errors(state, model, wrong_input))

    state, lines = _clean(model)
    last = lines[workload.STEPS - 1]
    not_replayed = [*lines[: workload.STEPS - 1], last.rsplit(" ", 1)[0] + " ff@1.0"]
    not_replayed += lines[workload.STEPS :]
    assert any("values not replayed" in e for e in _errors(state, model, not_replayed))

    state, lines = _clean(model)
    rerun = _rerun(lines, 7, pid=200)  # the result of step 7 must then come from pid 200
    assert any(
        "step 7 of workflow 0.1: the journaled result came from pid 100" in e
        for e in _errors(state, model, rerun)
    )

    state, lines = _clean(model)
    assert any("cut line" in e for e in check(state, model, "\n".join(lines)).errors)
