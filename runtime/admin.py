"""Administration of actors: dead letters, turns in flight, cancel, restart, resume, listing and
deletion.

:class:`Admin` answers ``Runtime.dead_letters``/``replay_dead_letter``/``drop_dead_letter``,
``turns``, ``cancel_turn``, ``restart_turn`` and ``resume``, on the actor's open mailbox when it
is awake and on its file otherwise (without waking it, where that is enough); ``Runtime.actors``
from ``directory.db`` (never waking one); and deletion (``Ref.delete``, ``Actor.destroy``).

**Deletion**, in this order, so that a crash at any point finishes it at the next open and
never wakes the actor half deleted: the directory row is marked ``deleting`` (from then on no
wake-up and no delivery reaches it: :class:`ActorDeletedError`); an awake actor is closed (from
outside, its turn in progress is cancelled and rolls back; after ``self.destroy()``, the rows
its turns sent leave first); askers still waiting get :class:`ActorDeletedError`; its folder
is removed; with a replica, its manifests become tombstones, its snapshots are deleted and
its segments in shared log objects are zeroed (``replicator.erase``); last, the row is deleted
(overwritten: ``secure_delete``) and, with a replica, that change is shipped before the call
returns.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread

from .activation import Activation
from .delivery import Delivery
from .errors import ActorDeletedError, ActorNotFoundError
from .files import db
from .files.directory import Entry
from .files.layout import DATA_FILE, actor_dir, actor_id
from .files.mailbox import Mailbox
from .host import RuntimeHost
from .lifecycle import Event, Lifecycle, State
from .records import ActorInfo, DeadLetter, StepRecord, TurnInfo
from .ref import Ref
from .residency import Residency
from .spec import TypeSpec

#: Statuses ``Runtime.actors`` can filter on.
STATUSES = ("awake", "hibernated", "failed", "stopped", "deleting")
#: The most actors one call of ``Runtime.actors`` returns (page on with ``after=``).
MAX_PAGE = 10_000


class Admin:
    """The operator's calls on one actor's mailbox, for one runtime."""

    def __init__(self, rt: RuntimeHost, residency: Residency, delivery: Delivery) -> None:
        self.rt = rt
        self.residency = residency
        self.delivery = delivery
        #: Deletions under way, by actor id: a second caller waits for the first.
        self._deleting: dict[str, anyio.Event] = {}
        #: Set by ``runs.py``: before ``Ref.delete`` deletes a run, end it (cancelled) if it
        #: has not finished, so that its starter learns; whether it did.
        self.end_run: Callable[[TypeSpec, str], Awaitable[bool]] | None = None

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

    # -- listing ----------------------------------------------------------------------------

    async def actors(
        self, spec: TypeSpec, status: str | None, *, after: str | None, limit: int
    ) -> list[ActorInfo]:
        """Up to ``limit`` actors of ``spec`` in key order after ``after``, from
        ``directory.db`` and the awake set (none is woken); ``status`` filters."""
        await anyio.lowlevel.checkpoint()
        self.rt.check_open()
        if status is not None and status not in STATUSES:
            known = ", ".join(STATUSES)
            raise ValueError(f"status must be one of {known} or None (got {status!r})")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be an int from 1 to {MAX_PAGE} (got {limit!r})")
        if after is not None and not isinstance(after, str):
            raise TypeError(f"after must be a key (a str) or None (got {after!r})")
        if status in ("awake", "failed", "deleting"):
            # Few, and known without a scan: the awake set, the failed ones, a partial index.
            found = [e for e in self._few(spec, status) if after is None or e.key > after]
            found.sort(key=lambda e: e.key)
            infos = (self._info(e) for e in found)
            return [info for info in infos if info.status == status][:limit]
        out: list[ActorInfo] = []
        stopped = None if status is None else status == "stopped"
        while len(out) < limit:
            # (hibernated: the page skips the few awake and failed ones, and reads on)
            page = self.rt.directory.page(spec.name, after=after, limit=limit, stopped=stopped)
            for entry in page:
                info = self._info(entry)
                if status is None or info.status == status:
                    out.append(info)
                    if len(out) == limit:
                        break
            if len(page) < limit:
                break
            after = page[-1].key
        return out

    def _few(self, spec: TypeSpec, status: str) -> list[Entry]:
        """The directory rows of the actors of ``spec`` that may have ``status`` (awake,
        failed or deleting), from memory or the partial index of deletions."""
        if status == "deleting":
            return [e for e in self.rt.directory.deletions() if e.type == spec.name]
        if status == "awake":
            aids = [aid for aid, act in self.residency.awake.items() if act.spec is spec]
        else:
            aids = list(self.residency.failed)
        entries = (self.rt.directory.get(aid) for aid in aids)
        return [e for e in entries if e is not None and e.type == spec.name]

    def _info(self, entry: Entry) -> ActorInfo:
        if entry.deleting:
            status = "deleting"
        elif entry.stopped is not None:
            status = "stopped"
        elif entry.id in self.residency.awake:
            status = "awake"
        elif entry.id in self.residency.failed:
            status = "failed"
        else:
            status = "hibernated"
        return ActorInfo(
            type_name=entry.type,
            key=entry.key,
            status=status,
            created_at=entry.created_at,
            active_at=entry.active_at,
            parent=self._parent(entry.parent),
        )

    def _parent(self, parent_id: str | None) -> tuple[str, str] | None:
        if parent_id is None:
            return None
        parent = self.rt.directory.get(parent_id.partition(".")[0])  # (older rows: a sender)
        return None if parent is None else (parent.type, parent.key)

    # -- deletion ---------------------------------------------------------------------------

    async def delete(self, ref: Ref[Any]) -> None:
        """``Ref.delete``: delete the actor (module docstring); :class:`ActorNotFoundError`
        if there is none."""
        await anyio.lowlevel.checkpoint()
        self.rt.check_open()
        spec, key = ref._spec, ref.key
        aid = actor_id(spec.name, key)
        waited = False
        while (under_way := self._deleting.get(aid)) is not None:
            await under_way.wait()  # (one under way: then delete what is there, if anything)
            waited = True
        entry = self.rt.directory.get(aid)
        if entry is None and aid not in self.residency.awake:
            if waited:
                return
            raise ActorNotFoundError(f"{spec.name} {key!r} does not exist: nothing to delete")
        # A run ended so has no turn left to cancel: closed as after self.destroy(), so that
        # the outcome its outbox holds for its starter leaves before its files go.
        ended = spec.workflow and self.end_run is not None and await self.end_run(spec, key)
        await self._delete(spec, key, cancel=not ended)

    def destroyed(self, spec: TypeSpec, key: str) -> None:
        """The row of a committed ``self.destroy()`` was delivered (sync, from the actor's own
        loop): mark the deletion durably now, stop its turns, and finish in the background."""
        aid = actor_id(spec.name, key)
        if aid in self._deleting:
            return
        self.rt.directory.mark_deleting(aid)
        act = self.residency.awake.get(aid)
        if act is not None:
            act.deleting = True
            self.residency.close(act)
        self.rt.task_group.start_soon(self.delete_quietly, spec, key)

    async def finish_deletions(self) -> None:
        """At open: finish the deletions a crash or an unreachable store left half done."""
        for entry in self.rt.directory.deletions():
            spec = self.rt.specs.get(entry.type)
            if spec is None:
                self.rt.unknown_types.add(entry.type)
                continue
            await self.delete_quietly(spec, entry.key)

    async def delete_quietly(self, spec: TypeSpec, key: str) -> None:
        """Delete the actor in the background (a committed ``self.destroy()``, a finished
        run's retention, a deletion left half done): a failure is reported, not raised."""
        try:
            await self._delete(spec, key, cancel=False)
        except Exception as exc:
            self.rt.report(
                f"could not finish deleting {spec.name} {key!r} ({exc!r}); it is tried again "
                "at the next open, or by Ref.delete"
            )

    async def _delete(self, spec: TypeSpec, key: str, *, cancel: bool) -> None:
        aid = actor_id(spec.name, key)
        done = self._deleting[aid] = anyio.Event()
        try:
            self.rt.directory.mark_deleting(aid)  # first: a crash from here on finishes it
            lifecycle = await self._close(aid, cancel=cancel)
            entry = self.rt.directory.get(aid)
            if lifecycle is None:
                at_rest = State.HIBERNATED
                if entry is not None and entry.stopped is not None:
                    at_rest = State.STOPPED
                elif aid in self.residency.failed:
                    at_rest = State.FAILED
                lifecycle = Lifecycle(
                    at_rest, functools.partial(self.rt.lifecycle_changed, spec.name, key)
                )
            error = ActorDeletedError(
                f"{spec.name} {key!r} was deleted; this message was dropped with its mailbox"
            )
            for waiter in self.rt.parked_waiters.pop(aid, {}).values():
                waiter.set_error(error)
            folder = actor_dir(self.rt.root, aid)
            await anyio.to_thread.run_sync(_remove_folder, folder)
            if self.rt.replication is not None:
                await self.rt.replication.erase_actor(aid)
            self._forget(aid, entry)
            lifecycle.fire(Event.DELETE)
        finally:
            # (before the wait below: a new actor under the key may be deleted meanwhile)
            del self._deleting[aid]
            done.set()
        if self.rt.replication is not None:
            await self.rt.replication.wait_token(self.rt.replication.directory_token())

    async def _close(self, aid: str, *, cancel: bool) -> Lifecycle | None:
        """Close the actor if it is awake (or waking); its lifecycle then, else ``None``."""
        lifecycle = None
        while (act := self.residency.awake.get(aid)) is not None:
            lifecycle = act.lifecycle
            if act.state is State.WAKING:
                await act.opened.wait()
                continue
            act.deleting = True
            self.residency.close(act)
            if cancel:
                act.scope.cancel()  # (its turn in progress rolls back, as at a hard shutdown)
            await act.closed.wait()
        return lifecycle

    def _forget(self, aid: str, entry: Entry | None) -> None:
        """The last step: the row goes, and the counters with it."""
        self.rt.directory.forget(aid)
        self.residency.deleted.add(aid)
        self.residency.failed.pop(aid, None)
        if entry is not None:
            self.rt.known_actors -= 1
            if entry.stopped is not None:
                self.rt.stopped_actors -= 1
            if entry.wake_at is not None:
                self.rt.actors_with_timers -= 1


def _remove_folder(folder: Path) -> None:
    """Remove an actor's folder and everything in it (absent already: nothing to do)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(folder)
