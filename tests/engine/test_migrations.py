"""Schema evolution of an actor's own tables by `pragma user_version`."""

from __future__ import annotations

from pathlib import Path

import pytest

import actors
from runtime.files.datastore import Sql


def make_v1() -> type[actors.Actor]:
    class Notes(actors.Actor, name="Notes"):
        migrations = ("CREATE TABLE notes(id INTEGER PRIMARY KEY, text TEXT NOT NULL)",)

        async def add(self, text: str) -> None:
            self.sql.execute("INSERT INTO notes(text) VALUES (?)", (text,))

    return Notes


def make_v2() -> type[actors.Actor]:
    def backfill(sql: Sql) -> None:
        sql.execute("UPDATE notes SET words = length(text) - length(replace(text, ' ', '')) + 1")

    class Notes(actors.Actor, name="Notes"):
        migrations = (
            "CREATE TABLE notes(id INTEGER PRIMARY KEY, text TEXT NOT NULL)",
            "ALTER TABLE notes ADD COLUMN words INTEGER",
            backfill,
        )

        async def add(self, text: str) -> None:
            self.sql.execute(
                "INSERT INTO notes(text, words) VALUES (?, ?)", (text, len(text.split()))
            )

        @actors.query
        async def rows(self) -> list[tuple[str, int]]:
            return self.sql.query("SELECT text, words FROM notes ORDER BY id")

        @actors.query
        async def version(self) -> int:
            return int(self.sql.query_value("PRAGMA user_version"))

    return Notes


async def test_migrations_apply_in_order_on_wake(root: Path) -> None:
    """An actor created at v1 is brought to v2 (DDL plus a Python backfill) when it next wakes."""
    v1 = make_v1()
    async with actors.open_runtime(root, types=[v1]) as rt:
        await rt.ref(v1, "n").ask(v1.add, "hello world")  # type: ignore[attr-defined]
    v2 = make_v2()
    async with actors.open_runtime(root, types=[v2]) as rt:
        ref = rt.ref(v2, "n")
        await ref.ask(v2.add, "one two three")  # type: ignore[attr-defined]
        assert await ref.ask(v2.rows) == [("hello world", 2), ("one two three", 3)]  # type: ignore[attr-defined]
        assert await ref.ask(v2.version) == 3  # type: ignore[attr-defined]


async def test_removed_migration_is_refused(root: Path) -> None:
    """A data.db ahead of the class's migrations raises SchemaError and is left unchanged."""
    v2 = make_v2()
    async with actors.open_runtime(root, types=[v2]) as rt:
        await rt.ref(v2, "n").ask(v2.add, "x")  # type: ignore[attr-defined]
    v1 = make_v1()
    async with actors.open_runtime(root, types=[v1]) as rt:
        with pytest.raises(actors.SchemaError, match="never removed or reordered"):
            await rt.ref(v1, "n").send(v1.add, "y")  # type: ignore[attr-defined]


async def test_failing_migration_changes_nothing(root: Path) -> None:
    """A migration that raises rolls back every step of that wake and reports SchemaError."""

    class Broken(actors.Actor, name="Broken"):
        migrations = ("CREATE TABLE a(x)", "CREATE TABLE a(x)")

        async def noop(self) -> None:
            pass

    async with actors.open_runtime(root, types=[Broken]) as rt:
        with pytest.raises(actors.SchemaError, match="migration of Broken failed"):
            await rt.ref(Broken, "b").send(Broken.noop)

    class Fixed(actors.Actor, name="Broken"):
        migrations = ("CREATE TABLE a(x)", "CREATE TABLE b(x)")

        async def tables(self) -> list[str]:
            sql = "SELECT name FROM sqlite_schema WHERE name IN ('a', 'b') ORDER BY name"
            return [row[0] for row in self.sql.query(sql)]

    async with actors.open_runtime(root, types=[Fixed]) as rt:
        assert await rt.ref(Fixed, "b").ask(Fixed.tables) == ["a", "b"]
