"""What the child programs of the crash harnesses (tests/crash/*workload.py) share.

``main`` parses the command line the parent uses::

    python -m tests.crash.<workload> run <runtime_dir> <end> <start_0> ... <start_{S-1}>
    python -m tests.crash.<workload> verify <runtime_dir>

The async backend is ``trio`` unless ``TORPOR_CRASH_BACKEND`` names another (``asyncio``).
``run`` prints ``OPEN``, opens the runtime, prints ``READY``, runs one sender task per sender
(each prints ``ACK s i`` via ``emit`` as soon as a send returned), then waits for the workload to
settle; if it does, it prints the runtime's reports to stderr and ``DONE``, and exits 0 (exit 3
if it does not). ``verify`` opens the runtime and prints ``STATE <json>`` with what the
workload's collector returns.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio

import actors

OpenRuntime = Callable[[str], AbstractAsyncContextManager[actors.Runtime]]
SenderTask = Callable[[actors.Runtime, int, int, int], Coroutine[Any, Any, None]]


def emit(line: str) -> None:
    """Print one protocol line to stdout, flushed (the parent reads it at once)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def sync_all(refs: Sequence[actors.Ref[Any]], sync: Any, progress: list[str]) -> list[int]:
    """Ask every actor's ``sync`` turn in order: it runs after every message queued before it.

    ``progress`` names the actor being waited for, for a timeout report.
    """
    applied = []
    for ref in refs:
        progress[:] = [f"waiting for {ref.key}.sync"]
        applied.append(await ref.ask(sync))
    return applied


async def dead_letters(rt: actors.Runtime, refs: Sequence[actors.Ref[Any]]) -> dict[str, list[str]]:
    """Each actor's dead letters, one line each."""
    return {
        ref.key: [
            f"{d.method}{d.args}: {d.error_type}: {d.error_message}"
            for d in await rt.dead_letters(ref)
        ]
        for ref in refs
    }


async def run(
    open_runtime: OpenRuntime,
    root: str,
    end: int,
    starts: list[int],
    sender_task: SenderTask,
    settle: Callable[[actors.Runtime], Awaitable[bool]],
) -> int:
    emit("OPEN")
    async with open_runtime(root) as rt:
        emit("READY")
        async with anyio.create_task_group() as tg:
            for sender, start in enumerate(starts):
                tg.start_soon(sender_task, rt, sender, start, end)
        if not await settle(rt):
            return 3
        for report in rt.reports:
            print(f"report: {report}", file=sys.stderr)
        emit("DONE")
    return 0


async def verify(
    open_runtime: OpenRuntime,
    root: str,
    collect: Callable[[actors.Runtime], Awaitable[dict[str, Any]]],
) -> int:
    async with open_runtime(root) as rt:
        emit("STATE " + json.dumps(await collect(rt)))
    return 0


def main(
    argv: list[str],
    *,
    senders: int,
    open_runtime: OpenRuntime,
    sender_task: SenderTask,
    settle: Callable[[actors.Runtime], Awaitable[bool]],
    collect: Callable[[actors.Runtime], Awaitable[dict[str, Any]]],
) -> int:
    """Run ``run`` or ``verify`` per the command line; return the exit status."""
    mode, root = argv[1], argv[2]
    backend = os.environ.get("TORPOR_CRASH_BACKEND", "trio")
    if mode == "run":
        end = int(argv[3])
        starts = [int(a) for a in argv[4:]]
        if len(starts) != senders:
            raise SystemExit(f"need {senders} start values, got {len(starts)}")
        return anyio.run(run, open_runtime, root, end, starts, sender_task, settle, backend=backend)
    if mode == "verify":
        return anyio.run(verify, open_runtime, root, collect, backend=backend)
    raise SystemExit(f"unknown mode {mode!r}")
