"""Actor types that tests/http/test_serve.py serves with `torpor serve` in a child process."""

from __future__ import annotations

import actors


class Tally(actors.Actor, name="Tally"):
    """Adds numbers into a table, one row per message."""

    async def on_create(self) -> None:
        self.sql.execute("CREATE TABLE IF NOT EXISTS n (v INTEGER)")

    async def add(self, value: int) -> int:
        self.sql.execute("INSERT INTO n VALUES (?)", (value,))
        self.publish("adds", value)  # (read over SSE across a kill -9 of the server)
        return await self.total()

    @actors.query
    async def total(self) -> int:
        (found,) = self.sql.execute("SELECT coalesce(sum(v), 0) FROM n").fetchone() or (0,)
        return int(found)


TYPES = [Tally]
