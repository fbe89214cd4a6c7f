"""An awake actor's outbox: its committed rows delivered in order, behind the output gate.

A turn's ``self.send``/``self.spawn`` (and each fired timer) writes an outbox row in the turn's
``data.db`` transaction; :meth:`Outbox.deliver` hands committed rows, in order, to the runtime's
delivery, which appends them to their targets' mailboxes. Delivery is at-least-once; each
receiver's per-sender cursor makes it exactly-once. With a replica, a row leaves only once the
commit that wrote it is in the replica (the output gate), and is deleted only once its
delivery is in the replica too (else a restore could lose it or repeat its effects).
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any, Protocol

from .errors import NotLocalError, RuntimeClosedError

if TYPE_CHECKING:
    from .files.datastore import DataStore
    from .host import RuntimeHost
    from .ref import Ref
    from .replica.shipper import ActorReplica
    from .spec import TypeSpec

#: Backoff bounds for retrying an outbox delivery that failed (target unopenable, EMFILE).
OUTBOX_RETRY_MIN = 0.05
OUTBOX_RETRY_MAX = 30.0


class OutboxActor(Protocol):
    """What an outbox sees of its actor."""

    spec: TypeSpec
    key: str
    data: DataStore
    replica: ActorReplica
    sender_id: str
    earlier_sender_id: str
    incarnation_from: int

    @property
    def runtime(self) -> RuntimeHost: ...


class Outbox:
    """The outbox of one awake actor, and how far its rows got. (Its methods take the actor:
    holding it would make the pair a reference cycle, freed only by the cyclic collector.)"""

    def __init__(self) -> None:
        self.dirty = True  # rows may wait in the outbox (true at wake: recovery)
        self.retry_delay = 0.0  # > 0: a delivery failed; try again after this long
        self.delivered_upto = 0
        self.deleted_upto = 0
        # With a replica: delivered rows wait here until their delivery is in the replica.
        self.tokens: collections.deque[tuple[int, Any]] = collections.deque()
        self.safe_upto = 0
        # The output gate: (data.db commits, last row id) as rows are seen, the last row that
        # may go, and whether rows wait for the replica now.
        self.marks: collections.deque[tuple[int, int]] = collections.deque()
        self.gate_upto = 0
        self.gated = False

    def add(self, act: OutboxActor, target: Ref[Any], method: str, payload: bytes) -> None:
        """Write a row in the turn's transaction (it goes once the turn has committed)."""
        act.data.add_outbox(target.type_name, target.key, method, payload)
        self.dirty = True

    async def deliver(self, act: OutboxActor) -> None:
        """Deliver committed outbox rows in order; a row that cannot go yet stays, with the rest,
        and delivery is retried with backoff.

        Delivery is at-least-once; the receiver's per-sender cursor makes it exactly-once.
        """
        rt = act.runtime
        rows = act.data.outbox_after(self.delivered_upto)
        gate = self.gate(act, rows[-1].id if rows else 0)
        self.gated = False
        for row in rows:
            if gate is not None and row.id > gate:
                gate = self.gate(act, 0)  # (again: acknowledged while rows were delivered?)
            if gate is not None and row.id > gate:
                # Its turn's commit is not in the replica yet: it goes once it is (an
                # acknowledgement wakes the loop; a hibernation ships it, then a wake-up).
                self.gated = True
                assert rt.replication is not None
                rt.replication.hurry()
                return
            spec = rt.specs.get(row.target_type)
            try:
                if spec is None:
                    raise LookupError(f"type {row.target_type!r} is not registered")
                token = await rt.deliver(
                    spec,
                    row.target_key,
                    row.method,
                    row.payload,
                    # (rows from before a restore to an earlier point go as they were first)
                    act.sender_id if row.id >= act.incarnation_from else act.earlier_sender_id,
                    row.id,
                )
            except RuntimeClosedError:
                return
            except NotLocalError:
                # Its target is being restored (and was woken for it): try again soon, quietly.
                delay = self.retry_delay
                self.retry_delay = min(1.0, max(OUTBOX_RETRY_MIN, delay * 2))
                return
            except Exception as exc:
                delay = self.retry_delay
                self.retry_delay = min(OUTBOX_RETRY_MAX, max(OUTBOX_RETRY_MIN, delay * 2))
                rt.report(
                    f"{act.spec.name} {act.key!r}: outbox row {row.id} to "
                    f"{row.target_type} {row.target_key!r} not delivered yet, retrying in "
                    f"{self.retry_delay:.2f} s: {exc!r}"
                )
                return
            self.delivered_upto = row.id
            if token is not None:
                self.tokens.append((row.id, token))
        self.dirty = False
        self.retry_delay = 0.0

    def gate(self, act: OutboxActor, last_row: int) -> int | None:
        """The last outbox row whose commit is in the replica (``None``: no replica, no gate).
        Rows present when the actor woke count as committed before its files were attached:
        they wait until the files' state then is known to be in the replica."""
        if act.runtime.replication is None or not act.replica.files:
            return None
        data = act.replica.files[0]
        marks = self.marks
        if last_row > (marks[-1][1] if marks else self.gate_upto):
            marks.append((data.commits, last_row))  # (written at or before this commit)
        if data.claimed and data.baseline_shipped and not data.want_snapshot:
            while marks and data.acked >= marks[0][0]:
                self.gate_upto = marks.popleft()[1]
        return self.gate_upto

    def gate_stuck(self, act: OutboxActor) -> bool:
        """Rows at the output gate cannot expect an acknowledgement soon."""
        rep = act.runtime.replication
        if rep is None or rep.unavailable or not act.replica.files:
            return True
        data = act.replica.files[0]
        return not data.claimed or data.fenced is not None

    def deletable(self) -> int:
        """The last outbox row that may be deleted: delivered and, with a replica, delivered
        into the replica (a row deleted earlier could be lost by a restore from it)."""
        tokens = self.tokens
        while tokens and tokens[0][1].done():
            self.safe_upto = tokens.popleft()[0]
        if not tokens:
            return self.delivered_upto
        return self.safe_upto
