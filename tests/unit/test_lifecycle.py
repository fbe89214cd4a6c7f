"""The lifecycle table (runtime/lifecycle.py), tested directly: no I/O involved."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

import actors
from runtime.lifecycle import (
    PERSISTED,
    RESIDENT,
    TRANSITIONS,
    Event,
    Lifecycle,
    State,
    mermaid,
    next_state,
)


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
    """No state but deleted is a trap: each leads back to hibernated (stopped through resume)."""
    for start in set(State) - {State.DELETED}:
        assert State.HIBERNATED in reachable(start), start


def test_deleted_is_final_and_taken_only_at_rest() -> None:
    """A deleted actor has no way out, and only an actor at rest (no open files) is deleted."""
    assert not [event for (source, event) in TRANSITIONS if source is State.DELETED]
    sources = {source for (source, event) in TRANSITIONS if event is Event.DELETE}
    assert sources == {State.HIBERNATED, State.FAILED, State.STOPPED}
    assert not sources & RESIDENT


def test_impossible_transitions_are_internal_errors() -> None:
    """A pair not in the table raises RuntimeInternalError (a bug in the engine)."""
    for state, event in itertools.product(State, Event):
        if (state, event) in TRANSITIONS:
            assert next_state(state, event) is TRANSITIONS[(state, event)]
        else:
            with pytest.raises(actors.RuntimeInternalError, match="cannot happen"):
                next_state(state, event)


def test_stopped_only_leaves_by_resume() -> None:
    """A stopped actor ignores wake-ups: only resume brings it back (or a delete ends it)."""
    exits = {event for (source, event) in TRANSITIONS if source is State.STOPPED}
    assert exits == {Event.RESUME, Event.DELETE}


def test_resident_and_persisted_states_are_disjoint() -> None:
    """An actor with open files is never in a state that directory.db records as at rest."""
    assert not RESIDENT & PERSISTED


def test_diagram_lists_every_transition() -> None:
    """The docs diagram is generated from the table: one line per transition."""
    text = mermaid()
    for (source, event), target in TRANSITIONS.items():
        assert f"{source.value} --> {target.value}: {event.value}" in text


#: Where each event comes from in the engine, as the states it can meet the actor in. The actor's
#: task (its turn loop, then its closing) runs from ``opened`` until ``closed``: its failures
#: (``crashed``, ``gave_up``) can come in each state it spans, the closing included (a snapshot
#: finding a file corrupt, a fence met by the last upload).
CAN_HAPPEN_IN = {
    Event.WAKE: {State.HIBERNATED, State.FAILED},  # a stopped actor is not woken, only resumed
    Event.RESUME: {State.STOPPED},
    Event.OPENED: {State.WAKING},
    Event.OPEN_FAILED: {State.WAKING},
    Event.IDLE: {State.AWAKE},
    Event.CLOSED: {State.HIBERNATING, State.WAKING},  # waking: the runtime closed first
    Event.CRASHED: RESIDENT - {State.WAKING},
    Event.GAVE_UP: RESIDENT - {State.WAKING},
    Event.DELETE: {State.HIBERNATED, State.FAILED, State.STOPPED},  # awake: closed first
}


def test_table_is_total_over_the_pairs_the_engine_meets() -> None:
    """Every (state, event) pair the engine can meet is in the table, and no other pair is."""
    pairs = {(state, event) for event, states in CAN_HAPPEN_IN.items() for state in states}
    assert set(Event) == CAN_HAPPEN_IN.keys()
    assert sorted(pairs - TRANSITIONS.keys(), key=str) == []
    assert sorted(TRANSITIONS.keys() - pairs, key=str) == []


def test_a_failure_while_hibernating_ends_like_one_while_awake() -> None:
    """A failure while hibernating (a corrupt file, a fence) ends as the same failure awake does."""
    for event in (Event.CRASHED, Event.GAVE_UP):
        assert next_state(State.HIBERNATING, event) is next_state(State.AWAKE, event)


def test_a_lifecycle_changes_only_as_the_table_says_and_tells_its_listener() -> None:
    """Lifecycle.fire moves along the table, tells the listener, and refuses an impossible event."""
    # A refused event leaves the state unchanged.
    seen: list[tuple[State, Event, State, str | None]] = []
    life = Lifecycle(State.HIBERNATED, lambda *change: seen.append(change))
    assert life.fire(Event.WAKE) is State.WAKING
    assert life.fire(Event.OPENED, "ok") is State.AWAKE
    with pytest.raises(actors.RuntimeInternalError, match="cannot happen"):
        life.fire(Event.RESUME)
    assert life.state is State.AWAKE
    assert seen == [
        (State.HIBERNATED, Event.WAKE, State.WAKING, None),
        (State.WAKING, Event.OPENED, State.AWAKE, "ok"),
    ]


def test_nothing_but_the_state_tables_owners_write_a_state() -> None:
    """No engine code assigns a .state attribute except the one writer of each state table."""
    # The writers: an actor's Lifecycle (fire, constructor) and, in replica/, a tracked file's
    # TrackedFile.advance (and its constructor), so neither state can change off its table.
    root = Path(__file__).resolve().parents[2] / "runtime"
    allowed = {
        ("lifecycle.py", "Lifecycle", "__init__"),
        ("lifecycle.py", "Lifecycle", "fire"),
        ("replica/tracking.py", "TrackedFile", "__init__"),
        ("replica/tracking.py", "TrackedFile", "advance"),
    }
    writers = []
    for path in root.rglob("*.py"):
        name = str(path.relative_to(root))
        for cls in [None, *ast.walk(ast.parse(path.read_text()))]:
            if cls is not None and not isinstance(cls, ast.ClassDef):
                continue
            body = ast.parse(path.read_text()).body if cls is None else cls.body
            for fn in body:
                if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for node in ast.walk(fn):
                    targets: list[ast.expr] = []
                    if isinstance(node, ast.Assign):
                        targets = node.targets
                    elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                        targets = [node.target]
                    for target in targets:
                        if isinstance(target, ast.Attribute) and target.attr == "state":
                            where = (name, cls.name if cls else "", fn.name)
                            if where not in allowed:
                                writers.append(f"{name}:{target.lineno}")
    assert writers == []
