"""Administration of an actor's mailbox: dead letters, turns in flight, cancel, restart, resume.

:class:`Admin` answers ``Runtime.dead_letters``/``replay_dead_letter``/``drop_dead_letter``,
``turns``, ``cancel_turn``, ``restart_turn`` and ``resume``, on the actor's open mailbox when it
is awake and on its file otherwise (without waking it, where that is enough).
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel

from .activation import Activation
from .delivery import Delivery
from .files import db
from .files.layout import DATA_FILE, actor_dir, actor_id
from .files.mailbox import Mailbox
from .host import RuntimeHost
from .records import DeadLetter, StepRecord, TurnInfo
from .ref import Ref
from .residency import Residency
from .spec import TypeSpec


class Admin:
    """The operator's calls on one actor's mailbox, for one runtime."""

    def __init__(self, rt: RuntimeHost, residency: Residency, delivery: Delivery) -> None:
        self.rt = rt
        self.residency = residency
        self.delivery = delivery

    async def dead_letters(self, ref: Ref[Any]) -> list[DeadLetter]:
        """The dead letters kept in ``ref``'s mailbox, oldest first."""
        await anyio.lowlevel.checkpoint()
        act = await self.delivery.existing(ref)
        if act is None:
            return []
        letters = []
        for row in act.mailbox.dead_letters():
            try:
                args, kwargs = self.rt.codec.decode(row.payload)
                decoded: tuple[tuple[Any, ...] | None, dict[str, Any] | None] = (
                    tuple(args),
                    kwargs,
                )
            except Exception:
                decoded = (None, None)
            letters.append(
                DeadLetter(
                    seq=row.seq,
                    method=row.method,
                    args=decoded[0],
                    kwargs=decoded[1],
                    sender=row.sender,
                    idempotency_key=row.idempotency_key,
                    attempts=row.attempts,
                    error_type=row.error_type,
                    error_message=row.error_message,
                    traceback=row.traceback,
                    failed_at=row.failed_at,
                    reason=row.reason,
                )
            )
        return letters

    async def replay_dead_letter(self, ref: Ref[Any], seq: int) -> None:
        """Send dead letter ``seq`` again, as a new message at the end of the mailbox."""
        await anyio.lowlevel.checkpoint()
        act = await self.delivery.existing(ref)
        message = act.mailbox.replay_dead_letter(seq) if act is not None else None
        if act is None or message is None:
            raise LookupError(f"{ref!r} has no dead letter {seq}")
        act.accept(message)

    async def drop_dead_letter(self, ref: Ref[Any], seq: int) -> None:
        """Delete dead letter ``seq`` for good."""
        await anyio.lowlevel.checkpoint()
        act = await self.delivery.existing(ref)
        if act is None or not act.mailbox.drop_dead_letter(seq):
            raise LookupError(f"{ref!r} has no dead letter {seq}")

    async def resume(self, ref: Ref[Any]) -> None:
        """Start a stopped actor again: it runs its kept messages, oldest first."""
        await anyio.lowlevel.checkpoint()
        self.rt.check_open()
        aid = actor_id(ref.type_name, ref.key)
        entry = self.rt.directory.get(aid)
        if entry is None or entry.stopped is None:
            raise LookupError(f"{ref!r} is not stopped")
        self.rt.directory.set_stopped(aid, None)
        self.rt.stopped_actors -= 1
        await self.residency.activate(ref._spec, ref.key, resuming=True)

    async def turns(self, ref: Ref[Any]) -> list[TurnInfo]:
        """The actor's turns in flight with their journaled steps, without waking it."""
        await anyio.lowlevel.checkpoint()
        self.rt.check_open()
        spec, key = ref._spec, ref.key

        def read(mailbox: Mailbox | None, act: Activation | None) -> list[TurnInfo]:
            if mailbox is None:
                return []
            applied = act.applied_seq if act is not None else self._applied_seq(spec, key)
            running = act.turn.seq if act is not None and act.turn is not None else None
            out = []
            for seq, method, attempts, cancelled, _at in mailbox.unapplied(applied):
                journal = mailbox.journal(seq)
                if not journal and seq != running:
                    continue
                steps = tuple(
                    StepRecord(r.n, r.kind, r.name, r.status, r.attempts, r.until, r.recorded_at)
                    for r in journal.values()
                )
                if seq == running:
                    status = "running"
                    if act is not None and act.turn is not None and act.turn.idle:
                        status = "waiting"
                elif any(step.status == "waiting" for step in steps):
                    status = "waiting"
                else:
                    status = "interrupted"
                out.append(TurnInfo(seq, method, status, attempts, cancelled, steps))
            return out

        return self.residency.with_mailbox(spec, key, read)  # type: ignore[no-any-return]

    async def cancel_turn(self, ref: Ref[Any], seq: int, reason: str = "cancelled") -> None:
        """Cancel message ``seq``: its turn (running, waiting or not started) rolls back, the
        message is dead-lettered with :class:`TurnCancelledError`, and the actor moves on."""
        await anyio.lowlevel.checkpoint()
        self.rt.check_open()
        spec, key = ref._spec, ref.key

        aid = actor_id(spec.name, key)
        self.rt.directory.mark_pending(aid, spec.name, key)  # first: a crash must not lose it

        def mark(mailbox: Mailbox | None, act: Activation | None) -> bool:
            if mailbox is None:
                return False
            applied = act.applied_seq if act is not None else self._applied_seq(spec, key)
            if seq <= applied or not mailbox.cancel(seq, reason):
                return False
            if act is not None:
                for message in act.queue:
                    if message.seq == seq:
                        message.cancelled = reason
                if act.turn is not None and act.turn.seq == seq:
                    act.turn.interrupt_with("cancel")
                act.work.set()
            return True

        if not self.residency.with_mailbox(spec, key, mark):
            raise LookupError(f"{ref!r} has no message {seq} waiting to be applied")
        self.residency.wake_to_act(spec, key)

    async def restart_turn(self, ref: Ref[Any], seq: int, from_step: int = 0) -> int:
        """Run message ``seq``'s turn again from step number ``from_step``: journaled steps
        before it keep their results, later ones run again (Cloudflare Workflows' restart
        from a step). Returns how many journal rows were removed."""
        await anyio.lowlevel.checkpoint()
        self.rt.check_open()
        if not isinstance(from_step, int) or from_step < 0:
            raise ValueError(f"from_step must be an int >= 0 (got {from_step!r})")
        spec, key = ref._spec, ref.key
        aid = actor_id(spec.name, key)
        self.rt.directory.mark_pending(aid, spec.name, key)  # first: a crash must not lose it

        def rewind(mailbox: Mailbox | None, act: Activation | None) -> int | None:
            if mailbox is None:
                return None
            applied = act.applied_seq if act is not None else self._applied_seq(spec, key)
            if all(row[0] != seq for row in mailbox.unapplied(applied)):
                return None
            removed = mailbox.rewind(seq, from_step)
            if act is not None:
                for message in act.queue:
                    if message.seq == seq:
                        message.restarts += 1
                        message.retry_at = None  # (its attempts start again: no backoff)
                if act.turn is not None and act.turn.seq == seq:
                    act.turn.interrupt_with("restart")
                act.work.set()
            return removed

        removed = self.residency.with_mailbox(spec, key, rewind)
        if removed is None:
            raise LookupError(f"{ref!r} has no message {seq} waiting to be applied")
        self.residency.wake_to_act(spec, key)
        return int(removed)

    def _applied_seq(self, spec: TypeSpec, key: str) -> int:
        """The applied-message cursor of a hibernated actor, read from its ``data.db``."""
        path = actor_dir(self.rt.root, actor_id(spec.name, key)) / DATA_FILE
        if not path.exists():
            return 0
        conn = db.connect(path, synchronous=self.rt.synchronous, private=True, persist_wal=True)
        try:
            return int(db.scalar(conn, "SELECT applied_seq FROM _torpor_state") or 0)
        finally:
            db.close(conn, path, keep_wal=False)
