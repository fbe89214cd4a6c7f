"""The runtime users hold: :class:`Runtime`, opened by :func:`open_runtime`.

``Runtime`` is a facade: its methods are the public API, each handing the call to the engine
(``runtime/engine.py``'s ``Engine``, which owns what the whole runtime shares and holds the
rooms: residency, delivery, admin). What the engine's own modules call on it (sends from a
``Ref``, deliveries from an activation, reports from replication) is not part of this class.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar, final

from anyio.streams.memory import MemoryObjectReceiveStream

from .engine import (
    DEFAULT_IDEMPOTENCY_TTL,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_SHUTDOWN_GRACE,
    Engine,
)
from .records import ActorInfo, DeadLetter, LifecycleEvent, RuntimeStatistics, TurnInfo
from .ref import Ref
from .replica.shipper import Replication
from .replica.store import ReplicaStore
from .run import Run
from .runs import DEFAULT_RUN_RETENTION
from .spec import DEFAULT_MAX_KEY_BYTES

A = TypeVar("A")
R = TypeVar("R")


@final
class Runtime:
    """A torpor runtime: open it with ``open_runtime``."""

    __slots__ = ("_engine",)

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __repr__(self) -> str:
        return f"<Runtime {str(self._engine.root)!r}>"

    @property
    def reports(self) -> Any:
        """Operational problems that had no caller to raise to, as text, oldest first (the last
        1,000 are kept): for example an actor stopped, or taken over by another runtime; a
        corrupt file restored from the replica; a file no longer replicated; an actor that could
        not be woken or closed. Read it beside ``rt.statistics()``."""
        return self._engine.reports

    @property
    def path(self) -> Path:
        """The runtime directory."""
        return self._engine.root

    @property
    def events_dropped(self) -> int:
        """Lifecycle events a subscriber lost by falling behind (``open_lifecycle_events``)."""
        return self._engine.events_dropped

    def ref(self, actor_type: type[A], key: str) -> Ref[A]:
        """A ref to the actor of ``actor_type`` with ``key``; it is created by its first message."""
        return self._engine.ref(actor_type, key)

    def ref_by_name(self, type_name: str, key: str) -> Ref[Any]:
        """A ref by persisted type name (for tools that do not import the class)."""
        return self._engine.ref_by_name(type_name, key)

    async def spawn(
        self, actor_type: type[A], /, *args: Any, key: str | None = None, **kwargs: Any
    ) -> Ref[A]:
        """Create a new actor, run ``on_create(*args, **kwargs)`` as its first turn, return its ref.

        Without ``key`` a random one is generated. :class:`ActorExistsError` if ``key`` is taken.
        """
        return await self._engine.spawn(actor_type, *args, key=key, **kwargs)

    async def start(
        self,
        method: Callable[..., Awaitable[R]],
        /,
        *args: Any,
        id: str | None = None,
        **kwargs: Any,
    ) -> Run[R]:
        """Start a run of a workflow, ``await rt.start(Flow.run, *args, id=...)``, and return
        its handle once the start is durable in the run's mailbox.

        Without ``id`` a random one is generated. A start with an id already used returns that
        run and starts nothing (:class:`IdempotencyKeyReusedError` if the arguments differ).
        A run started from outside has no starter to notify: wait with ``run.result()``.
        """
        return await self._engine.start(method, args, kwargs, id)

    def run(self, workflow: type[Any], id: str) -> Run[Any]:
        """The handle of an existing run of ``workflow`` (:class:`ActorNotFoundError` if
        there is none)."""
        return self._engine.runs.run(workflow, id)

    def runs(self, parent: Ref[Any] | None = None) -> list[Run[Any]]:
        """The runs that ``parent`` started with ``self.start`` (without it: the runs started
        from outside with ``rt.start``, and those whose starter was deleted), oldest first,
        finished ones included until their retention ends."""
        return self._engine.runs.runs(parent)

    def statistics(self) -> RuntimeStatistics:
        """A frozen snapshot of the runtime's counters (no I/O)."""
        return self._engine.statistics()

    async def replicated(self) -> None:
        """Return once every commit made so far is in the replica (``open_runtime(replica=)``):
        a barrier for tests, deployments and shutdown scripts. While the store cannot be
        reached this waits (bound it with ``anyio.move_on_after``); actors keep working."""
        await self._engine.replicated()

    async def actors(
        self,
        actor_type: type[Any],
        status: str | None = None,
        *,
        after: str | None = None,
        limit: int = 1000,
    ) -> list[ActorInfo]:
        """The actors of ``actor_type`` as :class:`ActorInfo` records, in key order, read from
        ``directory.db`` without waking any. ``status``: only ``"awake"``, ``"hibernated"``,
        ``"failed"``, ``"stopped"`` or ``"deleting"`` ones. Pages: at most ``limit`` (up to
        10,000) actors whose key sorts after ``after``; pass the last key for the next page::

            page = await rt.actors(Chat)
            while page:
                ...
                page = await rt.actors(Chat, after=page[-1].key)
        """
        spec = self._engine.spec(actor_type)
        return await self._engine.admin.actors(spec, status, after=after, limit=limit)

    async def dead_letters(self, ref: Ref[Any]) -> list[DeadLetter]:
        """The dead letters kept in ``ref``'s mailbox, oldest first."""
        return await self._engine.admin.dead_letters(ref)

    async def replay_dead_letter(self, ref: Ref[Any], seq: int) -> None:
        """Send dead letter ``seq`` again, as a new message at the end of the mailbox."""
        await self._engine.admin.replay_dead_letter(ref, seq)

    async def drop_dead_letter(self, ref: Ref[Any], seq: int) -> None:
        """Delete dead letter ``seq`` for good."""
        await self._engine.admin.drop_dead_letter(ref, seq)

    async def resume(self, ref: Ref[Any]) -> None:
        """Start a stopped actor again: it runs its kept messages, oldest first."""
        await self._engine.admin.resume(ref)

    async def signal(
        self, ref: Ref[Any], name: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> bool:
        """``ref.signal``: store an event durably in the actor's mailbox and wake it."""
        return await self._engine.signal(ref, name, payload, idempotency_key=idempotency_key)

    async def turns(self, ref: Ref[Any]) -> list[TurnInfo]:
        """The actor's turns in flight with their journaled steps, without waking it."""
        return await self._engine.admin.turns(ref)

    async def cancel_turn(self, ref: Ref[Any], seq: int, reason: str = "cancelled") -> None:
        """Cancel message ``seq``: its turn (running, waiting or not started) rolls back, the
        message is dead-lettered with :class:`TurnCancelledError`, and the actor moves on."""
        await self._engine.admin.cancel_turn(ref, seq, reason)

    async def restart_turn(self, ref: Ref[Any], seq: int, from_step: int = 0) -> int:
        """Run message ``seq``'s turn again from step number ``from_step``: journaled steps
        before it keep their results, later ones run again (Cloudflare Workflows' restart
        from a step). Returns how many journal rows were removed."""
        return await self._engine.admin.restart_turn(ref, seq, from_step)

    @contextlib.asynccontextmanager
    async def open_lifecycle_events(
        self, buffer: int = 1024
    ) -> AsyncIterator[MemoryObjectReceiveStream[LifecycleEvent]]:
        """Subscribe to lifecycle transitions: ``async with rt.open_lifecycle_events() as
        events: async for event in events: ...`` yields :class:`LifecycleEvent` records.

        A subscriber that falls more than ``buffer`` events behind loses the newest ones (they
        are counted in ``events_dropped``); the runtime never waits for a subscriber.
        """
        async with self._engine.open_lifecycle_events(buffer) as events:
            yield events


@contextlib.asynccontextmanager
async def open_runtime(
    path: str | os.PathLike[str],
    *,
    types: Iterable[type],
    message_types: Iterable[type] = (),
    synchronous: str = "NORMAL",
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_key_bytes: int = DEFAULT_MAX_KEY_BYTES,
    idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL,
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    max_awake: int | None = None,
    clock: Callable[[], float] = time.time,
    replica: ReplicaStore | None = None,
    replication: Replication | None = None,
    run_retention: float = DEFAULT_RUN_RETENTION,
) -> AsyncIterator[Runtime]:
    """Open (creating if needed) the runtime stored under ``path``; resume pending actors.

    An actor hibernates after ``idle_timeout`` seconds without work; at most ``max_awake`` are
    awake at once (by default, as many as this process's file-descriptor limit allows, see
    ``default_max_awake``), the least recently used idle ones hibernating to make room.

    ``clock`` gives epoch seconds for durable timers (``time.time``; tests pass a virtual one,
    e.g. ``lambda: start + anyio.current_time()`` under virtual time: trio's ``MockClock``, or
    a looptime event loop on asyncio, as ``actors.testing.check_crashes`` runs them).

    A finished run (``actors.Workflow``) is kept ``run_retention`` seconds (a week; ``math.inf``
    keeps them), then deleted as ``Ref.delete`` deletes an actor (with a ``replica``, behind a
    tombstone there too).

    On exit, turns in progress get ``shutdown_grace`` seconds to finish; then they are cancelled
    and rolled back. Queued messages stay in their mailboxes and run when the runtime is next
    opened.

    Messages, results, step values, events and kv values may carry enums, dataclasses, attrs
    classes and pydantic models that the runtime knows by name: those named in the annotations
    of the handlers of ``types`` (and in their fields), those registered with
    ``actors.register_type``, and those in ``message_types``.
    """
    engine = Engine(
        Path(path),
        types,
        message_types=message_types,
        synchronous=synchronous,
        max_message_bytes=max_message_bytes,
        max_key_bytes=max_key_bytes,
        idempotency_ttl=idempotency_ttl,
        shutdown_grace=shutdown_grace,
        idle_timeout=idle_timeout,
        max_awake=max_awake,
        clock=clock,
        replica=replica,
        replication=replication,
        run_retention=run_retention,
    )
    async with engine.running():
        yield Runtime(engine)
