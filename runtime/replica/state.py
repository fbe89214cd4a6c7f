"""The replication state of one tracked file, as one table. No I/O: the replication rooms ask
this module what may happen next, and every change of a file's state goes through
:func:`next_state` (called only by ``tracking.py``'s ``TrackedFile.advance``).

::

    unclaimed --claimed--> snapshot_due --captured--> captured --uploaded--> shipping
    shipping --snapshot_needed--> snapshot_due         shipping --captured--> captured
    captured --dropped--> snapshot_due
    any open state --fenced--> fenced                  any open state --closed--> closed
    fenced --closed--> closed

(``fenced`` and ``closed`` absorb the late events of work that was under way.)

- **unclaimed**: opened while the store could not be reached; nothing is written to the
  replica until a round takes ownership (claims it).
- **shipping**: the chain goes on from the WAL: each round ships the committed frames not
  shipped yet. Whether it has *unshipped* commits is not a state of its own but two counters
  of the tracked file (commits seen by the WAL hook, commits acknowledged): every commit would
  otherwise be a transition on SQLite's WAL hook, and a commit can come in any state.
- **snapshot_due**: the chain cannot go on from the local file (a new session, a WAL restarted
  by someone else, no snapshot yet), or a new generation is wanted (compaction, retention): a
  snapshot is captured at the next gap between turns. Rounds still ship meanwhile if they can.
- **captured**: a snapshot was read (``FileReplica.capture``) and waits for its upload (or is
  uploading); rounds do not ship the file meanwhile. The upload starts the new chain, so a
  snapshot wanted meanwhile is that one.
- **fenced**: another writer took the replica over (or the file was found corrupt and is no
  longer replicated): nothing more is written. The error is kept beside the state.
- **closed**: untracked (its actor hibernated, or the runtime closed). A fence met by a closed
  file's last background write is the claim of a later wake-up in this process: no news.

Restoring is not a state of a tracked file: an actor's files are restored (``restore.py``)
before they are opened and tracked, and a restored file starts in ``snapshot_due``.
"""

from __future__ import annotations

import enum

from ..errors import RuntimeInternalError


class State(enum.Enum):
    UNCLAIMED = "unclaimed"
    SHIPPING = "shipping"
    SNAPSHOT_DUE = "snapshot_due"
    CAPTURED = "captured"
    FENCED = "fenced"
    CLOSED = "closed"


class Event(enum.Enum):
    CLAIMED = "claimed"  # a round took ownership of a file opened unclaimed
    SNAPSHOT_NEEDED = "snapshot_needed"  # the chain cannot go on, or a new generation is due
    CAPTURED = "captured"  # a snapshot was read, to upload
    UPLOADED = "uploaded"  # the snapshot is in the replica: the new chain starts from it
    DROPPED = "dropped"  # a captured snapshot was given up (commits came since, or corrupt)
    FENCED = "fenced"  # another writer claimed the replica, or the file is corrupt
    CLOSED = "closed"  # untracked


#: The states a file can be tracked in from the start (``attach`` and ``start`` pick one).
INITIAL = frozenset({State.UNCLAIMED, State.SHIPPING, State.SNAPSHOT_DUE})

_OPEN = (State.UNCLAIMED, State.SHIPPING, State.SNAPSHOT_DUE, State.CAPTURED)

TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.UNCLAIMED, Event.CLAIMED): State.SNAPSHOT_DUE,
    # A claim is followed by a snapshot anyway (directory.db asks for one at open).
    (State.UNCLAIMED, Event.SNAPSHOT_NEEDED): State.UNCLAIMED,
    (State.SHIPPING, Event.SNAPSHOT_NEEDED): State.SNAPSHOT_DUE,
    (State.SNAPSHOT_DUE, Event.SNAPSHOT_NEEDED): State.SNAPSHOT_DUE,
    # The upload under way starts a new chain: what was needed is what it does.
    (State.CAPTURED, Event.SNAPSHOT_NEEDED): State.CAPTURED,
    (State.SNAPSHOT_DUE, Event.CAPTURED): State.CAPTURED,
    # Hibernation snapshots a changed file whether or not a snapshot was due.
    (State.SHIPPING, Event.CAPTURED): State.CAPTURED,
    (State.CAPTURED, Event.UPLOADED): State.SHIPPING,
    (State.CAPTURED, Event.DROPPED): State.SNAPSHOT_DUE,
    **{(s, Event.FENCED): State.FENCED for s in _OPEN},
    **{(s, Event.CLOSED): State.CLOSED for s in (*_OPEN, State.FENCED)},
    # Nothing more is written once fenced or closed: a late request for a snapshot is moot,
    # and a claim or an upload that was under way in a worker thread (a hibernation that left
    # the file behind does not wait for them) ends there, whether it landed or not.
    **{
        (s, e): s
        for s in (State.FENCED, State.CLOSED)
        for e in (Event.CLAIMED, Event.SNAPSHOT_NEEDED, Event.UPLOADED, Event.DROPPED)
    },
    (State.CLOSED, Event.FENCED): State.CLOSED,
}

#: States in which rounds may ship the file's commits (a snapshot may be due meanwhile).
SHIPPABLE = frozenset({State.SHIPPING, State.SNAPSHOT_DUE})


def next_state(state: State, event: Event, name: str = "") -> State:
    """The state after ``event`` in ``state``; an impossible pair is a bug in the runtime."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise RuntimeInternalError(
            f"replication of {name or 'a file'!r}: {event.value!r} cannot happen in state "
            f"{state.value!r}; please file a bug"
        ) from None


def mermaid() -> str:
    """A Mermaid state diagram of :data:`TRANSITIONS`, for the docs."""
    lines = ["stateDiagram-v2"]
    lines.extend(f"    [*] --> {s.value}" for s in State if s in INITIAL)
    for (source, event), target in TRANSITIONS.items():
        lines.append(f"    {source.value} --> {target.value}: {event.value}")
    return "\n".join(lines)
