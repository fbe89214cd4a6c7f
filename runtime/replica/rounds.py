"""The shipping rounds (:class:`Rounds`): one task ships all dirty files together.

Their committed frames, de-duplicated and compressed per file (``wal.py``), go into one log
object (``log.py``): one PUT per round however many actors changed, then one GET of the
session's fences, then the commits are acknowledged (durable replies released, sends at an
actor's output gate let go). The delay before a round runs from the first waiting commit and
adapts to load; a durable turn or a held send asks for one within ``min_delay``. A log object
that could not be stored is retried byte for byte; nothing is acknowledged without a fences
read after it. Also here: the manifest writes a round owes (the first segment after a wake-up
or snapshot, before its acknowledgement; folds by age or count, after it and off the round),
compaction, the expiry of this session's old log objects, and waking the actors left behind
once the store answers again.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import time
from typing import Any

import anyio
import anyio.to_thread
import attrs

from ..errors import (
    FencedError,
    PreconditionFailedError,
    ReplicaError,
    ReplicaUnavailableError,
)
from ..files.layout import DIRECTORY_FILE
from .log import encode_log, log_key, read_fences
from .replicator import (
    Prepared,
    SnapshotNeeded,
)
from .state import SHIPPABLE
from .tracking import MAX_BACKOFF, TrackedFile, Tracking
from .writes import Writes


@attrs.define
class _Pending:
    """A log object built by a round, until it is in the store."""

    key: str
    seq: int
    at: float
    data: bytes
    shipping: list[tuple[TrackedFile, Prepared, int]]
    entries: list[Any]


#: Seconds between looks at the store while it is failing or actors wait to catch up, with
#: nothing committed meanwhile.
PROBE_INTERVAL = 1.0


class Rounds:
    """The shipping rounds of one open runtime (module docstring)."""

    def __init__(self, tracking: Tracking, writes: Writes) -> None:
        self.tracking = tracking
        self.writes = writes
        self.rt = tracking.rt
        self.store = tracking.store
        self.options = tracking.options
        self.limiter = tracking.limiter
        self.hurrying = False
        self.log_times: collections.deque[tuple[int, float]] = collections.deque()
        self.rate = 0.0  # commits per second, smoothed
        self.rate_at = time.monotonic()
        self.round_lock = anyio.Lock()
        #: A log object that could not be PUT yet: retried, byte for byte, before anything else.
        self.pending: _Pending | None = None
        self.backoff = 0.0
        #: How long the last rounds took (the delay leaves room for the next one).
        self.round_times: collections.deque[float] = collections.deque(maxlen=20)

    async def run(self) -> None:
        """Ship dirty files, round after round, until cancelled. After a failed round (the
        store unreachable), wait with exponential backoff, then try again."""
        while True:
            if self.tracking.unavailable or self.tracking.behind:
                # Actors wait to catch up, or the store failed last: look at the store now and
                # then even when nothing is committed (a round would otherwise never come).
                with anyio.move_on_after(max(self.backoff, PROBE_INTERVAL)):
                    await self.tracking.dirty_event.wait()
                if not self.tracking.dirty_event.is_set():
                    await self._probe()
                    continue
            else:
                await self.tracking.dirty_event.wait()
            self.tracking.dirty_event = anyio.Event()
            if not self.tracking.urgent.is_set():
                # The delay runs from the first commit waiting (not from now: commits made
                # while the previous round worked would otherwise wait for it and the delay).
                since = (
                    self.tracking.dirty_since
                    if self.tracking.dirty_since is not None
                    else time.monotonic()
                )
                wait = since + self._delay() - time.monotonic()
                with anyio.move_on_after(max(0.0, wait)):
                    await self.tracking.urgent.wait()
            self.tracking.urgent = anyio.Event()
            self.tracking.dirty_since = None
            if await self.round():
                self.backoff = 0.0
            else:
                self.backoff = min(max(0.05, self.backoff * 2), MAX_BACKOFF)
                await anyio.sleep(self.backoff)
                self.tracking.dirty_event.set()

    async def _probe(self) -> None:
        """One cheap request (the session's fences): once it succeeds after failures, the
        store counts as reachable again and actors left behind are woken to catch up."""
        try:
            self.tracking.stats["requests"] += 1
            await anyio.to_thread.run_sync(
                read_fences, self.store, self.tracking.prefix, limiter=self.limiter
            )
        except ReplicaUnavailableError as exc:
            self.tracking.error(exc)
            self.backoff = min(max(0.05, self.backoff * 2), MAX_BACKOFF)
            return
        was_unavailable, self.tracking.unavailable = self.tracking.unavailable, False
        self.backoff = 0.0
        self.tracking.last_error = None
        if was_unavailable:
            self.wake_behind()
            if self.tracking.unclaimed:
                self.tracking.dirty_event.set()  # a round claims the files opened meanwhile

    def _delay(self) -> float:
        now = time.monotonic()
        span = now - self.rate_at
        if span > 0.05:
            self.rate = 0.5 * self.rate + 0.5 * (self.tracking.rate_commits / span)
            self.rate_at, self.tracking.rate_commits = now, 0
        o = self.options
        if any(
            t.act is not None and (t.act.spec.durable or t.act.outbox_gated) and t.commits > t.acked
            for t in self.tracking.dirty.values()
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
        self.tracking.urgent.set()

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
                self.tracking.error(exc)
                return False
            if done:  # (failed rounds wait their backoff instead)
                self.round_times.append(time.monotonic() - started)
            return done

    async def _round(self) -> bool:
        requests_before = self.tracking.stats["requests"]
        for name, t in list(self.tracking.dirty.items()):
            if t.retired:
                del self.tracking.dirty[
                    name
                ]  # a closed activation's file: its hibernation shipped it
        unclaimed = [
            t for t in self.tracking.unclaimed.values() if t.fenced is None and not t.retired
        ]
        for tracked in unclaimed:
            await self.writes.claim_later(tracked)
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
            for t in self.tracking.dirty.values()
            if t.state in SHIPPABLE
            and not t.in_pending
            and not t.folding
            and not self._mailbox_blocks(t)
        ]
        for t in files:
            del self.tracking.dirty[t.name]
        ready = []
        for tracked in files:
            if tracked.act is None and tracked.want_snapshot:
                self.writes.capture(tracked)  # the directory: between its (synchronous) commits
                continue
            ready.append(tracked)
        if ready:
            await self._ship(ready)
            if self.pending is not None:
                return False  # not landed: tried again next round
        if self.tracking.awaiting and not await self._acknowledge():
            return False
        if claims_failed:
            return False
        self.tracking.last_error = None
        if self.tracking.stats["requests"] > requests_before:
            self.tracking.unavailable = (
                False  # (a round that asked the store nothing proves nothing)
            )
        self.wake_behind()
        await self._expire_logs()
        directory = self.tracking.files.get(DIRECTORY_FILE)
        if (
            directory is not None
            and directory.end >= self.options.checkpoint_frames
            and directory.acked == directory.commits
            and directory.capture is None
        ):
            self.writes.checkpoint(directory)
        return True

    async def _ship(self, ready: list[TrackedFile]) -> None:
        shipping: list[tuple[TrackedFile, Prepared, int]] = []
        carried = [t for t in ready if t.carry is not None]
        for tracked in carried:
            assert tracked.carry is not None
            prepared_carry, commits_then, _ = tracked.carry
            shipping.append((tracked, prepared_carry, commits_then))
            if tracked.end or tracked.commits > commits_then:
                self.tracking.dirty[tracked.name] = tracked  # its next generation: the next round
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
                self.tracking.want_snapshot(tracked)
            elif isinstance(outcome, FencedError):
                self.tracking.fence(tracked, outcome)
            elif isinstance(outcome, BaseException):
                self.tracking.error(outcome)
                self.tracking.dirty[tracked.name] = tracked
            elif outcome is None:
                self._await_ack(tracked, commits)
            else:
                shipping.append((tracked, outcome, commits))
        if not shipping:
            return
        self.tracking.seq += 1
        at = self.rt.clock()
        data, entries = encode_log(
            self.tracking.session, self.tracking.seq, at, [(p.meta, p.data) for _, p, _ in shipping]
        )
        pending = _Pending(
            log_key(self.tracking.prefix, self.tracking.seq),
            self.tracking.seq,
            at,
            data,
            shipping,
            entries,
        )
        for tracked, _, _ in shipping:
            tracked.in_pending = True
        self.pending = pending
        if await self._try_put_log(pending):
            self._landed(pending)
            self.pending = None

    def _landed(self, pending: _Pending) -> None:
        """A log object is in the store: record its segments, and await their acks."""
        self.log_times.append((pending.seq, pending.at))
        self.tracking.stats["rounds"] += 1
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
                self.tracking.fence(tracked, exc)
                continue
            except Exception as exc:  # (a bug: the chain goes on from a new snapshot)
                self.tracking.error(exc)
                self.rt.report(f"replication of {tracked.name!r}: {exc!r}; taking a snapshot")
                tracked.replica.abandon_capture()
                self.tracking.want_snapshot(tracked)
                continue
            self.tracking.stats["segments"] += 1
            self._await_ack(tracked, commits)

    def _await_ack(self, tracked: TrackedFile, commits: int) -> None:
        previous = self.tracking.awaiting.get(tracked.name)
        self.tracking.awaiting[tracked.name] = (
            tracked,
            max(commits, previous[1] if previous else 0),
        )

    async def _acknowledge(self) -> bool:
        """Read the fences, write the manifests due, acknowledge: only commits shipped before
        a fences read that does not name their file are acknowledged (log.py)."""
        try:
            self.tracking.stats["requests"] += 1
            fences = await anyio.to_thread.run_sync(
                read_fences, self.store, self.tracking.prefix, limiter=self.limiter
            )
        except ReplicaUnavailableError as exc:
            self.tracking.error(exc)
            return False
        awaiting, self.tracking.awaiting = self.tracking.awaiting, {}
        ok = True
        for tracked, target in awaiting.values():
            if tracked.fenced is not None or tracked.retired:
                continue  # (checked after each await below: a file may close meanwhile)
            claimed_by = fences.get(tracked.name, 0)
            if claimed_by > (tracked.replica.epoch or 0):
                self.tracking.fence(
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
                and not await self.writes.fold(
                    tracked, tail=self.tracking.prefix, tail_from=self.tracking.seq + 1
                )
            ):
                if tracked.fenced is None and not tracked.retired:
                    self._await_ack(tracked, target)
                    ok = False
                continue  # (retired meanwhile: not queued again, the round is not failed)
            tracked.ack(target, self.tracking.lags)
            self._maybe_checkpoint(tracked)
            if self._needs_compaction(tracked):
                self.tracking.want_snapshot(tracked)
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

    async def _fold_later(self, tracked: TrackedFile) -> None:
        try:
            await self.writes.fold(
                tracked, tail=self.tracking.prefix, tail_from=self.tracking.seq + 1
            )
        finally:
            tracked.folding = False
            if self.tracking.dirty:
                # (a data.db may have waited for this mailbox's fold)
                self.tracking.dirty_event.set()
            if (
                tracked.commits > tracked.acked
                and tracked.capture is None
                and self.tracking.files.get(tracked.name) is tracked
            ):
                self.tracking.dirty[tracked.name] = tracked
                self.tracking.dirty_event.set()

    def _maybe_checkpoint(self, tracked: TrackedFile) -> None:
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
            self.writes.checkpoint(tracked)

    def _mailbox_blocks(self, tracked: TrackedFile) -> bool:
        """Whether ``data.db`` must wait for its mailbox: a turn in the replica whose message's
        append (with its idempotency key and sender cursor) is not would be applied twice by a
        retry after a restore. So data.db ships in the same log object as its mailbox, or
        after it, never before: not while the mailbox cannot ship (a snapshot uploading, a
        manifest being written, a log object not stored yet)."""
        act = tracked.act
        if act is None or len(act.replica.files) < 2 or tracked is not act.replica.files[0]:
            return False
        mailbox: TrackedFile = act.replica.files[1]
        if mailbox.fenced is not None:
            return False
        return (
            not mailbox.claimed
            or mailbox.capture is not None
            or mailbox.folding
            or mailbox.in_pending
        )

    def _needs_compaction(self, tracked: TrackedFile) -> bool:
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
                    functools.partial(self.tracking.put, key, data, if_none_match=True),
                    limiter=self.limiter,
                )
                return True
            except PreconditionFailedError:
                got = await anyio.to_thread.run_sync(self.tracking.get, key, limiter=self.limiter)
                if got is not None and got[0] == data:
                    return True  # an earlier attempt landed
                raise ReplicaError(f"log object {key!r} exists with other contents") from None
            except ReplicaUnavailableError as exc:
                self.tracking.error(exc)
                return False
        finally:
            for t, _, _ in pending.shipping:
                t.reading = False
                t.settle()

    def wake_behind(self) -> None:
        """Wake the actors that hibernated while the store was unreachable: waking takes their
        snapshots (they stay counted as behind until they are tracked again)."""
        for aid, (spec, key) in list(self.tracking.behind.items()):
            if aid not in self.rt.awake and not self.rt.closing.is_set():
                self.rt.wake_later(spec, key)

    async def _expire_logs(self) -> None:
        """Delete this session's log objects older than the retention, except those the
        current chain of a tracked file still names (that file is snapshotted first)."""
        horizon = self.rt.clock() - self.options.retention
        if not self.log_times or self.log_times[0][1] >= horizon:
            return
        protected = math.inf
        for tracked in self.tracking.files.values():
            manifest = tracked.replica.manifest
            if manifest is None or tracked.fenced is not None:
                continue
            if manifest.tail == self.tracking.prefix and tracked.replica.unfolded:
                protected = min(protected, manifest.tail_from)
            for segment in manifest.segments:
                seq = _log_seq(segment.key, self.tracking.prefix)
                if seq is not None:
                    protected = min(protected, seq)
                    if self._needs_compaction(tracked):
                        self.tracking.want_snapshot(tracked)
                    break
        while self.log_times and self.log_times[0][1] < horizon:
            seq, _ = self.log_times[0]
            if seq >= protected:
                return
            self.log_times.popleft()
            with contextlib.suppress(ReplicaUnavailableError):
                self.tracking.stats["requests"] += 1
                await anyio.to_thread.run_sync(
                    self.store.delete, log_key(self.tracking.prefix, seq), limiter=self.limiter
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


def _prepare_all(work: list[tuple[TrackedFile, int, int]]) -> list[Any]:
    out: list[Any] = []
    for tracked, end, _ in work:
        try:
            out.append(tracked.replica.prepare(tracked.path, end))
        except (SnapshotNeeded, FencedError) as exc:
            out.append(exc)
        except Exception as exc:
            out.append(exc)
    return out
