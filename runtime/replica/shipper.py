"""Replication of a runtime's files to a replica store, wired into the runtime.

(How it works, for users: docs/explanation/replication.md.)

One :class:`ReplicationEngine` per open runtime, when ``open_runtime(replica=...)`` is given:

- **Tracking.** Every open actor file (``data.db``, ``mailbox.db``) and ``directory.db`` gets
  a WAL hook: it turns SQLite's auto-checkpoint off and reports each commit's frame count,
  which marks the file dirty. Closed files are not tracked (a hibernated actor costs nothing).
- **Rounds.** One task ships all dirty files together: their committed frames, de-duplicated
  and compressed per file (``wal.py``), go into one log object (``log.py``): one PUT per round
  however many actors changed, then one GET of the session's fences, then the commits are
  acknowledged (durable replies released). The delay before a round runs from the first
  waiting commit and adapts to load (short when commits are rare, up to ``max_delay`` when
  they are many); a durable turn asks for a round at once. A log object that could not be
  stored is retried byte for byte; nothing is acknowledged without a fences read after it.
- **Manifests** (``replicator.py``) are written when ownership is taken, when a snapshot
  starts a new generation, when a file ships its first segment after a wake-up or snapshot
  (before the acknowledgement: the manifest must point at this session's log), and later by
  age or count, after the acknowledgement and off the round.
- **Checkpoints** run between turns (or right after an acknowledgement while the actor waits):
  frames not shipped yet are read into a segment carried to the next round, then the WAL is
  truncated; the chain goes on from frame 0 of its next generation.
- **Hibernation** snapshots each changed file (a checkpoint, then the whole file, checked with
  ``quick_check`` before upload), writes the manifest without a log tail, and keeps what the
  next wake-up needs in ``replica.json`` in the actor's folder, so that waking again in this
  process costs no request. If the store is down, the actor is left behind and woken to catch
  up once a round succeeds.
- **Waking** an actor for the first time in this process takes ownership of its files (a higher
  epoch, the previous writer fenced, its log tail closed), and restores the files from the
  replica (``restore.py``) when they are missing here, were last written by another runtime,
  or are corrupt.
- **State.** Each tracked file's replication state (unclaimed, shipping, snapshot due,
  captured, fenced, closed) is one table in ``state.py``, changed only by ``_File.advance``.
- **Cross-file order.** Each file is restored to its own latest state, so the runtime orders
  what could contradict: applied messages leave the mailbox, and delivered outbox rows leave
  the sender, only once what they depend on is in the replica.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import json
import math
import os
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
    CorruptReplicaError,
    CorruptSnapshotError,
    FencedError,
    PreconditionFailedError,
    ReplicaConflictError,
    ReplicaError,
    ReplicaUnavailableError,
    RuntimeInternalError,
)
from ..files.layout import DATA_FILE, DIRECTORY_FILE, MAILBOX_FILE, actor_dir, actor_id
from ..records import ReplicationStatistics
from .log import add_fence, encode_log, log_key, read_fences, session_prefix
from .replicator import (
    ANY_SALT,
    Captured,
    FileReplica,
    Manifest,
    Prepared,
    SnapshotNeeded,
    manifest_key,
    read_tail,
)
from .restore import (
    ACTORS_PREFIX,
    ORIGIN_FILE,
    STAGING_PREFIX,
    STATE_FILE,
    actor_file_name,
    read_origin,
    restore_actor,
    restore_actor_files,
    restore_directory_if_missing,
    restore_runtime,
    retrying,
)
from .state import INITIAL, SHIPPABLE, Event, State, next_state
from .store import ReplicaStore
from .wal import WalPosition

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..counters import Counters
    from ..files.datastore import DataStore
    from ..files.directory import Directory
    from ..files.mailbox import Mailbox
    from ..spec import TypeSpec


@attrs.define
class ActorReplica:
    """What replication keeps on an awake actor, and reads and writes alone: its tracked files
    (``data.db`` first, then ``mailbox.db``), and what its wake-up and hibernation hand over."""

    files: list[_File] = attrs.Factory(list)
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


@attrs.frozen
class Replication:
    """How the runtime replicates (``open_runtime(replica=..., replication=...)``).

    ``lag_target``: the replication lag aimed at (commit to acknowledgement), seconds: under
    load the delay before a round is this minus the time recent rounds took (their slowest),
    so rounds are as few as the target allows, and more frequent when the store is slow;
    ``max_delay`` bounds that delay; ``min_delay``: the delay when commits are rare;
    ``busy_rate``: commits per second at which the delay reaches its load value (it grows
    linearly with the observed rate up to there). A durable turn's commits go at
    ``min_delay``. ``checkpoint_frames``: WAL frames after which a file is checkpointed
    (between turns). ``fold_interval``: seconds after which a file's shipped segments are
    listed in its manifest (a restore then reads fewer log objects), or after
    ``fold_segments`` segments; ``compact_segments``: segments after which a file gets a new
    snapshot (each threshold is spread by a random factor per file, so that many busy files
    do not all rewrite their manifests in one round).
    ``retention``: seconds of history kept for point-in-time restore; ``keep_generations``:
    earlier snapshots kept at most.
    """

    lag_target: float = 0.9
    max_delay: float = 0.85
    min_delay: float = 0.02
    busy_rate: float = 100.0
    checkpoint_frames: int = 1000
    fold_interval: float = 3600.0
    fold_segments: int = 4096
    compact_segments: int = 6144
    retention: float = 24 * 3600.0
    keep_generations: int = 8

    def __attrs_post_init__(self) -> None:
        for name in (
            "lag_target",
            "max_delay",
            "min_delay",
            "busy_rate",
            "retention",
            "fold_interval",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0 or math.isnan(value):
                raise ValueError(f"Replication.{name} must be a number >= 0 (got {value!r})")
        for name in ("checkpoint_frames", "fold_segments", "compact_segments"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Replication.{name} must be an int >= 1 (got {value!r})")
        if not isinstance(self.keep_generations, int) or self.keep_generations < 0:
            raise ValueError(
                f"Replication.keep_generations must be an int >= 0 (got {self.keep_generations!r})"
            )
        if self.min_delay > self.max_delay:
            raise ValueError("Replication.min_delay must not be above max_delay")


class _File:
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

    __slots__ = ("after_snapshot", "aid", "engine", "file", "target")

    def __init__(
        self, engine: ReplicationEngine, aid: str, file: _File | None, target: int
    ) -> None:
        self.engine = engine
        self.aid = aid
        self.file = file
        self.target = target
        self.after_snapshot = False

    def done(self) -> bool:
        f = self.file
        if f is None:
            return False
        if f.fenced is not None:
            return True  # another runtime owns that actor now: nothing more to wait for here
        if f.abandoned:  # hibernated before its last commits reached the store
            self.file = None
            self.engine.waiting_appends.setdefault(self.aid, []).append(self)
            return False
        if self.after_snapshot:
            return f.snapshots_done > 0
        # (a delivery found already there may be in the file's state from before this
        # session, which is in the replica only once the file's first snapshot is)
        return f.acked >= self.target and f.baseline_shipped


@attrs.define
class _Pending:
    """A log object built by a round, until it is in the store."""

    key: str
    seq: int
    at: float
    data: bytes
    shipping: list[tuple[_File, Prepared, int]]
    entries: list[Any]


#: Seconds before a snapshot whose capture failed (the file busy) is tried again.
CAPTURE_RETRY = 0.2

#: Unacknowledged commits per file whose time is kept for the lag quantiles.
MAX_TIMED_COMMITS = 10_000

#: Longest wait between rounds while the store cannot be reached.
MAX_BACKOFF = 5.0

#: Seconds between looks at the store while it is failing or actors wait to catch up, with
#: nothing committed meanwhile.
PROBE_INTERVAL = 1.0

#: Passes of a hibernation over an actor's files (a delivery into the closing mailbox makes
#: one more pass: its snapshot again, then data.db's).
DETACH_PASSES = 3


class ReplicationEngine:
    """The replication of one open runtime (see the module docstring)."""

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
        self.files: dict[str, _File] = {}
        self.dirty: dict[str, _File] = {}
        #: Tracked files opened while the store was unreachable, not claimed yet: each round
        #: claims them, whether or not they commit again (a durable turn, or sends held at an
        #: actor's gate, may wait for them).
        self.unclaimed: dict[str, _File] = {}
        self.urgent = anyio.Event()
        self.hurrying = False
        self.dirty_event = anyio.Event()
        self.log_times: collections.deque[tuple[int, float]] = collections.deque()
        #: Commit-to-acknowledgement seconds of the last 1,000 commits (lag quantiles).
        self.lags: collections.deque[float] = collections.deque(maxlen=1000)
        self.rate = 0.0  # commits per second, smoothed
        self.rate_at = time.monotonic()
        self.rate_commits = 0
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
        self.round_lock = anyio.Lock()
        #: A log object that could not be PUT yet: retried, byte for byte, before anything else.
        self.pending: _Pending | None = None
        #: Files whose shipped commits wait for a fences read: name -> (file, commits).
        self.awaiting: dict[str, tuple[_File, int]] = {}
        self.backoff = 0.0
        self.dirty_since: float | None = None
        #: How long the last rounds took (the delay leaves room for the next one).
        self.round_times: collections.deque[float] = collections.deque(maxlen=20)

    # -- names -------------------------------------------------------------------------------

    @staticmethod
    def actor_name(aid: str, file: str) -> str:
        return actor_file_name(aid, file)

    def _replica(self, name: str) -> FileReplica:
        return FileReplica(
            self.store,
            name,
            writer=self.writer,
            clock=self.rt.clock,
            retention=self.options.retention,
            keep_generations=self.options.keep_generations,
            sequence=self.object_numbers,
        )

    # -- opening -----------------------------------------------------------------------------

    def restore_directory_if_missing(self, root: Path) -> bool:
        """Before the directory is opened: restore it from the replica when it is missing
        here (a fresh machine). Returns whether it was restored (``restore.py``)."""
        if not restore_directory_if_missing(self.store, root):
            return False
        self.stats["restores"] += 1
        return True

    def start(self) -> None:
        """After the directory is open: take ownership of its replica and track it."""
        rt = self.rt
        self.prefix = session_prefix(rt.runtime_id, self.session)
        self.writer = f"{rt.runtime_id}/{self.session}"
        conn = rt.directory.conn
        replica = self._replica(DIRECTORY_FILE)
        state = State.SNAPSHOT_DUE
        try:
            previous = retrying(lambda: self._takeover(replica))
        except ReplicaUnavailableError as exc:
            self._error(exc)
            state = State.UNCLAIMED
            previous = None
        tracked = _File(DIRECTORY_FILE, rt.root / DIRECTORY_FILE, conn, replica, None, state)
        if state is State.UNCLAIMED:
            self.unclaimed[DIRECTORY_FILE] = tracked
        self.origin = read_origin(rt.root)
        if previous is not None and previous.snapshot is not None:
            owner = previous.writer.split("/")[0]
            if (
                owner not in (rt.runtime_id, self.origin.get("runtime"))
                and rt.directory.count() > 0
            ):
                raise ReplicaConflictError(
                    f"the replica prefix holds the files of runtime {owner}, and this runtime "
                    f"({rt.runtime_id}) has actors of its own: use another prefix, or restore "
                    "from that replica into an empty directory"
                )
        self._track(tracked)
        self._want_snapshot(tracked)

    def note_pending(self, pending: list[tuple[Any, str]]) -> None:
        """At open: the actors the directory marks pending count as behind until they are
        woken (recovery wakes them) and tracked, so that :meth:`wait_all` covers whatever an
        earlier process committed in their files and did not ship."""
        for spec, key in pending:
            self.behind.setdefault(actor_id(spec.name, key), (spec, key))

    def _track(self, tracked: _File) -> None:
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

    def _untrack(self, tracked: _File) -> None:
        tracked.advance(Event.CLOSED)
        if self.unclaimed.get(tracked.name) is tracked:
            del self.unclaimed[tracked.name]
        with contextlib.suppress(Exception):
            tracked.conn.set_wal_hook(None)
        self.files.pop(tracked.name, None)
        self.dirty.pop(tracked.name, None)
        self.awaiting.pop(tracked.name, None)
        tracked.acked_event.set()  # waiters look again (the file is gone)

    # -- ownership ---------------------------------------------------------------------------

    def _takeover(self, replica: FileReplica) -> Manifest | None:
        """Take ownership of a file's replica (blocking: run in a thread). Returns the
        manifest as it was before (``None`` if there was none): the previous writer is fenced
        out, its log tail read to its end and folded into the new manifest."""
        name = replica.name
        key = manifest_key(name)
        for _ in range(10):
            got = self._get(key)
            if got is None:
                manifest = Manifest(
                    name, 1, self.writer, None, (), None, tail=self.prefix, tail_from=self.seq + 1
                )
                try:
                    etag = self._put(key, manifest.encode(), if_none_match=True)
                except PreconditionFailedError:
                    continue
                replica.adopt(manifest, etag)
                self.stats["manifests"] += 1
                return None
            before = Manifest.decode(got[0], key=key)
            if before.writer == self.writer:
                # Written by this very session (an earlier wake-up of the actor in this
                # process, or a claim whose answer was lost): ownership does not change, so the
                # epoch does not either. The chain is taken up from a snapshot (the caller
                # takes one).
                replica.adopt(attrs.evolve(before, position=None), got[1])
                return before
            current = before
            if before.tail is not None:
                if before.tail != self.prefix:
                    add_fence(self.store, before.tail, name, before.epoch + 1)
                    self.stats["requests"] += 2
                    self.stats["puts"] += 1
                tail = read_tail(self.store, before)
                self.stats["requests"] += len(tail) + 1
                if tail:
                    last = tail[-1]
                    position = WalPosition(last.salt1, last.salt2, last.end_frame, (0, 0))
                    current = attrs.evolve(
                        before, segments=(*before.segments, *tail), position=position
                    )
            claimed = attrs.evolve(
                current,
                epoch=before.epoch + 1,
                writer=self.writer,
                tail=self.prefix,
                tail_from=self.seq + 1,
            )
            try:
                etag = self._put(key, claimed.encode(), if_match=got[1])
            except PreconditionFailedError:
                continue  # the previous writer folded, or another claim: read it again
            # The position's checksum chain is unknown after a tail read: continuing the WAL
            # is verified by salts and frames only when the position is exact, so start over
            # with a snapshot in that case (prepare raises SnapshotNeeded).
            if claimed.position is not None and claimed.position.checksum == (0, 0):
                claimed = attrs.evolve(claimed, position=None)
            replica.adopt(claimed, etag)
            self.stats["manifests"] += 1
            return before
        raise FencedError(
            f"could not take ownership of {name!r}: other writers keep changing its manifest",
            epoch=0,
            current_epoch=None,
        )

    def _ours(self, manifest: Manifest) -> bool:
        """Whether local files are at least as new as what ``manifest``'s writer shipped:
        it is this runtime (an earlier process), or the runtime this directory was restored
        from at a point in time (restoring the past is the point: it goes on from there). A
        runtime restored at the latest state fetches again what its origin wrote since."""
        writer = manifest.writer.split("/")[0]
        if writer == self.rt.runtime_id:
            return True
        return writer == self.origin.get("runtime") and self.origin.get("at") is not None

    def _get(self, key: str) -> tuple[bytes, str] | None:
        self.stats["requests"] += 1
        return self.store.get(key)

    def _put(self, key: str, data: bytes, **kw: Any) -> str:
        self.stats["requests"] += 1
        self.stats["puts"] += 1
        self.stats["bytes"] += len(data)
        return self.store.put(key, data, **kw)

    # -- deliveries ----------------------------------------------------------------------------

    def append_token(self, aid: str) -> AppendToken:
        """After appending to ``aid``'s mailbox (open or closed)."""
        tracked = self.files.get(self.actor_name(aid, MAILBOX_FILE))
        if tracked is not None and not tracked.closing:
            return AppendToken(self, aid, tracked, tracked.commits)
        token = AppendToken(self, aid, None, 0)
        self.waiting_appends.setdefault(aid, []).append(token)
        return token

    def directory_token(self) -> AppendToken:
        """After a change to the directory (a child created by ``spawn``)."""
        tracked = self.files.get(DIRECTORY_FILE)
        return AppendToken(self, "", tracked, tracked.commits if tracked else 0)

    # -- actors: waking ----------------------------------------------------------------------

    def local_files_current(self, aid: str) -> bool:
        """Whether an actor's local files are the ones its next wake-up opens, so that a
        message may be appended to its mailbox without waking it: its ``data.db`` is here,
        not corrupt, and no restore can replace it (this directory was not restored from
        another runtime, or the actor was claimed since)."""
        if aid in self.corrupt:
            return False
        if not (actor_dir(self.rt.root, aid) / DATA_FILE).exists():
            return False
        return not self.origin or aid in self.claimed

    async def prepare_files(
        self, act: ReplicatedActor, known: bool, *, force_restore: bool = False
    ) -> None:
        """Before an actor's files are opened: take up the state saved at its last hibernation
        in this process (per file, when nothing touched the file since: no request), or take
        ownership of its replica, restoring the files when they are missing here, were last
        written by another runtime, or ``force_restore`` (a corrupt local file)."""
        folder = actor_dir(self.rt.root, act.aid)
        state = _read_state(folder / STATE_FILE)
        if state is None or state.get("session") != self.session or force_restore:
            state = None
        now = _stat(folder)
        plan: list[tuple[str, str, Any]] = []
        to_claim: list[FileReplica] = []
        for file in (DATA_FILE, MAILBOX_FILE):
            name = self.actor_name(act.aid, file)
            saved = state["files"].get(name) if state is not None else None
            if saved is not None and state is not None and _unchanged(file, now, state["stat"]):
                plan.append((name, "state", saved))
            else:
                replica = self._replica(name)
                to_claim.append(replica)
                plan.append((name, "claimed", replica))
        act.replica.plan = plan
        if not to_claim:
            return
        local = (folder / DATA_FILE).exists() and not force_restore
        if self.unavailable and local:
            # The store is failing: the wake-up does not wait for it. The files open
            # unclaimed, and a round claims them once the store answers again.
            act.replica.plan = [(name, "unclaimed", None) for name, _, _ in plan]
            return

        def claim_all() -> list[Manifest | None]:
            return [self._takeover(r) for r in to_claim]

        try:
            async with self.limiter:
                previous = await anyio.to_thread.run_sync(claim_all)
        except ReplicaUnavailableError as exc:
            self._error(exc)
            # Not here, and known to the directory, or this runtime was restored from the
            # replica (whose directory may predate the actor): its files may be only in the
            # replica. Opened empty, it would diverge from them.
            if force_restore or (not local and (known or bool(self.origin))):
                raise ReplicaUnavailableError(
                    f"{act.describe()} has no usable files here and the replica cannot be "
                    f"reached to restore them ({exc}); it is tried again at the next message"
                ) from exc
            act.replica.plan = [(name, "unclaimed", None) for name, _, _ in plan]
            return
        restore_needed = force_restore or any(
            p is not None and p.snapshot is not None and (not local or not self._ours(p))
            for p in previous
        )
        if not restore_needed:
            return
        # Every file comes from the replica (a mix of local and restored files would not be
        # one state): claim the ones taken up from state too.
        rest = [self._replica(name) for name, mode, _ in plan if mode == "state"]
        if rest:
            async with self.limiter:
                await anyio.to_thread.run_sync(lambda: [self._takeover(r) for r in rest])
        replicas = [*to_claim, *rest]
        manifests: dict[str, Manifest] = {}
        for r in replicas:
            assert r.manifest is not None
            manifests[r.name] = r.manifest
        # Both files, or neither: a data.db restored beside a mailbox that is not would lose
        # the mailbox's work. The local files are kept aside, in a superseded-* folder.
        restore_all = functools.partial(
            restore_actor, self.store, act.aid, folder, manifests=manifests, supersede=True
        )
        async with self.limiter:
            await anyio.to_thread.run_sync(restore_all)
        self.stats["restores"] += 1
        act.replica.restored = (
            True  # (what the replica has is the state: a data.db it lacks is new)
        )
        by_name = {r.name: r for r in replicas}
        act.replica.plan = [(name, "claimed", by_name[name]) for name, _, _ in plan]

    def attach(self, act: ReplicatedActor) -> None:
        """After an actor's files are opened: track them (a snapshot is taken when the chain
        cannot go on from the local files)."""
        folder = actor_dir(self.rt.root, act.aid)
        conns = {
            self.actor_name(act.aid, DATA_FILE): (act.data.path, act.data.conn),
            self.actor_name(act.aid, MAILBOX_FILE): (act.mailbox.path, act.mailbox.conn),
        }
        plan = act.replica.plan or [(name, "unclaimed", None) for name in conns]
        act.replica.files = []
        for name, mode, payload in plan:
            path, conn = conns[name]
            if mode == "state":
                replica = self._replica(name)
                replica.adopt(
                    Manifest.decode(json.dumps(payload["manifest"]).encode(), key=name),
                    payload["etag"],
                    # Nothing touched the file since it was checkpointed and closed.
                    next_salt1=ANY_SALT,
                    checkpointed_frame=payload["checkpointed_frame"],
                    sequence=payload["sequence"],
                )
                tracked = _File(name, path, conn, replica, act, State.SHIPPING)
                snapshot = replica.needs_snapshot
                tracked.baseline_shipped = not snapshot
            elif mode == "claimed":
                # A new session: the WAL cannot be trusted to go on.
                tracked = _File(name, path, conn, payload, act, State.SNAPSHOT_DUE)
                snapshot = True
            else:
                tracked = _File(name, path, conn, self._replica(name), act, State.UNCLAIMED)
                self.unclaimed[name] = tracked
                snapshot = False  # decided once claimed
            act.replica.files.append(tracked)
            self._track(tracked)
            if name.endswith(MAILBOX_FILE):
                for token in self.waiting_appends.pop(act.aid, ()):
                    token.file, token.after_snapshot = tracked, True
            if snapshot:
                self._want_snapshot(tracked)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder / STATE_FILE)
        if self.origin and all(t.claimed for t in act.replica.files):
            self.claimed.add(act.aid)
        self.behind.pop(act.aid, None)  # tracked again: counted through its files
        act.replica.plan = None
        self.capture_due(act)

    def _want_snapshot(self, tracked: _File) -> None:
        tracked.advance(Event.SNAPSHOT_NEEDED)
        if tracked.act is not None:
            tracked.act.replica.due = True
            tracked.act.work.set()  # an idle turn loop takes it now
            for each in tracked.act.replica.files or (tracked,):
                each.poke()  # a durable turn waiting for any of its files takes it now
        else:
            self.dirty[tracked.name] = tracked
            self.dirty_event.set()

    # -- actors: between turns ---------------------------------------------------------------

    def capture_due(self, act: ReplicatedActor) -> None:
        """Between turns (no transaction open): take the snapshots and checkpoints due."""
        act.replica.due = False
        for tracked in act.replica.files:
            if tracked.state is State.SNAPSHOT_DUE:
                if tracked.reading:
                    act.replica.due = True  # a round reads it: at the next gap
                else:
                    self._capture(tracked)
            elif (
                tracked.state is State.SHIPPING
                and tracked.end >= self.options.checkpoint_frames
                and not tracked.reading
                and not tracked.folding
            ):
                self._checkpoint(tracked)
                if tracked.end >= self.options.checkpoint_frames:
                    act.replica.due = True  # not now (a round reads it): next gap

    def _capture(self, tracked: _File, *, upload: bool = True) -> None:
        try:
            captured = tracked.replica.capture(tracked.conn, tracked.path, owned=True)
        except FencedError as exc:
            self._fenced(tracked, exc)
            return
        except (ReplicaError, apsw.Error) as exc:
            self._error(exc)
            if tracked.act is not None and self.rt.task_group is not None:
                # (a reader holding the file, say): tried again soon, not only at the next
                # event that happens to ask for it (sends at the actor's gate wait for it)
                self.rt.task_group.start_soon(self._capture_again, tracked)
            return
        tracked.capture = captured
        tracked.advance(Event.CAPTURED)
        tracked.capture_commits = tracked.commits
        act = tracked.act
        if act is not None and len(act.replica.files) > 1 and tracked is act.replica.files[0]:
            tracked.mailbox_commits_at_capture = act.replica.files[1].commits
        tracked.carry = None  # (its frames are in the snapshot)
        tracked.end = 0
        self.dirty.pop(tracked.name, None)
        self.awaiting.pop(tracked.name, None)  # (acknowledged by the snapshot's upload)
        if upload and self.rt.task_group is not None:
            self.rt.task_group.start_soon(self._upload, tracked)

    async def _capture_again(self, tracked: _File) -> None:
        await anyio.sleep(CAPTURE_RETRY)
        act = tracked.act
        if act is not None and tracked.want_snapshot and not tracked.retired:
            act.replica.due = True
            act.work.set()

    def _checkpoint(self, tracked: _File) -> None:
        """Checkpoint a file (``TRUNCATE``) with no transaction open on it. Frames not shipped
        yet are read first into a segment carried to the next round (no waiting for the
        store): the replica then goes on from frame 0 of the WAL's next generation."""
        if tracked.reading or tracked.in_pending or tracked.carry is not None:
            return
        if tracked.fenced is not None:
            return
        frame = tracked.end
        carry: Prepared | None = None
        if tracked.acked < tracked.commits or tracked.name in self.dirty:
            try:
                carry = tracked.replica.prepare(tracked.path, frame)
            except SnapshotNeeded:
                self._want_snapshot(tracked)
                return
            except FencedError as exc:
                self._fenced(tracked, exc)
                return
            except (ReplicaError, OSError) as exc:
                self._error(exc)
                return
        try:
            log, done = tracked.conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        except apsw.BusyError:
            return
        if (log, done) != (0, 0):
            return  # (nothing was lost: the frames stay in the WAL, shipped as usual)
        tracked.end = 0
        if carry is None:
            try:
                tracked.replica.mark_checkpointed(frame)
            except FencedError as exc:
                self._fenced(tracked, exc)
        else:
            tracked.carry = (carry, tracked.commits, frame)
            self.dirty[tracked.name] = tracked
            self.dirty_event.set()

    async def _upload(self, tracked: _File, *, final: bool = False) -> None:
        """Upload a captured snapshot (retrying while the store is unavailable); ``final``:
        the file is closing, so its manifest names no log tail."""
        captured = tracked.capture
        if captured is None or tracked.uploading:
            return
        tracked.uploading = True
        delay = 0.05
        try:
            if not await self._mailbox_caught_up(tracked, wait=not final):
                return  # the mailbox could not follow: not uploaded ahead of it
            while tracked.capture is captured and tracked.fenced is None:
                if (tracked.closing and not final) or tracked.retired:
                    return  # hibernation makes its own, last attempt
                try:
                    tail = None if final else self.prefix
                    tail_from = 0 if final else self.seq + 1
                    async with tracked.manifest_lock, self.limiter:
                        result = await anyio.to_thread.run_sync(
                            functools.partial(
                                tracked.replica.upload,
                                captured,
                                tail=tail,
                                tail_from=tail_from,
                                verify=True,
                            )
                        )
                except ReplicaUnavailableError as exc:
                    self._error(exc)
                    if final:
                        return
                    await anyio.sleep(delay)
                    delay = min(delay * 2, MAX_BACKOFF)
                    continue
                except FencedError as exc:
                    self._fenced(tracked, exc)
                    return
                except CorruptSnapshotError as exc:
                    self._corrupt(tracked, exc)
                    return
                tracked.snapshots_done += 1
                tracked.baseline_shipped = True
                self.stats["snapshots"] += 1
                self.stats["manifests"] += 1
                self.stats["requests"] += result.requests
                self.stats["puts"] += 2
                self.stats["bytes"] += result.bytes
                self.last_error = None
                tracked.capture = None
                tracked.advance(Event.UPLOADED)
                tracked.tail_set = not final
                tracked.ack(tracked.capture_commits, self.lags)
                tracked.poke()
                if tracked.end and self.files.get(tracked.name) is tracked:
                    self.dirty[tracked.name] = tracked
                if self.dirty:
                    # (this file, or a data.db that waited for this mailbox's snapshot)
                    self.dirty_event.set()
        finally:
            tracked.uploading = False
            tracked.settle()

    # -- the rounds --------------------------------------------------------------------------

    async def run(self) -> None:
        """Ship dirty files, round after round, until cancelled. After a failed round (the
        store unreachable), wait with exponential backoff, then try again."""
        while True:
            if self.unavailable or self.behind:
                # Actors wait to catch up, or the store failed last: look at the store now and
                # then even when nothing is committed (a round would otherwise never come).
                with anyio.move_on_after(max(self.backoff, PROBE_INTERVAL)):
                    await self.dirty_event.wait()
                if not self.dirty_event.is_set():
                    await self._probe()
                    continue
            else:
                await self.dirty_event.wait()
            self.dirty_event = anyio.Event()
            if not self.urgent.is_set():
                # The delay runs from the first commit waiting (not from now: commits made
                # while the previous round worked would otherwise wait for it and the delay).
                since = self.dirty_since if self.dirty_since is not None else time.monotonic()
                wait = since + self._delay() - time.monotonic()
                with anyio.move_on_after(max(0.0, wait)):
                    await self.urgent.wait()
            self.urgent = anyio.Event()
            self.dirty_since = None
            if await self.round():
                self.backoff = 0.0
            else:
                self.backoff = min(max(0.05, self.backoff * 2), MAX_BACKOFF)
                await anyio.sleep(self.backoff)
                self.dirty_event.set()

    async def _probe(self) -> None:
        """One cheap request (the session's fences): once it succeeds after failures, the
        store counts as reachable again and actors left behind are woken to catch up."""
        try:
            self.stats["requests"] += 1
            await anyio.to_thread.run_sync(
                read_fences, self.store, self.prefix, limiter=self.limiter
            )
        except ReplicaUnavailableError as exc:
            self._error(exc)
            self.backoff = min(max(0.05, self.backoff * 2), MAX_BACKOFF)
            return
        was_unavailable, self.unavailable = self.unavailable, False
        self.backoff = 0.0
        self.last_error = None
        if was_unavailable:
            self._wake_behind()
            if self.unclaimed:
                self.dirty_event.set()  # a round claims the files opened meanwhile

    def _delay(self) -> float:
        now = time.monotonic()
        span = now - self.rate_at
        if span > 0.05:
            self.rate = 0.5 * self.rate + 0.5 * (self.rate_commits / span)
            self.rate_at, self.rate_commits = now, 0
        o = self.options
        if any(
            t.act is not None and (t.act.spec.durable or t.act.outbox_gated) and t.commits > t.acked
            for t in self.dirty.values()
        ):
            return o.min_delay
        share = min(1.0, self.rate / o.busy_rate) if o.busy_rate else 1.0
        # What the lag target leaves once a round's own time is paid: the slowest of the
        # recent rounds, so a slow store (or a busy machine) shortens the wait.
        slowest = max(self.round_times, default=0.0)
        loaded = min(o.max_delay, max(o.min_delay, o.lag_target - slowest))
        return o.min_delay + (loaded - o.min_delay) * share

    def hurry(self) -> None:
        """Someone waits for commits to reach the replica (sends held at an actor's output
        gate): the next round comes within ``min_delay``, as for a durable actor's commits,
        not after the load's delay. Not at once: under load, the commits of ``min_delay`` go
        together (a round at once for each held send made about one PUT per turn)."""
        if self.hurrying or self.rt.task_group is None:
            return
        self.hurrying = True
        self.rt.task_group.start_soon(self._hurry)

    async def _hurry(self) -> None:
        try:
            await anyio.sleep(self.options.min_delay)
        finally:
            self.hurrying = False
        self.urgent.set()

    async def round(self) -> bool:
        """One round; ``False`` if the store could not be reached (retry later). Rounds never
        overlap. A round: claim what is unclaimed; PUT the log object an earlier round could
        not (the same bytes under the same key: a log object never has two versions); prepare
        every dirty file and PUT one log object; read the fences; write the manifests that
        must point at this session's log; acknowledge."""
        async with self.round_lock:
            started = time.monotonic()
            try:
                done = await self._round()
            except ReplicaUnavailableError as exc:
                self._error(exc)
                return False
            if done:  # (failed rounds wait their backoff instead)
                self.round_times.append(time.monotonic() - started)
            return done

    async def _round(self) -> bool:
        requests_before = self.stats["requests"]
        for name, t in list(self.dirty.items()):
            if t.retired:
                del self.dirty[name]  # a closed activation's file: its hibernation shipped it
        unclaimed = [t for t in self.unclaimed.values() if t.fenced is None and not t.retired]
        for tracked in unclaimed:
            await self._claim_later(tracked)
        # A claim that failed is tried again after the backoff (its file may commit nothing
        # more, and sends held at its actor's gate wait for it). A file closed meanwhile is
        # claimed by its actor's next wake-up.
        claims_failed = any(not t.claimed and t.fenced is None and not t.retired for t in unclaimed)
        if self.pending is not None:
            if not await self._try_put_log(self.pending):
                return False
            self._landed(self.pending)
            self.pending = None
        files = [
            t
            for t in self.dirty.values()
            if t.state in SHIPPABLE
            and not t.in_pending
            and not t.folding
            and not self._mailbox_blocks(t)
        ]
        for t in files:
            del self.dirty[t.name]
        ready = []
        for tracked in files:
            if tracked.act is None and tracked.want_snapshot:
                self._capture(tracked)  # the directory: between its (synchronous) commits
                continue
            ready.append(tracked)
        if ready:
            await self._ship(ready)
            if self.pending is not None:
                return False  # not landed: tried again next round
        if self.awaiting and not await self._acknowledge():
            return False
        if claims_failed:
            return False
        self.last_error = None
        if self.stats["requests"] > requests_before:
            self.unavailable = False  # (a round that asked the store nothing proves nothing)
        self._wake_behind()
        await self._expire_logs()
        directory = self.files.get(DIRECTORY_FILE)
        if (
            directory is not None
            and directory.end >= self.options.checkpoint_frames
            and directory.acked == directory.commits
            and directory.capture is None
        ):
            self._checkpoint(directory)
        return True

    async def _ship(self, ready: list[_File]) -> None:
        shipping: list[tuple[_File, Prepared, int]] = []
        carried = [t for t in ready if t.carry is not None]
        for tracked in carried:
            assert tracked.carry is not None
            prepared_carry, commits_then, _ = tracked.carry
            shipping.append((tracked, prepared_carry, commits_then))
            if tracked.end or tracked.commits > commits_then:
                self.dirty[tracked.name] = tracked  # its next generation: the next round
        ready = [t for t in ready if t.carry is None]
        work = [(t, t.end, t.commits) for t in ready]
        for t in ready:
            t.reading = True
        try:
            prepared = await anyio.to_thread.run_sync(_prepare_all, work)
        finally:
            for t in ready:
                t.reading = False
                t.settle()
        for (tracked, _, commits), outcome in zip(work, prepared, strict=True):
            if isinstance(outcome, SnapshotNeeded):
                self._want_snapshot(tracked)
            elif isinstance(outcome, FencedError):
                self._fenced(tracked, outcome)
            elif isinstance(outcome, BaseException):
                self._error(outcome)
                self.dirty[tracked.name] = tracked
            elif outcome is None:
                self._await_ack(tracked, commits)
            else:
                shipping.append((tracked, outcome, commits))
        if not shipping:
            return
        self.seq += 1
        at = self.rt.clock()
        data, entries = encode_log(
            self.session, self.seq, at, [(p.meta, p.data) for _, p, _ in shipping]
        )
        pending = _Pending(log_key(self.prefix, self.seq), self.seq, at, data, shipping, entries)
        for tracked, _, _ in shipping:
            tracked.in_pending = True
        self.pending = pending
        if await self._try_put_log(pending):
            self._landed(pending)
            self.pending = None

    def _landed(self, pending: _Pending) -> None:
        """A log object is in the store: record its segments, and await their acks."""
        self.log_times.append((pending.seq, pending.at))
        self.stats["rounds"] += 1
        for (tracked, p, commits), entry in zip(pending.shipping, pending.entries, strict=True):
            tracked.in_pending = False
            carry, tracked.carry = tracked.carry, None
            if tracked.fenced is not None or tracked.retired:
                continue  # (retired: closed since, its hibernation snapshot holds the frames)
            # Each file on its own: the object is stored whatever happens to one file here
            # (a landed object is never landed twice).
            try:
                if tracked.replica.shipped(p, pending.key, entry.offset, pending.at) is None:
                    continue  # a snapshot captured since holds these frames
                if carry is not None and carry[0] is p:
                    # The checkpoint copied exactly the frames shipped now: the WAL's next
                    # generation goes on from its frame 0.
                    tracked.replica.mark_checkpointed(carry[2])
            except FencedError as exc:
                self._fenced(tracked, exc)
                continue
            except Exception as exc:  # (a bug: the chain goes on from a new snapshot)
                self._error(exc)
                self.rt.report(f"replication of {tracked.name!r}: {exc!r}; taking a snapshot")
                tracked.replica.abandon_capture()
                self._want_snapshot(tracked)
                continue
            self.stats["segments"] += 1
            self._await_ack(tracked, commits)

    def _await_ack(self, tracked: _File, commits: int) -> None:
        previous = self.awaiting.get(tracked.name)
        self.awaiting[tracked.name] = (tracked, max(commits, previous[1] if previous else 0))

    async def _acknowledge(self) -> bool:
        """Read the fences, write the manifests due, acknowledge: only commits shipped before
        a fences read that does not name their file are acknowledged (log.py)."""
        try:
            self.stats["requests"] += 1
            fences = await anyio.to_thread.run_sync(
                read_fences, self.store, self.prefix, limiter=self.limiter
            )
        except ReplicaUnavailableError as exc:
            self._error(exc)
            return False
        awaiting, self.awaiting = self.awaiting, {}
        ok = True
        for tracked, target in awaiting.values():
            if tracked.fenced is not None or tracked.retired:
                continue  # (checked after each await below: a file may close meanwhile)
            claimed_by = fences.get(tracked.name, 0)
            if claimed_by > (tracked.replica.epoch or 0):
                self._fenced(
                    tracked,
                    FencedError(
                        f"{tracked.name!r} was taken over by another runtime (epoch {claimed_by})",
                        epoch=tracked.replica.epoch or 0,
                        current_epoch=claimed_by,
                    ),
                )
                continue
            unfolded = tracked.replica.unfolded
            # A first segment since a wake-up or a snapshot: the manifest must point at this
            # session's log before the commit counts as replicated.
            if (
                unfolded
                and not tracked.tail_set
                and not await self._fold(tracked, tail=self.prefix, tail_from=self.seq + 1)
            ):
                if tracked.fenced is None and not tracked.retired:
                    self._await_ack(tracked, target)
                    ok = False
                continue  # (retired meanwhile: not queued again, the round is not failed)
            tracked.ack(target, self.lags)
            self._maybe_checkpoint(tracked)
            if self._needs_compaction(tracked):
                self._want_snapshot(tracked)
            elif tracked.replica.unfolded:
                if tracked.fold_due_at == math.inf:
                    interval = self.options.fold_interval * tracked.fold_factor
                    tracked.fold_due_at = time.monotonic() + interval
                if (
                    time.monotonic() >= tracked.fold_due_at
                    or tracked.replica.unfolded >= self.options.fold_segments * tracked.fold_factor
                ) and not tracked.folding:
                    # Listing the segments is not needed for the acknowledgement (the log
                    # tail finds them): off the round, so that it does not add to the lag.
                    tracked.folding = True
                    if self.rt.task_group is not None:
                        self.rt.task_group.start_soon(self._fold_later, tracked)
        return ok

    async def _fold_later(self, tracked: _File) -> None:
        try:
            await self._fold(tracked, tail=self.prefix, tail_from=self.seq + 1)
        finally:
            tracked.folding = False
            if self.dirty:
                self.dirty_event.set()  # (a data.db may have waited for this mailbox's fold)
            if (
                tracked.commits > tracked.acked
                and tracked.capture is None
                and self.files.get(tracked.name) is tracked
            ):
                self.dirty[tracked.name] = tracked
                self.dirty_event.set()

    def _maybe_checkpoint(self, tracked: _File) -> None:
        """Right after an acknowledgement, while the actor waits for work (no transaction is
        open): checkpoint a file whose WAL is over ``checkpoint_frames`` and fully shipped.
        (Between turns this is rarely so for a mailbox that senders keep appending to.)"""
        act = tracked.act
        if (
            act is not None
            and act.waiting
            and act.files_open
            and tracked.end >= self.options.checkpoint_frames
            and tracked.acked == tracked.commits
            and tracked.capture is None
            and not tracked.reading
            and not tracked.uploading
            and not tracked.folding
        ):
            self._checkpoint(tracked)

    def _mailbox_blocks(self, tracked: _File) -> bool:
        """Whether ``data.db`` must wait for its mailbox: a turn in the replica whose message's
        append (with its idempotency key and sender cursor) is not would be applied twice by a
        retry after a restore. So data.db ships in the same log object as its mailbox, or
        after it, never before: not while the mailbox cannot ship (a snapshot uploading, a
        manifest being written, a log object not stored yet)."""
        act = tracked.act
        if act is None or len(act.replica.files) < 2 or tracked is not act.replica.files[0]:
            return False
        mailbox: _File = act.replica.files[1]
        if mailbox.fenced is not None:
            return False
        return (
            not mailbox.claimed
            or mailbox.capture is not None
            or mailbox.folding
            or mailbox.in_pending
        )

    async def _mailbox_caught_up(self, tracked: _File, *, wait: bool = True) -> bool:
        """Before a ``data.db`` snapshot upload: wait until its mailbox's commits made before
        the capture are in the replica (same reason as :meth:`_mailbox_blocks`). ``False``
        if they cannot be (the mailbox fenced, or closed behind)."""
        act = tracked.act
        if act is None or len(act.replica.files) < 2 or tracked is not act.replica.files[0]:
            return True
        mailbox: _File = act.replica.files[1]
        target = tracked.mailbox_commits_at_capture
        while mailbox.acked < target or mailbox.capture is not None:
            if (
                not wait
                or mailbox.fenced is not None
                or self.files.get(mailbox.name) is not mailbox
            ):
                return False
            event = mailbox.acked_event
            if mailbox.capture is None and mailbox.name not in self.dirty:
                self.dirty[mailbox.name] = mailbox
            self.urgent.set()
            self.dirty_event.set()
            await event.wait()
        return True

    def _needs_compaction(self, tracked: _File) -> bool:
        manifest = tracked.replica.manifest
        if manifest is None or not manifest.segments:
            return False
        if len(manifest.segments) >= self.options.compact_segments * tracked.compact_factor:
            return True
        return manifest.segments[0].flushed_at < self.rt.clock() - self.options.retention / 2

    async def _try_put_log(self, pending: _Pending) -> bool:
        """PUT a log object once; ``False`` if the store could not be reached (the caller
        tries again later with the same bytes: a log object never has two versions)."""
        key, data = pending.key, pending.data
        for t, _, _ in pending.shipping:
            t.reading = True
        try:
            try:
                await anyio.to_thread.run_sync(
                    functools.partial(self._put, key, data, if_none_match=True),
                    limiter=self.limiter,
                )
                return True
            except PreconditionFailedError:
                got = await anyio.to_thread.run_sync(self._get, key, limiter=self.limiter)
                if got is not None and got[0] == data:
                    return True  # an earlier attempt landed
                raise ReplicaError(f"log object {key!r} exists with other contents") from None
            except ReplicaUnavailableError as exc:
                self._error(exc)
                return False
        finally:
            for t, _, _ in pending.shipping:
                t.reading = False
                t.settle()

    async def _fold(self, tracked: _File, *, tail: str | None, tail_from: int) -> bool:
        """Write a file's manifest once; ``False`` if that failed (unreachable, or fenced)."""
        if tracked.fenced is not None or tracked.retired:
            return False
        try:
            async with tracked.manifest_lock:
                if tracked.retired:
                    return False  # closed while it waited for the lock: its ETag is old
                requests = await anyio.to_thread.run_sync(
                    functools.partial(tracked.replica.fold, tail=tail, tail_from=tail_from),
                    limiter=self.limiter,
                )
        except ReplicaUnavailableError as exc:
            self._error(exc)
            return False
        except FencedError as exc:
            self._fenced(tracked, exc)
            return False
        self.stats["requests"] += requests
        self.stats["puts"] += 1
        self.stats["manifests"] += 1
        tracked.tail_set = tail is not None
        tracked.fold_due_at = math.inf
        return True

    async def _claim_later(self, tracked: _File) -> None:
        """Take ownership of a file opened while the store was unreachable (one claim at a
        time per file: a round and a hibernation may both try)."""
        async with tracked.claim_lock:
            if not tracked.claimed and tracked.fenced is None and not tracked.retired:
                await self._claim_once(tracked)

    async def _claim_once(self, tracked: _File) -> None:
        try:
            previous = await anyio.to_thread.run_sync(
                self._takeover, tracked.replica, limiter=self.limiter
            )
        except ReplicaUnavailableError as exc:
            self._error(exc)
            if not tracked.retired:  # (never over the live file of that name)
                self.dirty[tracked.name] = tracked
            return
        except FencedError as exc:
            self._fenced(tracked, exc)
            return
        tracked.advance(Event.CLAIMED)
        if self.unclaimed.get(tracked.name) is tracked:
            del self.unclaimed[tracked.name]
        act = tracked.act
        if self.origin and act is not None and all(t.claimed for t in act.replica.files):
            self.claimed.add(act.aid)
        if previous is not None and previous.snapshot is not None and not self._ours(previous):
            self._fenced(
                tracked,
                FencedError(
                    f"{tracked.name!r} was written by runtime {previous.writer} while this one "
                    "could not reach the store: this runtime's copy diverged and is not "
                    "replicated; restore it from the replica to go on",
                    epoch=0,
                    current_epoch=previous.epoch,
                ),
            )
            return
        self._want_snapshot(tracked)

    def _fenced(self, tracked: _File, error: FencedError, *, report: bool = True) -> None:
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

    def _corrupt(self, tracked: _File, error: CorruptSnapshotError) -> None:
        """A file to snapshot is corrupt: it is not uploaded; it stops being replicated, and
        its actor stops (restored from the replica at its next wake-up)."""
        tracked.capture = None
        tracked.advance(Event.DROPPED)
        tracked.replica.abandon_capture()
        self._fenced(
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

    def _error(self, exc: BaseException) -> None:
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

    def _wake_behind(self) -> None:
        """Wake the actors that hibernated while the store was unreachable: waking takes their
        snapshots (they stay counted as behind until they are tracked again)."""
        for aid, (spec, key) in list(self.behind.items()):
            if aid not in self.rt.awake and not self.rt.closing.is_set():
                self.rt.wake_later(spec, key)

    async def _expire_logs(self) -> None:
        """Delete this session's log objects older than the retention, except those the
        current chain of a tracked file still names (that file is snapshotted first)."""
        horizon = self.rt.clock() - self.options.retention
        if not self.log_times or self.log_times[0][1] >= horizon:
            return
        protected = math.inf
        for tracked in self.files.values():
            manifest = tracked.replica.manifest
            if manifest is None or tracked.fenced is not None:
                continue
            if manifest.tail == self.prefix and tracked.replica.unfolded:
                protected = min(protected, manifest.tail_from)
            for segment in manifest.segments:
                seq = _log_seq(segment.key, self.prefix)
                if seq is not None:
                    protected = min(protected, seq)
                    if self._needs_compaction(tracked):
                        self._want_snapshot(tracked)
                    break
        while self.log_times and self.log_times[0][1] < horizon:
            seq, _ = self.log_times[0]
            if seq >= protected:
                return
            self.log_times.popleft()
            with contextlib.suppress(ReplicaUnavailableError):
                self.stats["requests"] += 1
                await anyio.to_thread.run_sync(
                    self.store.delete, log_key(self.prefix, seq), limiter=self.limiter
                )

    # -- durable mode ------------------------------------------------------------------------

    async def wait_replicated(self, act: ReplicatedActor) -> None:
        """Return once every commit of the actor's files so far is in the replica (durable
        mode: replies and acknowledgements wait for this)."""
        files: list[_File] = list(act.replica.files)
        for tracked in files:
            target = tracked.commits
            while (
                # (an answer stored before this session is in the replica with the baseline)
                (tracked.acked < target or not tracked.baseline_shipped)
                and tracked.fenced is None
                and self.files.get(tracked.name) is tracked
            ):
                event = tracked.acked_event
                if act.replica.due:
                    self.capture_due(act)  # no transaction is open here: a snapshot may run
                if tracked.capture is None and tracked.name not in self.dirty:
                    self.dirty[tracked.name] = tracked
                self.urgent.set()
                self.dirty_event.set()
                await event.wait()
            if tracked.fenced is not None:
                raise tracked.fenced

    async def wait_baseline(self, act: ReplicatedActor) -> None:
        """Return once the actor's ``data.db`` as it was when woken is in the replica (between
        turns: a snapshot may be taken here). A fence stops the actor; it returns then."""
        tracked: _File = act.replica.files[0]
        while (
            not tracked.baseline_shipped
            and tracked.fenced is None
            and self.files.get(tracked.name) is tracked
            and not act.closing
        ):
            event = tracked.acked_event
            if act.replica.due:
                self.capture_due(act)
            self.urgent.set()
            self.dirty_event.set()
            with anyio.move_on_after(0.5):  # (and looks at act.closing again)
                await event.wait()

    async def wait_token(self, token: AppendToken) -> None:
        """Return once a delivery is in the replica (durable mode's acknowledgement of a
        send); raises :class:`FencedError` if another runtime took the actor over."""
        while not token.done():
            f = token.file
            if f is None:
                return  # delivered into a closed mailbox: replicated when it wakes
            event = f.acked_event
            if f.capture is None and f.name not in self.dirty:
                self.dirty[f.name] = f
            self.urgent.set()
            self.dirty_event.set()
            await event.wait()
            if self.files.get(f.name) is not f and not token.done():
                return  # closed meanwhile: its hibernation snapshot holds it, or it is behind
        if token.file is not None and token.file.fenced is not None:
            raise token.file.fenced

    async def wait_all(self) -> None:
        """Return once every commit made so far, in every tracked file, is in the replica (or
        its file was fenced out); actors that hibernated while the store was unreachable are
        woken to catch up, and waited for. Hibernations under way when it is called are
        waited for too (what they commit, to ship the actor's last state, is part of it)."""
        passes = 0
        while True:
            hibernations = self.rt.counters.hibernations
            await self._wait_tracked()
            closing = [act for act in self.rt.awake.values() if act.hibernating]
            for act in closing:
                await act.closed.wait()
            if (closing or self.rt.counters.hibernations != hibernations) and passes < 3:
                passes += 1  # what those hibernations committed (a pending mark cleared)
                continue
            if not self.behind or self.rt.closing.is_set():
                return
            self._wake_behind()
            self.urgent.set()
            self.dirty_event.set()
            await anyio.sleep(0.01)  # (bounded by the actors' wake-ups, not by this timing)

    async def _wait_tracked(self) -> None:
        targets = [(t, t.commits) for t in self.files.values()]
        for tracked, target in targets:
            while (
                (tracked.acked < target or tracked.capture is not None)
                and tracked.fenced is None
                and self.files.get(tracked.name) is tracked
            ):
                event = tracked.acked_event
                act = tracked.act
                if act is not None and act.replica.due and act.waiting:
                    self.capture_due(act)
                if tracked.capture is None and tracked.name not in self.dirty:
                    self.dirty[tracked.name] = tracked
                self.urgent.set()
                self.dirty_event.set()
                await event.wait()

    # -- actors: hibernating -----------------------------------------------------------------

    async def detach(self, act: ReplicatedActor) -> None:
        """Before an actor's connections close: snapshot each changed file and write its
        manifest without a log tail, one attempt each (the store client retries inside); if
        the store cannot be reached, the actor is left behind and woken to catch up once a
        round succeeds."""
        files = list(act.replica.files)
        if not files:
            return
        with anyio.CancelScope(shield=True):
            for tracked in files:
                tracked.closing = True
            # The mailbox first: data.db must never be in the replica ahead of it. A delivery
            # into the closing mailbox after its snapshot holds data.db's upload back: the
            # mailbox is snapshotted again (a few passes at most, then it is left behind).
            for _ in range(DETACH_PASSES):
                complete = await self._detach_pass(files)
                if complete or not _mailbox_moved_on(files):
                    break
        for tracked in files:
            tracked.final_commits = tracked.commits
        if not complete and not any(t.fenced for t in files):
            for tracked in files:
                tracked.replica.abandon_capture()
                tracked.abandoned = True
            act.replica.saved = None
            self.behind[act.aid] = (act.spec, act.key)
            self.rt.directory.mark_pending(act.aid, act.spec.name, act.key)
            return
        if act.replica.clear_pending_when_shipped and not any(t.fenced for t in files):
            act.replica.clear_pending_when_shipped = False
            if all(t.commits == t.acked for t in files):
                self.rt.directory.clear_pending(act.aid)
        saved = {}
        for tracked in files:
            state = tracked.replica.saved_state()
            if state is None or tracked.fenced is not None:
                act.replica.saved = None
                return
            saved[tracked.name] = state
        act.replica.saved = {"session": self.session, "files": saved}

    async def _detach_pass(self, files: list[_File]) -> bool:
        """One pass of :meth:`detach` over an actor's files; whether all are in the replica
        (not tried while the store is failing: the actor is left behind at once)."""
        if self.unavailable:
            return False
        complete = True
        for tracked in reversed(files):
            if not complete:
                break
            await tracked.quiet()
            if tracked.fenced is not None:
                continue
            if not tracked.claimed:
                await self._claim_later(tracked)
                if not tracked.claimed or tracked.fenced is not None:
                    complete = False
                    continue
            if tracked.capture is not None and tracked.commits > tracked.capture_commits:
                # A snapshot taken earlier and not uploaded yet (its upload waited, then
                # stopped for the closing): commits came since, so take it again.
                tracked.capture = None
                tracked.advance(Event.DROPPED)
                tracked.replica.abandon_capture()
            if tracked.capture is None and (
                tracked.changed_since_snapshot or tracked.want_snapshot
            ):
                self._capture(tracked, upload=False)
            if tracked.capture is not None:
                await self._upload(tracked, final=True)
            if tracked.capture is not None:
                complete = False
                continue
            if (tracked.tail_set or tracked.replica.unfolded) and not await self._fold(
                tracked, tail=None, tail_from=0
            ):
                complete = False
                continue
        return complete

    def after_close(self, act: ReplicatedActor) -> None:
        """After an actor's connections closed: save what the next wake-up needs (unless a
        commit came after the final snapshot: a delivery while it closed)."""
        saved = act.replica.saved
        files: list[_File] = act.replica.files
        act.replica.files = []
        for tracked in files:
            self._untrack(tracked)
            if tracked.commits != tracked.final_commits:
                saved = None
        if saved is None:
            return
        folder = actor_dir(self.rt.root, act.aid)
        saved["stat"] = _stat(folder)
        tmp = folder / f".{STATE_FILE}.new"
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(saved, separators=(",", ":")))
            os.replace(tmp, folder / STATE_FILE)

    # -- closing -----------------------------------------------------------------------------

    async def close(self) -> None:
        """At runtime close, after the actors closed: one last round for the directory."""
        directory = self.files.get(DIRECTORY_FILE)
        if directory is None:
            return
        with anyio.CancelScope(shield=True):
            directory.closing = True
            await directory.quiet()
            if directory.fenced is None and (
                directory.commits > directory.acked or self.pending or self.awaiting
            ):
                if directory.capture is None:
                    self.dirty[DIRECTORY_FILE] = directory
                await self.round()
            await directory.quiet()
            if (
                directory.fenced is None
                and directory.acked == directory.commits
                and directory.capture is None
                and (directory.tail_set or directory.replica.unfolded)
            ):
                # Everything is listed in the manifest: the next open (or a restore) reads
                # no log tail (it would otherwise read every log object of this session).
                await self._fold(directory, tail=None, tail_from=0)
        self._untrack(directory)

    # -- statistics --------------------------------------------------------------------------

    def statistics(self) -> ReplicationStatistics:
        now = time.monotonic()
        behind = [
            t
            for t in self.files.values()
            if t.fenced is None and (t.commits > t.acked or t.capture is not None)
        ]
        oldest = min((t.first_unacked_at for t in behind if t.first_unacked_at), default=None)
        lags = sorted(self.lags)
        return ReplicationStatistics(
            files_behind=len(behind) + 2 * len(self.behind),
            lag=0.0 if oldest is None else now - oldest,
            lag_p50=_quantile(lags, 0.5),
            lag_p99=_quantile(lags, 0.99),
            rounds=self.stats["rounds"],
            segments=self.stats["segments"],
            snapshots=self.stats["snapshots"],
            manifests=self.stats["manifests"],
            requests=self.stats["requests"],
            puts=self.stats["puts"],
            bytes_uploaded=self.stats["bytes"],
            errors=self.stats["errors"],
            last_error=self.last_error,
            fenced=self.stats["fenced"],
            restores=self.stats["restores"],
        )


def _mailbox_moved_on(files: list[_File]) -> bool:
    """Whether a hibernation pass left ``data.db``'s snapshot waiting only because its mailbox
    took a delivery after the mailbox's own snapshot (another pass then completes)."""
    if len(files) != 2:
        return False
    data, mailbox = files
    return (
        data.capture is not None
        and data.fenced is None
        and mailbox.capture is None
        and mailbox.fenced is None
        and mailbox.commits > mailbox.acked
    )


def _log_seq(key: str, prefix: str) -> int | None:
    """The sequence number of a log object key of the session ``prefix`` (else ``None``)."""
    head = f"{prefix}/log/"
    if not key.startswith(head):
        return None
    try:
        return int(key[len(head) :])
    except ValueError:
        return None


def _prepare_all(work: list[tuple[_File, int, int]]) -> list[Any]:
    out: list[Any] = []
    for tracked, end, _ in work:
        try:
            out.append(tracked.replica.prepare(tracked.path, end))
        except (SnapshotNeeded, FencedError) as exc:
            out.append(exc)
        except Exception as exc:
            out.append(exc)
    return out


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _stat(folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in (DATA_FILE, MAILBOX_FILE):
        try:
            st = os.stat(folder / name)
            out[name] = [st.st_size, st.st_mtime_ns]
        except FileNotFoundError:
            out[name] = None
        try:
            out[name + "-wal"] = os.stat(folder / f"{name}-wal").st_size
        except FileNotFoundError:
            out[name + "-wal"] = 0
    return out


def _unchanged(file: str, now: dict[str, Any], then: dict[str, Any] | None) -> bool:
    """Whether ``file`` is as hibernation left it, its WAL empty (nothing wrote it since: a
    message appended to a hibernated actor's mailbox makes its next wake-up claim and
    snapshot the mailbox)."""
    if not then or then.get(file) is None:
        return False
    return (
        now.get(file) == then.get(file) and now.get(f"{file}-wal") == then.get(f"{file}-wal") == 0
    )


__all__ = [
    "ACTORS_PREFIX",
    "ORIGIN_FILE",
    "STAGING_PREFIX",
    "STATE_FILE",
    "CorruptReplicaError",
    "ReplicaConflictError",
    "Replication",
    "ReplicationEngine",
    "ReplicationStatistics",
    "restore_actor_files",
    "restore_runtime",
]
