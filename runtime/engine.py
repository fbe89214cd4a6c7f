"""The engine of a runtime: what it shares, and the rooms it holds.

It owns what the whole runtime shares (the directory, the codec, the registry of types, the
counters, the replication engine, the LOCK) and delegates the rest to three rooms:
``residency.py`` (which actors are awake; wake-ups, hibernations, the supervisor),
``delivery.py`` (send, ask, query, the delivery of outbox rows) and ``admin.py`` (dead letters,
turns in flight, cancel, restart, resume).

All SQLite work happens on the event loop's thread, synchronously: a commit in WAL mode with
``synchronous=NORMAL`` costs microseconds, far less than a hop to a worker thread, and it keeps
every actor's state single-threaded like a Durable Object's.
"""

from __future__ import annotations

import collections
import contextlib
import resource
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from .activation import check_payload
from .admin import Admin
from .clock import Clock
from .codec import Codec
from .context import refuse_inside_turn as _refuse_inside_turn
from .counters import Counters
from .delivery import Delivery
from .errors import (
    RuntimeClosedError,
    UnknownActorTypeError,
)
from .files import db, lock
from .files.directory import Directory
from .files.layout import (
    DIRECTORY_FILE,
    actor_id,
)
from .host import Waiter
from .lifecycle import Event, State
from .records import (
    LifecycleEvent,
    RuntimeStatistics,
)
from .ref import Ref
from .replica.shipper import Replication, ReplicationEngine
from .replica.store import ReplicaStore
from .residency import Residency
from .run import Run
from .runs import DEFAULT_RUN_RETENTION, Runs
from .spec import TypeSpec, check_durable_types, check_key, index_types
from .streams import Feeds
from .subscriptions import Subscriptions

A = TypeVar("A")
R = TypeVar("R")

#: Largest encoded message (arguments) or reply. Mailbox rows are read whole and held in memory
#: while queued; a megabyte keeps a backlog of thousands affordable. Large data belongs in the
#: actor's own tables.
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
#: How long the result of a call with an ``idempotency_key`` is kept for retries: a day, as
#: Stripe keeps its idempotency keys.
DEFAULT_IDEMPOTENCY_TTL = 24 * 3600.0
#: How long closing the runtime waits for turns in progress: long enough for an LLM call to
#: return, short enough for a deploy. A cancelled turn rolls back and runs again later.
DEFAULT_SHUTDOWN_GRACE = 30.0
#: Seconds without a turn, a query or a queued message before an actor hibernates. Long enough
#: to keep an agent awake through one run's burst of messages and the seconds between its LLM
#: calls (re-waking costs about a millisecond: two file opens); short enough that a
#: million mostly idle agents hold no descriptors and no memory.
DEFAULT_IDLE_TIMEOUT = 30.0
#: File descriptors budgeted per awake actor. Measured: four (data.db and mailbox.db with their
#: -wal files; the unix-excl VFS keeps the WAL index in memory, so no -shm), six once a @query
#: opened its read-only connection. Eight leaves room for SQLite's temporary files.
FDS_PER_AWAKE_ACTOR = 8


def default_max_awake() -> int:
    """How many actors may be awake at once, from this process's descriptor limit.

    A tenth of the limit (at least 64) is left to the application and to directory.db.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    spare = max(64, soft // 10)
    return max(1, (soft - spare) // FDS_PER_AWAKE_ACTOR)


class Engine:
    """The engine of one runtime: what the whole runtime shares, and its rooms.

    Users hold the facade (``runtime/runtime.py``'s ``Runtime``); refs, activations, turns,
    steps and replication hold this, through the protocols of ``host.py``, ``ref.py`` and
    ``replica/tracking.py``.
    """

    def __init__(
        self,
        root: Path,
        types: Iterable[type],
        *,
        message_types: Iterable[type],
        synchronous: str,
        max_message_bytes: int,
        max_key_bytes: int,
        idempotency_ttl: float,
        shutdown_grace: float,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_awake: int | None = None,
        clock: Callable[[], float] = time.time,
        replica: ReplicaStore | None = None,
        replication: Replication | None = None,
        run_retention: float = DEFAULT_RUN_RETENTION,
    ) -> None:
        specs = []
        for cls in types:
            spec = getattr(cls, "__torpor_spec__", None)
            if not isinstance(spec, TypeSpec) or spec.cls is not cls:
                raise TypeError(f"types must be subclasses of actors.Actor (got {cls!r})")
            specs.append(spec)
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL' (got {synchronous!r})")
        if not isinstance(max_message_bytes, int) or max_message_bytes < 64:
            raise ValueError(f"max_message_bytes must be an int >= 64 (got {max_message_bytes!r})")
        self.root = root
        self.specs: dict[str, TypeSpec] = index_types(specs)
        self.synchronous = synchronous
        self.max_message_bytes = max_message_bytes
        self.max_key_bytes = max_key_bytes
        self.idempotency_ttl = idempotency_ttl
        self.shutdown_grace = shutdown_grace
        self.codec = Codec(
            message_types,
            named_types=[cls for spec in self.specs.values() for cls in spec.named_classes()],
            ref_encoder=_ref_parts,
            ref_decoder=self.ref_by_name,
        )
        self.closing = anyio.Event()
        self.closed = False
        self.unknown_types: set[str] = set()
        self.reports: collections.deque[str] = collections.deque(maxlen=1000)
        #: Mailboxes checked for bad pages since the runtime opened (runtime/files/mailbox.py).
        self.sound_mailboxes = db.CheckedFiles()
        self.counters = Counters()
        self.parked_waiters: dict[str, dict[int, Waiter]] = {}  # askers of hibernated actors
        #: Test kit hook (actors.testing): called at each crash point of a turn.
        self.crash_hook: Callable[[str, Any, int, str], None] | None = None
        self.crashed = False
        self.runtime_id = ""  # from directory.db, at open
        #: Wall time (``clock``, injectable) and loop time: runtime/clock.py.
        self.clock = Clock(clock)
        self.wake_latencies: collections.deque[float] = collections.deque(maxlen=1000)
        if max_awake is None:
            max_awake = default_max_awake()
        if not isinstance(max_awake, int) or max_awake < 1:
            raise ValueError(f"max_awake must be an int >= 1 (got {max_awake!r})")
        if not (isinstance(idle_timeout, int | float) and idle_timeout >= 0):
            raise ValueError(
                f"idle_timeout must be a number of seconds >= 0 (got {idle_timeout!r})"
            )
        self.known_actors = 0
        self.stopped_actors = 0
        self.actors_with_timers = 0
        self.residency = Residency(self, max_awake=max_awake, idle_timeout=float(idle_timeout))
        self.delivery = Delivery(self, self.residency)
        self.residency.deliver_notices = self.delivery.deliver_notices
        self.admin = Admin(self, self.residency, self.delivery)
        self.runs = Runs(self, self.residency, self.delivery, self.admin, retention=run_retention)
        self.delivery.destroyed = self.admin.destroyed
        self.delete = self.admin.delete
        # What the protocols of host.py and ref.py call, answered by the rooms themselves.
        self.send = self.delivery.send
        self.ask = self.delivery.ask
        self.deliver = self.delivery.deliver
        self.outbox_send = self.delivery.outbox_send
        self.outbox_spawn = self.delivery.outbox_spawn
        self.create_spawned = self.delivery.create_spawned
        self.schedule = self.delivery.schedule
        self.feeds = Feeds()
        self.subscriptions = Subscriptions(self, self.residency, self.delivery)
        self.open_stream = self.subscriptions.open_stream
        self.open_watch = self.subscriptions.open_watch
        self.busy = self.residency.busy
        self.idle = self.residency.idle
        self.timer_hint = self.residency.timer_hint
        self.wake_later = self.residency.wake_later
        #: The awake actors (each from its wake-up until its files are closed), by actor id.
        self.awake = self.residency.awake
        self._subscribers: list[Any] = []
        self.events_dropped = 0
        self.task_group: Any = None
        self._lock_fd: int | None = None
        if replica is not None and not isinstance(replica, ReplicaStore):
            raise TypeError(
                f"replica must be an actors.DirectoryStore or actors.S3Store (got {replica!r})"
            )
        if replication is not None and not isinstance(replication, Replication):
            raise TypeError(f"replication must be an actors.Replication (got {replication!r})")
        check_durable_types(self.specs.values(), has_replica=replica is not None)
        self.replication: ReplicationEngine | None = (
            ReplicationEngine(self, replica, replication or Replication())
            if replica is not None
            else None
        )

    # -- public API -----------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The runtime directory."""
        return self.root

    def ref(self, actor_type: type[A], key: str) -> Ref[A]:
        """A ref to the actor of ``actor_type`` with ``key``; it is created by its first message."""
        return Ref(self, self.spec(actor_type), check_key(key, self.max_key_bytes))

    def spec(self, actor_type: type[Any]) -> TypeSpec:
        """The spec of a registered actor type; :class:`UnknownActorTypeError` otherwise."""
        spec = getattr(actor_type, "__torpor_spec__", None)
        if not isinstance(spec, TypeSpec) or self.specs.get(spec.name) is not spec:
            raise UnknownActorTypeError(
                f"{getattr(actor_type, '__qualname__', actor_type)!s} is not registered with this "
                "runtime; pass it in open_runtime(types=[...])"
            )
        return spec

    def ref_by_name(self, type_name: str, key: str) -> Ref[Any]:
        """A ref by persisted type name (for tools that do not import the class)."""
        spec = self.specs.get(type_name)
        if spec is None:
            known = ", ".join(sorted(self.specs)) or "none"
            raise UnknownActorTypeError(
                f"actor type {type_name!r} is not registered with this runtime (registered: "
                f"{known})"
            )
        return Ref(self, spec, check_key(key, self.max_key_bytes))

    async def spawn(
        self, actor_type: type[A], /, *args: Any, key: str | None = None, **kwargs: Any
    ) -> Ref[A]:
        """Create a new actor, run ``on_create(*args, **kwargs)`` as its first turn, return its ref.

        Without ``key`` a random one is generated. :class:`ActorExistsError` if ``key`` is taken.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        _refuse_inside_turn("rt.spawn", "a message to a new key (get-or-create)")
        self.check_open()
        ref = self.ref(actor_type, uuid.uuid4().hex if key is None else key)
        spec = ref._spec
        spec.on_create.check_arguments(spec.name, args, kwargs)
        init = self.codec.encode([list(args), kwargs]) if (args or kwargs) else None
        if init is not None:
            check_payload(self, init, f"{spec.name}.on_create arguments")
        aid = actor_id(spec.name, ref.key)
        with db.full_disk_as_error(self.directory.path):
            self.directory.create(aid, spec.name, ref.key, init)
        self.known_actors += 1
        try:
            await self.residency.activate(spec, ref.key)
        except BaseException:
            self.directory.forget(aid)  # nothing was acknowledged: leave no half-made actor
            self.known_actors -= 1
            raise
        await anyio.lowlevel.cancel_shielded_checkpoint()
        return ref

    async def start(
        self, method: Any, args: tuple[Any, ...], kwargs: dict[str, Any], run_id: str | None
    ) -> Run[Any]:
        """``Runtime.start``: start a run of a workflow from outside."""
        return await self.runs.start(method, args, kwargs, run_id)

    def statistics(self) -> RuntimeStatistics:
        """A frozen snapshot of the runtime's counters (no I/O)."""
        latencies = sorted(self.wake_latencies)
        return RuntimeStatistics(
            awake=len(self.residency.awake),
            hibernated=self.known_actors
            - len(self.residency.awake)
            - self.stopped_actors
            - len(self.residency.failed.keys() - self.residency.awake.keys()),
            failed=len(self.residency.failed),
            stopped=self.stopped_actors,
            max_awake=self.residency.max_awake,
            wakes=self.residency.stats_wakes,
            timers_fired=self.counters.timers_fired,
            actors_with_timers=self.actors_with_timers,
            steps=self.counters.steps,
            step_retries=self.counters.step_retries,
            hibernations=self.counters.hibernations,
            wake_latency_p50=_quantile(latencies, 0.50),
            wake_latency_p99=_quantile(latencies, 0.99),
            messages_sent=self.counters.sent,
            turns=self.counters.turns,
            messages_applied=self.counters.applied,
            retries=self.counters.retries,
            dead_letters=self.counters.dead_letters,
            unknown_types=tuple(sorted(self.unknown_types)),
            replication=self.replication.statistics() if self.replication else None,
        )

    async def replicated(self) -> None:
        """Return once every commit made so far is in the replica (``open_runtime(replica=)``):
        a barrier for tests, deployments and shutdown scripts. While the store cannot be
        reached this waits (bound it with ``anyio.move_on_after``); actors keep working."""
        self.check_open()
        if self.replication is None:
            raise RuntimeError("this runtime has no replica: open_runtime(replica=...)")
        await self.replication.wait_all()

    async def signal(
        self, ref: Ref[Any], name: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> bool:
        """``ref.signal``: store an event durably in the actor's mailbox and wake it."""
        return await self.delivery.signal(ref, name, payload, idempotency_key=idempotency_key)

    # -- what refs, activations, turns and replication call (host.py's protocols) ---------
    # (send, ask, deliver, outbox_send, outbox_spawn, create_spawned, schedule, busy, idle,
    # timer_hint and wake_later are the rooms' own methods, bound in __init__: no extra frame
    # on the hot paths.)

    def crash_point(self, where: str, turn: Any, number: int, name: str = "") -> None:
        if self.crash_hook is not None:
            try:
                self.crash_hook(where, turn, number, name)
            except BaseException:
                self.crashed = True  # as after kill -9: nothing more is written
                raise

    def lifecycle_changed(
        self,
        type_name: str,
        key: str,
        previous: State,
        event: Event,
        new: State,
        detail: str | None,
    ) -> None:
        """An actor's :class:`Lifecycle` changed: tell the subscribers (never waiting)."""
        if not self._subscribers:
            return
        record = LifecycleEvent(
            type_name=type_name,
            key=key,
            previous=previous.value,
            state=new.value,
            event=event.value,
            at=self.clock(),
            detail=detail,
        )
        for stream in list(self._subscribers):
            try:
                stream.send_nowait(record)
            except anyio.WouldBlock:
                self.events_dropped += 1
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.remove(stream)

    @contextlib.asynccontextmanager
    async def open_lifecycle_events(self, buffer: int = 1024) -> AsyncIterator[Any]:
        """Subscribe to lifecycle transitions: ``async with rt.open_lifecycle_events() as
        events: async for event in events: ...`` yields :class:`LifecycleEvent` records.

        A subscriber that falls more than ``buffer`` events behind loses the newest ones (they
        are counted in ``events_dropped``); the runtime never waits for a subscriber.
        """
        send, receive = anyio.create_memory_object_stream[LifecycleEvent](buffer)
        self._subscribers.append(send)
        try:
            async with receive:
                yield receive
        finally:
            if send in self._subscribers:
                self._subscribers.remove(send)
            send.close()

    def check_open(self) -> None:
        if self.closed or self.closing.is_set():
            raise RuntimeClosedError("the runtime is closed")

    #: For a ``Ref``: refuse a call made inside a turn (it would not roll back with it).
    refuse_inside_turn = staticmethod(_refuse_inside_turn)

    def report(self, text: str) -> None:
        """Record an operational problem that has no caller to raise to."""
        self.reports.append(text)

    # -- opening and closing --------------------------------------------------------------

    def open_files(self) -> None:
        self._open_lock_and_directory()
        self.runtime_id = self.directory.runtime_id()
        self.known_actors = self.directory.count()
        self.stopped_actors = self.directory.stopped_count()
        self.actors_with_timers = self.directory.with_timers()
        self.residency.next_wake_at = self.directory.next_wake_at()

    def _open_lock_and_directory(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd = lock.take(
            self.root,
            "one runtime directory belongs to one process at a time",
            wait=lock.LOCK_WAIT,
        )
        try:
            if self.replication is not None:
                self.replication.restore_directory_if_missing(self.root)
            self.directory = Directory(
                self.root / DIRECTORY_FILE, synchronous=self.synchronous, clock=self.clock.wall
            )
        except BaseException:
            self._release_lock()
            raise

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            lock.release(self._lock_fd)
            self._lock_fd = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Open the files, run the supervisor, replication and recovery in a task group for
        the body, then close gracefully (``open_runtime``'s work)."""
        self.open_files()
        if self.replication is not None:
            try:
                self.replication.start()
            except BaseException:
                self.close_files()
                raise
        body_error: BaseException | None = None
        try:
            async with anyio.create_task_group() as tg:
                self.task_group = tg
                supervisor = anyio.CancelScope()

                async def supervise() -> None:
                    with supervisor:
                        await self.residency.supervise()

                tg.start_soon(supervise, name="torpor supervisor")
                replicator = anyio.CancelScope()
                if self.replication is not None:
                    shipper = self.replication

                    async def replicate() -> None:
                        with replicator:
                            await shipper.run()

                    tg.start_soon(replicate, name="torpor replication")
                pending = self.residency.pending_work()
                if self.replication is not None:
                    # Pending actors may hold commits an earlier process did not ship (it died
                    # while they hibernated): replicated() waits until they are woken and shipped.
                    self.replication.note_pending(pending)
                tg.start_soon(self.residency.recover, pending, name="torpor recovery")
                sweeper = anyio.CancelScope()

                async def sweep() -> None:
                    with sweeper:
                        await self.runs.sweep()

                tg.start_soon(sweep, name="torpor run retention")
                tg.start_soon(self.admin.finish_deletions, name="torpor deletions")
                try:
                    yield
                except anyio.get_cancelled_exc_class():
                    raise
                except BaseException as exc:
                    # Re-raised below, outside the task group, so that the caller sees its own
                    # exception and not a one-element ExceptionGroup.
                    body_error = exc
                finally:
                    # Graceful: turns in progress finish. Under an outer cancellation this
                    # raises at once, the task group cancels the turns, and they roll back.
                    supervisor.cancel()
                    sweeper.cancel()
                    await self.residency.shutdown()
                    if self.replication is not None:
                        if not self.crashed:
                            await self.replication.close()
                        replicator.cancel()
        finally:
            self.close_files()
        if body_error is not None:
            raise body_error

    def close_files(self) -> None:
        self.closed = True
        for stream in self._subscribers:  # subscribers' loops end once they have read the rest
            stream.close()
        self._subscribers.clear()
        for waiters in self.parked_waiters.values():
            for waiter in waiters.values():
                waiter.set_error(RuntimeClosedError("the runtime closed before this was applied"))
        self.parked_waiters.clear()
        try:
            for act in self.residency.awake.values():
                try:
                    act.close_files()
                except Exception as exc:  # close the others all the same
                    self.report(f"closing {act.spec.name} {act.key!r}: {exc!r}")
            self.residency.awake.clear()
            self.directory.close()
        finally:
            self._release_lock()


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ref_parts(obj: Any) -> tuple[str, str] | None:
    if isinstance(obj, Ref):
        return (obj.type_name, obj.key)
    return None
