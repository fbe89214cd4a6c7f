"""Replication of a runtime's files to a replica store, wired into the runtime.

(How it works, for users: docs/explanation/replication.md.)

One :class:`ReplicationEngine` per open runtime, when ``open_runtime(replica=...)`` is given.
It is the facade the engine calls (the entry points, the barriers of durable mode and
``rt.replicated()``, append tokens, statistics); the work is done by four rooms, each in its
own module, which share one owner of the tracked files' state:

- **Tracking** (``tracking.py``, :class:`~.tracking.Tracking`): every open actor file
  (``data.db``, ``mailbox.db``) and ``directory.db`` is a ``TrackedFile`` with a WAL hook: it
  turns SQLite's auto-checkpoint off and reports each commit's frame count, which marks the
  file dirty. Closed files are not tracked (a hibernated actor costs nothing). ``Tracking``
  holds the tracked files, the dirty / unclaimed / awaiting / behind sets, the session's names,
  the statistics and the store's limiter, and the changes of them that every room makes
  (track, untrack, a snapshot wanted, a fence, a store error).
- **Rounds** (``rounds.py``): one task ships all dirty files together: their committed frames,
  de-duplicated and compressed per file (``wal.py``), go into one log object (``log.py``): one
  PUT per round however many actors changed, then one GET of the session's fences, then the
  commits are acknowledged (durable replies released). The delay before a round runs from the
  first waiting commit and adapts to load (short when commits are rare, up to ``max_delay``
  when they are many); a durable turn asks for a round at once. A log object that could not
  be stored is retried byte for byte; nothing is acknowledged without a fences read after it.
- **Writes** (``writes.py``): what a file's replica needs besides the log objects, called by
  the rounds and the hand-over alike. Manifests (``replicator.py``) are written when ownership
  is taken, when a snapshot starts a new generation, when a file ships its first segment after
  a wake-up or snapshot (before the acknowledgement: the manifest must point at this session's
  log), and later by age or count, after the acknowledgement and off the round. Checkpoints
  run between turns (or right after an acknowledgement while the actor waits): frames not
  shipped yet are read into a segment carried to the next round, then the WAL is truncated;
  the chain goes on from frame 0 of its next generation.
- **Hand-over** (``handover.py``): hibernation snapshots each changed file (a checkpoint, then
  the whole file, checked with ``quick_check`` before upload), writes the manifest without a
  log tail, and keeps what the next wake-up needs in ``replica.json`` in the actor's folder,
  so that waking again in this process costs no request. If the store is down, the actor is
  left behind and woken to catch up once a round succeeds. Waking an actor for the first time
  in this process takes ownership of its files (a higher epoch, the previous writer fenced,
  its log tail closed), and restores the files from the replica (``restore.py``) when they
  are missing here, were last written by another runtime, or are corrupt.

Each tracked file's replication state (unclaimed, shipping, snapshot due, captured, fenced,
closed) is one table in ``state.py``, changed only by ``TrackedFile.advance``. Each file is
restored to its own latest state, so the runtime orders what could contradict: applied
messages leave the mailbox, and delivered outbox rows leave the sender, only once what they
depend on is in the replica.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from ..errors import (
    CorruptReplicaError,
    ReplicaConflictError,
    ReplicaUnavailableError,
)
from ..files.layout import DATA_FILE, DIRECTORY_FILE, MAILBOX_FILE, actor_id
from ..records import ReplicationStatistics
from .handover import Handover
from .log import session_prefix
from .options import Replication
from .replicator import erase
from .restore import (
    ACTORS_PREFIX,
    ORIGIN_FILE,
    STAGING_PREFIX,
    STATE_FILE,
    actor_file_name,
    forget_erased,
    read_origin,
    restore_actor_files,
    restore_directory_if_missing,
    restore_runtime,
    retrying,
)
from .rounds import Rounds
from .state import State
from .store import ReplicaStore
from .tracking import (
    ActorReplica,
    AppendToken,
    ReplicatedActor,
    ReplicationHost,
    TrackedFile,
    Tracking,
)
from .writes import Writes


class ReplicationEngine:
    """The replication of one open runtime (see the module docstring): the entry points and
    barriers the engine calls, handed to the rooms that own the work."""

    def __init__(self, runtime: ReplicationHost, store: ReplicaStore, options: Replication) -> None:
        self.rt = runtime
        self.store = store
        self.options = options
        #: The tracked files and the state the rooms below share (one owner).
        self.tracking = Tracking(runtime, store, options)
        self.writes = Writes(self.tracking)
        self.rounds = Rounds(self.tracking, self.writes)
        self.handover = Handover(self.tracking, self.writes)

    # -- what the engine reads of the shared state -------------------------------------------

    @property
    def corrupt(self) -> dict[str, BaseException]:
        """Actors whose files were found corrupt: the next wake-up restores them."""
        return self.tracking.corrupt

    @property
    def origin(self) -> dict[str, Any]:
        """The runtime this directory was restored from, and the point (``REPLICA_ORIGIN``)."""
        return self.tracking.origin

    @property
    def unavailable(self) -> bool:
        """The store failed last (a request since has not succeeded)."""
        return self.tracking.unavailable

    def get(self, key: str) -> tuple[bytes, str] | None:
        """One GET of the store, counted (blocking: run in a thread)."""
        return self.tracking.get(key)

    async def erase_actor(self, aid: str) -> None:
        """A deleted actor (its files closed and removed here): replace both files' manifests
        with tombstones, delete their snapshots and zero their segments in the log objects
        (``replicator.erase``), then forget what
        this session knew of it. Deliveries into its mailbox that waited for the replica are
        done (there is nothing left to lose). Raises the store's errors
        (:class:`ReplicaUnavailableError`): the caller tries again later."""
        tracking = self.tracking
        erased_at = self.rt.clock()

        def erase_both() -> int:
            return sum(
                erase(self.store, actor_file_name(aid, file), erased_at=erased_at, writer=w)
                for file in (DATA_FILE, MAILBOX_FILE)
            )

        w = tracking.writer
        async with tracking.limiter:
            await anyio.to_thread.run_sync(erase_both)
        tracking.claimed.discard(aid)
        tracking.corrupt.pop(aid, None)
        tracking.behind.pop(aid, None)
        for token in tracking.waiting_appends.pop(aid, ()):
            token.receiver_deleted = True

    # -- handed to the rooms -----------------------------------------------------------------

    async def run(self) -> None:
        """Ship dirty files, round after round, until cancelled (``Rounds.run``)."""
        await self.rounds.run()

    def hurry(self) -> None:
        """The next round comes within ``min_delay`` (``Rounds.hurry``)."""
        self.rounds.hurry()

    async def round(self) -> bool:
        """One round now (``Rounds.round``); ``False`` if the store could not be reached."""
        return await self.rounds.round()

    def local_files_current(self, aid: str) -> bool:
        """Whether a message may be appended to a hibernated actor's local mailbox
        (``Handover.local_files_current``)."""
        return self.handover.local_files_current(aid)

    async def prepare_files(
        self, act: ReplicatedActor, known: bool, *, force_restore: bool = False
    ) -> None:
        """Before an actor's files are opened (``Handover.prepare_files``)."""
        await self.handover.prepare_files(act, known, force_restore=force_restore)

    def attach(self, act: ReplicatedActor) -> None:
        """After an actor's files are opened: track them (``Handover.attach``)."""
        self.handover.attach(act)

    def capture_due(self, act: ReplicatedActor) -> None:
        """Between turns: take the snapshots and checkpoints due (``Writes.capture_due``)."""
        self.writes.capture_due(act)

    async def detach(self, act: ReplicatedActor) -> None:
        """Before an actor's connections close (``Handover.detach``)."""
        await self.handover.detach(act)

    def after_close(self, act: ReplicatedActor) -> None:
        """After an actor's connections closed (``Handover.after_close``)."""
        self.handover.after_close(act)

    # -- names, opening, deliveries, barriers, closing, statistics ----------------------------

    @staticmethod
    def actor_name(aid: str, file: str) -> str:
        return actor_file_name(aid, file)

    def restore_directory_if_missing(self, root: Path) -> bool:
        """Before the directory is opened: restore it from the replica when it is missing
        here (a fresh machine). Returns whether it was restored (``restore.py``)."""
        if not restore_directory_if_missing(self.store, root):
            return False
        self.tracking.stats["restores"] += 1
        return True

    def start(self) -> None:
        """After the directory is open: take ownership of its replica and track it."""
        rt = self.rt
        self.tracking.prefix = session_prefix(rt.runtime_id, self.tracking.session)
        self.tracking.writer = f"{rt.runtime_id}/{self.tracking.session}"
        conn = rt.directory.conn
        replica = self.tracking.replica(DIRECTORY_FILE)
        state = State.SNAPSHOT_DUE
        try:
            previous = retrying(lambda: self.writes.takeover(replica))
        except ReplicaUnavailableError as exc:
            self.tracking.error(exc)
            state = State.UNCLAIMED
            previous = None
        tracked = TrackedFile(DIRECTORY_FILE, rt.root / DIRECTORY_FILE, conn, replica, None, state)
        if state is State.UNCLAIMED:
            self.tracking.unclaimed[DIRECTORY_FILE] = tracked
        self.tracking.origin = read_origin(rt.root)
        if previous is not None and previous.snapshot is not None:
            owner = previous.writer.split("/")[0]
            if (
                owner not in (rt.runtime_id, self.tracking.origin.get("runtime"))
                and rt.directory.count() > 0
            ):
                raise ReplicaConflictError(
                    f"the replica prefix holds the files of runtime {owner}, and this runtime "
                    f"({rt.runtime_id}) has actors of its own: use another prefix, or restore "
                    "from that replica into an empty directory"
                )
        self.tracking.track(tracked)
        self.tracking.want_snapshot(tracked)

    def note_pending(self, pending: list[tuple[Any, str]]) -> None:
        """At open: the actors the directory marks pending count as behind until they are
        woken (recovery wakes them) and tracked, so that :meth:`wait_all` covers whatever an
        earlier process committed in their files and did not ship."""
        for spec, key in pending:
            self.tracking.behind.setdefault(actor_id(spec.name, key), (spec, key))

    def append_token(self, aid: str) -> AppendToken:
        """After appending to ``aid``'s mailbox (open or closed)."""
        tracked = self.tracking.files.get(self.actor_name(aid, MAILBOX_FILE))
        if tracked is not None and not tracked.closing:
            return AppendToken(self.tracking, aid, tracked, tracked.commits)
        token = AppendToken(self.tracking, aid, None, 0)
        self.tracking.waiting_appends.setdefault(aid, []).append(token)
        return token

    def directory_token(self) -> AppendToken:
        """After a change to the directory (a child created by ``spawn``)."""
        tracked = self.tracking.files.get(DIRECTORY_FILE)
        return AppendToken(self.tracking, "", tracked, tracked.commits if tracked else 0)

    async def wait_replicated(self, act: ReplicatedActor) -> None:
        """Return once every commit of the actor's files so far is in the replica (durable
        mode: replies and acknowledgements wait for this)."""
        files: list[TrackedFile] = list(act.replica.files)
        for tracked in files:
            target = tracked.commits
            while (
                # (an answer stored before this session is in the replica with the baseline)
                (tracked.acked < target or not tracked.baseline_shipped)
                and tracked.fenced is None
                and self.tracking.files.get(tracked.name) is tracked
            ):
                event = tracked.acked_event
                if act.replica.due:
                    self.writes.capture_due(act)  # no transaction is open here: a snapshot may run
                if tracked.capture is None and tracked.name not in self.tracking.dirty:
                    self.tracking.dirty[tracked.name] = tracked
                self.tracking.urgent.set()
                self.tracking.dirty_event.set()
                await event.wait()
            if tracked.fenced is not None:
                raise tracked.fenced

    async def wait_baseline(self, act: ReplicatedActor) -> None:
        """Return once the actor's ``data.db`` as it was when woken is in the replica (between
        turns: a snapshot may be taken here). A fence stops the actor; it returns then."""
        tracked: TrackedFile = act.replica.files[0]
        while (
            not tracked.baseline_shipped
            and tracked.fenced is None
            and self.tracking.files.get(tracked.name) is tracked
            and not act.closing
        ):
            event = tracked.acked_event
            if act.replica.due:
                self.writes.capture_due(act)
            self.tracking.urgent.set()
            self.tracking.dirty_event.set()
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
            if f.capture is None and f.name not in self.tracking.dirty:
                self.tracking.dirty[f.name] = f
            self.tracking.urgent.set()
            self.tracking.dirty_event.set()
            await event.wait()
            if self.tracking.files.get(f.name) is not f and not token.done():
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
            if not self.tracking.behind or self.rt.closing.is_set():
                return
            self.rounds.wake_behind()
            self.tracking.urgent.set()
            self.tracking.dirty_event.set()
            await anyio.sleep(0.01)  # (bounded by the actors' wake-ups, not by this timing)

    async def _wait_tracked(self) -> None:
        targets = [(t, t.commits) for t in self.tracking.files.values()]
        for tracked, target in targets:
            while (
                (tracked.acked < target or tracked.capture is not None)
                and tracked.fenced is None
                and self.tracking.files.get(tracked.name) is tracked
            ):
                event = tracked.acked_event
                act = tracked.act
                if act is not None and act.replica.due and act.waiting:
                    self.writes.capture_due(act)
                if tracked.capture is None and tracked.name not in self.tracking.dirty:
                    self.tracking.dirty[tracked.name] = tracked
                self.tracking.urgent.set()
                self.tracking.dirty_event.set()
                await event.wait()

    async def close(self) -> None:
        """At runtime close, after the actors closed: one last round for the directory."""
        directory = self.tracking.files.get(DIRECTORY_FILE)
        if directory is None:
            return
        with anyio.CancelScope(shield=True):
            directory.closing = True
            await directory.quiet()
            if directory.fenced is None and (
                directory.commits > directory.acked or self.rounds.pending or self.tracking.awaiting
            ):
                if directory.capture is None:
                    self.tracking.dirty[DIRECTORY_FILE] = directory
                await self.rounds.round()
            await directory.quiet()
            if (
                directory.fenced is None
                and directory.acked == directory.commits
                and directory.capture is None
                and (directory.tail_set or directory.replica.unfolded)
            ):
                # Everything is listed in the manifest: the next open (or a restore) reads
                # no log tail (it would otherwise read every log object of this session).
                await self.writes.fold(directory, tail=None, tail_from=0)
        self.tracking.untrack(directory)

    def statistics(self) -> ReplicationStatistics:
        now = time.monotonic()
        behind = [
            t
            for t in self.tracking.files.values()
            if t.fenced is None and (t.commits > t.acked or t.capture is not None)
        ]
        oldest = min((t.first_unacked_at for t in behind if t.first_unacked_at), default=None)
        lags = sorted(self.tracking.lags)
        return ReplicationStatistics(
            files_behind=len(behind) + 2 * len(self.tracking.behind),
            lag=0.0 if oldest is None else now - oldest,
            lag_p50=_quantile(lags, 0.5),
            lag_p99=_quantile(lags, 0.99),
            rounds=self.tracking.stats["rounds"],
            segments=self.tracking.stats["segments"],
            snapshots=self.tracking.stats["snapshots"],
            manifests=self.tracking.stats["manifests"],
            requests=self.tracking.stats["requests"],
            puts=self.tracking.stats["puts"],
            bytes_uploaded=self.tracking.stats["bytes"],
            errors=self.tracking.stats["errors"],
            last_error=self.tracking.last_error,
            fenced=self.tracking.stats["fenced"],
            restores=self.tracking.stats["restores"],
        )


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


__all__ = [
    "ACTORS_PREFIX",
    "ORIGIN_FILE",
    "STAGING_PREFIX",
    "STATE_FILE",
    "ActorReplica",
    "AppendToken",
    "CorruptReplicaError",
    "ReplicaConflictError",
    "ReplicatedActor",
    "Replication",
    "ReplicationEngine",
    "ReplicationHost",
    "ReplicationStatistics",
    "TrackedFile",
    "forget_erased",
    "restore_actor_files",
    "restore_runtime",
]
