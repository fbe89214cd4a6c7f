"""The writes of a tracked file's replica outside the log objects (:class:`Writes`): taking a
replica over (a new epoch, the previous writer fenced), claims of files opened while the store
was unreachable, snapshots (captured between turns, uploaded in the background or at
hibernation), manifest folds, and checkpoints (frames not shipped yet carried to the next
round). The rounds (``rounds.py``) and the hand-over (``handover.py``) both call them; they
change the tracked files' state only through ``tracking.py``'s :class:`Tracking` and
:meth:`TrackedFile.advance`.
"""

from __future__ import annotations

import functools
import math

import anyio
import anyio.to_thread
import apsw
import attrs

from ..errors import (
    CorruptSnapshotError,
    FencedError,
    PreconditionFailedError,
    ReplicaError,
    ReplicaUnavailableError,
)
from .log import add_fence
from .replicator import (
    FileReplica,
    Manifest,
    Prepared,
    SnapshotNeeded,
    manifest_key,
    read_tail,
)
from .state import Event, State
from .tracking import MAX_BACKOFF, ReplicatedActor, TrackedFile, Tracking
from .wal import WalPosition

#: Seconds before a snapshot whose capture failed (the file busy) is tried again.
CAPTURE_RETRY = 0.2


class Writes:
    """A tracked file's writes to its replica outside the log objects (module docstring)."""

    def __init__(self, tracking: Tracking) -> None:
        self.tracking = tracking
        self.rt = tracking.rt
        self.store = tracking.store
        self.options = tracking.options
        self.limiter = tracking.limiter

    def takeover(self, replica: FileReplica) -> Manifest | None:
        """Take ownership of a file's replica (blocking: run in a thread). Returns the
        manifest as it was before (``None`` if there was none): the previous writer is fenced
        out, its log tail read to its end and folded into the new manifest."""
        name = replica.name
        key = manifest_key(name)
        for _ in range(10):
            got = self.tracking.get(key)
            if got is None:
                manifest = Manifest(
                    name,
                    1,
                    self.tracking.writer,
                    None,
                    (),
                    None,
                    tail=self.tracking.prefix,
                    tail_from=self.tracking.seq + 1,
                )
                try:
                    etag = self.tracking.put(key, manifest.encode(), if_none_match=True)
                except PreconditionFailedError:
                    continue
                replica.adopt(manifest, etag)
                self.tracking.stats["manifests"] += 1
                return None
            before = Manifest.decode(got[0], key=key)
            if before.writer == self.tracking.writer:
                # Written by this very session (an earlier wake-up of the actor in this
                # process, or a claim whose answer was lost): ownership does not change, so the
                # epoch does not either. The chain is taken up from a snapshot (the caller
                # takes one).
                replica.adopt(attrs.evolve(before, position=None, erasing=()), got[1])
                return before
            current = before
            if before.tail is not None:
                if before.tail != self.tracking.prefix:
                    add_fence(self.store, before.tail, name, before.epoch + 1)
                    self.tracking.stats["requests"] += 2
                    self.tracking.stats["puts"] += 1
                tail = read_tail(self.store, before)
                self.tracking.stats["requests"] += len(tail) + 1
                if tail:
                    last = tail[-1]
                    position = WalPosition(last.salt1, last.salt2, last.end_frame, (0, 0))
                    current = attrs.evolve(
                        before, segments=(*before.segments, *tail), position=position
                    )
            claimed = attrs.evolve(
                current,
                erasing=(),  # (a tombstone's erasure is finished: its key has a new actor)
                epoch=before.epoch + 1,
                writer=self.tracking.writer,
                tail=self.tracking.prefix,
                tail_from=self.tracking.seq + 1,
            )
            try:
                etag = self.tracking.put(key, claimed.encode(), if_match=got[1])
            except PreconditionFailedError:
                continue  # the previous writer folded, or another claim: read it again
            # The position's checksum chain is unknown after a tail read: continuing the WAL
            # is verified by salts and frames only when the position is exact, so start over
            # with a snapshot in that case (prepare raises SnapshotNeeded).
            if claimed.position is not None and claimed.position.checksum == (0, 0):
                claimed = attrs.evolve(claimed, position=None)
            replica.adopt(claimed, etag)
            self.tracking.stats["manifests"] += 1
            return before
        raise FencedError(
            f"could not take ownership of {name!r}: other writers keep changing its manifest",
            epoch=0,
            current_epoch=None,
        )

    def ours(self, manifest: Manifest) -> bool:
        """Whether local files are at least as new as what ``manifest``'s writer shipped:
        it is this runtime (an earlier process), or the runtime this directory was restored
        from at a point in time (restoring the past is the point: it goes on from there). A
        runtime restored at the latest state fetches again what its origin wrote since."""
        writer = manifest.writer.split("/")[0]
        if writer == self.rt.runtime_id:
            return True
        return (
            writer == self.tracking.origin.get("runtime")
            and self.tracking.origin.get("at") is not None
        )

    def capture_due(self, act: ReplicatedActor) -> None:
        """Between turns (no transaction open): take the snapshots and checkpoints due."""
        act.replica.due = False
        for tracked in act.replica.files:
            if tracked.state is State.SNAPSHOT_DUE:
                if tracked.reading:
                    act.replica.due = True  # a round reads it: at the next gap
                else:
                    self.capture(tracked)
            elif (
                tracked.state is State.SHIPPING
                and tracked.end >= self.options.checkpoint_frames
                and not tracked.reading
                and not tracked.folding
            ):
                self.checkpoint(tracked)
                if tracked.end >= self.options.checkpoint_frames:
                    act.replica.due = True  # not now (a round reads it): next gap

    def capture(self, tracked: TrackedFile, *, upload: bool = True) -> None:
        try:
            captured = tracked.replica.capture(tracked.conn, tracked.path, owned=True)
        except FencedError as exc:
            self.tracking.fence(tracked, exc)
            return
        except (ReplicaError, apsw.Error) as exc:
            self.tracking.error(exc)
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
        self.tracking.dirty.pop(tracked.name, None)
        self.tracking.awaiting.pop(tracked.name, None)  # (acknowledged by the snapshot's upload)
        if upload and self.rt.task_group is not None:
            self.rt.task_group.start_soon(self.upload, tracked)

    async def _capture_again(self, tracked: TrackedFile) -> None:
        await anyio.sleep(CAPTURE_RETRY)
        act = tracked.act
        if act is not None and tracked.want_snapshot and not tracked.retired:
            act.replica.due = True
            act.work.set()

    def checkpoint(self, tracked: TrackedFile) -> None:
        """Checkpoint a file (``TRUNCATE``) with no transaction open on it. Frames not shipped
        yet are read first into a segment carried to the next round (no waiting for the
        store): the replica then goes on from frame 0 of the WAL's next generation."""
        if tracked.reading or tracked.in_pending or tracked.carry is not None:
            return
        if tracked.fenced is not None:
            return
        frame = tracked.end
        carry: Prepared | None = None
        if tracked.acked < tracked.commits or tracked.name in self.tracking.dirty:
            try:
                carry = tracked.replica.prepare(tracked.path, frame)
            except SnapshotNeeded:
                self.tracking.want_snapshot(tracked)
                return
            except FencedError as exc:
                self.tracking.fence(tracked, exc)
                return
            except (ReplicaError, OSError) as exc:
                self.tracking.error(exc)
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
                self.tracking.fence(tracked, exc)
        else:
            tracked.carry = (carry, tracked.commits, frame)
            self.tracking.dirty[tracked.name] = tracked
            self.tracking.dirty_event.set()

    async def upload(self, tracked: TrackedFile, *, final: bool = False) -> None:
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
                    tail = None if final else self.tracking.prefix
                    tail_from = 0 if final else self.tracking.seq + 1
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
                    self.tracking.error(exc)
                    if final:
                        return
                    await anyio.sleep(delay)
                    delay = min(delay * 2, MAX_BACKOFF)
                    continue
                except FencedError as exc:
                    self.tracking.fence(tracked, exc)
                    return
                except CorruptSnapshotError as exc:
                    self.tracking.found_corrupt(tracked, exc)
                    return
                tracked.snapshots_done += 1
                tracked.baseline_shipped = True
                self.tracking.stats["snapshots"] += 1
                self.tracking.stats["manifests"] += 1
                self.tracking.stats["requests"] += result.requests
                self.tracking.stats["puts"] += 2
                self.tracking.stats["bytes"] += result.bytes
                self.tracking.last_error = None
                tracked.capture = None
                tracked.advance(Event.UPLOADED)
                tracked.tail_set = not final
                tracked.ack(tracked.capture_commits, self.tracking.lags)
                tracked.poke()
                if tracked.end and self.tracking.files.get(tracked.name) is tracked:
                    self.tracking.dirty[tracked.name] = tracked
                if self.tracking.dirty:
                    # (this file, or a data.db that waited for this mailbox's snapshot)
                    self.tracking.dirty_event.set()
        finally:
            tracked.uploading = False
            tracked.settle()

    async def _mailbox_caught_up(self, tracked: TrackedFile, *, wait: bool = True) -> bool:
        """Before a ``data.db`` snapshot upload: wait until its mailbox's commits made before
        the capture are in the replica (same reason as :meth:`_mailbox_blocks`). ``False``
        if they cannot be (the mailbox fenced, or closed behind)."""
        act = tracked.act
        if act is None or len(act.replica.files) < 2 or tracked is not act.replica.files[0]:
            return True
        mailbox: TrackedFile = act.replica.files[1]
        target = tracked.mailbox_commits_at_capture
        while mailbox.acked < target or mailbox.capture is not None:
            if (
                not wait
                or mailbox.fenced is not None
                or self.tracking.files.get(mailbox.name) is not mailbox
            ):
                return False
            event = mailbox.acked_event
            if mailbox.capture is None and mailbox.name not in self.tracking.dirty:
                self.tracking.dirty[mailbox.name] = mailbox
            self.tracking.urgent.set()
            self.tracking.dirty_event.set()
            await event.wait()
        return True

    async def fold(self, tracked: TrackedFile, *, tail: str | None, tail_from: int) -> bool:
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
            self.tracking.error(exc)
            return False
        except FencedError as exc:
            self.tracking.fence(tracked, exc)
            return False
        self.tracking.stats["requests"] += requests
        self.tracking.stats["puts"] += 1
        self.tracking.stats["manifests"] += 1
        tracked.tail_set = tail is not None
        tracked.fold_due_at = math.inf
        return True

    async def claim_later(self, tracked: TrackedFile) -> None:
        """Take ownership of a file opened while the store was unreachable (one claim at a
        time per file: a round and a hibernation may both try)."""
        async with tracked.claim_lock:
            if not tracked.claimed and tracked.fenced is None and not tracked.retired:
                await self._claim_once(tracked)

    async def _claim_once(self, tracked: TrackedFile) -> None:
        try:
            previous = await anyio.to_thread.run_sync(
                self.takeover, tracked.replica, limiter=self.limiter
            )
        except ReplicaUnavailableError as exc:
            self.tracking.error(exc)
            if not tracked.retired:  # (never over the live file of that name)
                self.tracking.dirty[tracked.name] = tracked
            return
        except FencedError as exc:
            self.tracking.fence(tracked, exc)
            return
        tracked.advance(Event.CLAIMED)
        if self.tracking.unclaimed.get(tracked.name) is tracked:
            del self.tracking.unclaimed[tracked.name]
        act = tracked.act
        if self.tracking.origin and act is not None and all(t.claimed for t in act.replica.files):
            self.tracking.claimed.add(act.aid)
        if previous is not None and previous.snapshot is not None and not self.ours(previous):
            self.tracking.fence(
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
        self.tracking.want_snapshot(tracked)
