"""What the turn's machinery and an actor's loop see of the runtime and of an awake actor.

``context``, ``steps``, ``actor``, ``timers``, ``turn`` and ``activation`` reach the runtime and
the actor through these small protocols, never by importing the classes above them (and
``residency``, ``delivery`` and ``admin`` reach the runtime that holds them the same way):
``runtime/engine.py``'s ``Engine`` is a :class:`RuntimeHost`, ``runtime/activation.py``'s
``Activation`` an :class:`ActorHost` (and, to ``turn``, a ``turn.TurnActor``). (Replication has
its own two, in ``runtime/replica/tracking.py``.) A test walks the import graph and fails on any
circle.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from .ref import Ref, RefHost

if TYPE_CHECKING:
    import collections

    from .codec import Codec
    from .counters import Counters
    from .files.datastore import DataStore
    from .files.db import CheckedFiles
    from .files.directory import Directory
    from .files.mailbox import Mailbox
    from .lifecycle import Event, State
    from .replica.shipper import ReplicationEngine
    from .run import RunsHost
    from .spec import TypeSpec
    from .streams import Feeds, Writer
    from .timers import Schedule


class Waiter:
    """The reply slot of one message, shared by every asker of it."""

    __slots__ = ("error", "event", "payload")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.payload: bytes | None = None
        self.error: BaseException | None = None

    def set_result(self, payload: bytes) -> None:
        self.payload = payload
        self.event.set()

    def set_error(self, error: BaseException) -> None:
        self.error = error
        self.event.set()


class ActorHost(Protocol):
    """An awake actor, as its handlers' context and its turn's steps see it."""

    spec: TypeSpec
    key: str
    instance: Any
    mailbox: Mailbox
    data: DataStore
    timers_changed: bool
    stream: Writer

    @property
    def runtime(self) -> RuntimeHost: ...

    def describe(self) -> str: ...

    def turn_busy(self) -> None: ...

    def turn_maybe_idle(self) -> None: ...

    def wait_changed(self, until: float | None) -> None: ...

    def event_arrival(self, name: str) -> anyio.Event: ...

    def outbox_add(self, target: Ref[Any], method: str, payload: bytes) -> None: ...

    def publish(self, topic: str, item: Any) -> None: ...


class RuntimeHost(RefHost, Protocol):
    """The runtime, as an awake actor's loop, its turn's steps and its handlers see it (and
    what a ``Ref`` needs of it: sends, asks, the clock).

    ``ctx`` arguments are the handler's ``context.HandlerContext``."""

    root: Path
    codec: Codec
    directory: Directory
    closing: anyio.Event
    synchronous: str
    max_message_bytes: int
    max_key_bytes: int
    idempotency_ttl: float
    crashed: bool
    #: Set by crash tests: called at each crash point (``crash_point`` is a no-op without it).
    crash_hook: Callable[[str, Any, int, str], None] | None
    actors_with_timers: int
    counters: Counters
    known_actors: int
    stopped_actors: int
    unknown_types: set[str]
    shutdown_grace: float
    task_group: Any
    parked_waiters: dict[str, dict[int, Waiter]]
    sound_mailboxes: CheckedFiles
    feeds: Feeds

    @property
    def replication(self) -> ReplicationEngine | None: ...

    @property
    def runs(self) -> RunsHost: ...

    @property
    def specs(self) -> dict[str, TypeSpec]: ...

    @property
    def wake_latencies(self) -> collections.deque[float]: ...

    def report(self, text: str) -> None: ...

    def check_open(self) -> None: ...

    def lifecycle_changed(
        self,
        type_name: str,
        key: str,
        previous: State,
        event: Event,
        new: State,
        detail: str | None,
    ) -> None: ...

    def crash_point(self, where: str, turn: Any, number: int, name: str = "") -> None: ...

    def busy(self, act: Any) -> None: ...

    def idle(self, act: Any) -> None: ...

    def timer_hint(self, due: float | None) -> None: ...

    async def deliver(
        self, spec: TypeSpec, key: str, method: str, payload: bytes, sender: str, sender_seq: int
    ) -> Any: ...

    def create_spawned(self, act: Any, target: Ref[Any]) -> None: ...

    def outbox_send(
        self,
        ctx: Any,
        target: Ref[Any],
        method: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None: ...

    def outbox_spawn(
        self,
        ctx: Any,
        actor_type: type[Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        key: str | None,
    ) -> Ref[Any]: ...

    def schedule(
        self,
        ctx: Any,
        name: str,
        method: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        at: Any,
        after: float | None,
        every: float | None,
        cron: str | None,
    ) -> Schedule: ...
