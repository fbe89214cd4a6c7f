"""Crash harness for runs (DESIGN §7 invariant 8, §9), across real SIGKILLs.

The child program is ``tests/crash/runs_workload.py``. One sender starts runs through starter
actors (``self.start`` in a handler), another from outside (``rt.start``); both signal each run
``go`` and acknowledge it. Runs record values, run a step, sleep durably long enough to
hibernate, wait for ``go`` and finish. The parent SIGKILLs the child at random instants,
restarts it where each sender's acknowledgements stopped (so the run in flight is started and
signalled again, with the same id and signal key), and finally lets one run finish. It checks:

1. a start with an id never starts two: every run applied its turn exactly once (one row), with
   the payload of its one ``go`` signal;
2. every run started by a starter reached that starter's ``on_run_done`` exactly once;
3. values are never recorded twice: each run journaled exactly its two ``set_value`` calls,
   and its latest value is the last one;
4. every run, killed while it waited, resumed and finished (``done``), with no dead letter.

The seed is fixed and printed on failure; ``TORPOR_CRASH_SEED`` tries another one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.crash import runs_workload as workload
from tests.support import crash_harness as support
from tests.support.crash_harness import Model, Plan, Run

HARNESS = support.Harness(
    program=Path(__file__).resolve().parent / "runs_workload.py",
    run_timeout=45.0,
    idle_phase="running runs",
)
DEFAULT_SEED = 20_261_208
DEFAULT_KILLS = 20
no_orphans = support.no_orphans


def plan_kill(rng: random.Random, history: list[Run]) -> Plan:
    """Pick when to kill the next run: a mode and its parameter."""
    roll = rng.random()
    if roll < 0.05:
        return "startup", rng.uniform(0.05, 0.3)
    if roll < 0.15:
        return support.kill_after_open(rng, history)
    if roll < 0.35:
        return "ready", rng.uniform(0.0, 0.05)  # recovery: runs replaying their waits
    if roll < 0.7:
        return "ready", rng.uniform(0.0, 0.5)  # starts, signals, steps, sleeps, outcomes
    if roll < 0.85:
        return "acks", rng.randint(1, 12)
    return "drain", rng.uniform(0.0, 0.3)  # only runs finishing and outcomes leaving


def check(state: dict[str, Any], model: Model) -> list[str]:
    """Compare the runs and starters with the model; every violation found."""
    errors: list[str] = []
    runs: dict[str, Any] = state["runs"]
    expected = {
        workload.workflow_id(s, i): s
        for s in range(len(model.acked))
        for i in range(1, model.end + 1)
    }
    for s in range(len(model.acked)):
        if model.acked[s] != model.end:
            errors.append(f"sender {s} ended at ACK {model.acked[s]}, not {model.end}")
    for wid in set(runs) - set(expected):
        errors.append(f"unknown run {wid} exists")
    outcomes: dict[str, list[str]] = {}
    for starter, rows in state["starters"].items():
        for run_id, outcome in rows:
            outcomes.setdefault(run_id, []).append(f"{starter}:{outcome}")
    for wid, sender in expected.items():
        run = runs.get(wid)
        if run is None:
            errors.append(f"run {wid} (acknowledged) does not exist")
            continue
        result = f"{wid}:go-{wid}"
        if run["rows"] != 1:
            errors.append(f"invariant 8 (one run per id): run {wid} applied {run['rows']} times")
        if run["state"] != "done" or run["result"] != result:
            errors.append(f"run {wid} is {run['state']} with {run['result']!r}, not {result!r}")
        if run["value_steps"] != ["stage", "stage"] or run["stage"] != 2:
            errors.append(
                f"run {wid}: values journaled {run['value_steps']}, latest {run['stage']!r}"
            )
        got = outcomes.pop(wid, [])
        if sender == 0:
            want = [f"{workload.starter_key(int(wid.split('.')[1]))}:{result}"]
            if got != want:
                errors.append(f"invariant 8 (outcome once): run {wid} reached on_run_done {got}")
            if run["parent"] != workload.starter_key(int(wid.split(".")[1])):
                errors.append(f"run {wid} is listed under {run['parent']!r}")
        elif got or run["parent"] is not None:
            errors.append(f"run {wid}, started from outside, has a starter: {got}")
    for wid, got in outcomes.items():
        errors.append(f"an outcome of unknown run {wid} arrived: {got}")
    for key, letters in state["dead_letters"].items():
        if letters:
            errors.append(f"{key} has {len(letters)} dead letters: {letters[:3]}")
    if state["reports"]:
        errors.append(f"runtime reports: {state['reports'][:3]}")
    support.invariants_first(errors)
    return errors


def crash_and_check(tmp: Path, kills: int, seed: int, backend: str = "trio") -> str:
    """Run the workload until ``kills`` SIGKILLs landed, then once more to completion, and check."""
    harness = attrs.evolve(HARNESS, backend=backend)
    campaign = support.Campaign(harness, tmp, seed, Model(acked=[0] * workload.SENDERS))
    campaign.kill_runs(kills, plan_kill, more=(2, 6))
    errors = campaign.final_run()
    if not errors:
        errors = check(campaign.read_state(), campaign.model)
    campaign.fail(errors)
    runs = campaign.model.end * workload.SENDERS
    return f"seed {seed}: {campaign.landed} kills {campaign.phases()}, {runs} runs checked"


def test_crash_kills_never_start_a_run_twice_nor_lose_its_outcome(
    tmp_path: Path, request: pytest.FixtureRequest, no_orphans: None, backend: str
) -> None:
    """SIGKILLs never start a run twice nor repeat its outcome or values; every run finishes."""
    kills = support.kills_option(
        request, DEFAULT_KILLS if backend == "trio" else DEFAULT_KILLS // 2
    )
    print(crash_and_check(tmp_path, kills, support.seed(DEFAULT_SEED), backend))


def _clean(model: Model) -> dict[str, Any]:
    """A state that satisfies every check for ``model``."""
    runs: dict[str, Any] = {}
    starters: dict[str, list[list[str]]] = {workload.starter_key(i): [] for i in range(2)}
    for s in range(len(model.acked)):
        for i in range(1, model.end + 1):
            wid = workload.workflow_id(s, i)
            result = f"{wid}:go-{wid}"
            parent = workload.starter_key(i) if s == 0 else None
            runs[wid] = {
                "state": "done",
                "result": result,
                "rows": 1,
                "stage": 2,
                "value_steps": ["stage", "stage"],
                "parent": parent,
            }
            if parent is not None:
                starters[parent].append([wid, result])
    return {"runs": runs, "starters": starters, "dead_letters": {}, "reports": []}


def test_checker_catches_violations() -> None:
    """The runs checker reports a run applied twice, an outcome twice or lost, values twice."""
    model = Model(end=3, acked=[3, 3])
    assert check(_clean(model), model) == []

    state = _clean(model)
    state["runs"]["1.2"]["rows"] = 2
    assert any(e.startswith("invariant 8 (one run per id)") for e in check(state, model))

    state = _clean(model)
    starter = workload.starter_key(2)
    state["starters"][starter].append(["0.2", "0.2:go-0.2"])
    assert any(e.startswith("invariant 8 (outcome once): run 0.2") for e in check(state, model))

    state = _clean(model)
    state["starters"][workload.starter_key(1)] = []
    assert any("run 0.1 reached on_run_done []" in e for e in check(state, model))

    state = _clean(model)
    state["runs"]["0.3"]["value_steps"] = ["stage", "stage", "stage"]
    assert any("run 0.3: values journaled" in e for e in check(state, model))

    state = _clean(model)
    state["runs"]["1.1"]["state"] = "waiting"
    assert any("run 1.1 is waiting" in e for e in check(state, model))
