"""The child program of the stream crash test (test_crash_streams.py); SIGKILLed at will.

Usage::

    python -m tests.crash.streams_workload run <runtime_dir>
    python -m tests.crash.streams_workload verify <runtime_dir>

``run``: sends ``MESSAGES`` messages ``Streamer.produce(i)`` (idempotency key ``p:i``); each turn
runs a step that emits ``CHUNKS`` chunks ``"i:j"`` to topic ``tokens``, pausing between them,
then publishes ``i`` to topic ``done``. Two in-process subscribers follow both topics and print
``ENTRY <json>`` for each entry they get (only committed entries reach subscribers), flushed.
It prints ``IDLE`` once every message is applied (the parent kills it long before).

``verify``: opens the runtime (the message in flight runs again), waits until every message is
applied, closes it, and prints ``STATE <json>``: every entry in the file, oldest first.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import apsw

import actors
from runtime.codec import Codec
from tests.support.crash_child import emit

MESSAGES = 6
CHUNKS = 10
PAUSE = 0.02
TOPICS = ("tokens", "done")


class Streamer(actors.Actor, name="tests.crash.Streamer"):
    """Emits a step's chunks, then publishes the message's number."""

    async def produce(self, i: int) -> None:
        async def generate() -> int:
            step = actors.current_step()
            for j in range(CHUNKS):
                step.emit("tokens", f"{i}:{j}")
                await anyio.sleep(PAUSE)
            return i

        await self.step("generate", generate)
        self.publish("done", i)

    async def sync(self) -> bool:
        """A message: it runs after every message sent before it."""
        return True


def _line(entry: actors.StreamEntry) -> dict[str, Any]:
    return {
        "offset": entry.offset,
        "topic": entry.topic,
        "kind": entry.kind,
        "item": entry.item,
        "step_key": entry.step_key,
        "attempt": entry.attempt,
    }


async def _follow(ref: actors.Ref[Any], topic: str, prefix: str) -> None:
    async with ref.open_stream(topic) as entries:
        async for entry in entries:
            emit(prefix + " " + json.dumps(_line(entry)))


async def run(root: str) -> int:
    async with actors.open_runtime(root, types=[Streamer]) as rt:
        ref = rt.ref(Streamer, "s")
        async with anyio.create_task_group() as tg:
            for topic in TOPICS:
                tg.start_soon(_follow, ref, topic, "ENTRY")
            for i in range(MESSAGES):
                await ref.options(idempotency_key=f"p:{i}").send(Streamer.produce, i)
            await ref.ask(Streamer.sync)
            emit("IDLE")
            tg.cancel_scope.cancel()
    return 0


async def verify(root: str) -> None:
    async with actors.open_runtime(root, types=[Streamer]) as rt:
        # Runs after the message in flight at the kill (run again) and every later one.
        await rt.ref(Streamer, "s").ask(Streamer.sync)


def stored_entries(root: str) -> list[dict[str, Any]]:
    """Every entry in the closed runtime's files, oldest first."""
    got: list[dict[str, Any]] = []
    codec = Codec()
    for path in Path(root).rglob("mailbox.db"):
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        for offset, topic, kind, item, step_key, attempt in conn.execute(
            'SELECT "offset", topic, kind, item, step_key, attempt FROM stream ORDER BY "offset"'
        ):
            value = None if item is None else codec.decode(item)
            got.append(
                {
                    "offset": offset,
                    "topic": topic,
                    "kind": kind,
                    "item": value,
                    "step_key": step_key,
                    "attempt": attempt,
                }
            )
        conn.close()
    return got


def main(argv: list[str]) -> int:
    mode, root = argv[1], argv[2]
    backend = os.environ.get("TORPOR_CRASH_BACKEND", "trio")
    if mode == "run":
        return anyio.run(run, root, backend=backend)
    if mode == "verify":
        anyio.run(verify, root, backend=backend)
        emit("STATE " + json.dumps(stored_entries(root)))
        return 0
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
