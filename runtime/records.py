"""The records the runtime hands out: frozen values, no behaviour.

``actors`` re-exports each. A record's fields are its stable public shape (``torpor inspect
--json`` and the docs' reference list them).
"""

# No ``from __future__ import annotations``: ``actors`` publishes these classes as its own
# (``__module__ == "actors"``), where typing.get_type_hints would look up string annotations
# such as "Any". The two forward references name public records, which ``actors`` has.
from typing import Any

import attrs


@attrs.frozen
class DeadLetter:
    """A message given up on (``reason`` says why), kept in the actor's mailbox."""

    seq: int
    method: str
    args: tuple[Any, ...] | None
    kwargs: dict[str, Any] | None
    sender: str | None
    idempotency_key: str | None
    attempts: int
    error_type: str
    error_message: str
    traceback: str
    failed_at: float
    reason: str = "unknown"


@attrs.frozen
class TurnInfo:
    """A message whose turn has started and not committed (``Runtime.turns``).

    ``status``: ``running`` (its handler runs now), ``waiting`` (in a durable wait; the actor
    may be hibernated) or ``interrupted`` (it ran before a crash, a restart or a hibernation and
    resumes from its journal when the actor next runs).
    """

    seq: int
    method: str
    status: str
    attempts: int
    cancelled: str | None
    steps: tuple["StepRecord", ...]


@attrs.frozen
class StepRecord:
    """One journaled step of a turn in flight (``Runtime.turns``).

    ``kind``: step, ask, sleep, event, now, random, uuid or patch. ``status``: done, failed, or
    waiting (a durable wait not over yet; ``until`` is its deadline, seconds since the epoch).
    """

    number: int
    kind: str
    name: str
    status: str
    attempts: int
    until: float | None
    recorded_at: float


@attrs.frozen
class LifecycleEvent:
    """One lifecycle transition of one actor, from ``Runtime.open_lifecycle_events``."""

    type_name: str
    key: str
    previous: str
    state: str
    event: str
    at: float
    detail: str | None = None


@attrs.frozen
class ActorInfo:
    """One actor as ``Runtime.actors`` lists it, read from ``directory.db`` without waking it.

    ``status``: ``awake`` (its files are open in this process), ``hibernated``, ``failed`` (it
    could not run at its last wake-up; the next message tries again), ``stopped`` (until
    ``Runtime.resume``) or ``deleting`` (a deletion began and is not finished: the store could
    not be reached). ``created_at`` and ``active_at`` are seconds since the epoch (the
    runtime's clock): its creation, and the last time work came for it or it ran out of work
    (kept with the directory's pending mark, so listing costs no write per turn). ``parent``:
    the ``(type_name, key)`` of the actor that spawned it, if one did and still exists.
    """

    #: The actor type's persisted name.
    type_name: str
    #: The actor's key.
    key: str
    #: ``awake``, ``hibernated``, ``failed``, ``stopped`` or ``deleting``.
    status: str
    #: When it was created (seconds since the epoch).
    created_at: float
    #: When work last came for it or it last ran out of work (``None``: not recorded).
    active_at: float | None
    #: Its parent (the actor that spawned it) as ``(type_name, key)``; ``None`` if it has
    #: none, or its parent no longer exists.
    parent: tuple[str, str] | None


@attrs.frozen
class RuntimeStatistics:
    """A snapshot of the runtime's counters, from :meth:`Runtime.statistics`.

    ``wake_latency_p50`` and ``_p99`` are seconds from the moment a message needed a
    hibernated actor to the start of its handler, over the last 1,000 wake-ups (``None`` before
    the first).
    """

    awake: int
    hibernated: int
    failed: int
    stopped: int
    max_awake: int
    messages_sent: int
    turns: int
    messages_applied: int
    retries: int
    dead_letters: int
    wakes: int
    hibernations: int
    timers_fired: int
    actors_with_timers: int
    steps: int
    step_retries: int
    wake_latency_p50: float | None
    wake_latency_p99: float | None
    unknown_types: tuple[str, ...]
    #: Replication's counters and lag; ``None`` without a replica.
    replication: "ReplicationStatistics | None" = None


@attrs.frozen
class ReplicationStatistics:
    """Replication's counters, in :attr:`RuntimeStatistics.replication`."""

    #: Files with commits not acknowledged by the replica yet.
    files_behind: int
    #: Seconds since the oldest commit not acknowledged yet was made (0 when none).
    lag: float
    #: Commit-to-acknowledgement seconds over the last 1,000 rounds' commits.
    lag_p50: float | None
    lag_p99: float | None
    rounds: int
    segments: int
    snapshots: int
    manifests: int
    requests: int
    puts: int
    bytes_uploaded: int
    errors: int
    #: The last error from the store, ``None`` once a round succeeded since.
    last_error: str | None
    fenced: int
    restores: int


@attrs.frozen
class StreamEntry:
    """One entry of an actor's stream, as ``Ref.open_stream`` yields it.

    ``offset`` orders the actor's entries and is never reused: resume with
    ``open_stream(topic, after=entry.offset)``. ``kind`` is ``"item"`` (``self.publish``),
    ``"chunk"`` (``current_step().emit``) or ``"reset"``: the step attempt named by
    ``step_key`` and ``attempt`` did not complete, so drop the chunks of that attempt that
    came before this entry (the retry's chunks follow with the next attempt number). ``step``
    is the step's name and ``step_key`` its idempotency key (the same on every attempt), both
    ``None`` for an item. ``at`` is the time of the write (epoch seconds, the runtime's clock).
    """

    #: Its place in the actor's stream: increasing, never reused (resume after it).
    offset: int
    #: The topic it was published or emitted to.
    topic: str
    #: ``"item"``, ``"chunk"`` or ``"reset"``.
    kind: str
    #: The published item or emitted chunk (``None`` for a reset).
    item: Any
    #: The name of the step that emitted it (``None`` for an item).
    step: str | None
    #: The step's idempotency key, the same on every attempt (``None`` for an item).
    step_key: str | None
    #: The step's attempt, from 1 (``None`` for an item).
    attempt: int | None
    #: When it was written, epoch seconds (the runtime's clock).
    at: float
