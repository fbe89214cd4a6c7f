"""Residency: which actors are awake, and when they wake and hibernate.

:class:`Residency` owns the awake set (an actor's :class:`~runtime.activation.Activation` from its
wake-up until its files are closed), the least-recently-used order of the idle ones, the
``max_awake`` bound (a wake-up makes room by hibernating the least recently used idle actor, or
waits for one), the idle timeout, the supervisor that hibernates idle actors and wakes those with
a timer due, recovery at open and the graceful close. It fires each actor's lifecycle events
(``runtime/lifecycle.py``); it does not send or deliver messages (``runtime/delivery.py``).
"""

from __future__ import annotations

import collections
import functools
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from .activation import Activation
from .errors import (
    ActorDeletedError,
    ActorFailedError,
    ActorNotFoundError,
    ActorStoppedError,
    CorruptFileError,
    FencedError,
    NondeterminismError,
    RuntimeClosedError,
)
from .files import db
from .files.layout import MAILBOX_FILE, actor_dir, actor_id
from .files.mailbox import Mailbox
from .host import RuntimeHost
from .lifecycle import Event, Lifecycle, State
from .ref import Ref
from .spec import TypeSpec

#: Seconds before a timer wake-up that failed (a file briefly unopenable) is tried again.
TIMER_WAKE_RETRY = 1.0


class Residency:
    """The awake actors of one runtime, and the supervisor of their wake-ups and hibernations."""

    def __init__(self, rt: RuntimeHost, *, max_awake: int, idle_timeout: float) -> None:
        self.rt = rt
        self.max_awake = max_awake
        self.idle_timeout = idle_timeout
        self.awake: dict[str, Activation] = {}
        #: Awake actors waiting for work, least recently used first: aid -> idle since.
        self.idle_since: collections.OrderedDict[str, float] = collections.OrderedDict()
        #: Actors that failed (and are not awake again): aid -> why.
        self.failed: dict[str, BaseException] = {}
        self.resident = 0  # activations with open files (what max_awake bounds)
        self.next_wake_at: float | None = None  # earliest timer hint in directory.db
        self.stats_wakes = 0
        self._room = anyio.Event()  # set (and replaced) whenever an awake slot may have freed
        self._poke = anyio.Event()  # wakes the supervisor
        self._supervisor_wakes_at = -math.inf  # when the sleeping supervisor wakes by itself
        #: Actors deleted since the runtime opened whose key no message has used since: a wake-up
        #: asked for earlier (recovery's list, a wake-later, a round's catch-up) must not make
        #: them again as new, empty actors; only a message does.
        self.deleted: set[str] = set()
        #: Tells stopped children's parents (``Delivery.deliver_notices``; set by the runtime).
        self.deliver_notices: Callable[[], Awaitable[None]] = _nothing

    async def activate(self, spec: TypeSpec, key: str, *, resuming: bool = False) -> Activation:
        """The awake activation of an actor, waking it if needed; concurrent callers share one
        wake-up. Makes room under ``max_awake`` by hibernating the least recently used idle
        actors, or waits for one to become idle."""
        aid = actor_id(spec.name, key)
        act = self.awake.get(aid)
        if (
            act is not None  # the common case first: awake and sound, no wait
            and act.lifecycle.state is State.AWAKE
            and act.failed is None
            and not (act.files_open and act.mailbox.found_corrupt)
        ):
            return act
        act = await self._resident(aid)
        if act is not None:
            return act
        self.rt.check_open()
        entry = self.rt.directory.get(aid)
        if entry is None and spec.requires_create_arguments():
            raise not_found(spec, key)
        if entry is not None and entry.deleting:
            raise deleting_error(spec, key)
        if entry is not None and entry.stopped is not None:
            raise ActorStoppedError(
                f"{spec.name} {key!r} is stopped ({entry.stopped}); its messages are kept "
                "until Runtime.resume"
            )
        started = self.rt.clock.loop()
        previous = State.FAILED if aid in self.failed else State.HIBERNATED
        if resuming:
            previous = State.STOPPED
        lifecycle = Lifecycle(
            previous, functools.partial(self.rt.lifecycle_changed, spec.name, key)
        )
        init = entry.init if entry else None
        act = Activation(self.rt, spec, key, aid, Ref(self.rt, spec, key), init, lifecycle)
        act.wake_hint = entry.wake_at if entry else None
        self.awake[aid] = act  # reserve: a concurrent caller waits on act.opened
        lifecycle.fire(Event.RESUME if resuming else Event.WAKE)
        try:
            await self._make_room()
            self.rt.check_open()
            with db.full_disk_as_error(self.rt.directory.path):  # (a typed refusal, not apsw's)
                if entry is None:
                    self.deleted.discard(aid)  # (a message made the key's actor again)
                    self.rt.directory.mark_pending(aid, spec.name, key)
                    self.rt.known_actors += 1
                elif not entry.pending:
                    self.rt.directory.mark_pending(aid, spec.name, key)
            await self._open(act, known=entry is not None)
        except BaseException as exc:
            del self.awake[aid]
            act.open_error = exc
            act.opened.set()
            act.closed.set()
            self.room_changed()
            if isinstance(exc, RuntimeClosedError | anyio.get_cancelled_exc_class()):
                lifecycle.fire(Event.CLOSED, "abandoned: " + repr(exc))  # (nothing ran)
            else:
                lifecycle.fire(Event.OPEN_FAILED, repr(exc))
            raise
        self.failed.pop(aid, None)
        lifecycle.fire(Event.OPENED)
        if self.rt.closing.is_set():  # the runtime began closing while it woke: hibernate at once
            lifecycle.fire(Event.IDLE)
            act.closing = True
        act.wake_started = started
        self.stats_wakes += 1
        act.opened.set()
        self.rt.task_group.start_soon(self._run_activation, act, name=f"torpor {spec.name} {key!r}")
        return act

    async def _resident(self, aid: str) -> Activation | None:
        """The awake activation of ``aid`` once no wake-up or close of it is under way, or
        ``None`` if it must be woken. One whose mailbox met a bad page is failed first (with a
        replica, the wake-up that follows restores its files)."""
        while True:
            act = self.awake.get(aid)
            if act is None:
                return None
            if act.state is State.AWAKE:
                if act.failed is None and act.files_open and act.mailbox.found_corrupt:
                    act.fail_from_outside(
                        CorruptFileError(
                            f"{act.describe()}: {act.mailbox.path.name} is corrupt "
                            f"({act.mailbox.found_corrupt}); its messages are kept",
                            path=str(act.mailbox.path),
                        )
                    )
                if act.failed is None:
                    return act
            if act.state is State.WAKING:
                await act.opened.wait()
                error = act.open_error
                if error is not None and not isinstance(error, anyio.get_cancelled_exc_class()):
                    raise error  # (the opener's own cancellation is not ours: try again)
                continue
            await act.closed.wait()  # hibernating, or failed: wake it again once it is closed

    async def _open(self, act: Activation, *, known: bool) -> None:
        """Open a waking actor's files (with a replica: claimed, or restored, first) and count
        it resident."""
        rep = self.rt.replication
        if rep is None:
            act.open()
            self.resident += 1
            return
        corrupt = rep.corrupt.pop(act.aid, None)
        # Deliveries wait for the files from here on (a restore may replace them).
        act.preparing = True
        try:
            await rep.prepare_files(act, known=known, force_restore=corrupt is not None)
            self.rt.check_open()
            try:
                act.open(data_may_be_missing=act.replica.restored)
            except CorruptFileError as exc:
                # Detected at open: the replica has the last replicated state.
                self.rt.report(f"{act.describe()}: {exc}; restoring it from the replica")
                await rep.prepare_files(act, known=True, force_restore=True)
                self.rt.check_open()
                act.open(data_may_be_missing=True)  # (the replica had none either)
        finally:
            act.preparing = False
        self.resident += 1
        try:
            rep.attach(act)
        except BaseException:
            self.resident -= 1
            act.close_connections()
            raise

    async def _make_room(self) -> None:
        """Return once an actor may open its files without exceeding ``max_awake``: hibernate
        the least recently used idle actor, or wait until one becomes idle or closes."""
        while self.resident >= self.max_awake:
            victim = next(iter(self.idle_since), None)
            if victim is not None:
                await self._hibernate(self.awake[victim])
            else:
                room = self._room
                await room.wait()
            self.rt.check_open()

    def room_changed(self) -> None:
        """Wake every task waiting for a slot; each re-checks (a broadcast, never lost)."""
        self._room.set()
        self._room = anyio.Event()

    async def _run_activation(self, act: Activation) -> None:
        """Run an actor's turn loop; when it ends (idle, closing, failed), close its files."""
        try:
            await act.run()
        finally:
            self.idle_since.pop(act.aid, None)
            try:
                # Closing checkpoints each WAL (fsyncs) on the loop's thread. A worker thread
                # would overlap those fsyncs with other actors' turns, but it would also let a
                # test's MockClock jump while the thread works; not yet.
                if self.rt.replication is None:
                    act.close_files()
                else:
                    try:
                        act.tidy()
                        if not self.rt.crashed:
                            await self.rt.replication.detach(act)
                    finally:
                        act.close_connections()
                        self.rt.replication.after_close(act)
            except Exception as exc:
                self.rt.report(f"closing {act.spec.name} {act.key!r}: {exc!r}")
            finally:
                self.resident -= 1
                del self.awake[act.aid]
                if act.gave_up is not None:
                    self._stop(act)
                    # Askers parked by tidy() before a fence met during the hibernation.
                    for waiter in self.rt.parked_waiters.pop(act.aid, {}).values():
                        waiter.set_error(act.stopped_error())
                elif act.failed is not None:
                    self.failed[act.aid] = act.failed
                    if self.rt.replication is not None and (
                        isinstance(act.failed, CorruptFileError)
                        or isinstance(act.failed.__cause__, CorruptFileError)
                    ):
                        # Found corrupt in a turn: the next wake-up restores it.
                        self.rt.replication.corrupt[act.aid] = act.failed
                    # Askers parked by tidy() before the hibernation found a file corrupt learn
                    # it now, as those of an actor failing awake do (their messages are kept).
                    for waiter in self.rt.parked_waiters.pop(act.aid, {}).values():
                        failure = ActorFailedError(
                            f"{act.describe()} cannot run turns; the message is kept"
                        )
                        failure.__cause__ = act.failed
                        waiter.set_error(failure)
                    # (awake, or hibernating: its last snapshot found a file corrupt)
                    act.lifecycle.fire(Event.CRASHED, repr(act.failed))
                else:
                    if act.state is State.AWAKE:
                        act.lifecycle.fire(
                            Event.IDLE
                        )  # (its loop ended unasked: it closes all the same)
                    act.lifecycle.fire(Event.CLOSED)
                    self.rt.counters.hibernations += 1
                act.closed.set()
                self.room_changed()

    def _stop(self, act: Activation) -> None:
        """Record that an actor exceeded its restart intensity, and owe its parent a notice."""
        reason = f"{type(act.gave_up).__qualname__}: {act.gave_up}"
        act.lifecycle.fire(Event.GAVE_UP, reason)  # (hibernating: a fence met)
        why = (
            "a replay diverged from its journal"
            if isinstance(act.gave_up, NondeterminismError)
            else "another runtime took its replica over"
            if isinstance(act.gave_up, FencedError)
            else "restart intensity exceeded"
        )
        self.rt.report(f"{act.spec.name} {act.key!r} stopped: {why} ({reason})")
        entry = self.rt.directory.get(act.aid)
        # (a number that only grows, across processes: the notice's sender_seq, not a time)
        notice = time.time_ns() if entry is not None and entry.parent else None
        self.rt.directory.set_stopped(act.aid, reason, notice)
        self.rt.stopped_actors += 1
        if notice is not None and self.rt.task_group is not None:
            self.rt.task_group.start_soon(self.deliver_notices)

    def wake_later(self, spec: TypeSpec, key: str) -> None:
        if self.rt.task_group is not None and not self.rt.closing.is_set():
            self.rt.task_group.start_soon(self._wake_quietly, spec, key)

    def deleted_meanwhile(self, spec: TypeSpec, key: str) -> bool:
        """Whether the actor was deleted since a wake-up of it was asked for (nothing to wake:
        waking would make it again, empty)."""
        aid = actor_id(spec.name, key)
        return aid in self.deleted and aid not in self.awake and self.rt.directory.get(aid) is None

    async def _wake_quietly(self, spec: TypeSpec, key: str) -> None:
        if self.deleted_meanwhile(spec, key):
            return
        try:
            await self.activate(spec, key)
        except Exception as exc:
            self.rt.report(f"could not wake {spec.name} {key!r}: {exc!r}")

    def wake_to_act(self, spec: TypeSpec, key: str) -> None:
        """After a cancel or restart request: an actor that is not running its turn loop
        (hibernated, or closing now) is woken (again) to act on it."""
        aid = actor_id(spec.name, key)
        act = self.awake.get(aid)
        if act is None or act.closing or act.state is not State.AWAKE:
            entry = self.rt.directory.get(aid)
            if entry is None or entry.stopped is None:  # a stopped one acts at resume
                self.wake_later(spec, key)

    async def _hibernate(self, act: Activation) -> None:
        """Hibernate an idle awake actor and wait until its files are closed."""
        self.begin_hibernation(act)
        await act.closed.wait()

    def begin_hibernation(self, act: Activation) -> None:
        """Tell an idle awake actor's loop to run on_hibernate and end; do not wait for it."""
        if self.idle_since.pop(act.aid, None) is not None and act.state is State.AWAKE:
            self.close(act)

    def close(self, act: Activation) -> None:
        """Hibernate an awake actor: a turn in durable waits rolls back, the loop ends after
        the current batch (on_hibernate then runs, unless it failed or stopped)."""
        self.idle_since.pop(act.aid, None)
        if act.state is State.AWAKE:  # (a waking one hibernates once open: see _activate)
            act.lifecycle.fire(Event.IDLE)
        act.closing = True
        act.suspend_turn()
        act.work.set()

    def idle(self, act: Activation) -> None:
        now = self.rt.clock.loop()
        self.idle_since[act.aid] = now
        self.idle_since.move_to_end(act.aid)
        if now + self.idle_timeout < self._supervisor_wakes_at:
            self._poke.set()  # the supervisor sleeps past this actor's deadline: wake it
        self.room_changed()  # a caller waiting for an awake slot may now evict this one

    def busy(self, act: Activation) -> None:
        self.idle_since.pop(act.aid, None)

    async def supervise(self) -> None:
        """Hibernate actors idle for ``idle_timeout`` and wake actors whose timers are due;
        sleeps until the next of those deadlines (or until poked)."""
        while True:
            now = self.rt.clock.loop()
            while self.idle_since:
                aid, since = next(iter(self.idle_since.items()))
                if since + self.idle_timeout > now:
                    break
                self.begin_hibernation(self.awake[aid])
            if self.next_wake_at is not None and self.rt.clock() >= self.next_wake_at:
                await self._wake_due()
            deadline = math.inf
            if self.idle_since:
                deadline = next(iter(self.idle_since.values())) + self.idle_timeout - now
            if self.next_wake_at is not None:
                deadline = min(deadline, max(0.0, self.next_wake_at - self.rt.clock()))
            self._poke = anyio.Event()
            self._supervisor_wakes_at = self.rt.clock.loop() + deadline
            with anyio.move_on_after(deadline):
                await self._poke.wait()
            self._supervisor_wakes_at = -math.inf  # awake: nobody needs to poke it

    async def _wake_due(self) -> None:
        """Wake every actor with a due timer hint and have it fire its due timers."""
        now = self.rt.clock()
        self.next_wake_at = self.rt.directory.next_wake_at(after=now)
        for _aid, type_name, key in self.rt.directory.due(now):
            spec = self.rt.specs.get(type_name)
            if spec is None:
                self.rt.unknown_types.add(type_name)
                continue
            try:
                act = await self.activate(spec, key)
            except RuntimeClosedError:
                return
            except ActorStoppedError:
                continue  # its timers wait for resume
            except Exception as exc:
                self.rt.report(f"could not wake {type_name} {key!r} for a timer: {exc!r}")
                retry = now + TIMER_WAKE_RETRY
                if self.next_wake_at is None or retry < self.next_wake_at:
                    self.next_wake_at = retry
                continue
            act.timers_due = True
            act.work.set()
            if act.waiting:
                self.busy(act)

    def timer_hint(self, due: float | None) -> None:
        """An actor's next timer changed: wake the supervisor if it is now the soonest."""
        if due is not None and (self.next_wake_at is None or due < self.next_wake_at):
            self.next_wake_at = due
            self._poke.set()

    def pending_work(self) -> list[tuple[TypeSpec, str]]:
        """The actors the directory says may have work (of registered types)."""
        found = []
        for entry in self.rt.directory.pending():
            spec = self.rt.specs.get(entry.type)
            if spec is None:
                self.rt.unknown_types.add(entry.type)
                continue
            found.append((spec, entry.key))
        return found

    async def recover(self, pending: list[tuple[TypeSpec, str]]) -> None:
        """Wake every actor with pending work, at most ``max_awake`` at a time."""
        await self.deliver_notices()
        for spec, key in pending:
            if self.rt.closing.is_set():
                return
            if self.deleted_meanwhile(spec, key):
                continue
            try:
                await self.activate(spec, key)
            except RuntimeClosedError:
                return
            except Exception as exc:
                self.rt.report(f"could not resume {spec.name} {key!r}: {exc!r}")

    async def shutdown(self) -> None:
        """Let turns in progress finish for up to ``shutdown_grace`` seconds, then cancel them
        (they roll back, and run again at the next open)."""
        self.rt.closing.set()
        for act in list(self.awake.values()):
            self.close(act)
        self.room_changed()
        with anyio.move_on_after(self.rt.shutdown_grace):
            for act in list(self.awake.values()):
                await act.closed.wait()
        for act in list(self.awake.values()):
            act.scope.cancel()
        for act in list(self.awake.values()):
            await act.closed.wait()

    def with_mailbox(self, spec: TypeSpec, key: str, fn: Callable[[Any, Any], Any]) -> Any:
        """Run ``fn(mailbox, activation)`` on the actor's open mailbox, or on its file opened
        for the call (``fn(None, None)`` if it has none). Sync: nothing opens it meanwhile."""
        aid = actor_id(spec.name, key)
        act = self.awake.get(aid)
        if act is not None and act.files_open:
            return fn(act.mailbox, act)
        path = actor_dir(self.rt.root, aid) / MAILBOX_FILE
        if not path.exists():
            return fn(None, None)
        mailbox = Mailbox(
            path,
            synchronous=self.rt.synchronous,
            type_name=spec.name,
            key=key,
            known_sound=self.rt.sound_mailboxes,
            clock=self.rt.clock.wall,
        )
        try:
            return fn(mailbox, None)
        finally:
            mailbox.close()


async def _nothing() -> None:
    pass


def deleting_error(spec: TypeSpec, key: str) -> ActorDeletedError:
    """A call for an actor whose deletion is under way (or waits for the store)."""
    return ActorDeletedError(
        f"{spec.name} {key!r} is being deleted; once that is done, a message to its key "
        "creates a new actor"
    )


def not_found(spec: TypeSpec, key: str) -> ActorNotFoundError:
    """An actor that does not exist and cannot be made by a message: its ``on_create`` needs
    arguments."""
    return ActorNotFoundError(
        f"{spec.name} {key!r} does not exist, and {spec.name}.on_create needs arguments; "
        f"create it with rt.spawn({spec.cls.__qualname__}, ..., key={key!r})"
    )
