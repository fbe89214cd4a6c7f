"""Actor types shared by the tests."""

from __future__ import annotations

import dataclasses
import decimal
import enum
from typing import Any

import attrs

import actors


class Counter(actors.Actor):
    """The issue's example: a counter with a log table and a read-only query."""

    async def on_create(self, start: int = 0) -> None:
        self.sql.execute("CREATE TABLE IF NOT EXISTS log(by INTEGER)")
        self.kv["n"] = start

    async def incr(self, by: int = 1) -> int:
        n: int = self.kv.get("n", 0) + by
        self.kv["n"] = n
        self.sql.execute("INSERT INTO log(by) VALUES (?)", (by,))
        return n

    async def echo(self, value: Any) -> Any:
        return value

    @actors.query
    async def value(self) -> int:
        return int(self.kv.get("n", 0))

    @actors.query
    async def log(self) -> list[int]:
        return [row[0] for row in self.sql.execute("SELECT by FROM log ORDER BY rowid")]


@attrs.frozen
class Point:
    x: int
    y: int


class Mood(enum.Enum):
    """An enum for messages (stored by value, with its registered name)."""

    CALM = "calm"
    BUSY = 2


@dataclasses.dataclass(frozen=True)
class Tag:
    """A dataclass for messages: a field typed Any keeps what it holds."""

    label: str
    weight: decimal.Decimal
    extra: Any = None
