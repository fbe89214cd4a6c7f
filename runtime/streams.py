"""An actor's stream: entries by offset, their group-commit writer, and the live fan-out.

(For users: docs/howto/streams.md.)

Entries live in the actor's ``mailbox.db`` (``files/streamstore.py``), never in ``data.db``
while a turn holds it. Two ways in, one writer:

- ``self.publish(topic, item)`` in a turn writes a row to ``data.db``'s ``_torpor_published`` in
  the turn's transaction; after the commit (and the output gate), :meth:`Writer.relay` copies the
  committed rows into the stream, in commit order, and records in ``mailbox.db`` how far it got
  (so a crash in between relays them once at the next wake-up, never twice).
- ``current_step().emit(topic, chunk)`` in a step function (in the loop, or in a worker thread
  for a sync step) appends to the writer's pending list under a lock; the writer commits what
  is pending every :data:`GROUP_COMMIT_DELAY` seconds, one transaction per batch. The first
  chunk of an attempt in a topic also notes the attempt in ``stream_attempts``; a failed (or
  cancelled) attempt ends with a ``reset`` entry in each topic it emitted into, and an attempt
  that never ended (the process died) gets its ``reset`` at the next wake-up
  (:meth:`Writer.recover`). An ended attempt refuses further chunks, so a sync step's thread
  abandoned by a timeout cannot emit after its reset.

Only committed entries reach :class:`Feeds`, the runtime-wide fan-out: one :class:`Feed` per
actor that has subscribers, holding the last :data:`RING_ENTRIES` entries in memory. Every
subscriber of the actor reads that one ring; one that falls behind it reads pages from the file
by offset (no per-subscriber buffer, so a slow subscriber costs no memory). Offsets are
``mailbox.db``'s AUTOINCREMENT: never given twice, so an offset never changes meaning.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel

from .errors import StepAttemptEndedError
from .files import streamstore
from .records import StreamEntry
from .spec import DEFAULT_STREAM_MAX_AGE, DEFAULT_STREAM_MAX_ENTRIES

#: Seconds the writer waits after the first pending chunk before it commits the batch: chunks
#: emitted meanwhile (LLM tokens) share one transaction.
GROUP_COMMIT_DELAY = 0.002

#: Entries per actor kept in memory for its subscribers; one further behind reads the file.
RING_ENTRIES = 1024

#: Entries a subscriber reads from the file at a time when it catches up.
PAGE_ENTRIES = 256

#: Default retention of each topic (``runtime/spec.py``, where an actor type's are read).
DEFAULT_MAX_ENTRIES = DEFAULT_STREAM_MAX_ENTRIES
DEFAULT_MAX_AGE = DEFAULT_STREAM_MAX_AGE

#: Pruning runs once this many entries were written since the last one (and at each wake-up).
PRUNE_EVERY = 256

#: The kinds of entry.
ITEM, CHUNK, RESET = "item", "chunk", "reset"


def entry_from_row(row: streamstore.Row, decode: Callable[[bytes], Any]) -> StreamEntry:
    offset, topic, kind, step, step_key, attempt, item, at = row
    value = None if item is None else decode(item)
    return StreamEntry(offset, topic, kind, value, step, step_key, attempt, at)


def check_topic(topic: object) -> str:
    """A topic is a non-empty string (a typed refusal at the call, not in the writer)."""
    if not isinstance(topic, str) or not topic:
        raise TypeError(f"a stream topic must be a non-empty str (got {topic!r})")
    return topic


# -- fan-out ----------------------------------------------------------------------------------


class Feed:
    """The committed entries of one actor with subscribers: every entry with an offset above
    ``floor`` is in ``ring`` (oldest first); ``changed`` is set (and replaced) at each write."""

    def __init__(self, floor: int) -> None:
        self.floor = floor
        self.ring: collections.deque[StreamEntry] = collections.deque()
        self.changed = anyio.Event()
        self.subscribers = 0

    def add(self, entries: list[StreamEntry]) -> None:
        ring = self.ring
        ring.extend(entries)
        while len(ring) > RING_ENTRIES:
            self.floor = ring.popleft().offset
        self.changed.set()
        self.changed = anyio.Event()


class Commits:
    """Commits of one actor with watchers: ``changed`` is set (and replaced) at each."""

    def __init__(self) -> None:
        self.changed = anyio.Event()
        self.watchers = 0


class Feeds:
    """The runtime's live streams and watches, by actor id (only actors someone follows)."""

    def __init__(self) -> None:
        self.feeds: dict[str, Feed] = {}
        self.commits: dict[str, Commits] = {}

    def written(
        self, aid: str, rows: list[streamstore.Row], decode: Callable[[bytes], Any]
    ) -> None:
        """Entries ``rows`` of actor ``aid`` are committed: hand them to its subscribers."""
        feed = self.feeds.get(aid)
        if feed is not None and rows:
            feed.add([entry_from_row(row, decode) for row in rows])

    def committed(self, aid: str) -> None:
        """A turn of ``aid`` committed: its watchers look again."""
        commits = self.commits.get(aid)
        if commits is not None:
            commits.changed.set()
            commits.changed = anyio.Event()

    def subscribe(self, aid: str, last_offset: Callable[[], int]) -> Feed:
        feed = self.feeds.get(aid)
        if feed is None:
            feed = self.feeds[aid] = Feed(last_offset())
        feed.subscribers += 1
        return feed

    def unsubscribe(self, aid: str, feed: Feed) -> None:
        feed.subscribers -= 1
        if feed.subscribers == 0 and self.feeds.get(aid) is feed:
            del self.feeds[aid]

    def watch(self, aid: str) -> Commits:
        commits = self.commits.get(aid)
        if commits is None:
            commits = self.commits[aid] = Commits()
        commits.watchers += 1
        return commits

    def unwatch(self, aid: str, commits: Commits) -> None:
        commits.watchers -= 1
        if commits.watchers == 0 and self.commits.get(aid) is commits:
            del self.commits[aid]


class Entries:
    """The entries of one topic after an offset, then live (``Ref.open_stream``'s iterator).

    ``read(topic, after, upto, limit)`` reads committed rows from the actor's file (through
    its open mailbox when it is awake, else by opening the file for that one read)."""

    def __init__(
        self,
        feed: Feed,
        topic: str,
        after: int,
        read: Callable[[str, int, int | None, int], list[StreamEntry]],
    ) -> None:
        self._feed = feed
        self._topic = topic
        self._after = after
        self._read = read
        self._ready: collections.deque[StreamEntry] = collections.deque()

    def __aiter__(self) -> Entries:
        return self

    async def __anext__(self) -> StreamEntry:
        await anyio.lowlevel.checkpoint()
        while not self._ready:
            feed = self._feed
            changed = feed.changed
            if self._after < feed.floor:  # behind the ring: read the file up to its floor
                page = self._read(self._topic, self._after, feed.floor, PAGE_ENTRIES)
                self._ready.extend(page)
                self._after = page[-1].offset if page else feed.floor
                continue
            ring = feed.ring
            if ring and ring[-1].offset > self._after:
                topic, after = self._topic, self._after
                for entry in reversed(ring):
                    if entry.offset <= after:
                        break
                    if entry.topic == topic:
                        self._ready.appendleft(entry)
                self._after = ring[-1].offset
                continue
            await changed.wait()
        return self._ready.popleft()


# -- the writer -------------------------------------------------------------------------------


class Attempt:
    """One attempt of one step, as its ``StepInfo.emit`` writes chunks (thread-safe)."""

    def __init__(self, writer: Writer, seq: int, n: int, attempt: int, step: str, key: str):
        self.writer = writer
        self.seq = seq
        self.n = n
        self.attempt = attempt
        self.step = step
        self.key = key
        self.topics: set[str] = set()
        self.ended = False

    def emit(self, topic: str, chunk: Any) -> None:
        check_topic(topic)
        writer = self.writer
        payload = writer.encode(chunk)
        with writer.lock:
            if self.ended:
                raise StepAttemptEndedError(
                    f"step {self.step!r} attempt {self.attempt} has ended: it can emit no more "
                    "(a chunk after its reset marker would pass for the retry's)"
                )
            if topic not in self.topics:
                self.topics.add(topic)
                writer.opened.append((self.seq, self.n, self.attempt, topic, self.step, self.key))
            writer.rows.append((topic, CHUNK, self.step, self.key, self.attempt, payload, 0.0))
            wake = writer.schedule_locked()
        if wake:
            writer.wake()

    def end(self, ok: bool) -> bool:
        """End the attempt (no chunk after this); if it failed, queue a reset marker in each
        topic it emitted into and forget it. Return whether it emitted anything (then the
        caller awaits ``writer.durable()`` before journaling the step's outcome)."""
        writer = self.writer
        with writer.lock:
            if self.ended:
                return False
            self.ended = True
            if not self.topics:
                return False
            if ok:
                return True  # its chunks are queued already: the caller waits for them
            for topic in sorted(self.topics):
                writer.rows.append((topic, RESET, self.step, self.key, self.attempt, None, 0.0))
            writer.closed.append((self.seq, self.n, self.attempt))
            wake = writer.schedule_locked()
        if wake:
            writer.wake()
        return True

    def forget(self) -> None:
        """The step's outcome is journaled: its attempt needs no reset at recovery."""
        writer = self.writer
        with writer.lock:
            writer.closed.append((self.seq, self.n, self.attempt))
            wake = writer.schedule_locked()
        if wake:
            writer.wake()


class Writer:
    """The one writer of an actor's stream: pending rows, committed in groups."""

    def __init__(
        self,
        aid: str,
        conn: Callable[[], Any],
        feeds: Feeds,
        encode: Callable[[Any], bytes],
        decode: Callable[[bytes], Any],
        clock: Callable[[], float],
        start_soon: Callable[[Callable[[], Any]], None],
        retention: tuple[int, float],
        report: Callable[[str], None],
    ) -> None:
        self.aid = aid
        self._report = report
        self._conn = conn
        self.feeds = feeds
        self.encode = encode
        self.decode = decode
        self.clock = clock
        self._start_soon = start_soon
        self.max_entries, self.max_age = retention
        self.lock = threading.Lock()
        self.rows: list[streamstore.NewRow] = []
        self.opened: list[streamstore.Attempt] = []
        self.closed: list[tuple[int, int, int]] = []
        self.published_upto: int | None = None
        self.relayed = 0  # the last published row of data.db in the stream
        self._scheduled = False
        self._closed = False
        self._loop_thread = threading.get_ident()
        self._token = anyio.lowlevel.current_token()
        self._queued = 0  # writes queued so far, and committed so far
        self._done = 0
        self._flushed = anyio.Event()
        self.error: BaseException | None = None
        self._since_prune = 0
        self._topics: set[str] = set()

    def attempt(self, seq: int, n: int, attempt: int, step: str, key: str) -> Attempt:
        return Attempt(self, seq, n, attempt, step, key)

    # -- scheduling (any thread) ---------------------------------------------------------

    def schedule_locked(self) -> bool:
        """Count one more queued write (the lock is held); whether the flush task must start."""
        self._queued += 1
        if self._scheduled or self._closed:
            return False
        self._scheduled = True
        return True

    def wake(self) -> None:
        if threading.get_ident() == self._loop_thread:
            with contextlib.suppress(RuntimeError):  # the runtime is closing: close() flushes
                self._start_soon(self._run)
            return
        # (If the runtime has ended, the open attempt gets its reset at the next wake-up.)
        with contextlib.suppress(anyio.RunFinishedError):
            anyio.from_thread.run_sync(self._start_soon, self._run, token=self._token)

    async def _run(self) -> None:
        while True:
            await anyio.sleep(GROUP_COMMIT_DELAY)
            try:
                if not self.flush():
                    return
            except Exception as exc:  # (disk full, a corrupt file): this actor's, not the runtime's
                self._report(f"stream of {self.aid}: a write failed: {exc!r}")
                with self.lock:
                    self._scheduled = False
                return

    async def durable(self) -> None:
        """Wait until everything queued so far is committed (or raise the write's error)."""
        target = self._queued
        while self._done < target:
            if self._closed:
                break
            await self._flushed.wait()
        if self.error is not None:
            raise self.error

    # -- writing (the loop's thread) -----------------------------------------------------

    def flush(self) -> bool:
        """Commit what is pending in one transaction; whether there was anything."""
        if self._closed:
            return False
        with self.lock:
            rows, self.rows = self.rows, []
            opened, self.opened = self.opened, []
            closed, self.closed = self.closed, []
            published, self.published_upto = self.published_upto, None
            queued = self._queued
            if not (rows or opened or closed or published is not None):
                self._scheduled = False
                self._done = queued
                self._flushed.set()
                self._flushed = anyio.Event()
                return False
        now = self.clock()  # (the write's time: the loop's clock, never a worker thread's)
        rows = [row if row[1] == ITEM else (*row[:6], now) for row in rows]
        try:
            stored = streamstore.write(self._conn(), rows, opened, closed, published)
        except Exception as exc:
            self.error = exc
            raise
        finally:
            self._done = queued
            self._flushed.set()
            self._flushed = anyio.Event()
        self.error = None
        for row in stored:
            self._topics.add(row[1])
        self._since_prune += len(stored)
        if self._since_prune >= PRUNE_EVERY:
            self.prune()
        self.feeds.written(self.aid, stored, self.decode)
        return True

    def prune(self) -> None:
        topics, self._topics = self._topics, set()
        self._since_prune = 0
        streamstore.prune(self._conn(), topics, self.max_entries, self.clock() - self.max_age)

    def relay(self, published: list[tuple[int, str, bytes, float]]) -> None:
        """Copy committed published rows into the stream (commit order), now."""
        if not published:
            return
        with self.lock:
            for _, topic, item, at in published:
                self.rows.append((topic, ITEM, None, None, None, item, at))
            self.published_upto = published[-1][0]
            self._queued += 1
        self.flush()
        self.relayed = published[-1][0]

    def recover(
        self,
        published: list[tuple[int, str, bytes, float]],
        completed: Callable[[int, int, int], bool],
    ) -> None:
        """At wake-up: reset markers for the attempts a died process left open (unless
        ``completed(seq, n, attempt)``: its outcome was journaled), and the published rows
        committed but not relayed yet. Then prune every topic."""
        conn = self._conn()
        with self.lock:
            for seq, n, attempt, topic, step, key in streamstore.open_attempts(conn):
                if not completed(seq, n, attempt):
                    self.rows.append((topic, RESET, step, key, attempt, None, 0.0))
                self.closed.append((seq, n, attempt))
            self._queued += 1
        self.relay(published)
        self.flush()
        self._topics = {r[0] for r in conn.execute("SELECT DISTINCT topic FROM stream").fetchall()}
        if self._topics:  # (an actor that never streamed pays three reads at its wake-up)
            self.prune()

    def close(self) -> None:
        """The actor's files close: commit what is pending; emits from now on are refused by
        their ended attempts (a turn in flight was ended first)."""
        self.flush()
        with self.lock:
            self._closed = True
        self._flushed.set()
