"""The lifecycle table (runtime/lifecycle.py), tested directly: no I/O involved."""

from __future__ import annotations

import itertools

import pytest

import actors
from runtime.lifecycle import PERSISTED, RESIDENT, TRANSITIONS, Event, State, mermaid, next_state


def reachable(start: State) -> set[State]:
    seen = {start}
    frontier = [start]
    while frontier:
        state = frontier.pop()
        for (source, _), target in TRANSITIONS.items():
            if source is state and target not in seen:
                seen.add(target)
                frontier.append(target)
    return seen


def test_every_state_is_reachable_from_hibernated() -> None:
    """From hibernated, the transitions reach every state."""
    assert reachable(State.HIBERNATED) == set(State)


def test_every_state_can_get_back_to_hibernated() -> None:
    """No state is a trap: each leads back to hibernated (stopped only through resume)."""
    for start in State:
        assert State.HIBERNATED in reachable(start), start


def test_impossible_transitions_are_internal_errors() -> None:
    """A pair not in the table raises RuntimeInternalError (a bug in the engine)."""
    for state, event in itertools.product(State, Event):
        if (state, event) in TRANSITIONS:
            assert next_state(state, event) is TRANSITIONS[(state, event)]
        else:
            with pytest.raises(actors.RuntimeInternalError, match="cannot happen"):
                next_state(state, event)


def test_stopped_only_leaves_by_resume() -> None:
    """A stopped actor ignores wake-ups: only resume brings it back."""
    exits = {event for (source, event) in TRANSITIONS if source is State.STOPPED}
    assert exits == {Event.RESUME}


def test_resident_and_persisted_states_are_disjoint() -> None:
    """An actor with open files is never in a state that directory.db records as at rest."""
    assert not RESIDENT & PERSISTED


def test_diagram_lists_every_transition() -> None:
    """The docs diagram is generated from the table: one line per transition."""
    text = mermaid()
    for (source, event), target in TRANSITIONS.items():
        assert f"{source.value} --> {target.value}: {event.value}" in text
