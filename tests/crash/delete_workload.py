"""The child program of ``test_crash_delete.py``; the parent SIGKILLs it at will.

Usage::

    python -m tests.crash.delete_workload <runtime_dir> <store_dir> <actors>

Opens the runtime (replicated to a directory store), prints ``READY``, then ``STATUS <json>``
(every actor ``rt.actors`` lists: key -> status). It makes every actor ``k<n>`` that was never
deleted hold the note ``secret <n>`` (idempotent), printing ``MADE <n>``; then deletes the even
ones, printing ``DELETED <n>`` once each ``delete()`` returned (one already gone is skipped);
then checks that each odd one still holds its note and prints ``DONE``. The async backend is
``TORPOR_CRASH_BACKEND`` (trio by default).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import anyio

import actors
from tests.support.crash_child import emit


class Vault(actors.Actor, name="crash.Vault"):
    """One user's secret."""

    async def put(self, text: str) -> None:
        self.kv["note"] = text

    async def note(self) -> str | None:
        value = self.kv.get("note")
        return None if value is None else str(value)


async def main(root: str, store_dir: str, count: int) -> None:
    store = actors.DirectoryStore(Path(store_dir))
    replication = actors.Replication(max_delay=0.05, min_delay=0.01)
    async with actors.open_runtime(
        root, types=[Vault], replica=store, replication=replication
    ) as rt:
        emit("READY")
        listed = {a.key: a.status for a in await rt.actors(Vault, limit=10_000)}
        emit("STATUS " + json.dumps(listed))
        gone = anyio.Path(root, "deleted.txt")  # what an earlier run's deletes returned for
        deleted = set((await gone.read_text()).split()) if await gone.exists() else set()
        for n in range(count):
            if f"k{n}" not in deleted:
                while True:
                    try:
                        await rt.ref(Vault, f"k{n}").ask(Vault.put, f"secret {n}")
                        break
                    except actors.ActorDeletedError:  # a deletion cut short, finishing now
                        await anyio.sleep(0.05)
                emit(f"MADE {n}")
        for n in range(0, count, 2):
            if f"k{n}" in deleted:
                continue
            # (not found: its deletion finished at this open, the killed run never said so)
            with contextlib.suppress(actors.ActorNotFoundError):
                await rt.ref(Vault, f"k{n}").delete()
            async with await gone.open("a") as f:
                await f.write(f"k{n}\n")
            emit(f"DELETED {n}")
        for n in range(1, count, 2):
            got = await rt.ref(Vault, f"k{n}").ask(Vault.note)
            if got != f"secret {n}":
                emit(f"WRONG {n} {got!r}")
                sys.exit(3)
        await rt.replicated()
    emit("DONE")


if __name__ == "__main__":
    anyio.run(
        main,
        sys.argv[1],
        sys.argv[2],
        int(sys.argv[3]),
        backend=os.environ.get("TORPOR_CRASH_BACKEND", "trio"),
    )
