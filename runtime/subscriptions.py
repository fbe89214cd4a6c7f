"""``Subscriptions``: ``Ref.open_stream`` and ``Ref.open_watch`` (DESIGN §11).

A stream is read from the actor's ``mailbox.db`` by offset: through its open mailbox when it
is awake, else by opening the file for the one read (``Residency.with_mailbox``), so reading a
hibernated actor's stream does not wake it. Live entries come from the runtime's
:class:`~runtime.streams.Feeds` (one ring per followed actor, shared by its subscribers). A
watch runs its ``@query`` (which keeps the actor awake while it runs, like any query), then
waits, holding nothing, for the actor's next commit.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio.lowlevel

from .delivery import Delivery
from .files import streamstore
from .files.layout import actor_id
from .host import RuntimeHost
from .records import StreamEntry
from .residency import Residency
from .spec import TypeSpec
from .streams import Commits, Entries, check_topic, entry_from_row


class Subscriptions:
    def __init__(self, rt: RuntimeHost, residency: Residency, delivery: Delivery) -> None:
        self.rt = rt
        self.residency = residency
        self.delivery = delivery

    @contextlib.asynccontextmanager
    async def open_stream(
        self, spec: TypeSpec, key: str, topic: str, after: int
    ) -> AsyncIterator[Entries]:
        check_topic(topic)
        if isinstance(after, bool) or not isinstance(after, int):
            raise TypeError(f"after must be an int offset (got {after!r})")
        if after < 0:
            raise ValueError(f"after must be 0 (from the start) or an offset (got {after})")
        self.rt.check_open()
        aid = actor_id(spec.name, key)
        rep = self.rt.replication
        if (
            rep is not None
            and aid not in self.residency.awake
            and not rep.local_files_current(aid)
            and await self.delivery.exists(spec, key)
        ):
            await self.residency.activate(spec, key)  # its files come from the replica first
        feeds = self.rt.feeds
        feed = feeds.subscribe(aid, lambda: self._last_offset(spec, key))
        try:
            yield Entries(feed, topic, after, lambda *a: self._read(spec, key, *a))
        finally:
            feeds.unsubscribe(aid, feed)

    def _read(
        self, spec: TypeSpec, key: str, topic: str, after: int, upto: int | None, limit: int
    ) -> list[StreamEntry]:
        decode = self.rt.codec.decode

        def read(mailbox: Any, _act: Any) -> list[StreamEntry]:
            if mailbox is None:
                return []
            rows = streamstore.read(mailbox.conn, topic, after, upto, limit)
            return [entry_from_row(row, decode) for row in rows]

        result: list[StreamEntry] = self.residency.with_mailbox(spec, key, read)
        return result

    def _last_offset(self, spec: TypeSpec, key: str) -> int:
        def last(mailbox: Any, _act: Any) -> int:
            return 0 if mailbox is None else streamstore.last_offset(mailbox.conn)

        result: int = self.residency.with_mailbox(spec, key, last)
        return result

    @contextlib.asynccontextmanager
    async def open_watch(
        self, spec: TypeSpec, key: str, method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncIterator[Values]:
        handler = spec.handler(method)
        if not handler.is_query:
            raise TypeError(
                f"open_watch takes a @query handler; {spec.name}.{handler.name} is a message "
                "handler (it would change the actor at every look)"
            )
        self.delivery.encode_call(spec, method, args, kwargs)  # bad arguments fail here
        aid = actor_id(spec.name, key)
        commits = self.rt.feeds.watch(aid)
        try:
            yield Values(self.rt, spec, key, method, args, kwargs, commits)
        finally:
            self.rt.feeds.unwatch(aid, commits)


class Values:
    """A query's result now, then after each commit that changed it (``Ref.open_watch``)."""

    def __init__(
        self,
        rt: RuntimeHost,
        spec: TypeSpec,
        key: str,
        method: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        commits: Commits,
    ) -> None:
        self._rt = rt
        self._call = (spec, key, method, args, kwargs)
        self._commits = commits
        self._changed = commits.changed
        self._stale = True
        self._last: Any = None
        self._seen = False

    def __aiter__(self) -> Values:
        return self

    async def __anext__(self) -> Any:
        await anyio.lowlevel.checkpoint()
        while True:
            if self._stale:
                # Taken before the query runs: a commit meanwhile makes it run again.
                self._changed = self._commits.changed
                self._stale = False
                spec, key, method, args, kwargs = self._call
                value = await self._rt.ask(spec, key, method, args, kwargs, None)
                if not self._seen or value != self._last:
                    self._seen, self._last = True, value
                    return value
            await self._changed.wait()
            self._stale = True
