"""The replication state of one file (``runtime.replica.state``), checked as a table."""

from __future__ import annotations

import itertools

import pytest

from runtime.errors import RuntimeInternalError
from runtime.replica.state import (
    INITIAL,
    SHIPPABLE,
    TRANSITIONS,
    Event,
    State,
    mermaid,
    next_state,
)


def walk(start: State, *events: Event) -> State:
    state = start
    for event in events:
        state = next_state(state, event)
    return state


def test_every_pair_is_a_transition_or_an_internal_error() -> None:
    """Each (state, event) pair is in the table, or raises RuntimeInternalError naming both."""
    for state, event in itertools.product(State, Event):
        if (state, event) in TRANSITIONS:
            assert next_state(state, event) is TRANSITIONS[(state, event)]
        else:
            with pytest.raises(RuntimeInternalError, match=f"{event.value}.*{state.value}"):
                next_state(state, event, "actors/a/data.db")


def test_a_snapshot_goes_from_due_to_captured_to_shipping() -> None:
    """A file whose chain cannot go on is snapshotted, then ships again from the snapshot."""
    assert (
        walk(State.SHIPPING, Event.SNAPSHOT_NEEDED, Event.CAPTURED, Event.UPLOADED)
        is State.SHIPPING
    )
    # A snapshot wanted while one is captured is the one under way.
    assert next_state(State.CAPTURED, Event.SNAPSHOT_NEEDED) is State.CAPTURED
    # A capture given up (commits came since) is due again.
    assert next_state(State.CAPTURED, Event.DROPPED) is State.SNAPSHOT_DUE


def test_an_unclaimed_file_is_claimed_then_snapshotted() -> None:
    """A file opened while the store was down ships nothing until claimed, then snapshots."""
    assert State.UNCLAIMED not in SHIPPABLE
    assert next_state(State.UNCLAIMED, Event.SNAPSHOT_NEEDED) is State.UNCLAIMED
    assert next_state(State.UNCLAIMED, Event.CLAIMED) is State.SNAPSHOT_DUE
    with pytest.raises(RuntimeInternalError):
        next_state(State.UNCLAIMED, Event.CAPTURED)


def test_fenced_and_closed_write_nothing_more() -> None:
    """Once fenced or closed, no event leads back to a state that writes the replica."""
    for state in (State.FENCED, State.CLOSED):
        for event in Event:
            if (state, event) in TRANSITIONS:
                assert TRANSITIONS[(state, event)] in (State.FENCED, State.CLOSED)
    # Every open state can be fenced and closed; a closed file met by a fence stays closed.
    for state in (State.UNCLAIMED, State.SHIPPING, State.SNAPSHOT_DUE, State.CAPTURED):
        assert next_state(state, Event.FENCED) is State.FENCED
        assert next_state(state, Event.CLOSED) is State.CLOSED
    assert next_state(State.CLOSED, Event.FENCED) is State.CLOSED
    # An upload left running by a hibernation that did not wait for it ends after the close.
    assert next_state(State.CLOSED, Event.UPLOADED) is State.CLOSED
    assert next_state(State.FENCED, Event.DROPPED) is State.FENCED
    assert next_state(State.FENCED, Event.CLOSED) is State.CLOSED
    with pytest.raises(RuntimeInternalError):
        next_state(State.CLOSED, Event.CLOSED)


def test_a_captured_file_is_not_shipped() -> None:
    """Rounds ship a file only while its chain goes on (a snapshot may be due meanwhile)."""
    assert {State.SHIPPING, State.SNAPSHOT_DUE} == SHIPPABLE
    assert State.SHIPPING in INITIAL and State.CAPTURED not in INITIAL


def test_every_state_is_reachable_from_a_start() -> None:
    """No state of the table is dead: each is reached from a state a file is tracked in."""
    reached = set(INITIAL)
    while True:
        more = {t for (s, _), t in TRANSITIONS.items() if s in reached} - reached
        if not more:
            break
        reached |= more
    assert reached == set(State)


def test_the_diagram_has_every_transition() -> None:
    """mermaid() draws one arrow per row of the table, and the start states."""
    text = mermaid()
    assert text.startswith("stateDiagram-v2")
    assert text.count("-->") == len(TRANSITIONS) + len(INITIAL)
