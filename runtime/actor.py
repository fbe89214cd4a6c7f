"""The ``Actor`` base class and the ``@query`` and ``@handler`` decorators."""

from __future__ import annotations

import datetime
import inspect
import uuid as _uuid
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Concatenate, ParamSpec, TypeVar, overload

from . import context
from .spec import (
    DEFAULT_STREAM_MAX_AGE,
    DEFAULT_STREAM_MAX_ENTRIES,
    HANDLER_MARK,
    QUERY_MARK,
    RestartIntensity,
    Retry,
    build_type_spec,
    check_handler_options,
)
from .steps import DEFAULT_STEP_RETRY, StepCall, current_durable, gather, new_random, new_uuid
from .timers import Schedule

if TYPE_CHECKING:
    from .files.datastore import KV, Sql
    from .ref import Ref
    from .run import Run
    from .spec import TypeSpec

#: The outbox method name of ``self.destroy()`` (never a handler name: those cannot start with
#: an underscore); the row goes to the actor itself.
DESTROY = "__destroy__"

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
A = TypeVar("A")
R = TypeVar("R")
T = TypeVar("T")
P = ParamSpec("P")


def query(fn: F) -> F:
    """Mark an async handler as read-only: it runs at once, beside any turn, on committed state.

    A query is not queued, not journaled and not retried; ``self.sql`` is read-only in it and
    ``self.kv`` refuses writes.
    """
    if not callable(fn):
        raise TypeError(f"@query decorates an async method (got {fn!r})")
    setattr(fn, QUERY_MARK, True)
    return fn


@overload
def handler(fn: F, /) -> F: ...


@overload
def handler(
    *,
    name: str | None = None,
    retry: Retry | None = None,
    validator: Callable[..., object] | None = None,
) -> Callable[[F], F]: ...


def handler(
    fn: F | None = None,
    /,
    *,
    name: str | None = None,
    retry: Retry | None = None,
    validator: Callable[..., object] | None = None,
) -> F | Callable[[F], F]:
    """Declare a message handler's options; ``@actors.handler`` alone changes nothing.

    ``name``: the handler's persisted name, stored with every message to it (default: the
    method's name). Keep it when renaming the method, and messages already queued under it
    still run; a send may name the method (``ref.send(Agent.renamed, ...)``) or the persisted
    name as a string. ``retry``: this handler's :class:`actors.Retry`, instead of the actor
    type's ``retry``. ``validator``: a plain function called in the sender with the handler's
    arguments (without ``self``), after the arity check and before anything is stored; if it
    raises (any ``Exception``) or returns ``False``, the send, ask or ``self.send`` raises
    :class:`actors.InvalidArgumentsError` carrying its message, and nothing is stored. It must
    not be async (it runs before the message exists; do I/O in the handler). It also applies to
    a ``@query``, which accepts ``name`` and ``validator`` but not ``retry`` (a query is never
    retried)::

        class Agent(actors.Actor, name="agent"):
            @actors.handler(name="chat", retry=actors.Retry(max_attempts=None),
                            validator=lambda text: bool(text.strip()))
            async def reply(self, text: str) -> str: ...
    """
    options = check_handler_options(name, retry, validator)

    def mark(method: F) -> F:
        checked: Any = method  # (a TypeGuard would narrow F away)
        if not inspect.iscoroutinefunction(checked):
            raise TypeError(
                f"@actors.handler decorates an async method (got {method!r}); handlers are "
                "async def"
            )
        setattr(method, HANDLER_MARK, options)
        return method

    return mark if fn is None else mark(fn)


class Actor:
    """Base class of actor types. Public ``async def`` methods are its message handlers.

    Subclass with an optional stable name, which is persisted in every file of the actor and so
    must survive renaming the class::

        class Chat(actors.Actor, name="chat"):
            async def post(self, text: str) -> int: ...

    Class attributes configure the type: ``retry`` (an :class:`actors.Retry` for failing
    messages; ``@actors.handler(retry=...)`` sets one handler's own), ``restart_intensity``
    (an :class:`actors.RestartIntensity`: how many failed turns in a period stop the actor)
    and ``migrations`` (SQL strings or callables, applied in
    order by ``pragma user_version``; only ever append to it), and ``durable`` (with a
    replica: a reply or a send's acknowledgement waits until the commits behind it are in the
    replica, so nothing acknowledged can be lost with the machine), ``stream_max_entries`` and
    ``stream_max_age`` (the retention of each topic of its stream: its newest entries kept,
    and for how many seconds; defaults 10,000 and 7 days, docs/howto/streams.md), and
    ``http_create`` (``False``: the HTTP gateway, ``actors.http.app``, creates no actor of
    this type; a request to a key that does not exist is answered 404).
    """

    __torpor_spec__: ClassVar[TypeSpec]
    retry: ClassVar[Retry] = Retry()
    restart_intensity: ClassVar[RestartIntensity] = RestartIntensity()
    migrations: ClassVar[Sequence[str | Callable[[Sql], None]]] = ()
    durable: ClassVar[bool] = False
    http_create: ClassVar[bool] = True
    stream_max_entries: ClassVar[int] = DEFAULT_STREAM_MAX_ENTRIES
    stream_max_age: ClassVar[float] = DEFAULT_STREAM_MAX_AGE

    _torpor_key: str
    _torpor_ref: Ref[Any]

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__torpor_spec__ = build_type_spec(cls, name, Actor)

    # -- identity (always available) ------------------------------------------------------

    @property
    def key(self) -> str:
        """This actor's key."""
        return self._torpor_key

    @property
    def ref(self) -> Ref[Any]:
        """A ref to this actor itself."""
        return self._torpor_ref

    def ref_to(self, actor_type: type[A], key: str) -> Ref[A]:
        """A ref to another actor of this runtime (no I/O), for ``self.send``."""
        return self._torpor_ref._runtime.ref(actor_type, key)

    # -- inside a handler -----------------------------------------------------------------

    @property
    def sql(self) -> Sql:
        """This actor's own SQLite database (``data.db``), inside the turn's transaction."""
        return context.current(self, "self.sql").sql

    @property
    def kv(self) -> KV:
        """A key-value map stored in ``data.db``, committed with the turn."""
        return context.current(self, "self.kv").kv

    @overload
    def send(
        self,
        target: Ref[A],
        method: Callable[Concatenate[A, P], Awaitable[Any]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> None: ...

    @overload
    def send(self, target: Ref[Any], method: str, /, *args: Any, **kwargs: Any) -> None: ...

    def send(self, target: Ref[Any], method: Any, /, *args: Any, **kwargs: Any) -> None:
        """Send a message to another actor (or to this one) when this turn commits.

        The message goes to this actor's outbox inside the turn's transaction; it leaves only if
        the turn commits, and the receiver de-duplicates it, so it is delivered exactly once and
        after every earlier send of this actor to the same target.
        """
        ctx = context.current_turn(self, "self.send")
        ctx.activation.runtime.outbox_send(ctx, target, method, args, kwargs)

    def publish(self, topic: str, item: Any) -> None:
        """Append ``item`` to this actor's stream ``topic`` when this turn commits.

        The item is written inside the turn's transaction and relayed to the stream after the
        commit, so it is published only if the turn commits, exactly once, and gets its offset
        in commit order. Subscribers read it with ``ref.open_stream(topic)``
        (docs/howto/streams.md). ``item`` is encoded like a message argument.
        """
        ctx = context.current_turn(self, "self.publish")
        ctx.activation.publish(topic, item)

    def spawn(
        self, actor_type: type[A], /, *args: Any, key: str | None = None, **kwargs: Any
    ) -> Ref[A]:
        """Create a child actor when this turn commits; return its ref at once.

        The child runs ``on_create(*args, **kwargs)`` first. If it is ever stopped (its restart
        intensity exceeded), this actor gets a durable ``on_child_failed(child, reason)``.
        ``self.send`` to it later in the same turn arrives after its creation; ``self.ask`` to it
        in the same turn creates it at once, as the ask is sent before the turn commits.
        """
        ctx = context.current_turn(self, "self.spawn")
        return ctx.activation.runtime.outbox_spawn(ctx, actor_type, args, kwargs, key)

    def destroy(self) -> None:
        """Delete this actor once this turn commits: its files, its row in the directory, its
        queued messages (their askers get :class:`ActorDeletedError`), its timers and, with a
        replica, its history there (a tombstone; see the deletion how-to).

        It takes effect after the commit, in order with this actor's sends: every message this
        turn (and earlier turns) sent leaves first; no later message runs. If the turn rolls
        back, nothing happens. A later message to the same key creates a new actor.
        """
        ctx = context.current_turn(self, "self.destroy")
        act = ctx.activation
        act.outbox_add(self._torpor_ref, DESTROY, act.runtime.codec.encode(None))

    # -- durable timers -------------------------------------------------------------------

    def schedule(
        self,
        name: str,
        method: Callable[..., Awaitable[Any]] | str,
        /,
        *args: Any,
        at: float | datetime.datetime | None = None,
        after: float | None = None,
        every: float | None = None,
        cron: str | None = None,
        **kwargs: Any,
    ) -> Schedule:
        """Set (or replace) the durable timer ``name``: it sends ``method(*args, **kwargs)`` to
        this actor when due, waking it if it hibernates.

        ``at``: an aware datetime or epoch seconds. ``after``: seconds from now. ``every``:
        repeat every so many seconds (first after ``every``, or at ``at``/``after``). ``cron``:
        a cron expression, in UTC. The timer commits with the turn; it fires at least once and
        never early. Missed firings while the process was down collapse into one.
        """
        ctx = context.current_turn(self, "self.schedule")
        return ctx.activation.runtime.schedule(
            ctx, name, method, args, kwargs, at=at, after=after, every=every, cron=cron
        )

    def cancel_schedule(self, name: str) -> bool:
        """Delete timer ``name`` (with the turn); return whether it existed."""
        ctx = context.current_turn(self, "self.cancel_schedule")
        existed = ctx.activation.data.delete_timer(name)
        ctx.activation.timers_changed = True
        return existed

    def schedules(self) -> list[Schedule]:
        """This actor's timers, soonest first."""
        ctx = context.current(self, "self.schedules")
        rows = ctx.sql.query(
            "SELECT name, method, due_at, every, cron FROM _torpor_timers ORDER BY due_at, name"
        )
        return [Schedule(*row) for row in rows]

    # -- durable steps (message handlers only) --------------------------------------------

    @overload
    def step(
        self,
        name: str,
        fn: Callable[P, Coroutine[Any, Any, T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> StepCall[T]: ...

    @overload
    def step(
        self, name: str, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> StepCall[T]: ...

    @overload
    def step(
        self,
        name: str,
        retry: Retry,
        fn: Callable[P, Coroutine[Any, Any, T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> StepCall[T]: ...

    @overload
    def step(
        self, name: str, retry: Retry, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> StepCall[T]: ...

    def step(self, name: str, fn: Any, /, *args: Any, **kwargs: Any) -> StepCall[Any]:
        """A journaled effect: ``await self.step("llm", call_llm, prompt)``.

        ``fn(*args, **kwargs)`` runs once; its result (or its final error, raised as
        :class:`actors.StepFailedError`) is journaled in ``mailbox.db`` before the turn goes
        on. When the turn runs again (a crash, a retry, a durable wait), the step returns its
        journaled result without running. An async ``fn`` runs in the event loop, a sync one in
        a worker thread. A retry policy goes before the function,
        ``self.step("llm", Retry(max_attempts=5), call_llm, prompt)``: attempts, exponential
        backoff with jitter and a per-attempt ``deadline`` (default: 3 attempts); raise
        :class:`actors.NonRetryable` to stop (the handler gets ``StepFailedError``), or
        :class:`actors.TerminalError` to fail the whole message (the handler gets a
        ``TerminalError``, the same on every replay, and may catch it to compensate).
        Between attempts the count and the next attempt's time are journaled, so a crash
        resets neither. (Deprecated: ``retry=`` among ``fn``'s arguments.)
        ``actors.current_step().idempotency_key`` inside ``fn`` is stable across attempts and
        replays. The step is numbered when this method is called, so steps started together
        (``self.gather``) are journaled in the order the code wrote them.
        """
        turn = current_durable(self, "self.step")
        retry: Retry | None = None
        if isinstance(fn, Retry):
            if not args:
                raise TypeError(
                    f"step {name!r}: a retry policy goes before the function to run: "
                    "self.step(name, retry, fn, *args)"
                )
            retry, fn, args = fn, args[0], args[1:]
        if "retry" in kwargs:
            if retry is not None:
                raise TypeError(f"step {name!r} was given two retry policies")
            retry = kwargs.pop("retry")
            warnings.warn(
                f"self.step({name!r}, fn, ..., retry=policy) is deprecated: write "
                f"self.step({name!r}, policy, fn, ...), whose arguments a type checker can check",
                DeprecationWarning,
                stacklevel=2,
            )
        return turn.step(name, fn, args, kwargs, retry or DEFAULT_STEP_RETRY)

    @overload
    def ask(
        self,
        target: Ref[A],
        method: Callable[Concatenate[A, P], Awaitable[R]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> StepCall[R]: ...

    @overload
    def ask(self, target: Ref[Any], method: str, /, *args: Any, **kwargs: Any) -> StepCall[Any]: ...

    def ask(self, target: Ref[Any], method: Any, /, *args: Any, **kwargs: Any) -> StepCall[Any]:
        """Ask another actor, as a step: the request is sent exactly once (an idempotency key
        derived from this step), and the reply is journaled. The asking turn waits for the
        reply, so two actors asking each other wait forever: send one way instead."""
        from .ref import Ref

        turn = current_durable(self, "self.ask")
        runtime = self._torpor_ref._runtime
        if not isinstance(target, Ref) or target._runtime is not runtime:
            raise TypeError(f"ask needs a ref of this runtime (got {target!r})")
        return turn.ask(target, method, args, kwargs)

    def start(
        self,
        method: Callable[..., Awaitable[R]],
        /,
        *args: Any,
        id: str | None = None,
        **kwargs: Any,
    ) -> Run[R]:
        """Start a run of a workflow (``self.start(Flow.run, *args)``) and return its handle.

        A durable call, like ``self.ask``: the start is journaled and sent at once (not when
        the turn commits), so this turn may go on to wait for it (``await run.result()``). The
        run's work and waits happen in its own actor, so this actor serves its other messages
        as soon as this turn ends. The run is a child of this actor: its outcome comes back
        exactly once, as ``on_run_done(run, outcome)``.
        ``id`` names the run (default: an id derived from this step, the same on a replay); a
        start with an id already used returns that run and starts nothing
        (:class:`actors.IdempotencyKeyReusedError` if its arguments differ).
        """
        turn = current_durable(self, "self.start")
        ctx = context.current_turn(self, "self.start")
        return ctx.activation.runtime.runs.start_in_turn(turn, method, args, kwargs, id)

    def set_value(self, name: str, value: Any) -> StepCall[None]:
        """Record ``value`` under ``name`` now, durably and outside the turn's transaction (it
        stays even if the turn rolls back), for readers of this run (``run.get_value``,
        ``run.wait_value``) while it goes on. Journaled: a replay does not record it again."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"a value name must be a non-empty string (got {name!r})")
        turn = current_durable(self, "self.set_value")
        recorded: StepCall[None] = turn.activation.runtime.runs.set_value(turn, name, value)
        return recorded

    def wait_any(self, *waits: Awaitable[Any]) -> StepCall[tuple[int, Any]]:
        """Wait for the first of several durable waits to end and return ``(index, value)``:
        which one (its place among the arguments) and its value (or raise its error)::

            index, value = await self.wait_any(
                self.sleep(3600), self.wait_for_event("approve"), self.wait_for_event("reject")
            )

        Each argument is a durable wait not awaited yet: ``self.sleep``, ``self.sleep_until``,
        ``self.wait_for_event``, ``self.ask``, ``run.result()`` or ``run.wait_value(name)``.
        Which one won is journaled, so a replay returns the same; the others are abandoned (an
        ask in flight is cancelled here; its target may still apply it). Ties go to the
        earliest argument.
        """
        return current_durable(self, "self.wait_any").wait_any(waits)

    def gather(self, *awaitables: Awaitable[Any]) -> Awaitable[list[Any]]:
        """Await several steps at once (fan-out); results in argument order. Each runs to its
        end, then the first error in argument order is raised."""
        current_durable(self, "self.gather")
        return gather(*awaitables)

    def now(self) -> datetime.datetime:
        """The current time (an aware UTC datetime), journaled: a replay sees the same value."""
        turn = current_durable(self, "self.now")
        clock = self._torpor_ref._runtime.clock
        return turn.value(  # type: ignore[no-any-return]
            "now", lambda _rng: datetime.datetime.fromtimestamp(clock(), datetime.UTC)
        )

    def random(self) -> float:
        """A random float in [0, 1), journaled: a replay sees the same value."""
        return current_durable(self, "self.random").value("random", new_random)  # type: ignore[no-any-return]

    def uuid(self) -> _uuid.UUID:
        """A random UUID (version 4), journaled: a replay sees the same value."""
        return current_durable(self, "self.uuid").value("uuid", new_uuid)  # type: ignore[no-any-return]

    def sleep(self, seconds: float) -> StepCall[None]:
        """Sleep durably: the deadline is journaled, and while the turn waits the actor may
        hibernate (after ``idle_timeout``); the turn then replays when the deadline passes.
        Later messages of this actor wait behind the sleeping turn; queries and events do not."""
        if not isinstance(seconds, int | float) or not seconds >= 0:
            raise ValueError(f"sleep takes a number of seconds >= 0 (got {seconds!r})")
        turn = current_durable(self, "self.sleep")
        until = self._torpor_ref._runtime.clock() + seconds
        return turn.wait("sleep", "sleep", until, None)

    def sleep_until(self, when: datetime.datetime | float) -> StepCall[None]:
        """Sleep durably until ``when`` (an aware datetime, or seconds since the epoch)."""
        turn = current_durable(self, "self.sleep_until")
        return turn.wait("sleep", "sleep", _epoch(when, "sleep_until"), None)

    def wait_for_event(self, name: str, *, timeout: float | None = None) -> StepCall[Any]:
        """Wait durably for event ``name`` (sent with ``ref.signal(name, payload)``) and return
        its payload. Events that arrived before the wait are taken oldest first. With
        ``timeout`` (seconds, journaled as a deadline), raise :class:`actors.WaitTimeoutError`
        when it passes first. The actor may hibernate while it waits."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"an event name must be a non-empty string (got {name!r})")
        if timeout is not None and not (isinstance(timeout, int | float) and timeout >= 0):
            raise ValueError(f"timeout must be a number of seconds >= 0 or None (got {timeout!r})")
        turn = current_durable(self, "self.wait_for_event")
        until = None if timeout is None else self._torpor_ref._runtime.clock() + timeout
        return turn.wait("event", name, until, name)

    def patched(self, change_id: str) -> bool:
        """Versioning, in the style of Temporal: ``if self.patched("use-new-model"): ...``.

        True when this turn runs the new code: a new turn, or one that recorded this marker.
        False when replaying a turn whose journal was written by code without this change, so
        it keeps the old path. Remove the old branch once no such turn is in flight.
        """
        return current_durable(self, "self.patched").patched(change_id)

    # -- lifecycle hooks ------------------------------------------------------------------

    if TYPE_CHECKING:
        # A subclass's on_create takes the arguments of spawn, whatever they are: for a type
        # checker, any signature overrides this one. (The runtime checks spawn's arguments
        # against the subclass's real signature, and this class's takes none.)
        async def on_create(self, *args: Any, **kwargs: Any) -> None: ...

    else:

        async def on_create(self) -> None:
            """Runs once, as the actor's first turn, with the arguments given to ``spawn``."""

    async def on_child_failed(self, child: Ref[Any], reason: str) -> None:
        """Runs, as a turn, when a child made with ``self.spawn`` was stopped for failing too
        often. ``rt.resume(child)`` would start it again. The default does nothing."""

    async def on_run_done(self, run: Run[Any], outcome: Any) -> None:
        """Runs, as a turn, when a run this actor started (``self.start``) finishes: ``outcome``
        is its result, or its error (:class:`actors.RunFailedError`,
        :class:`actors.RunCancelledError`). Delivered exactly once per outcome, as a durable
        message. The default does nothing."""

    async def _torpor_run_done(
        self, type_name: str, run_id: str, status: str, value: bytes
    ) -> None:
        ctx = context.current_turn(self, "on_run_done")
        run, outcome = ctx.activation.runtime.runs.run_done(ctx, type_name, run_id, status, value)
        await self.on_run_done(run, outcome)

    async def on_wake(self) -> None:
        """Runs each time the actor wakes (after ``on_create`` the first time), before messages.

        Its writes commit in a transaction of their own. Use it to warm caches; an exception is
        rolled back and reported, and the actor runs anyway.
        """

    async def on_hibernate(self) -> None:
        """Runs before the actor hibernates (idle, evicted, or the runtime closing; within
        ``shutdown_grace``).

        Its writes commit in a transaction of their own. It is not called after a crash, so
        never rely on it for durability: every turn is already durable when it commits.
        """


def _epoch(when: datetime.datetime | float, what: str) -> float:
    if isinstance(when, datetime.datetime):
        if when.tzinfo is None:
            raise ValueError(f"{what} needs an aware datetime (with a tzinfo), got {when!r}")
        return when.timestamp()
    if isinstance(when, int | float) and not isinstance(when, bool):
        return float(when)
    raise TypeError(f"{what} takes an aware datetime or seconds since the epoch (got {when!r})")
