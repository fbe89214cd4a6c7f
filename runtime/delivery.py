"""Delivery: messages into mailboxes, and the calls that read or wait on them.

:class:`Delivery` validates and encodes a call (``encode_call``), stores a message in its
target's ``mailbox.db`` (through the open mailbox of an awake actor, which ``send`` wakes first
if needed; or the closed file of a stopped actor, or of an outbox row's target when no awake slot
is free, woken later), waits for an ask's reply, runs a ``@query`` on a read-only connection,
delivers an outbox row from one actor to another (deduplicated by the sender's cursor), and
writes the outbox rows of ``self.send`` / ``self.spawn`` / ``self.schedule`` inside a turn. It
asks :class:`~runtime.residency.Residency` for awake actors; it never opens or closes one itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, cast

import anyio
import anyio.lowlevel
import apsw

from . import context, timers
from .activation import Activation, check_payload
from .actor import DESTROY
from .context import refuse_inside_turn as _refuse_inside_turn
from .errors import (
    ActorFailedError,
    ActorNotFoundError,
    ActorStoppedError,
    CorruptFileError,
    NotLocalError,
    RuntimeClosedError,
)
from .files import db
from .files.datastore import KV, OutboxRow, Sql
from .files.layout import DATA_FILE, MAILBOX_FILE, actor_dir, actor_id, make_actor_dir
from .files.mailbox import Mailbox, Message
from .files.mailbox import image as mailbox_image
from .host import RuntimeHost, Waiter
from .lifecycle import State
from .ref import Ref
from .replica.replicator import Manifest, manifest_key
from .residency import Residency, deleting_error, not_found
from .spec import TypeSpec
from .timers import Schedule
from .turn import CHILD_SENDER

#: The outbox method name of a child's creation (never a handler name: those cannot start
#: with an underscore).
SPAWN = "__spawn__"
#: The outbox method name of an event (``[name, payload]``) for its target's mailbox: a run's
#: outcome, for a turn of its starter that waits for it (``run.result()``).
EVENT = "__event__"


class Delivery:
    """Sending, asking, querying and delivering, for one runtime."""

    def __init__(self, rt: RuntimeHost, residency: Residency) -> None:
        self.rt = rt
        self.residency = residency
        #: Deletes an actor whose ``self.destroy()`` committed (``Admin.destroyed``; set by the
        #: engine): called when that row is delivered.
        self.destroyed: Callable[[TypeSpec, str], None] = _no_destroy

    def encode_call(
        self, spec: TypeSpec, method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[str, bytes, bool]:
        handler = spec.handler(method)
        handler.check_arguments(spec.name, args, kwargs)
        if handler.validator is not None:
            handler.validate(spec.name, args, kwargs)
        payload = self.rt.codec.encode([list(args), kwargs])
        check_payload(self.rt, payload, f"a message to {spec.name}.{handler.name}")
        return handler.name, payload, handler.is_query

    async def send(
        self,
        spec: TypeSpec,
        key: str,
        method: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        idempotency_key: str | None,
        want_reply: bool = False,
    ) -> tuple[Activation | None, int, bool]:
        """Store a message; returns ``(act, seq, appended)``, ``appended`` False for a repeat of
        ``idempotency_key`` (nothing new stored)."""
        self.rt.check_open()
        name, payload, is_query = self.encode_call(spec, method, args, kwargs)
        if is_query:
            raise TypeError(f"{spec.name}.{name} is a @query: ask it, do not send it")
        check_idempotency_key(idempotency_key)
        try:
            act = await self.residency.activate(spec, key)
        except ActorStoppedError:
            if want_reply:
                raise
            appended = self.store(
                spec,
                key,
                name,
                payload,
                sender=None,
                sender_seq=None,
                idempotency_key=idempotency_key,
            )
            return None, 0, appended
        if idempotency_key is None:
            seq = act.mailbox.append(name, payload)
            appended = True
        else:
            maybe_seq, appended = act.mailbox.append_deduplicated(
                name, payload, sender=None, sender_seq=None, idempotency_key=idempotency_key
            )
            assert maybe_seq is not None
            seq = maybe_seq
        if appended:
            self.rt.counters.sent += 1
            act.accept(_new_message(seq, None, None, name, payload, idempotency_key))
        if not want_reply and spec.durable and self.rt.replication is not None:
            # Durable mode: the acknowledgement of a send means "in the replica", with the
            # directory's record of the actor and its pending work (without it, a fresh machine
            # restored from the replica would not know the message waits to run).
            await self.rt.replication.wait_token(self.rt.replication.append_token(act.aid))
            await self.rt.replication.wait_token(self.rt.replication.directory_token())
        return act, seq, appended

    async def ask(
        self,
        spec: TypeSpec,
        key: str,
        method: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        idempotency_key: str | None,
        *,
        from_turn: bool = False,
    ) -> Any:
        await anyio.lowlevel.checkpoint_if_cancelled()
        handler = spec.handler(method)
        if handler.is_query:
            self.rt.check_open()
            _, payload, _ = self.encode_call(spec, method, args, kwargs)
            if idempotency_key is not None and not from_turn:  # (a step's key: journaled)
                raise TypeError(
                    f"{spec.name}.{handler.name} is a @query: it changes nothing, so an "
                    "idempotency_key does not apply"
                )
            return await self._run_query(spec, key, handler.name, payload)
        if not from_turn:
            _refuse_inside_turn("ref.ask", "await self.ask(ref, ...), a journaled step")
        act, seq, _ = await self.send(spec, key, method, args, kwargs, idempotency_key, True)
        assert act is not None
        waiter: Waiter = act.waiter(seq)
        if waiter.event.is_set() and spec.durable and self.rt.replication is not None:
            # Answered from the stored outcome of an earlier application (a retried key): in
            # durable mode, that too is said only once it is in the replica.
            await self.rt.replication.wait_replicated(act)
        await waiter.event.wait()
        if waiter.error is not None:
            raise waiter.error
        assert waiter.payload is not None
        return self.rt.codec.decode(waiter.payload)

    async def _run_query(self, spec: TypeSpec, key: str, name: str, payload: bytes) -> Any:
        if not await self.exists(spec, key):
            await anyio.lowlevel.checkpoint()  # (a caller polling until it exists lets others run)
            raise ActorNotFoundError(
                f"{spec.name} {key!r} does not exist: a @query reads an actor created before "
                "(by a message or spawn) and creates none"
            )
        act = await self.residency.activate(spec, key)
        act.queries += 1
        self.residency.busy(act)
        try:
            return await self._query(act, spec, name, payload)
        finally:
            act.queries -= 1
            if act.queries == 0 and act.is_idle():
                self.residency.idle(act)

    async def _query(self, act: Activation, spec: TypeSpec, name: str, payload: bytes) -> Any:
        await act.settled.wait()
        if act.failed is not None:
            error = ActorFailedError(f"{spec.name} {act.key!r} cannot run: {act.failed!r}")
            raise error from act.failed
        args, kwargs = self.rt.codec.decode(payload)
        reader = act.reader()
        ctx = context.HandlerContext(
            act, context.QUERY, None, Sql(reader), KV(None, reader, self.rt.codec)
        )
        token = context.CURRENT.set(ctx)
        try:
            result = await spec.handlers[name].fn(act.instance, *args, **kwargs)
        except (apsw.CorruptError, apsw.NotADBError) as exc:
            restored = "; it is restored from the replica at its next wake-up"
            corrupt = CorruptFileError(
                f"{spec.name} {act.key!r}: {exc}; its messages are kept"
                + (restored if self.rt.replication else ""),
                path=str(act.data.path),
            )
            corrupt.__cause__ = exc
            act.fail_from_outside(corrupt)
            raise corrupt from exc
        finally:
            ctx.active = False
            context.CURRENT.reset(token)
        return self.rt.codec.decode(self.rt.codec.encode(result))

    async def deliver(
        self, spec: TypeSpec, key: str, method: str, payload: bytes, sender: str, sender_seq: int
    ) -> Any:
        """Deliver one outbox row to its target's mailbox (deduplicated by sender cursor).

        With a replica, returns a token whose ``done()`` tells when the delivery is in the
        replica: only then may the sender delete the row (else a restore could lose it)."""
        rep = self.rt.replication
        aid = actor_id(spec.name, key)
        if self._to_a_gone_starter(aid, method, payload):
            await anyio.lowlevel.checkpoint()
            return None
        if method == EVENT:
            name, event = self.rt.codec.decode(payload)
            return await self.deliver_event(spec, key, name, event, f"{sender}#{sender_seq}")
        if method in (DESTROY, SPAWN):
            return await self._deliver_lifecycle_row(spec, key, aid, method, payload, sender)
        # A delivering actor is busy, so it must never wait for an awake slot: if the target
        # is not awake and no slot is free now, append to its file and wake it later.
        while True:
            act = self.residency.awake.get(aid)
            if act is None or act.state is State.AWAKE:
                break
            if act.state is State.WAKING and not act.files_open and not act.preparing:
                break  # waiting for a slot: append to its files directly (if they are here)
            if act.deleting:
                # Its mailbox is about to go: the row stays in the sender's outbox and is
                # delivered again later, to a new actor under the key once this one is gone.
                await anyio.lowlevel.checkpoint()
                raise deleting_error(spec, key)
            if act.state is State.HIBERNATING and act.files_open:
                # Closing (on_hibernate may be sending this very message, to itself or to an
                # actor that is sending to it): append through its open mailbox, keep it
                # pending, and wake it again once closed. Never wait for the close here.
                seq, appended = act.mailbox.append_deduplicated(
                    method, payload, sender=sender, sender_seq=sender_seq, idempotency_key=None
                )
                if appended:
                    self.rt.counters.sent += 1
                    act.backlog = True
                    self.residency.wake_later(spec, key)
                await anyio.lowlevel.checkpoint()
                return rep.append_token(aid) if rep else None
            await act.opened.wait()
        if act is None and self.residency.resident < self.residency.max_awake:
            # A slot is free now: wake it here. (Not by evicting an idle actor: another wake-up
            # may take the slot that frees, and this actor would then wait for one while
            # holding its own; two delivering actors did, for good, with max_awake 2.)
            try:
                act = await self.residency.activate(spec, key)
            except ActorStoppedError:
                act = None
        if act is None or act.state is not State.AWAKE:
            try:
                self.store(spec, key, method, payload, sender=sender, sender_seq=sender_seq)
            except NotLocalError:
                await anyio.lowlevel.checkpoint()
                raise
            await anyio.lowlevel.checkpoint()
            return rep.append_token(aid) if rep else None
        seq, appended = act.mailbox.append_deduplicated(
            method, payload, sender=sender, sender_seq=sender_seq, idempotency_key=None
        )
        if appended and seq is not None:
            self.rt.counters.sent += 1
            act.accept(_new_message(seq, sender, sender_seq, method, payload, None))
        await anyio.lowlevel.checkpoint()
        return rep.append_token(aid) if rep else None

    def _to_a_gone_starter(self, aid: str, method: str, payload: bytes) -> bool:
        """A run's outcome or value (``on_run_done``, its events) for its starter, deleted (or
        being deleted) since the row was written: it is dropped. It must not make a new actor
        under the key; the run's outcome stays readable with ``run.result()``."""
        if method == EVENT:
            if not self.rt.codec.decode(payload)[0].startswith(RUN_EVENT_PREFIXES):
                return False
        elif method != "on_run_done":
            return False
        entry = self.rt.directory.get(aid)
        return (entry is None or entry.deleting) and aid not in self.residency.awake

    async def deliver_event(
        self, spec: TypeSpec, key: str, name: str, payload: bytes, idempotency_key: str
    ) -> Any:
        """Store an event from an outbox row (deduplicated by ``idempotency_key``), and wake
        the actor so that a turn waiting for it sees it. It never waits for an awake slot."""
        rep = self.rt.replication
        aid = actor_id(spec.name, key)
        act = self.residency.awake.get(aid)
        if act is not None and act.state is State.WAKING and act.preparing:
            await act.opened.wait()  # (its files are being restored: not ours to open)
            act = self.residency.awake.get(aid)
        await anyio.lowlevel.checkpoint()
        act = self.residency.awake.get(aid)
        if act is None or not act.files_open:
            if rep is not None and not rep.local_files_current(aid):
                if act is None:
                    self.residency.wake_later(spec, key)
                raise NotLocalError(f"{spec.name} {key!r} is being restored from the replica")
            with db.full_disk_as_error(self.rt.directory.path):
                self.rt.directory.mark_pending(aid, spec.name, key)
        added = self.residency.with_mailbox(
            spec, key, lambda mailbox, _act: mailbox.add_event(name, payload, idempotency_key)
        )
        if act is not None and act.files_open and act.state is State.AWAKE:
            if added:
                act.event_arrived(name)
        elif act is None or act.state is not State.WAKING:
            self.residency.wake_later(spec, key)
        return rep.append_token(aid) if rep else None

    async def _deliver_lifecycle_row(
        self, spec: TypeSpec, key: str, aid: str, method: str, payload: bytes, sender: str
    ) -> Any:
        """An outbox row that makes or ends an actor: a child's creation (``self.spawn``), or
        the sender's own ``self.destroy()``."""
        if method == DESTROY:
            # Its own self.destroy(), committed: the rows before it have left. (A row from
            # another sender cannot carry it: refused quietly, as a repeat is.)
            if sender.partition(".")[0] == aid:
                self.destroyed(spec, key)
            await anyio.lowlevel.checkpoint()
            return None
        rep = self.rt.replication
        (init,) = self.rt.codec.decode(payload)
        entry = self.rt.directory.get(aid)
        if entry is not None and entry.deleting:
            raise deleting_error(spec, key)  # (made again once that key is free: retried)
        if entry is None:
            parent = sender.partition(".")[0]  # (the actor, not its incarnation)
            self.rt.directory.create(aid, spec.name, key, init, parent=parent)
            self.rt.known_actors += 1
            self.residency.wake_later(spec, key)
        # (an existing child, a redelivery or stopped since, needs nothing)
        return rep.directory_token() if rep else None

    def outbox_send(
        self,
        ctx: context.HandlerContext,
        target: Ref[Any],
        method: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """``self.send`` inside a turn: validate, encode, and write the outbox row."""
        if not isinstance(target, Ref) or target._runtime is not self.rt:
            raise TypeError(f"send needs a ref of this runtime (got {target!r})")
        name, payload, is_query = self.encode_call(target._spec, method, args, kwargs)
        if is_query:
            raise TypeError(f"{target.type_name}.{name} is a @query: it cannot be sent")
        if target._spec.requires_create_arguments():
            aid = actor_id(target.type_name, target.key)
            if (
                aid not in self.residency.awake
                and self.rt.directory.get(aid) is None
                and self._spawned_in_outbox(cast(Activation, ctx.activation), target) is None
            ):  # (a SPAWN row goes first, outbox rows go in order: the child is there by then)
                raise not_found(target._spec, target.key)
        ctx.activation.outbox_add(target, name, payload)

    async def deliver_notices(self) -> None:
        """Tell parents about stopped children: ``on_child_failed(child, reason)`` arrives as a
        message, deduplicated by the notice's number, so a crash repeats it harmlessly."""
        for child_id, child_type, child_key, parent_id, notice in self.rt.directory.owed_notices():
            parent = self.rt.directory.get(parent_id.partition(".")[0])  # (older rows: a sender)
            child_spec = self.rt.specs.get(child_type)
            parent_spec = self.rt.specs.get(parent.type) if parent is not None else None
            if parent is None or parent_spec is None or child_spec is None:
                continue
            child = self.rt.directory.get(child_id)
            reason = child.stopped if child is not None and child.stopped else "stopped"
            payload = self.rt.codec.encode([[Ref(self.rt, child_spec, child_key), reason], {}])
            try:
                await self.deliver(
                    parent_spec,
                    parent.key,
                    "on_child_failed",
                    payload,
                    f"{CHILD_SENDER}{child_id}",
                    notice,
                )
            except RuntimeClosedError:
                return
            except Exception as exc:
                self.rt.report(f"could not notify {parent.type} {parent.key!r}: {exc!r}")
                continue
            self.rt.directory.clear_notice(child_id, notice)

    def store(
        self,
        spec: TypeSpec,
        key: str,
        method: str,
        payload: bytes,
        *,
        sender: str | None,
        sender_seq: int | None,
        idempotency_key: str | None = None,
    ) -> bool:
        """Append to the mailbox of an actor whose files are not open (hibernated, stopped, or
        waiting for a slot), then have it woken later unless it is stopped. Sync: nothing can
        open its files meanwhile. Returns whether it appended (not a duplicate)."""
        aid = actor_id(spec.name, key)
        folder = actor_dir(self.rt.root, aid)
        entry = self.rt.directory.get(aid)
        if entry is None and spec.requires_create_arguments():
            raise not_found(spec, key)
        if entry is not None and entry.deleting:
            raise deleting_error(spec, key)  # (its folder is going: write nothing there)
        if self.rt.replication is not None and not self.rt.replication.local_files_current(aid):
            # Its files are in the replica, not here (a fresh machine, or files to restore):
            # a mailbox written now would be set aside by the restore, and the message lost.
            # The actor is woken (restored); the delivery is made again after that.
            if entry is not None and entry.stopped is not None:
                raise ActorStoppedError(
                    f"{spec.name} {key!r} is stopped and its files are not restored on this "
                    "machine yet: Runtime.resume restores it, then send again"
                )
            if aid not in self.residency.awake:
                self.residency.wake_later(spec, key)
            raise NotLocalError(f"{spec.name} {key!r} is being restored from the replica")
        with db.full_disk_as_error(folder):
            make_actor_dir(folder)
        if entry is None:
            self.rt.known_actors += 1
        if entry is None or not entry.pending:
            with db.full_disk_as_error(self.rt.directory.path):
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
            _, appended = mailbox.append_deduplicated(
                method,
                payload,
                sender=sender,
                sender_seq=sender_seq,
                idempotency_key=idempotency_key,
            )
        finally:
            mailbox.close()
        if appended:
            self.rt.counters.sent += 1
        if (entry is None or entry.stopped is None) and aid not in self.residency.awake:
            self.residency.wake_later(spec, key)
        return appended

    async def signal(
        self, ref: Ref[Any], name: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> bool:
        """``ref.signal``: store an event durably in the actor's mailbox and wake it."""
        self.rt.check_open()
        _refuse_inside_turn("ref.signal", "a step that signals (or self.send a message)")
        if not isinstance(name, str) or not name:
            raise TypeError(f"an event name must be a non-empty string (got {name!r})")
        check_idempotency_key(idempotency_key)
        encoded = self.rt.codec.encode(payload)
        check_payload(self.rt, encoded, f"the payload of event {name!r}")
        spec, key = ref._spec, ref.key
        if not await self.exists(spec, key):
            raise ActorNotFoundError(
                f"{spec.name} {key!r} does not exist: an event goes to an actor created "
                "before (by a message or spawn), where a turn can wait for it"
            )
        try:
            act = await self.residency.activate(spec, key)
        except ActorStoppedError:
            return bool(
                self.residency.with_mailbox(
                    spec, key, lambda mb, _act: mb.add_event(name, encoded, idempotency_key)
                )
            )
        added = act.mailbox.add_event(name, encoded, idempotency_key)
        if added:
            act.event_arrived(name)
        return added

    def schedule(
        self,
        ctx: context.HandlerContext,
        name: str,
        method: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        at: Any,
        after: float | None,
        every: float | None,
        cron: str | None,
    ) -> Schedule:
        """``self.schedule`` inside a turn: validate, store with the turn, lower the hint now."""
        act = cast(Activation, ctx.activation)  # (this runtime's: an Activation)
        timer_name = timers.check_name(name)
        handler_name, payload, is_query = self.encode_call(act.spec, method, args, kwargs)
        if is_query:
            raise TypeError(f"{act.spec.name}.{handler_name} is a @query: a timer cannot send it")
        due = timers.first_due(self.rt.clock(), at=at, after=after, every=every, cron=cron)
        act.data.set_timer(timer_name, handler_name, payload, due, every, cron)
        act.timers_changed = True
        if act.wake_hint is None or due < act.wake_hint:
            # Early, never late: the hint is written before the turn commits. If the turn
            # rolls back, the actor wakes for nothing, which is harmless.
            self.rt.directory.lower_wake_at(act.aid, due)
            self.rt.actors_with_timers += act.wake_hint is None
            act.wake_hint = due
        self.residency.timer_hint(due)
        return Schedule(timer_name, handler_name, due, every, cron)

    async def existing(self, ref: Ref[Any]) -> Activation | None:
        """The activation of ``ref`` if the actor exists (waking it), else ``None``."""
        self.rt.check_open()
        if not await self.exists(ref._spec, ref.key):
            return None
        return await self.residency.activate(ref._spec, ref.key)

    async def exists(self, spec: TypeSpec, key: str) -> bool:
        """Whether an actor exists, creating nothing: it is awake or in the directory (made by
        a message, or spawned), whatever its ``on_create`` takes. On a runtime restored from a
        replica, whose directory may predate the actor, also when the replica has its files.
        Otherwise a query or an event raises ActorNotFoundError, and its dead letters are [] (as
        its turns: ``turns`` reads the mailbox file, which such an actor does not have)."""
        aid = actor_id(spec.name, key)
        if aid in self.residency.awake or self.rt.directory.get(aid) is not None:
            return True
        rep = self.rt.replication
        if rep is None or not rep.origin:
            return False
        name = manifest_key(rep.actor_name(aid, DATA_FILE))
        found = await anyio.to_thread.run_sync(rep.get, name)
        self.rt.check_open()
        return (
            (found is not None and not _tombstone(Manifest.decode(found[0], key=name)))
            or aid in self.residency.awake
            or self.rt.directory.get(aid) is not None
        )

    def _spawned_in_outbox(self, act: Activation, target: Ref[Any]) -> OutboxRow | None:
        """The SPAWN row for ``target`` that ``act``'s outbox holds and has not delivered yet
        (``self.spawn`` earlier in this turn, or in a turn whose rows have not gone yet)."""
        for row in act.data.outbox_after(act.outbox.delivered_upto):
            if (
                row.method == SPAWN
                and row.target_type == target.type_name
                and row.target_key == target.key
            ):
                return row
        return None

    def create_spawned(self, act: Activation, target: Ref[Any]) -> None:
        """Before ``self.ask`` reaches a child that ``act`` spawned and whose SPAWN row has not
        been delivered: create it now as that delivery would (with its ``on_create`` arguments
        and its parent), so that the ask does not get-or-create it bare. The row, delivered
        later, finds it and does nothing; a replay finds it too: it is made once."""
        aid = actor_id(target.type_name, target.key)
        if aid in self.residency.awake or self.rt.directory.get(aid) is not None:
            return
        row = self._spawned_in_outbox(act, target)
        if row is None:
            return
        (init,) = self.rt.codec.decode(row.payload)
        sender = act.sender_id if row.id >= act.incarnation_from else act.earlier_sender_id
        parent = sender.partition(".")[0]  # (the actor, not its incarnation)
        self.rt.directory.create(aid, target.type_name, target.key, init, parent=parent)
        self.rt.known_actors += 1

    def outbox_spawn(
        self,
        ctx: context.HandlerContext,
        actor_type: type[Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        key: str | None,
    ) -> Ref[Any]:
        """``self.spawn`` inside a turn: the child is created only if the turn commits."""
        ref = self.rt.ref(actor_type, uuid.uuid4().hex if key is None else key)
        spec = ref._spec
        spec.on_create.check_arguments(spec.name, args, kwargs)
        init = self.rt.codec.encode([list(args), kwargs]) if (args or kwargs) else None
        payload = self.rt.codec.encode([init])
        check_payload(self.rt, payload, f"{spec.name}.on_create arguments")
        ctx.activation.outbox_add(ref, SPAWN, payload)
        return ref


#: The events a run sends its starter (``runstore.outcome_event``, ``runstore.value_event``).
RUN_EVENT_PREFIXES = ("run:", "value:")


def _tombstone(manifest: Manifest) -> bool:
    """A deleted actor's manifest, not claimed by a new actor since: it does not exist."""
    return manifest.erased_at is not None and manifest.snapshot is None


def _no_destroy(spec: TypeSpec, key: str) -> None:
    raise RuntimeError("no deletion room is set")


def _new_message(
    seq: int,
    sender: str | None,
    sender_seq: int | None,
    method: str,
    payload: bytes,
    idempotency_key: str | None,
) -> Message:
    return Message(seq, sender, sender_seq, method, payload, idempotency_key)


def check_idempotency_key(key: object) -> None:
    """``ValueError`` unless ``key`` is ``None`` or a non-empty str of at most 512 characters."""
    if key is None:
        return
    if not isinstance(key, str) or not key or len(key) > 512:
        raise ValueError(
            f"idempotency_key must be a non-empty str of at most 512 characters (got {key!r})"
        )
