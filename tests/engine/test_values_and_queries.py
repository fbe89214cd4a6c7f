"""Values that come back changed or crash the codec, schema
pragmas in a ``@query``, listing one's own tables, and ``durable = True`` without a replica."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

import actors
from runtime.codec import EXT_TUPLE, MAX_DEPTH, Codec
from tests.engine.test_bad_input import assert_nothing_stored, runtime_with_one_actor
from tests.support.agents import Counter


def nested(depth: int, wrap: Any = list) -> Any:
    """A value ``depth`` containers deep (``wrap`` makes each level)."""
    value: Any = 0
    for _ in range(depth):
        value = wrap([value])
    return value


# -- item 6: bad values -----------------------------------------------------------------------


async def test_too_deep_or_self_referencing_values_are_an_encoding_error(root: Path) -> None:
    """A value nested too deeply, or containing itself, raises EncodingError and stores nothing."""
    looped: list[Any] = []
    looped.append((looped,))
    async with runtime_with_one_actor(root) as rt:
        ref = rt.ref(Counter, "c")
        for value in (looped, nested(2000), nested(MAX_DEPTH + 1, tuple)):
            with pytest.raises(actors.EncodingError, match=f"more than {MAX_DEPTH} levels"):
                await ref.send(Counter.echo, value)
        deepest = nested(MAX_DEPTH - 2, tuple)  # [[value], {}] around it: MAX_DEPTH in all
        assert await ref.ask(Counter.echo, deepest) == deepest
    assert_nothing_stored(root)


def test_stored_bytes_nested_too_deeply_are_a_decoding_error() -> None:
    """Stored bytes nesting thousands of tuples raise DecodingError instead of crashing."""
    data = msgpack.packb([0])
    for _ in range(5000):
        data = msgpack.packb([msgpack.ExtType(EXT_TUPLE, data)])
    with pytest.raises(actors.DecodingError, match="levels deep"):
        Codec().decode(data)


async def test_bytearray_and_memoryview_are_refused_with_the_fix(root: Path) -> None:
    """bytearray and memoryview, which would arrive as bytes, are refused naming bytes(x)."""
    async with runtime_with_one_actor(root) as rt:
        ref = rt.ref(Counter, "c")
        for value in (bytearray(b"ab"), memoryview(b"ab"), {"k": [(1, bytearray(b"ab"))]}):
            with pytest.raises(actors.EncodingError, match=r"(bytearray|memoryview).*bytes\(x\)"):
                await ref.ask(Counter.echo, value)
        assert await ref.ask(Counter.echo, b"ab") == b"ab"
    assert_nothing_stored(root)


async def test_datetimes_with_sub_second_utc_offsets_round_trip(root: Path) -> None:
    """A datetime or time whose UTC offset has microseconds arrives with that exact offset."""
    values: list[dt.datetime | dt.time] = []
    for micros in (1, -1, 719_889, -3_600_000_001):
        tz = dt.timezone(dt.timedelta(microseconds=micros))
        values += [dt.datetime(2024, 1, 1, 12, 0, 0, 5, tzinfo=tz), dt.time(1, 2, 3, 4, tzinfo=tz)]
    async with runtime_with_one_actor(root) as rt:
        got = await rt.ref(Counter, "c").ask(Counter.echo, values)
    assert got == values
    assert [v.utcoffset() for v in got] == [v.utcoffset() for v in values]


# -- item 9: schema pragmas in a @query, refusals as torpor errors ------------------------------


class Schema(actors.Actor, name="tests.values.Schema"):
    migrations = ("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)",)

    async def on_create(self) -> None:
        self.sql.execute("CREATE INDEX notes_body ON notes(body)")

    async def run(self, sql: str) -> Any:
        return self.sql.query(sql)

    @actors.query
    async def read(self, sql: str, params: Any = None) -> Any:
        return self.sql.query(sql, params)

    @actors.query
    async def tables(self) -> list[str]:
        return self.sql.tables()

    async def add_table(self, name: str) -> list[str]:
        self.sql.execute(f"CREATE TABLE {name}(x)")
        return self.sql.tables()


async def test_query_runs_read_only_schema_pragmas(root: Path) -> None:
    """A @query can read the schema: PRAGMA table_info, index_list and pragma_table_info."""
    async with actors.open_runtime(root, types=[Schema]) as rt:
        ref = await rt.spawn(Schema, key="s")  # (a query creates no actor)
        columns = await ref.ask(Schema.read, "PRAGMA table_info(notes)")
        assert [c[1] for c in columns] == ["id", "body"]
        indexes = await ref.ask(Schema.read, "PRAGMA index_list(notes)")
        assert [i[1] for i in indexes] == ["notes_body"]
        names = await ref.ask(Schema.read, "SELECT name FROM pragma_table_info('notes')")
        assert names == [("id",), ("body",)]
        found = await ref.ask(Schema.read, "SELECT name FROM pragma_index_list(?)", ("notes",))
        assert found == [("notes_body",)]


async def test_refused_statements_raise_torpor_errors(root: Path) -> None:
    """What a @query or a handler may not run raises an ActorError, never a raw apsw error."""
    async with actors.open_runtime(root, types=[Schema]) as rt:
        ref = await rt.spawn(Schema, key="s")  # (a query creates no actor)
        for sql in (
            "INSERT INTO notes(body) VALUES ('x')",
            "CREATE TABLE other(x)",
            "PRAGMA query_only = 0",
            "PRAGMA incremental_vacuum",
            "BEGIN",
        ):
            with pytest.raises(actors.ActorError, match="refused in a @query"):
                await ref.ask(Schema.read, sql)
        with pytest.raises(actors.MessageFailedError) as info:
            await ref.ask(Schema.run, "DELETE FROM _torpor_kv")
        assert isinstance(info.value.__cause__, actors.ActorError)
        assert "_torpor_" in str(info.value.__cause__)


# -- item 11: the user's own tables -------------------------------------------------------------


async def test_sql_tables_lists_only_the_actors_own_tables(root: Path) -> None:
    """self.sql.tables() lists the actor's tables, without the runtime's _torpor_* ones."""
    async with actors.open_runtime(root, types=[Schema]) as rt:
        ref = rt.ref(Schema, "s")
        assert await ref.ask(Schema.add_table, "archive") == ["archive", "notes"]
        assert await ref.ask(Schema.tables) == ["archive", "notes"]
        every = await ref.ask(Schema.read, "SELECT name FROM sqlite_schema WHERE type = 'table'")
        assert any(name.startswith("_torpor_") for (name,) in every)


# -- item 12: durable = True needs a replica ----------------------------------------------------


class Ledger(actors.Actor, name="tests.values.Ledger"):
    durable = True

    async def credit(self, amount: int) -> int:
        balance = int(self.kv.get("balance", 0)) + amount
        self.kv["balance"] = balance
        return balance


async def test_durable_type_without_a_replica_is_refused_at_open(root: Path) -> None:
    """open_runtime without a replica refuses a durable = True type, naming it, creating nothing."""
    with pytest.raises(ValueError, match=r"'tests\.values\.Ledger' is durable = True.*replica"):
        async with actors.open_runtime(root, types=[Counter, Ledger]):
            pass
    assert not await trio.Path(root).exists()
