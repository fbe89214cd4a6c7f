"""The actor lifecycle, as one table. No I/O: the engine asks this module what may happen next.

::

    hibernated --wake--> waking --opened--> awake --idle--> hibernating --closed--> hibernated
    waking --open_failed--> failed          awake or hibernating --crashed--> failed
    waking --closed--> hibernated (the runtime closed first)
    failed --wake--> waking                 awake or hibernating --gave_up--> stopped
    stopped --resume--> waking
    hibernated, failed or stopped --delete--> deleted

(``Runtime.resume`` is for stopped actors; a failed one runs again at its next wake.)

Each actor that the runtime holds in memory has one :class:`Lifecycle`, the only writer of its
state: the engine fires events at it and reads ``state``; it never sets a state itself, nor says
which state an event leaves. (An activation begins in the state its actor was at rest in:
hibernated, failed or stopped.)

- **hibernated**: no object, no open file, no task; a row in ``directory.db`` and files on disk.
- **waking**: its files are being opened, migrations run, the object built.
- **awake**: its turn loop runs (or waits for work); it may have a query connection open.
- **hibernating**: ``on_hibernate`` runs, the WAL is checkpointed (and, with a replica, the
  changed files are snapshotted), files close. A file found corrupt meanwhile fails the actor
  (``crashed``); a fence met meanwhile stops it (``gave_up``). Either way only that actor.
- **failed**: it cannot run (``on_create`` kept failing, a file is corrupt, an internal error).
  Its messages are kept; the next wake (a new message, a restart) tries again.
- **stopped**: it failed more often than its restart intensity allows, a replay diverged from
  its journal, or another runtime took its replica over. Messages are kept but nothing runs
  until ``Runtime.resume``. Persisted: a restart does not undo it.
- **deleted**: ``Ref.delete`` or ``Actor.destroy``: its files, its row in ``directory.db`` and
  its queued messages are gone (an awake actor is closed first, its turn cancelled, or, for
  ``destroy``, committed). Final: a later message to its key creates a new actor, a new
  incarnation with its own history.

The docs' diagram is generated from :data:`TRANSITIONS` (``mermaid()``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from .errors import RuntimeInternalError


class State(enum.Enum):
    HIBERNATED = "hibernated"
    WAKING = "waking"
    AWAKE = "awake"
    HIBERNATING = "hibernating"
    FAILED = "failed"
    STOPPED = "stopped"
    DELETED = "deleted"


class Event(enum.Enum):
    WAKE = "wake"  # a message, timer or event needs the actor
    OPENED = "opened"  # files open, object built: turns may run
    OPEN_FAILED = "open_failed"  # a corrupt file, a failing migration, no descriptors left
    IDLE = "idle"  # idle_timeout passed, max_awake evicts it, or the runtime closes
    CLOSED = "closed"  # files closed, object dropped (or, waking, never opened)
    CRASHED = "crashed"  # on_create gave up, a file turned out corrupt, an internal error
    GAVE_UP = "gave_up"  # failed turns beyond the restart intensity, a diverged replay, a fence
    RESUME = "resume"  # Runtime.resume(ref)
    DELETE = "delete"  # Ref.delete(), or Actor.destroy() in a turn that committed


TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.HIBERNATED, Event.WAKE): State.WAKING,
    (State.FAILED, Event.WAKE): State.WAKING,
    (State.WAKING, Event.OPENED): State.AWAKE,
    (State.WAKING, Event.OPEN_FAILED): State.FAILED,
    # The runtime closed (or the waker was cancelled) before its files were open: nothing ran.
    (State.WAKING, Event.CLOSED): State.HIBERNATED,
    (State.AWAKE, Event.IDLE): State.HIBERNATING,
    (State.HIBERNATING, Event.CLOSED): State.HIBERNATED,
    (State.AWAKE, Event.CRASHED): State.FAILED,
    (State.AWAKE, Event.GAVE_UP): State.STOPPED,
    # Closing can fail too: the hibernation's snapshot finds a file corrupt, or its upload
    # meets another runtime's fence.
    (State.HIBERNATING, Event.CRASHED): State.FAILED,
    (State.HIBERNATING, Event.GAVE_UP): State.STOPPED,
    (State.STOPPED, Event.RESUME): State.WAKING,
    # Deletion takes an actor at rest: an awake one is closed first.
    (State.HIBERNATED, Event.DELETE): State.DELETED,
    (State.FAILED, Event.DELETE): State.DELETED,
    (State.STOPPED, Event.DELETE): State.DELETED,
}

#: States in which the actor holds open files and a live object.
RESIDENT = frozenset({State.WAKING, State.AWAKE, State.HIBERNATING})
#: States persisted in ``directory.db`` (the others are in-memory only).
PERSISTED = frozenset({State.HIBERNATED, State.STOPPED})


def next_state(state: State, event: Event) -> State:
    """The state after ``event`` in ``state``; an impossible pair is a bug in the engine."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise RuntimeInternalError(
            f"lifecycle: {event.value!r} cannot happen in state {state.value!r}; please file a bug"
        ) from None


#: Told of each change: ``(previous, event, state, detail)``.
Listener = Callable[[State, Event, State, "str | None"], None]


class Lifecycle:
    """The state of one actor, changed only by :meth:`fire` and only as :data:`TRANSITIONS`
    allows; an event the table has no entry for in the current state raises
    :class:`RuntimeInternalError` and changes nothing."""

    __slots__ = ("_listener", "state")

    def __init__(self, state: State, listener: Listener | None = None) -> None:
        #: The current state: read it; only :meth:`fire` writes it (a test checks that nothing
        #: else in the engine assigns a ``.state``).
        self.state = state
        self._listener = listener

    def fire(self, event: Event, detail: str | None = None) -> State:
        """Apply ``event``; returns the new state (the listener has been told)."""
        previous = self.state
        self.state = new = next_state(previous, event)
        if self._listener is not None:
            self._listener(previous, event, new, detail)
        return new

    def __repr__(self) -> str:
        return f"<Lifecycle {self.state.value}>"


def mermaid() -> str:
    """A Mermaid state diagram of :data:`TRANSITIONS`, for the docs."""
    lines = ["stateDiagram-v2", "    [*] --> hibernated"]
    for (source, event), target in TRANSITIONS.items():
        lines.append(f"    {source.value} --> {target.value}: {event.value}")
    return "\n".join(lines)
