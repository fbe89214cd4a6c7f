"""The child program of the durable-backoff crash test (test_crash_failures.py); SIGKILLed at will.

Usage (from the repository root)::

    python -m tests.crash.failures_workload run <runtime_dir> <log>

It opens the runtime on the real clock, prints ``READY``, sends (idempotently, so that a rerun
sends nothing new) one message to each of two actors, prints ``SENT``, and waits until both
have finished; then prints ``DONE`` and exits 0 (3 if that takes longer than
``DRAIN_TIMEOUT``). Meanwhile it prints ``BACKOFF`` once both actors' mailboxes record a second
failed attempt with the time of the next (read through the engine's open mailboxes: other
processes cannot open them), the moment the parent kills it.

- ``Flow.go`` runs one step whose function fails until its attempt ``STEP_SUCCEEDS``, with
  ``STEP_RETRY`` (``DELAY`` seconds between attempts, no jitter).
- ``Failing.go`` raises on every attempt, with ``MESSAGE_RETRY`` as the type's policy; it ends
  dead-lettered after ``MESSAGE_RETRY.max_attempts`` attempts.

Each call appends ``<what> <attempt> <time.time()>`` to the log (``os.write`` on an
``O_APPEND`` descriptor, then ``fsync``) before it fails: ``step <StepInfo.attempt>`` for the
step, ``message <n>`` for the handler (``n``: its calls in the log so far, plus one).

The async backend is ``trio`` unless ``TORPOR_CRASH_BACKEND`` names another (``asyncio``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import anyio

import actors
from tests.support.crash_child import emit

#: Seconds between attempts, of the step and of the message: longer than a restart of this
#: program takes, so that a backoff forgotten by a crash shows as an early attempt.
DELAY = 1.5
STEP_RETRY = actors.Retry(max_attempts=6, initial_delay=DELAY, multiplier=1, jitter=0)
STEP_SUCCEEDS = 4
MESSAGE_RETRY = actors.Retry(max_attempts=3, initial_delay=DELAY, multiplier=1, jitter=0)
DRAIN_TIMEOUT = 30.0

LOG: Path | None = None


def log_line(what: str, attempt: int) -> None:
    assert LOG is not None
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{what} {attempt} {time.time():.6f}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def calls_of(what: str) -> int:
    assert LOG is not None
    if not LOG.exists():
        return 0
    return sum(line.split(" ")[0] == what for line in LOG.read_text().splitlines())


def flaky() -> str:
    attempt = actors.current_step().attempt
    log_line("step", attempt)
    if attempt < STEP_SUCCEEDS:
        raise ConnectionError(f"attempt {attempt} failed")
    return f"done at attempt {attempt}"


class Flow(actors.Actor, name="Flow"):
    async def go(self) -> None:
        self.kv["result"] = await self.step("flaky", STEP_RETRY, flaky)

    @actors.query
    async def result(self) -> str | None:
        value: str | None = self.kv.get("result")
        return value


class Failing(actors.Actor, name="Failing"):
    retry = MESSAGE_RETRY

    async def go(self) -> None:
        log_line("message", calls_of("message") + 1)
        raise ConnectionError("always down")


def second_failures_recorded(rt: actors.Runtime) -> bool:
    """Both the step's journal row and the message's inbox row hold a second failed attempt
    and the next attempt's time."""
    found = set()
    for act in list(rt._engine.residency.awake.values()):
        if not act.files_open:
            continue
        conn = act.mailbox.conn
        for _ in conn.execute("SELECT 1 FROM journal WHERE status = 'retrying' AND attempts = 2"):
            found.add("step")
        for _ in conn.execute("SELECT 1 FROM inbox WHERE attempts = 2 AND retry_at IS NOT NULL"):
            found.add("message")
    return found == {"step", "message"}


async def watch(rt: actors.Runtime) -> None:
    while not second_failures_recorded(rt):  # noqa: ASYNC110 (polls the files, not an event)
        await anyio.sleep(0.001)
    emit("BACKOFF")


async def run(root: str) -> int:
    async with actors.open_runtime(root, types=[Flow, Failing]) as rt:
        emit("READY")
        flow, failing = rt.ref(Flow, "f"), rt.ref(Failing, "m")
        await flow.options(idempotency_key="flow").send(Flow.go)
        await failing.options(idempotency_key="failing").send(Failing.go)
        emit("SENT")
        with anyio.move_on_after(DRAIN_TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch, rt)
                while (  # noqa: ASYNC110 (polls a query and the dead letters)
                    await flow.ask(Flow.result) is None or not await rt.dead_letters(failing)
                ):
                    await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
            emit("DONE")
            return 0
    return 3


def main(argv: list[str]) -> int:
    global LOG
    mode, root, LOG = argv[1], argv[2], Path(argv[3])
    if mode != "run":
        raise SystemExit(f"unknown mode {mode!r}")
    backend = os.environ.get("TORPOR_CRASH_BACKEND", "trio")
    return anyio.run(run, root, backend=backend)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
