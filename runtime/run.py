"""``Run``: the handle on one run of a workflow (DESIGN §9), its ``RunStatus``, and what the
handle needs of the runtime (``RunsHost``, answered by ``runtime/runs.py``'s room)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, final

import attrs

from .records import StepRecord

if TYPE_CHECKING:
    from .ref import Ref

T = TypeVar("T")


@attrs.frozen
class RunStatus:
    """Where a run is, from ``await run.status()`` (read from its files: it does not wake it).

    ``state``: ``pending`` (started, its turn not begun), ``running``, ``waiting`` (a durable
    wait: ``waiting_for`` says for what, e.g. ``("event 'approve'", "sleep")``), ``done``,
    ``failed`` or ``cancelled``. ``steps``: its journaled steps, in order. ``error``: the
    failure's type and message (failed, cancelled). Times are seconds since the epoch.
    """

    #: The run id.
    id: str
    #: The persisted name of its workflow type.
    workflow: str
    #: pending, running, waiting, done, failed or cancelled.
    state: str
    #: While ``waiting``: what for, e.g. ``"event 'approve'"``, ``"sleep"``, ``"run 'Flow.run x'"``.
    waiting_for: tuple[str, ...]
    #: Its journaled steps, in order (a finished run's are kept until its retention ends).
    steps: tuple[StepRecord, ...]
    #: When it was started (or last restarted).
    started_at: float | None
    #: When it finished (done, failed, cancelled); ``None`` while it goes on.
    finished_at: float | None
    #: ``"<type>: <message>"`` of its failure (failed, cancelled); else ``None``.
    error: str | None
    #: How many times ``run.restart`` ran it again.
    restarts: int


class RunsHost(Protocol):
    """What a ``Run`` calls on its runtime, and what ``Actor.start``, ``Actor.set_value`` and
    the delivery of ``on_run_done`` call (``ctx``/``turn``: the handler's context and
    ``steps.TurnState``, below this module)."""

    def start_in_turn(
        self,
        turn: Any,
        method: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        run_id: str | None,
    ) -> Run[Any]: ...

    def set_value(self, turn: Any, name: str, value: Any) -> Any: ...

    def run_done(
        self, ctx: Any, type_name: str, run_id: str, status: str, value: bytes
    ) -> tuple[Run[Any], Any]: ...

    def finished(self, act: Any, message: Any, status: str, value: bytes) -> None: ...

    def run_result(self, run: Run[Any]) -> Awaitable[Any]: ...

    async def run_status(self, run: Run[Any]) -> RunStatus: ...

    async def run_get_value(self, run: Run[Any], name: str) -> Any: ...

    def run_wait_value(self, run: Run[Any], name: str) -> Awaitable[Any]: ...

    async def run_signal(
        self, run: Run[Any], name: str, payload: Any, idempotency_key: str | None
    ) -> bool: ...

    async def run_cancel(self, run: Run[Any]) -> bool: ...

    async def run_restart(self, run: Run[Any], from_step: int) -> None: ...


@final
class Run(Generic[T]):
    """The handle on one run of a workflow: ``run = await rt.start(Flow.run, ...)``,
    ``self.start(Flow.run, ...)`` in a handler, or ``rt.run(Flow, id)``. Holding one costs no
    I/O. To keep it (in an actor's state, in a message), keep its ``id``: ``rt.run(Flow, id)``
    gives the handle back, and ``on_run_done`` gets one.

    ``T`` is what the workflow's ``run`` returns.
    """

    __slots__ = ("_host", "id", "ref")

    def __init__(self, host: RunsHost, ref: Ref[Any]) -> None:
        self._host = host
        #: The run's actor (its workflow type, keyed by the run id).
        self.ref = ref
        #: The run id: given to ``start(..., id=...)``, or generated.
        self.id = ref.key

    @property
    def workflow(self) -> type[Any]:
        """The run's workflow class."""
        return self.ref.actor_type

    def __repr__(self) -> str:
        return f"Run({self.ref.type_name}, {self.id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and other.ref == self.ref

    def __hash__(self) -> int:
        return hash(("run", self.ref))

    def result(self) -> Awaitable[T]:
        """Wait for the run's outcome and return its result, or raise its failure
        (:class:`RunFailedError`, :class:`RunCancelledError`).

        From outside a turn it waits, across hibernations and restarts of the process. Inside a
        handler it is a durable wait (journaled, like ``self.wait_for_event``): the outcome is
        delivered to the waiting turn like a signal, never as a message queued behind it, and
        the actor may hibernate meanwhile. It can be one branch of ``self.wait_any``.
        """
        return self._host.run_result(self)

    async def status(self) -> RunStatus:
        """Where the run is (pending, running, waiting and for what, done, failed, cancelled),
        with its steps; read from its files, without waking it."""
        return await self._host.run_status(self)

    async def get_value(self, name: str) -> Any:
        """The latest value the run recorded under ``name`` (``self.set_value``), read without
        waking it; ``LookupError`` if none yet. Outside turns (inside one, read it in a step)."""
        return await self._host.run_get_value(self, name)

    def wait_value(self, name: str) -> Awaitable[Any]:
        """Wait until the run has recorded a value under ``name`` and return it (the latest,
        at once if it has one). Outside a turn, bound the wait with a cancel scope
        (``anyio.move_on_after``), not a timeout argument. Inside a handler of the run's
        starter it is a durable wait, journaled, delivered like a signal (one branch of
        ``self.wait_any`` if it needs a deadline)."""
        return self._host.run_wait_value(self, name)

    async def signal(
        self, name: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> bool:
        """Deliver event ``name`` to the run (its ``self.wait_for_event(name)``), as
        ``Ref.signal`` does; ``False`` if ``idempotency_key`` was used already."""
        return await self._host.run_signal(self, name, payload, idempotency_key)

    async def cancel(self) -> bool:
        """Cancel the run: its turn (and the step in flight) is interrupted and rolled back,
        and it ends ``cancelled``; so do the runs it started. ``False`` if it had finished
        already (nothing changes)."""
        return await self._host.run_cancel(self)

    async def restart(self, from_step: int = 0) -> None:
        """Run a failed or cancelled run again, from step number ``from_step``: its journaled
        steps before it keep their results, later ones run again. A done run keeps its one
        outcome: :class:`RunStateError` (so does a run still going)."""
        await self._host.run_restart(self, from_step)
