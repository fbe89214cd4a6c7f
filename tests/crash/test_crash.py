"""Crash harness: SIGKILL a workload at random instants, restart it, check DESIGN §7 invariants 1-3.

The child program is ``tests/crash/workload.py``. Each run sends messages from three senders to
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

import random
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.crash import workload
from tests.support import crash_harness as support
from tests.support.crash_harness import Model, Plan, Run

HARNESS = support.Harness(
    program=Path(__file__).resolve().parent / "workload.py",
    run_timeout=60.0,  # a run that is not killed must print DONE and exit within this long
    idle_phase="draining",
    kill_on_ack_before_discard=True,
)
DEFAULT_SEED = 20_260_101
DEFAULT_KILLS = 50
no_orphans = support.no_orphans


def plan_kill(rng: random.Random, history: list[Run]) -> Plan:
    """Pick when to kill the next run: a mode and its parameter."""
    roll = rng.random()
    if roll < 0.05:
        return "startup", rng.uniform(0.05, 0.3)  # seconds after spawn: mostly imports
    if roll < 0.15:
        # Seconds after OPEN: opening the files, the recovery scan, the first recovered turns.
        return support.kill_after_open(rng, history)
    if roll < 0.35:
        return "ready", rng.uniform(0.0, 0.03)  # just after open: recovery, first turns
    if roll < 0.6:
        return "ready", rng.uniform(0.0, 0.6)  # seconds after READY
    if roll < 0.85:
        return "acks", rng.randint(1, 600)  # after this many ACK lines
    return "drain", rng.uniform(0.0, 0.05)  # seconds after the last send was acknowledged


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
        bad_idx = [(p, row[0]) for p, row in enumerate(applied, 1) if row[0] != p]
        if bad_idx:
            errors.append(
                f"{key}: row {bad_idx[0][0]} has idx {bad_idx[0][1]} (counter and rows disagree; "
                f"{len(bad_idx)} such rows)"
            )
        errors.extend(support.check_order(key, applied, model, where, _sent_to, "worker"))
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
    errors.extend(support.check_sends(state, model, where))
    support.invariants_first(errors)
    return errors


def _sent_to(sender: int, i: int) -> str:
    return workload.worker_key(workload.target(sender, i))


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


def crash_and_check(tmp: Path, kills: int, seed: int, backend: str = "trio") -> str:
    """Run the workload until ``kills`` SIGKILLs landed, then once more to completion, and check.

    The child runs on ``backend``. Returns a one-line summary. Raises AssertionError with the
    seed on any violation.
    """
    harness = attrs.evolve(HARNESS, backend=backend)
    campaign = support.Campaign(harness, tmp, seed, Model(acked=[0] * workload.SENDERS))
    campaign.kill_runs(kills, plan_kill, more=(50, 800))
    errors = campaign.final_run()
    try:
        errors.extend(check_state(campaign.read_state(), campaign.model))
    except AssertionError as exc:
        errors.append(str(exc))
    campaign.fail(errors)
    return (
        f"seed {seed}: {campaign.landed} kills {campaign.phases()} in {campaign.number} runs, "
        f"{campaign.model.end * workload.SENDERS} messages sent"
    )


def test_crash_kills_lose_nothing(
    tmp_path: Path, request: pytest.FixtureRequest, no_orphans: None, backend: str
) -> None:
    """SIGKILL at random instants never loses an acknowledged send, duplicates or reorders one."""
    # (asyncio: half the kills by default, for the suite's time; --crash-kills sets both)
    kills = support.kills_option(
        request, DEFAULT_KILLS if backend == "trio" else DEFAULT_KILLS // 2
    )
    print(crash_and_check(tmp_path, kills, support.seed(DEFAULT_SEED), backend))


@pytest.mark.slow
def test_crash_500_kills(tmp_path: Path, no_orphans: None) -> None:
    """Five hundred SIGKILLs in a row leave no acknowledged send lost, duplicated or reordered."""
    print(crash_and_check(tmp_path, 500, support.seed(DEFAULT_SEED) + 1))


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
    """The steps checker reports each kind of violation of exactly-once steps and replies."""
    # The violations: a completed step run again, a workflow applied twice, a lost one, a step fed a
    # wrong input, values not replayed, and a result from the wrong call.
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
