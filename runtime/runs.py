"""Runs: long work beside the mailbox (DESIGN §9; docs/howto/runs.md).

A run is an actor of a workflow type (``actors.Workflow``) keyed by its run id, whose one turn
is its start message (the ``run`` handler). So it journals, sleeps, waits, hibernates, wakes on
timers, replicates and recovers after a crash like any actor; this room adds what makes it a
run:

- the start (:meth:`Runs.start` from outside, :meth:`Runs.start_in_turn` in a handler, a durable
  call journaled like ``self.ask``): the message and a ``run_start`` row go to the run's
  ``mailbox.db`` in one transaction, which is what makes a run id start at most one run;
- the outcome (:meth:`Runs.finished`, called by ``turn.py`` inside the transaction that applies
  or dead-letters the start message): recorded in the run's ``data.db`` and, through the run's
  outbox (so exactly once), delivered to its starter as an event (for a turn waiting in
  ``run.result()``) and as an ``on_run_done`` message;
- values (``self.set_value``), written in the run's ``mailbox.db`` outside the turn's
  transaction and journaled, read without waking it;
- the handle's calls (:class:`~runtime.run.Run`): result, status, values, signal, cancel,
  restart; and the retention of finished runs.

Files: ``runtime/files/runstore.py``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import uuid
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import attrs

from .activation import Activation, check_payload
from .admin import Admin
from .codec import register_type
from .context import refuse_inside_turn
from .delivery import EVENT, Delivery
from .errors import (
    ActorError,
    ActorExistsError,
    ActorNotFoundError,
    IdempotencyKeyReusedError,
    NotLocalError,
    RunCancelledError,
    RunFailedError,
    RunStateError,
    StoredError,
    UnknownActorTypeError,
)
from .files import db, runstore
from .files.directory import Entry
from .files.layout import DATA_FILE, MAILBOX_FILE, actor_dir, actor_id, make_actor_dir
from .files.mailbox import JournalRow, Mailbox, Message
from .files.mailbox import image as mailbox_image
from .host import RuntimeHost
from .lifecycle import State
from .records import StepRecord
from .ref import Ref
from .residency import Residency
from .run import Run, RunStatus
from .spec import TypeSpec, check_key
from .steps import StepCall, TurnState

if TYPE_CHECKING:
    from .context import HandlerContext

#: How long a finished run's files are kept by default: a week, long enough to read a run's
#: result and status after a weekend, short enough that a busy agent's finished runs do not
#: fill the disk. ``open_runtime(run_retention=...)`` sets it; ``math.inf`` keeps them.
DEFAULT_RUN_RETENTION = 7 * 24 * 3600.0


outcome_event = runstore.outcome_event
value_event = runstore.value_event


@attrs.frozen
class _NoValue:
    """Journaled for a wait on a run's value when the run ended without recording it."""

    status: str


register_type(_NoValue, name="torpor.RunEndedWithoutValue")


class Runs:
    """The runs of one runtime: starting them, their outcomes, values and handles."""

    def __init__(
        self,
        rt: RuntimeHost,
        residency: Residency,
        delivery: Delivery,
        admin: Admin,
        *,
        retention: float = DEFAULT_RUN_RETENTION,
    ) -> None:
        if not (isinstance(retention, int | float) and retention >= 0):
            raise ValueError(f"run_retention must be a number of seconds >= 0 (got {retention!r})")
        self.rt = rt
        self.residency = residency
        self.delivery = delivery
        self.admin = admin
        self.retention = float(retention)
        #: Outside readers waiting in ``run.wait_value``: (actor id, name) -> set on a new value.
        self.value_events: dict[tuple[str, str], anyio.Event] = {}
        #: The same waiters, by run (actor id): set when the run ends (maybe not committed).
        self.finish_events: dict[str, anyio.Event] = {}
        #: Finished runs to delete: actor id -> (expiry, type, key); the sweep's wake-up.
        self.expiring: dict[str, tuple[float, str, str]] = {}
        self.expiry_changed = anyio.Event()
        self._by_run: dict[Any, TypeSpec] | None = None
        admin.end_run = self.end_before_delete

    # -- handles --------------------------------------------------------------------------

    def handle(self, spec: TypeSpec, run_id: str) -> Run[Any]:
        return Run(self, Ref(self.rt, spec, run_id))

    def _workflow_spec(self, workflow: Any) -> TypeSpec:
        spec = getattr(workflow, "__torpor_spec__", None)
        if spec is None or self.rt.specs.get(spec.name) is not spec:
            raise UnknownActorTypeError(
                f"{getattr(workflow, '__qualname__', workflow)!s} is not registered with this "
                "runtime; pass it in open_runtime(types=[...])"
            )
        assert isinstance(spec, TypeSpec)
        if not spec.workflow:
            raise TypeError(f"{spec.cls.__qualname__} is not an actors.Workflow")
        return spec

    def run(self, workflow: type[Any], run_id: str) -> Run[Any]:
        """``rt.run``: the handle of an existing run; ``ActorNotFoundError`` if none."""
        spec = self._workflow_spec(workflow)
        check_key(run_id, self.rt.max_key_bytes)
        if self.rt.directory.get(actor_id(spec.name, run_id)) is None:
            raise ActorNotFoundError(f"no run of {spec.name} has the id {run_id!r}")
        return self.handle(spec, run_id)

    def runs(self, parent: Ref[Any] | None) -> list[Run[Any]]:
        """``rt.runs``: the runs ``parent`` started (``None``: those started from outside),
        oldest first."""
        directory = self.rt.directory
        if parent is None:
            rows = [
                row
                for spec in self.rt.specs.values()
                if spec.workflow
                for row in directory.orphans(spec.name)
            ]
        else:
            rows = directory.children(actor_id(parent.type_name, parent.key))
        found = []
        for _child, type_name, key in rows:
            spec = self.rt.specs.get(type_name)
            if spec is not None and spec.workflow:
                found.append(self.handle(spec, key))
        return found

    async def _here(self, spec: TypeSpec, key: str) -> None:
        """Before reading a run's files without waking it: if they are in the replica and not
        here (a runtime restored onto a fresh machine), wake it, which restores them."""
        rep = self.rt.replication
        aid = actor_id(spec.name, key)
        if rep is None or aid in self.residency.awake or rep.local_files_current(aid):
            return
        if self.rt.directory.get(aid) is not None:
            await self.residency.activate(spec, key)

    # -- starting -------------------------------------------------------------------------

    def _spec_of_run(self, method: Any) -> TypeSpec:
        """The workflow whose ``run`` is ``method`` (``Flow.run``)."""
        if self._by_run is None:
            self._by_run = {
                spec.handlers["run"].fn: spec for spec in self.rt.specs.values() if spec.workflow
            }
        spec = self._by_run.get(getattr(method, "__func__", method))
        if spec is None:
            owner = getattr(method, "__qualname__", repr(method))
            raise TypeError(
                f"start takes the run method of a workflow registered with this runtime, "
                f"as in start(Flow.run, ...) (got {owner})"
            )
        return spec

    def _encode_start(
        self, method: Any, args: tuple[Any, ...], kwargs: dict[str, Any], run_id: str | None
    ) -> tuple[TypeSpec, str | None, bytes]:
        spec = self._spec_of_run(method)
        if run_id is not None:
            check_key(run_id, self.rt.max_key_bytes)
        _name, payload, _query = self.delivery.encode_call(spec, "run", args, kwargs)
        return spec, run_id, payload

    async def start(
        self, method: Any, args: tuple[Any, ...], kwargs: dict[str, Any], run_id: str | None
    ) -> Run[Any]:
        """``rt.start``: start a run from outside (it has no starter to tell the outcome)."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        refuse_inside_turn("rt.start", "self.start(Flow.run, ...), a journaled call")
        self.rt.check_open()
        spec, given, payload = self._encode_start(method, args, kwargs, run_id)
        key = uuid.uuid4().hex if given is None else given
        self._create(spec, key, None)
        act = await self.residency.activate(spec, key)
        if act.files_open and act.state is State.AWAKE:
            self._append(spec, key, payload, None, act.mailbox, act)
        else:  # (closing already: append to its file, it wakes again)
            self._start_in_files(spec, key, payload, None, created=False)
        await anyio.lowlevel.cancel_shielded_checkpoint()
        return self.handle(spec, key)

    def start_in_turn(
        self,
        turn: TurnState,
        method: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        run_id: str | None,
    ) -> Run[Any]:
        """``self.start``: a durable call. Its step is journaled with the run id once the
        start message is in the run's mailbox; a replay finds it and sends nothing (and a
        replay after a crash in between sends the same start again, which starts nothing)."""
        spec = self._spec_of_run(method)
        name = f"{spec.name}.run"
        n, row = turn.claim("start", name)
        codec = self.rt.codec
        if row is not None:
            assert row.value is not None
            return self.handle(spec, str(codec.decode(row.value)))
        spec, given, payload = self._encode_start(method, args, kwargs, run_id)
        # Derived from the step, so that a replay after a crash before the journal write
        # starts the same run (never a second one).
        key = given or hashlib.blake2b(turn.idempotency_key(n).encode(), digest_size=16).hexdigest()
        act = turn.activation
        if spec is act.spec and key == act.key:
            raise RuntimeError(f"{turn.describe()}: a run cannot start itself again")
        turn.write()
        self.rt.crash_point("before step", turn, n, name)
        parent = actor_id(act.spec.name, act.key)
        started = self._start_in_files(spec, key, payload, parent, created=None)
        if started:
            self.rt.counters.sent += 1
        turn.write(
            JournalRow(n, "start", name, "done", codec.encode(key), None, 1, self.rt.clock())
        )
        self.rt.crash_point("after step", turn, n, name)
        return self.handle(spec, key)

    def _create(self, spec: TypeSpec, key: str, parent: str | None) -> bool:
        """The run's row in ``directory.db`` (pending, with its parent); whether it is new."""
        aid = actor_id(spec.name, key)
        try:
            with db.full_disk_as_error(self.rt.directory.path):
                self.rt.directory.create(aid, spec.name, key, None, parent=parent)
        except ActorExistsError:
            return False
        self.rt.known_actors += 1
        return True

    def _start_in_files(
        self, spec: TypeSpec, key: str, payload: bytes, parent: str | None, created: bool | None
    ) -> bool:
        """Append the start to the run's mailbox, open or not, without waiting (a turn's
        ``self.start`` is synchronous); then have the run woken. Whether it started now."""
        aid = actor_id(spec.name, key)
        if created is None:
            created = self._create(spec, key, parent)
        act = self.residency.awake.get(aid)
        if act is not None and act.files_open:
            started = self._append(spec, key, payload, parent, act.mailbox, act)
            if act.state is not State.AWAKE:
                act.backlog = True
                self.residency.wake_later(spec, key)
            return started
        if act is not None and act.preparing:
            raise NotLocalError(f"{spec.name} {key!r} is being restored from the replica")
        rep = self.rt.replication
        if (
            rep is not None
            and not rep.local_files_current(aid)
            and not (created and not rep.origin)
        ):
            # Its files may be in the replica, not here: the start would be set aside by the
            # restore. The run is woken (restored), and the turn retried.
            self.residency.wake_later(spec, key)
            raise NotLocalError(f"{spec.name} {key!r} is being restored from the replica")
        folder = actor_dir(self.rt.root, aid)
        with db.full_disk_as_error(folder):
            make_actor_dir(folder)
        if not created:
            self.rt.directory.mark_pending(aid, spec.name, key)
        mailbox = Mailbox(
            folder / MAILBOX_FILE,
            synchronous=self.rt.synchronous,
            type_name=spec.name,
            key=key,
            image=mailbox_image,
            known_sound=self.rt.sound_mailboxes,
            clock=self.rt.clock.wall,
        )
        try:
            started = self._append(spec, key, payload, parent, mailbox, None)
        finally:
            mailbox.close()
        if act is None:
            self.residency.wake_later(spec, key)
        return started

    def _append(
        self,
        spec: TypeSpec,
        key: str,
        payload: bytes,
        parent: str | None,
        mailbox: Mailbox,
        act: Activation | None,
    ) -> bool:
        """The start message and its ``run_start`` row, unless the run was started already
        (then :class:`IdempotencyKeyReusedError` if with other arguments)."""
        fingerprint = hashlib.blake2b(payload, digest_size=16).digest()
        start = runstore.read_start(mailbox.conn)
        if start is not None:
            if start.fingerprint != fingerprint:
                raise IdempotencyKeyReusedError(
                    f"run {key!r} of {spec.name} was started with other arguments; a run id "
                    "names exactly one run"
                )
            return False
        with db.full_disk_as_error(mailbox.path):
            seq = runstore.append_start(
                mailbox.conn, "run", payload, fingerprint, parent, key, self.rt.clock()
            )
        if act is not None and act.state is State.AWAKE:
            message = Message(seq, None, None, "run", payload, f"{runstore.RUN_KEY_PREFIX}{key}")
            act.accept(message)
        return True

    # -- the outcome ----------------------------------------------------------------------

    def finished(self, act: Any, message: Message, status: str, value: bytes) -> None:
        """The run's start message was applied (``done``) or dead-lettered (``failed``,
        ``cancelled``): inside that transaction, record the outcome and write the outbox rows
        that deliver it to the starter (so it leaves exactly once, if the transaction
        commits)."""
        rt = self.rt
        now = rt.clock()
        runstore.record_outcome(act.data._exec, message.seq, status, value, now)
        start = runstore.read_start(act.mailbox.conn)
        entry = self._starter(act.spec.name, act.key, start)
        parent_spec = None if entry is None else rt.specs.get(entry.type)
        if entry is not None and parent_spec is not None:
            target: Ref[Any] = Ref(rt, parent_spec, entry.key)
            record = rt.codec.encode([status, value])
            name = outcome_event(act.spec.name, act.key)
            act.outbox_add(target, EVENT, rt.codec.encode([name, record]))
            parts = [act.spec.name, act.key, status, value]
            act.outbox_add(target, "on_run_done", rt.codec.encode([parts, {}]))
        self.note_finished(act.spec.name, act.key, now)
        ended = self.finish_events.get(actor_id(act.spec.name, act.key))
        if ended is not None:
            ended.set()  # (kept: a waiter that finds no outcome yet waits for the commit)

    def _starter(self, type_name: str, key: str, start: runstore.Start | None) -> Entry | None:
        """The directory row of the actor that started the run, if it is still there: not
        deleted (nor being deleted), and not a new actor under its key since (a deletion
        takes the parent off its runs' rows)."""
        if start is None or start.parent is None:
            return None
        own = self.rt.directory.get(actor_id(type_name, key))
        if own is None or own.parent != start.parent:
            return None
        entry = self.rt.directory.get(start.parent)
        return None if entry is None or entry.deleting else entry

    def run_done(
        self, ctx: HandlerContext, type_name: str, run_id: str, status: str, value: bytes
    ) -> tuple[Run[Any], Any]:
        """For ``on_run_done`` in the starter's turn: the handle and the outcome (the result,
        or the error). The outcome's event, if no turn took it, goes: it was delivered."""
        spec = self.rt.specs.get(type_name)
        if spec is None:
            raise UnknownActorTypeError(f"a run of {type_name!r}, a type not registered here")
        runstore.drop_unconsumed_events(
            ctx.activation.mailbox.conn,
            outcome_event(type_name, run_id),
            value_event(type_name, run_id),
        )
        run = self.handle(spec, run_id)
        try:
            return run, self.outcome(run, status, value)
        except RunFailedError as exc:
            return run, exc

    def outcome(self, run: Run[Any], status: str, value: bytes) -> Any:
        """The result of an outcome record, or raise its error."""
        codec = self.rt.codec
        if status == "done":
            return codec.decode(value)
        type_name, message, text = codec.decode(value)
        kind = RunCancelledError if status == "cancelled" else RunFailedError
        error = kind(
            f"run {run.id!r} of {run.ref.type_name} {status}: {type_name}: {message}",
            run_id=run.id,
            error_type=type_name,
            error_message=message,
        )
        error.__cause__ = StoredError(type_name, message, text)
        raise error

    def _record(self, spec: TypeSpec, key: str) -> tuple[str, bytes] | None:
        """``(status, value)`` if the run finished (its latest start: not one restarted since)."""
        outcome = self._read_outcome(spec, key)
        if outcome is None:
            return None
        start = self._read_start(spec, key)
        if start is not None and start.seq > outcome.seq:
            return None  # restarted since
        return outcome.status, outcome.value

    def _read_outcome(self, spec: TypeSpec, key: str) -> runstore.Outcome | None:
        """The run's outcome, read from committed state (its ``data.db``), without waking it."""
        aid = actor_id(spec.name, key)
        act = self.residency.awake.get(aid)
        if act is not None and act.files_open:
            return runstore.read_outcome(act.reader())
        path = actor_dir(self.rt.root, aid) / DATA_FILE
        if not path.exists():
            return None
        conn = db.connect(path, synchronous=self.rt.synchronous, private=True, persist_wal=True)
        try:
            return runstore.read_outcome(conn)
        finally:
            db.close(conn, path, keep_wal=False)

    def _read_start(self, spec: TypeSpec, key: str) -> runstore.Start | None:
        return self.residency.with_mailbox(  # type: ignore[no-any-return]
            spec,
            key,
            lambda mailbox, _act: None if mailbox is None else runstore.read_start(mailbox.conn),
        )

    def run_result(self, run: Run[Any]) -> Awaitable[Any]:
        """``run.result()``: a durable wait inside a handler, a plain wait outside."""
        from .context import CURRENT

        ctx = CURRENT.get()
        if ctx is not None and ctx.active and ctx.turn is not None:
            turn: TurnState = ctx.turn
            spec, key = run.ref._spec, run.id

            def check() -> bytes | None:
                record = self._record(spec, key)
                return None if record is None else self.rt.codec.encode(list(record))

            def finish(record: Any) -> Any:
                status, value = record
                return self.outcome(run, status, value)

            return turn.wait(
                "run",
                f"{spec.name}.run {key}",
                None,
                outcome_event(spec.name, key),
                check=check,
                finish=finish,
            )
        return self._result_outside(run)

    async def _result_outside(self, run: Run[Any]) -> Any:
        await anyio.lowlevel.checkpoint_if_cancelled()
        refuse_inside_turn("run.result()", "await run.result() in the handler itself")
        spec, key = run.ref._spec, run.id
        await self._here(spec, key)
        while True:
            self.rt.check_open()
            record = self._record(spec, key)
            if record is not None:
                await anyio.lowlevel.checkpoint()
                return self.outcome(run, *record)
            start = self._read_start(spec, key)
            if start is None:
                raise ActorNotFoundError(
                    f"no run of {spec.name} has the id {key!r} (never started, or deleted)"
                )
            act = await self.residency.activate(spec, key)
            waiter = act.waiter(start.seq)
            await waiter.event.wait()
            if self._record(spec, key) is not None:
                continue
            again = self._read_start(spec, key)
            if waiter.error is not None and again is not None and again.seq == start.seq:
                raise waiter.error

    # -- values ---------------------------------------------------------------------------

    def set_value(self, turn: TurnState, name: str, value: Any) -> StepCall[None]:
        """``self.set_value``: numbered now, recorded when awaited (once: a replay finds its
        journal row and records nothing)."""
        n, row = turn.claim("value", name)
        if row is not None:
            return StepCall(_nothing)
        encoded = self.rt.codec.encode(value)
        check_payload(self.rt, encoded, f"value {name!r}")
        return StepCall(functools.partial(self._record_value, turn, n, name, encoded))

    async def _record_value(self, turn: TurnState, n: int, name: str, encoded: bytes) -> None:
        turn.write()
        act = turn.activation
        start = runstore.read_start(act.mailbox.conn)
        entry = self._starter(act.spec.name, act.key, start)
        parent = None if entry is None else self.rt.specs.get(entry.type)
        if entry is not None and parent is not None:
            # First the starter's event (its doorbell for a turn waiting in run.wait_value),
            # then the value: a crash in between replays this turn, which records the same
            # value at the same step; the other order could lose the doorbell.
            await self.delivery.deliver_event(
                parent,
                entry.key,
                value_event(act.spec.name, act.key, name),
                encoded,
                f"{actor_id(act.spec.name, act.key)}#v{turn.seq}.{n}",
            )
        now = self.rt.clock()
        row = JournalRow(n, "value", name, "done", None, None, 0, now)
        with db.full_disk_as_error(act.mailbox.path):
            runstore.set_value(act.mailbox.conn, turn.seq, row, name, encoded, now)
        turn.rows()[n] = row
        self.rt.crash_point("after step", turn, n, name)
        arrived = self.value_events.pop((actor_id(act.spec.name, act.key), name), None)
        if arrived is not None:
            arrived.set()
        await anyio.lowlevel.checkpoint()

    def _get_value(self, run: Run[Any], name: str) -> bytes | None:
        return self.residency.with_mailbox(  # type: ignore[no-any-return]
            run.ref._spec,
            run.id,
            lambda mailbox, _act: (
                None if mailbox is None else runstore.get_value(mailbox.conn, name)
            ),
        )

    async def run_get_value(self, run: Run[Any], name: str) -> Any:
        await anyio.lowlevel.checkpoint()
        refuse_inside_turn("run.get_value", "a step that reads it (its result is journaled)")
        self.rt.check_open()
        await self._here(run.ref._spec, run.id)
        encoded = self._get_value(run, name)
        if encoded is None:
            raise LookupError(f"{run!r} has no value {name!r} yet")
        return self.rt.codec.decode(encoded)

    def run_wait_value(self, run: Run[Any], name: str) -> Awaitable[Any]:
        """``run.wait_value``: a durable wait in a handler of the run's starter (its values
        come to the starter's mailbox as events), a plain wait outside."""
        from .context import CURRENT

        ctx = CURRENT.get()
        if ctx is None or not ctx.active or ctx.turn is None:
            return self._wait_value_outside(run, name)
        turn: TurnState = ctx.turn
        act = turn.activation
        spec, key = run.ref._spec, run.id
        start = self._read_start(spec, key)
        starter = self._starter(spec.name, key, start)
        if starter is None or starter.id != actor_id(act.spec.name, act.key):
            raise RuntimeError(
                f"{turn.describe()}: inside a handler, only the actor that started {run!r} "
                "waits for its values (they come to its mailbox); read them in a step instead"
            )

        def check() -> bytes | None:
            encoded = self._get_value(run, name)
            if encoded is not None:
                return encoded
            record = self._record(spec, key)  # (its outcome event rang: it ended without it)
            return None if record is None else self.rt.codec.encode(_NoValue(record[0]))

        return turn.wait(
            "value",
            f"{spec.name} {key} {name}",
            None,
            value_event(spec.name, key, name),
            check=check,
            finish=lambda value: _value_or_lookup_error(run, name, value),
        )

    async def _wait_value_outside(self, run: Run[Any], name: str) -> Any:
        await anyio.lowlevel.checkpoint_if_cancelled()
        spec, key = run.ref._spec, run.id
        await self._here(spec, key)
        aid = actor_id(spec.name, key)
        while True:
            self.rt.check_open()
            arrived = self.value_events.get((aid, name))
            if arrived is None:
                arrived = self.value_events[(aid, name)] = anyio.Event()
            ended = self.finish_events.get(aid)
            if ended is None:
                ended = self.finish_events[aid] = anyio.Event()
            encoded = self._get_value(run, name)
            if encoded is not None:
                await anyio.lowlevel.checkpoint()
                return self.rt.codec.decode(encoded)
            record = self._record(spec, key)
            if record is not None:
                self.finish_events.pop(aid, None)  # (its end is committed: nothing to wait for)
                await anyio.lowlevel.checkpoint()
                return _value_or_lookup_error(run, name, _NoValue(record[0]))
            if ended.is_set():  # it ended in a transaction not committed yet
                act = self.residency.awake.get(aid)
                start = self._read_start(spec, key)
                if act is not None and start is not None:
                    await act.waiter(start.seq).event.wait()  # (its commit, or its failure)
                else:
                    self.finish_events.pop(aid, None)  # rolled back: it ends again later
                    await anyio.lowlevel.checkpoint()
                continue
            await _first_of(arrived, ended, self.rt.closing)

    # -- status and control ---------------------------------------------------------------

    async def run_status(self, run: Run[Any]) -> RunStatus:
        await anyio.lowlevel.checkpoint()
        refuse_inside_turn("run.status", "a step that reads it (its result is journaled)")
        self.rt.check_open()
        spec, key = run.ref._spec, run.id
        if self.rt.directory.get(actor_id(spec.name, key)) is None:
            raise ActorNotFoundError(f"no run of {spec.name} has the id {key!r}")
        await self._here(spec, key)
        outcome = self._read_outcome(spec, key)

        def read(mailbox: Mailbox | None, act: Activation | None) -> RunStatus:
            start = None if mailbox is None else runstore.read_start(mailbox.conn)
            journal = {} if mailbox is None or start is None else mailbox.journal(start.seq)
            steps = tuple(
                StepRecord(r.n, r.kind, r.name, r.status, r.attempts, r.until, r.recorded_at)
                for r in journal.values()
            )
            waiting = tuple(_waiting_for(r) for r in journal.values() if r.status == "waiting")
            error = None
            finished_at = None
            if outcome is not None and (start is None or outcome.seq >= start.seq):
                state = outcome.status
                finished_at = outcome.finished_at
                waiting = ()
                if state != "done":
                    type_name, message, _text = self.rt.codec.decode(outcome.value)
                    error = f"{type_name}: {message}"
            elif start is None:
                state = "pending"
            elif act is not None and act.turn is not None and act.turn.seq == start.seq:
                state = "waiting" if act.turn.idle else "running"
            elif waiting:
                state = "waiting"
            else:
                state = "running" if journal else "pending"
            if state != "waiting":
                waiting = ()
            return RunStatus(
                id=key,
                workflow=spec.name,
                state=state,
                waiting_for=waiting,
                steps=steps,
                started_at=None if start is None else start.started_at,
                finished_at=finished_at,
                error=error,
                restarts=0 if start is None else start.restarts,
            )

        status: RunStatus = self.residency.with_mailbox(spec, key, read)
        return status

    async def run_signal(
        self, run: Run[Any], name: str, payload: Any, idempotency_key: str | None
    ) -> bool:
        return await self.delivery.signal(run.ref, name, payload, idempotency_key=idempotency_key)

    async def run_cancel(self, run: Run[Any]) -> bool:
        await anyio.lowlevel.checkpoint_if_cancelled()
        refuse_inside_turn("run.cancel", "a step that cancels it")
        self.rt.check_open()
        spec, key = run.ref._spec, run.id
        await self._here(spec, key)
        cancelled = False
        if self._record(spec, key) is None:
            start = self._read_start(spec, key)
            if start is not None:
                try:
                    await self.admin.cancel_turn(run.ref, start.seq, "run cancelled")
                    cancelled = True
                except LookupError:
                    cancelled = False  # it finished meanwhile
        for child in self.runs(run.ref):  # its own runs, whatever became of it
            await self.run_cancel(child)
        return cancelled

    async def run_restart(self, run: Run[Any], from_step: int) -> None:
        await anyio.lowlevel.checkpoint()
        refuse_inside_turn("run.restart", "a step that restarts it")
        self.rt.check_open()
        if not isinstance(from_step, int) or isinstance(from_step, bool) or from_step < 0:
            raise ValueError(f"from_step must be an int >= 0 (got {from_step!r})")
        spec, key = run.ref._spec, run.id
        await self._here(spec, key)
        record = self._record(spec, key)
        if record is None:
            raise RunStateError(
                f"{run!r} has not finished: only a failed or cancelled run restarts"
            )
        if record[0] == "done":
            raise RunStateError(f"{run!r} is done: a done run keeps its one outcome")
        aid = actor_id(spec.name, key)
        self.rt.directory.mark_pending(aid, spec.name, key)  # first: a crash must not lose it
        now = self.rt.clock()

        def move(mailbox: Mailbox | None, act: Activation | None) -> bool:
            if mailbox is None:
                return False
            moved = runstore.restart(mailbox.conn, key, from_step, now)
            if moved is None:
                return False
            seq, method, payload, idempotency_key = moved
            if act is not None and act.files_open and act.state is State.AWAKE:
                act.accept(Message(seq, None, None, method, payload, idempotency_key))
            return True

        if not self.residency.with_mailbox(spec, key, move):
            raise RunStateError(f"{run!r} has no failed start to run again")
        self.expiring.pop(aid, None)
        self.residency.wake_to_act(spec, key)

    async def end_before_delete(self, spec: TypeSpec, key: str) -> bool:
        """Before ``Ref.delete`` deletes a run that has not finished: cancel it and wait for
        its outcome, which its outbox then carries to its starter (a turn waiting in
        ``run.result()`` ends with :class:`RunCancelledError`, ``on_run_done`` arrives) before
        the deletion removes it. Whether it ended so; if it cannot be (stopped, failed), it
        is deleted as any actor is."""
        run = self.handle(spec, key)
        try:
            await self._here(spec, key)
            start = self._read_start(spec, key)
            if start is None:
                return False
            if self._record(spec, key) is not None:
                return await self._wake_to_deliver(spec, key)
            with contextlib.suppress(LookupError):  # (it finished meanwhile)
                await self.admin.cancel_turn(
                    run.ref, start.seq, "the run was deleted before it finished"
                )
            await self._result_outside(run)
        except RunFailedError:  # (RunCancelledError included: the outcome it should have)
            return True
        except ActorError:
            return False
        return True

    # -- retention ------------------------------------------------------------------------

    def note_finished(self, type_name: str, key: str, at: float) -> None:
        """A run finished at ``at`` (its transaction may still roll back: the sweep checks
        again before it deletes anything)."""
        if math.isinf(self.retention):
            return
        aid = actor_id(type_name, key)
        self.expiring[aid] = (at + self.retention, type_name, key)
        self.expiry_changed.set()

    async def _find_finished(self) -> None:
        """The finished runs on disk at open, whose retention the sweep keeps: read in the
        background, one run's ``data.db`` at a time (a run that finishes meanwhile is noted
        by its own turn)."""
        for spec in list(self.rt.specs.values()):
            if not spec.workflow:
                continue
            for aid, key in self.rt.directory.of_type(spec.name):
                await anyio.lowlevel.checkpoint()
                if aid in self.expiring:
                    continue
                outcome = self._read_outcome(spec, key)
                if outcome is not None:
                    self.expiring[aid] = (outcome.finished_at + self.retention, spec.name, key)

    async def sweep(self) -> None:
        """Delete finished runs once their retention has passed (the runtime's task group),
        as ``Ref.delete`` does: locally and, through a tombstone, in the replica."""
        if math.isinf(self.retention):
            return
        await self._find_finished()
        while True:
            self.expiry_changed = anyio.Event()
            due = min((at for at, _t, _k in self.expiring.values()), default=math.inf)
            now = self.rt.clock()
            if due > now:
                with anyio.move_on_after(due - now):
                    await self.expiry_changed.wait()
                continue
            for aid, (at, type_name, key) in list(self.expiring.items()):
                if at <= now:
                    await self._expire(aid, type_name, key)
            await anyio.lowlevel.checkpoint()

    async def _expire(self, aid: str, type_name: str, key: str) -> None:
        """Delete one finished run in the background (as ``Ref.delete`` does: an awake run is
        closed first, and the outcome its outbox holds leaves before its files go), unless it
        did not finish after all, or was restarted since."""
        spec = self.rt.specs.get(type_name)
        if spec is None:
            self.expiring.pop(aid, None)
            return
        record = self._record(spec, key)
        outcome = self._read_outcome(spec, key) if record is not None else None
        if outcome is None:
            self.expiring.pop(aid, None)
            return
        if outcome.finished_at + self.retention > self.rt.clock():
            self.expiring[aid] = (outcome.finished_at + self.retention, type_name, key)
            return
        self.expiring.pop(aid, None)
        # In its own task: the deletion of a run whose outcome its starter cannot take yet
        # waits for that (its outbox leaves first), and must not hold up the others' retention.
        self.rt.task_group.start_soon(self._delete_expired, spec, key)
        await anyio.lowlevel.checkpoint()

    async def _delete_expired(self, spec: TypeSpec, key: str) -> None:
        with contextlib.suppress(ActorError):  # (then deleted as any actor is)
            await self._wake_to_deliver(spec, key)
        await self.admin.delete_quietly(spec, key)

    async def _wake_to_deliver(self, spec: TypeSpec, key: str) -> bool:
        """Before a finished run is deleted: if it hibernated with outbox rows (its outcome
        for its starter, which could not take it then), wake it, so that the deletion's close
        delivers them before its files go. Whether it is awake (the caller deletes it next,
        without awaiting anything in between)."""
        aid = actor_id(spec.name, key)
        if aid not in self.residency.awake:
            path = actor_dir(self.rt.root, aid) / DATA_FILE
            if not path.exists():
                return False
            conn = db.connect(path, synchronous=self.rt.synchronous, private=True, persist_wal=True)
            try:
                if not runstore.has_outbox_rows(conn):
                    return False
            finally:
                db.close(conn, path, keep_wal=False)
            await self.residency.activate(spec, key)
        return True


def _waiting_for(row: JournalRow) -> str:
    if row.kind == "sleep":
        return "sleep"
    if row.kind == "event":
        return f"event {row.name!r}"
    if row.kind in ("run", "value"):
        return f"{row.kind} {row.name!r}"
    return f"{row.kind} {row.name!r}"


async def _first_of(*events: anyio.Event) -> None:
    """Return once one of ``events`` is set."""
    async with anyio.create_task_group() as tg:

        async def wait(event: anyio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        for event in events:
            tg.start_soon(wait, event)


def _value_or_lookup_error(run: Run[Any], name: str, value: Any) -> Any:
    """A waited value, or the ``LookupError`` of a run that ended without recording it."""
    if isinstance(value, _NoValue):
        raise LookupError(f"{run!r} ended ({value.status}) without recording a value {name!r}")
    return value


async def _nothing() -> None:
    await anyio.lowlevel.checkpoint()
