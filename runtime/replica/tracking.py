"""The state replication shares about the tracked files, with one owner (:class:`Tracking`).

Every open actor file (``data.db``, ``mailbox.db``) and ``directory.db`` is a
:class:`TrackedFile`: its replica writer, its replication state (a row of ``state.py``'s table,
changed only by :meth:`TrackedFile.advance`) and what SQLite's WAL hook reported. ``Tracking``
holds the tracked files and the sets the rounds and the hand-over both read and change (dirty,
unclaimed, awaiting a fences read, left behind, waiting deliveries, corrupt, claimed), the
session's names (prefix, writer, last log object), the statistics and the store's limiter, and
the changes of that state that both make: tracking and untracking a file (its WAL hook),
asking for a snapshot, fencing a file, recording a store error. ``writes.py`` (claims,
snapshots, manifest folds, checkpoints), ``rounds.py`` (shipping) and ``handover.py`` (wake-up
and hibernation) each hold it; none of them holds another's state.

It also defines what replication sees of the runtime and of an awake actor (two protocols),
and :class:`ActorReplica`, replication's record on an awake actor.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import random
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.to_thread
import apsw
import attrs

from ..errors import (
    CorruptFileError,
    CorruptSnapshotError,
    FencedError,
    ReplicaUnavailableError,
    RuntimeInternalError,
)
from .options import Replication
from .replicator import (
    Captured,
    FileReplica,
    Prepared,
)
from .state import INITIAL, Event, State, next_state
from .store import ReplicaStore

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..counters import Counters
    from ..files.datastore import DataStore
    from ..files.directory import Directory
    from ..files.mailbox import Mailbox
    from ..spec import TypeSpec


#: Unacknowledged commits per file whose time is kept for the lag quantiles.
MAX_TIMED_COMMITS = 10_000

#: Longest wait between rounds, or between a snapshot's uploads, while the store cannot be
#: reached.
MAX_BACKOFF = 5.0


@attrs.define
class ActorReplica:
    """What replication keeps on an awake actor, and reads and writes alone: its tracked files
    (``data.db`` first, then ``mailbox.db``), and what its wake-up and hibernation hand over."""

    files: list[TrackedFile] = attrs.Factory(list)
    plan: Any = None  # the wake-up's plan for its files (claim, restore, adopt)
    saved: Any = None  # what the last hibernation left for the next wake-up
    due: bool = False  # a snapshot or checkpoint waits for a gap between turns
    clear_pending_when_shipped: bool = False  # the directory's pending mark goes once shipped
    restored: bool = False  # its files were just restored from the replica


class ReplicatedActor(Protocol):
    """What replication sees of an awake actor (``runtime/activation.py``'s ``Activation``):
    its files, the hand-over state of its wake-up and hibernation, and the few signals it
    takes (work to do, an acknowledgement, a fence, a corrupt file)."""

    aid: str
    key: str
    spec: TypeSpec
    mailbox: Mailbox
    data: DataStore
    work: anyio.Event
    closed: anyio.Event
    replica: ActorReplica
    waiting: bool
    closing: bool
    files_open: bool

    @property
    def hibernating(self) -> bool: ...

    @property
    def outbox_gated(self) -> bool: ...

    def describe(self) -> str: ...

    def replica_acked(self) -> None: ...

    def fence(self, error: BaseException) -> None: ...

    def fail_from_outside(self, error: BaseException) -> None: ...


class ReplicationHost(Protocol):
    """What replication sees of the runtime (``runtime/engine.py``'s ``Engine``)."""

    root: Path
    runtime_id: str
    directory: Directory
    closing: anyio.Event
    counters: Counters
    task_group: Any

    @property
    def awake(self) -> Mapping[str, ReplicatedActor]: ...

    def clock(self) -> float: ...

    def report(self, text: str) -> None: ...

    def wake_later(self, spec: TypeSpec, key: str) -> None: ...


class TrackedFile:
    """A tracked file: its replica writer, its replication state (``state.py``: changed only
    through :meth:`advance`), and what the WAL hook reported."""

    def __init__(
        self,
        name: str,
        path: Path,
        conn: apsw.Connection,
        replica: FileReplica,
        act: ReplicatedActor | None,
        state: State,
    ) -> None:
        if state not in INITIAL:
            raise RuntimeInternalError(f"{name!r} cannot be tracked from state {state.value!r}")
        self.name = name
        self.path = path
        self.conn = conn
        self.replica = replica
        self.act = act
        self.state = state
        self.end = 0  # committed frames in the WAL (the hook's last count)
        self.commits = 0  # commits seen (monotonic)
        self.acked = 0  # commits known to be in the replica, fences checked
        self.first_unacked_at: float | None = None  # when the oldest unacked commit happened
        self.commit_times: list[tuple[int, float]] = []  # (commit number, time), unacked
        self.reading = False  # a round is preparing or shipping it
        #: The snapshot read, waiting for its upload (state ``captured``; kept after a fence).
        self.capture: Captured | None = None
        self.capture_commits = 0  # commits when the last snapshot was captured
        self.uploading = False
        self.tail_set = False  # the stored manifest points at this session's log
        #: Why it was fenced (state ``fenced``, or ``closed`` after a fence).
        self.fenced: FencedError | None = None
        self.in_pending = False  # its segment is in a log object not stored yet
        #: Frames read just before a checkpoint, not shipped yet: (segment, commits, frame).
        self.carry: tuple[Prepared, int, int] | None = None
        self.mailbox_commits_at_capture = 0  # (data.db) its mailbox's commits at capture
        self.abandoned = False  # closed with commits not in the store (left behind)
        self.final_commits = -1  # commits when hibernation's last snapshot was taken
        self.snapshots_done = 0
        #: The file's state when it was attached is in the replica (taken up from this
        #: session's hibernation unchanged, or a snapshot of it uploaded since).
        self.baseline_shipped = False
        self.closing = False  # hibernating: a background upload stops retrying
        self.acked_event = anyio.Event()
        self.quiet_event = anyio.Event()
        self.claim_lock = anyio.Lock()
        self.manifest_lock = anyio.Lock()  # one manifest write at a time (fold, snapshot)
        self.folding = False  # a background fold is writing the manifest: not shipped meanwhile
        self.fold_due_at = math.inf  # when its unfolded segments must be listed
        spread = random.Random(name)
        self.fold_factor = spread.uniform(0.75, 1.25)
        self.compact_factor = spread.uniform(0.75, 1.0)

    def advance(self, event: Event) -> None:
        """The one writer of :attr:`state`."""
        self.state = next_state(self.state, event, self.name)

    @property
    def claimed(self) -> bool:
        """Its writer holds an epoch of the replica (claimed, perhaps fenced since)."""
        return self.replica.epoch is not None

    @property
    def want_snapshot(self) -> bool:
        return self.state is State.SNAPSHOT_DUE

    @property
    def retired(self) -> bool:
        """Closed and untracked: its background work makes no more requests (a later wake-up
        of the actor has a writer of its own for the file), and a fence it meets is no news."""
        return self.state is State.CLOSED

    @property
    def changed_since_snapshot(self) -> bool:
        return self.commits > self.capture_commits

    async def quiet(self) -> None:
        """Return once no round reads the file and no snapshot of it is uploading."""
        while self.reading or self.uploading:
            await self.quiet_event.wait()

    def settle(self) -> None:
        """A round or an upload let go of the file."""
        self.quiet_event.set()
        self.quiet_event = anyio.Event()
        if self.want_snapshot and self.act is not None and self.act.replica.due:
            self.act.work.set()  # the snapshot it could not take while the round read it
            self.poke()

    def poke(self) -> None:
        """Wake whoever waits on this file's acknowledgements, to look again."""
        self.acked_event.set()
        self.acked_event = anyio.Event()
        if self.act is not None:
            self.act.replica_acked()

    def committed(self, frames: int) -> None:
        self.end = frames
        self.commits += 1
        now = time.monotonic()
        if self.first_unacked_at is None:
            self.first_unacked_at = now
        if len(self.commit_times) < MAX_TIMED_COMMITS:  # (bounded while the store is down)
            self.commit_times.append((self.commits, now))

    def ack(self, upto: int, lags: collections.deque[float]) -> None:
        if upto <= self.acked:
            return
        self.acked = upto
        now = time.monotonic()
        keep = []
        for n, at in self.commit_times:
            if n <= upto:
                lags.append(now - at)
            else:
                keep.append((n, at))
        self.commit_times = keep
        self.first_unacked_at = keep[0][1] if keep else None
        self.poke()


class AppendToken:
    """Whether a delivery into an actor's mailbox is in the replica yet (``done()``): the
    sender deletes its outbox row only then, so a restore never loses the message."""

    __slots__ = ("after_snapshot", "aid", "file", "receiver_deleted", "target", "tracking")

    def __init__(self, tracking: Tracking, aid: str, file: TrackedFile | None, target: int) -> None:
        self.tracking = tracking
        self.aid = aid
        self.file = file
        self.target = target
        self.after_snapshot = False
        #: The receiver was deleted (its mailbox with it): nothing is left to wait for.
        self.receiver_deleted = False

    def done(self) -> bool:
        if self.receiver_deleted:
            return True
        f = self.file
        if f is None:
            return False
        if f.fenced is not None:
            return True  # another runtime owns that actor now: nothing more to wait for here
        if f.abandoned:  # hibernated before its last commits reached the store
            self.file = None
            self.tracking.waiting_appends.setdefault(self.aid, []).append(self)
            return False
        if self.after_snapshot:
            return f.snapshots_done > 0
        # (a delivery found already there may be in the file's state from before this
        # session, which is in the replica only once the file's first snapshot is)
        return f.acked >= self.target and f.baseline_shipped


class Tracking:
    """The tracked files and the state the rounds and the hand-over share (module docstring)."""

    def __init__(self, runtime: ReplicationHost, store: ReplicaStore, options: Replication) -> None:
        self.rt = runtime
        self.store = store
        self.options = options
        self.session = uuid.uuid4().hex[:16]
        self.prefix = ""  # set at start (needs the runtime id)
        #: The runtime this directory was restored from, and the point (REPLICA_ORIGIN).
        self.origin: dict[str, Any] = {}
        self.writer = ""
        #: Numbers of the snapshot objects this session writes, for all files (a file taken up
        #: again in this session keeps its epoch, so its keys must not start over).
        self.object_numbers = itertools.count(1).__next__
        self.seq = 0  # the last log object written
        self.files: dict[str, TrackedFile] = {}
        self.dirty: dict[str, TrackedFile] = {}
        #: Tracked files opened while the store was unreachable, not claimed yet: each round
        #: claims them, whether or not they commit again (a durable turn, or sends held at an
        #: actor's gate, may wait for them).
        self.unclaimed: dict[str, TrackedFile] = {}
        self.urgent = anyio.Event()
        self.dirty_event = anyio.Event()
        self.dirty_since: float | None = None
        #: Commit-to-acknowledgement seconds of the last 1,000 commits (lag quantiles).
        self.lags: collections.deque[float] = collections.deque(maxlen=1000)
        self.rate_commits = 0  # commits since the rounds last measured the rate
        self.behind: dict[str, tuple[Any, str]] = {}  # hibernated with unreplicated commits
        #: Deliveries into closed mailboxes: done once the mailbox is next snapshotted awake.
        self.waiting_appends: dict[str, list[AppendToken]] = {}
        #: Actors whose files were found corrupt: the next wake-up restores them.
        self.corrupt: dict[str, BaseException] = {}
        #: Actors whose files this process took ownership of (a restored runtime's other
        #: actors may still be restored over their local files at their first wake-up).
        self.claimed: set[str] = set()
        self.stats = {
            "rounds": 0,
            "segments": 0,
            "snapshots": 0,
            "manifests": 0,
            "requests": 0,
            "puts": 0,
            "bytes": 0,
            "errors": 0,
            "fenced": 0,
            "restores": 0,
        }
        self.last_error: str | None = None
        #: The store failed last (a request since has not succeeded): wake-ups do not wait
        #: for it (they open their local files unclaimed) and hibernations do not try it.
        self.unavailable = False
        self.limiter = anyio.CapacityLimiter(8)
        #: Files whose shipped commits wait for a fences read: name -> (file, commits).
        self.awaiting: dict[str, tuple[TrackedFile, int]] = {}

    def replica(self, name: str) -> FileReplica:
        """A writer of the file ``name``'s replica for this session."""
        return FileReplica(
            self.store,
            name,
            writer=self.writer,
            clock=self.rt.clock,
            retention=self.options.retention,
            keep_generations=self.options.keep_generations,
            sequence=self.object_numbers,
        )

    def track(self, tracked: TrackedFile) -> None:
        """Track an open file: its WAL hook counts each commit and marks the file dirty (and
        a checkpoint due past ``checkpoint_frames``)."""
        self.files[tracked.name] = tracked

        def hook(conn: apsw.Connection, name: str, frames: int) -> int:
            tracked.committed(frames)
            self.rate_commits += 1
            if tracked.name not in self.dirty:
                if not self.dirty:
                    self.dirty_since = time.monotonic()
                self.dirty[tracked.name] = tracked
            self.dirty_event.set()
            if tracked.end >= self.options.checkpoint_frames and tracked.act is not None:
                tracked.act.replica.due = True
            return apsw.SQLITE_OK

        tracked.conn.set_wal_hook(hook)

    def untrack(self, tracked: TrackedFile) -> None:
        """Stop tracking a file (its actor hibernated, or the runtime closes): state ``closed``."""
        tracked.advance(Event.CLOSED)
        if self.unclaimed.get(tracked.name) is tracked:
            del self.unclaimed[tracked.name]
        with contextlib.suppress(Exception):
            tracked.conn.set_wal_hook(None)
        self.files.pop(tracked.name, None)
        self.dirty.pop(tracked.name, None)
        self.awaiting.pop(tracked.name, None)
        tracked.acked_event.set()  # waiters look again (the file is gone)

    def get(self, key: str) -> tuple[bytes, str] | None:
        """One GET of the store, counted (blocking)."""
        self.stats["requests"] += 1
        return self.store.get(key)

    def put(self, key: str, data: bytes, **kw: Any) -> str:
        """One PUT to the store, counted (blocking)."""
        self.stats["requests"] += 1
        self.stats["puts"] += 1
        self.stats["bytes"] += len(data)
        return self.store.put(key, data, **kw)

    def want_snapshot(self, tracked: TrackedFile) -> None:
        """A snapshot of the file is due: its actor takes it at the next gap between turns (the
        directory's is taken by the next round)."""
        tracked.advance(Event.SNAPSHOT_NEEDED)
        if tracked.act is not None:
            tracked.act.replica.due = True
            tracked.act.work.set()  # an idle turn loop takes it now
            for each in tracked.act.replica.files or (tracked,):
                each.poke()  # a durable turn waiting for any of its files takes it now
        else:
            self.dirty[tracked.name] = tracked
            self.dirty_event.set()

    def fence(self, tracked: TrackedFile, error: FencedError, *, report: bool = True) -> None:
        """Another writer took the file's replica over: nothing more is written, and its actor
        stops (unless the file is closed already: then it is a later wake-up's claim)."""
        if tracked.fenced is not None:
            return
        tracked.fenced = error
        tracked.advance(Event.FENCED)
        tracked.acked_event.set()
        if tracked.retired:
            # A closed file's last background write met the claim of the actor's next
            # wake-up in this very process: not a rival, nothing to stop.
            return
        self.dirty.pop(tracked.name, None)
        if not report:
            return
        self.stats["fenced"] += 1
        act = tracked.act
        if act is None:
            self.rt.report(f"directory.db is no longer replicated: {error}")
            return
        self.rt.report(f"{act.describe()} stopped: another runtime owns it now ({error})")
        act.fence(error)

    def found_corrupt(self, tracked: TrackedFile, error: CorruptSnapshotError) -> None:
        """A file to snapshot is corrupt: it is not uploaded; it stops being replicated, and
        its actor stops (restored from the replica at its next wake-up)."""
        tracked.capture = None
        tracked.advance(Event.DROPPED)
        tracked.replica.abandon_capture()
        self.fence(
            tracked,
            FencedError(str(error), epoch=tracked.replica.epoch or 0, current_epoch=None),
            report=False,
        )
        act = tracked.act
        if act is None:
            self.rt.report(f"directory.db is no longer replicated: {error}")
            return
        corrupt = CorruptFileError(
            f"{act.describe()}: {error}; it is restored from the replica at its next wake-up",
            path=str(tracked.path),
        )
        corrupt.__cause__ = error
        self.rt.report(str(corrupt))
        act.fail_from_outside(corrupt)

    def error(self, exc: BaseException) -> None:
        """Record a store error; an unreachable store makes wake-ups and hibernations stop
        waiting for it."""
        self.stats["errors"] += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ReplicaUnavailableError):
            if not self.unavailable:
                # Actors holding sends at their output gate may hibernate meanwhile (their
                # slot is not held for an acknowledgement that will not come soon).
                for tracked in list(self.files.values()):
                    if tracked.act is not None and tracked.act.outbox_gated:
                        tracked.act.work.set()
            self.unavailable = True
