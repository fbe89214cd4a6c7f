"""torpor send / torpor ask: JSON arguments, the user's classes by --types, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import trio

import actors
from tests.ops.test_cli import failed, ok, torpor
from tests.support.agents import Counter

TYPES = "tests.support.agents:Counter"


def make(root: Path) -> Path:
    async def build() -> None:
        async with actors.open_runtime(root, types=[Counter]) as rt:
            await rt.ref(Counter, "alice").ask(Counter.incr, 1)

    trio.run(build)
    return root


def test_ask_prints_the_reply_and_send_is_applied(tmp_path: Path) -> None:
    """torpor ask prints the handler's reply as JSON; torpor send's message is applied."""
    root = make(tmp_path / "rt")
    assert ok(
        torpor("ask", root, "Counter", "alice", "incr", "--args", "[5]", "--types", TYPES)
    ) == ("6\n")
    out = ok(
        torpor("send", root, "Counter", "alice", "incr", "--kwargs", '{"by": 2}', "--types", TYPES)
    )
    assert out == "sent Counter 'alice' incr\n"
    reply = json.loads(
        ok(torpor("ask", root, "Counter", "alice", "value", "--types", TYPES, "--json"))
    )
    assert reply == {"reply": 8}


def test_an_idempotency_key_makes_a_retried_ask_a_no_op(tmp_path: Path) -> None:
    """torpor ask with an idempotency key applies a retried call once."""
    root = make(tmp_path / "rt")
    call = ("ask", root, "Counter", "alice", "incr", "--args", "[10]", "--types", TYPES)
    first = ok(torpor(*call, "--idempotency-key", "k1"))
    again = ok(torpor(*call, "--idempotency-key", "k1"))
    assert first == again == "11\n"
    assert ok(torpor("ask", root, "Counter", "alice", "value", "--types", TYPES)) == "11\n"


def test_bad_calls_get_clear_errors_and_change_nothing(tmp_path: Path) -> None:
    """Bad torpor send/ask calls print a clear error, exit non-zero and store nothing."""
    root = make(tmp_path / "rt")
    err = failed(torpor("ask", root, "Counter", "alice", "nope", "--types", TYPES), 1)
    assert "nope" in err
    err = failed(
        torpor("ask", root, "Counter", "alice", "incr", "--args", "[1", "--types", TYPES), 2
    )
    assert "JSON" in err
    err = failed(torpor("ask", root, "Other", "x", "incr", "--types", TYPES), 1)
    assert "not among --types" in err
    err = failed(torpor("ask", root, "Counter", "alice", "incr", "--types", "no_such_mod:X"), 1)
    assert "cannot import" in err
    err = failed(
        torpor("ask", root, "Counter", "alice", "incr", "--args", '["x"]', "--types", TYPES), 1
    )
    assert ok(torpor("ask", root, "Counter", "alice", "value", "--types", TYPES)) == "1\n"


def test_a_call_is_refused_while_the_runtime_is_open(tmp_path: Path) -> None:
    """torpor send/ask is refused while another process has the runtime open."""
    root = make(tmp_path / "rt")

    async def hold() -> str:
        async with actors.open_runtime(root, types=[Counter]):
            done = await trio.to_thread.run_sync(
                lambda: torpor("send", root, "Counter", "alice", "incr", "--types", TYPES)
            )
            return failed(done, 1)

    assert "open in another process" in trio.run(hold)
