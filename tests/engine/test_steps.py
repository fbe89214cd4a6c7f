"""Durable steps inside handlers (DESIGN §4): journaled effects, values, waits, asks, fan-out,
versioning and the management of turns in flight. Virtual time throughout."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

import actors

pytestmark = pytest.mark.both_backends

START = 1_800_000_000.0


def clock() -> float:
    return START + anyio.current_time()


def runtime(root: Path, *types: type, **options: Any) -> Any:
    options.setdefault("clock", clock)
    return actors.open_runtime(root, types=list(types), **options)


# -- steps ------------------------------------------------------------------------------------


async def test_a_completed_step_does_not_run_again_when_its_turn_is_retried(root: Path) -> None:
    """A retried turn replays its completed step from the journal instead of running it again."""
    calls: list[str] = []
    failures = [1]

    async def charge(amount: int) -> str:
        calls.append(f"charge {amount}")
        return f"receipt-{amount}"

    class Shop(actors.Actor, name="Shop"):
        retry = actors.Retry(max_attempts=3, initial_delay=1)

        async def buy(self, amount: int) -> str:
            receipt: str = await self.step("charge", charge, amount)
            self.kv["receipt"] = receipt
            if failures:
                failures.pop()
                raise RuntimeError("the turn fails after the charge")
            return receipt

    async with runtime(root, Shop) as rt:
        assert await rt.ref(Shop, "s").ask(Shop.buy, 30) == "receipt-30"
    assert calls == ["charge 30"]


async def test_sync_steps_run_in_a_worker_thread_and_async_ones_in_the_loop(root: Path) -> None:
    """A sync step function runs in a worker thread, an async one in the event loop."""
    loop_thread = threading.get_ident()
    seen: dict[str, int] = {}

    def sync_fn() -> int:
        seen["sync"] = threading.get_ident()
        return 1

    async def async_fn() -> int:
        seen["async"] = threading.get_ident()
        return 2

    class Worker(actors.Actor, name="Worker"):
        async def go(self) -> int:
            return int(await self.step("s", sync_fn)) + int(await self.step("a", async_fn))

    async with runtime(root, Worker) as rt:
        assert await rt.ref(Worker, "w").ask(Worker.go) == 3
    assert seen["async"] == loop_thread
    assert seen["sync"] != loop_thread


async def test_step_retries_with_backoff_then_fails_with_a_typed_error(root: Path) -> None:
    """A failing step retries with backoff, then raises StepFailedError in the handler."""
    attempts: list[float] = []

    async def flaky() -> str:
        attempts.append(anyio.current_time())
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return "ok"

    async def broken() -> str:
        attempts.append(anyio.current_time())
        raise ValueError("always")

    policy = actors.Retry(max_attempts=3, initial_delay=10, multiplier=2, jitter=0)

    class Caller(actors.Actor, name="Caller"):
        async def flaky(self) -> str:
            return str(await self.step("flaky", policy, flaky))

        async def broken(self) -> str:
            try:
                await self.step("broken", policy, broken)
            except actors.StepFailedError as exc:
                return f"{exc.step} {exc.error_type} {exc.error_message} {exc.attempts}"
            return "unreachable"

    async with runtime(root, Caller) as rt:
        ref = rt.ref(Caller, "c")
        assert await ref.ask(Caller.flaky) == "ok"
        gaps = [round(b - a) for a, b in itertools.pairwise(attempts)]
        assert gaps == [10, 20]  # exponential backoff, jitter 0
        attempts.clear()
        assert await ref.ask(Caller.broken) == "broken ValueError always 3"
        assert len(attempts) == 3
        assert rt.statistics().step_retries == 4


async def test_non_retryable_stops_at_once_and_the_failure_is_journaled(root: Path) -> None:
    """A non-retryable error ends the step at once and its failure is journaled."""
    calls: list[int] = []
    turn_failures = [1]

    async def refuse() -> None:
        calls.append(1)
        raise actors.NonRetryable("card declined")

    class Payer(actors.Actor, name="Payer"):
        retry = actors.Retry(max_attempts=2, initial_delay=1)

        async def pay(self) -> str:
            try:
                await self.step("pay", actors.Retry(max_attempts=5), refuse)
            except actors.StepFailedError as exc:
                if turn_failures:
                    turn_failures.pop()
                    raise RuntimeError("fail the turn after the journaled failure") from exc
                return exc.error_message
            return "paid"

    async with runtime(root, Payer) as rt:
        assert await rt.ref(Payer, "p").ask(Payer.pay) == "card declined"
    assert calls == [1]  # one attempt, and the retried turn read the failure from the journal


async def test_a_step_attempt_past_its_deadline_is_retried(root: Path) -> None:
    """A step attempt that runs past its deadline is cancelled and retried."""
    durations = [100.0, 1.0]

    async def slow() -> str:
        await anyio.sleep(durations.pop(0))
        return "done"

    class Agent(actors.Actor, name="Agent"):
        async def go(self) -> str:
            policy = actors.Retry(max_attempts=2, initial_delay=1, deadline=5)
            return str(await self.step("slow", policy, slow))

    async with runtime(root, Agent) as rt:
        start = anyio.current_time()
        assert await rt.ref(Agent, "a").ask(Agent.go) == "done"
        assert anyio.current_time() - start < 10  # the first attempt was cut at 5 s
    assert durations == []


async def test_the_step_idempotency_key_is_stable_across_attempts_and_replays(root: Path) -> None:
    """A step's idempotency key is the same in every attempt and every replay."""
    keys: list[tuple[str, int, str]] = []
    fail = [1]

    async def call() -> None:
        info = actors.current_step()
        keys.append((info.name, info.attempt, info.idempotency_key))
        if fail and info.name == "b":
            fail.pop()
            raise ConnectionError("retry")

    class Agent(actors.Actor, name="Agent"):
        async def go(self) -> None:
            await self.step("a", call)
            await self.step("b", actors.Retry(max_attempts=2, initial_delay=1), call)
            await self.wait_for_event("end")

    async with runtime(root, Agent) as rt:
        ref = rt.ref(Agent, "k")
        await ref.send(Agent.go)
        await anyio.sleep(10)
        (turn,) = await rt.turns(ref)
        await rt.restart_turn(ref, turn.seq, from_step=1)  # b runs again, as after a crash
        await anyio.sleep(10)
    assert [(name, attempt) for name, attempt, _ in keys] == [
        ("a", 1),
        ("b", 1),
        ("b", 2),
        ("b", 1),
    ]
    a_key, b_first, b_retry, b_restarted = (key for _, _, key in keys)
    assert b_first == b_retry != a_key  # the same key on every attempt, one per step
    # A restart asks for a new result: the key changes, so a de-duplicating API runs it again.
    assert b_restarted == f"{b_first}:r1"
    async with runtime(root.parent / "other", Agent) as rt:
        await rt.ref(Agent, "k").send(Agent.go)
        await anyio.sleep(10)
    assert keys[-1][2] != a_key  # another runtime's actor of the same type and key

    with pytest.raises(RuntimeError):
        actors.current_step()


async def test_large_step_results_stay_in_the_actor_files(root: Path) -> None:
    """A 5 MiB step result is journaled in the actor's files and replays intact, not rerun."""
    blob = bytes(range(256)) * (5 * 4096)  # 5 MiB
    calls: list[int] = []
    fail = [1]

    async def download() -> bytes:
        calls.append(1)
        return blob

    class Agent(actors.Actor, name="Agent"):
        retry = actors.Retry(max_attempts=2, initial_delay=1)

        async def go(self) -> int:
            data: bytes = await self.step("download", download)
            if fail:
                fail.pop()
                raise RuntimeError("replay from the journal")
            return len(data) if data == blob else -1

    async with runtime(root, Agent) as rt:
        assert await rt.ref(Agent, "a").ask(Agent.go) == len(blob)
    assert calls == [1]


async def test_durable_calls_outside_message_handlers_are_refused(root: Path) -> None:
    """A step outside a message handler (in on_create) is refused with a clear error."""

    class Agent(actors.Actor, name="Agent"):
        async def on_create(self) -> None:
            try:
                await self.step("x", anyio.sleep, 0)
            except RuntimeError as exc:
                self.kv["error"] = str(exc)

        @actors.query
        async def error(self) -> str:
            return str(self.kv["error"])

    async with runtime(root, Agent) as rt:
        agent = await rt.spawn(Agent, key="a")  # (a query creates no actor)
        assert "message handlers only" in await agent.ask(Agent.error)


# -- journaled values -------------------------------------------------------------------------


async def test_now_random_and_uuid_replay_the_same_values(root: Path) -> None:
    """self.now(), self.random() and self.uuid() return the same values when a turn replays."""
    seen: list[tuple[Any, ...]] = []
    fail = [1]

    async def noop() -> None:
        return None

    class Agent(actors.Actor, name="Agent"):
        retry = actors.Retry(max_attempts=2, initial_delay=60)

        async def go(self) -> str:
            values = (self.now(), self.random(), self.uuid())
            await self.step("flush", noop)  # the values are journaled before any step runs
            seen.append(values)
            if fail:
                fail.pop()
                raise RuntimeError("retry a minute later")
            return "ok"

    async with runtime(root, Agent) as rt:
        await rt.ref(Agent, "a").ask(Agent.go)
    assert len(seen) == 2 and seen[0] == seen[1]
    assert seen[0][0].tzinfo is not None
    assert seen[0][0].timestamp() == pytest.approx(START, abs=1)


# -- durable waits ----------------------------------------------------------------------------


async def test_a_long_sleep_hibernates_the_actor_and_the_turn_resumes_on_time(root: Path) -> None:
    """A long durable sleep lets the actor hibernate; the turn resumes at its deadline."""
    log: list[tuple[str, float]] = []

    async def record(what: str) -> None:
        log.append((what, clock()))

    class Agent(actors.Actor, name="Agent"):
        async def remind(self) -> str:
            await self.step("before", record, "before")
            await self.sleep(3600)
            await self.step("after", record, "after")
            return "reminded"

    async with runtime(root, Agent, idle_timeout=30) as rt:
        ref = rt.ref(Agent, "a")
        async with anyio.create_task_group() as tg:
            result: list[str] = []

            async def ask() -> None:
                result.append(await ref.ask(Agent.remind))

            tg.start_soon(ask)
            await anyio.sleep(60)
            assert rt.statistics().awake == 0  # hibernated while it sleeps
            (turn,) = await rt.turns(ref)
            assert turn.status == "waiting"
            assert [s.kind for s in turn.steps] == ["step", "sleep"]
            assert turn.steps[1].until == pytest.approx(START + 3600, abs=1)
        assert result == ["reminded"]
    assert [what for what, _ in log] == ["before", "after"]
    assert log[1][1] >= START + 3600  # never early


async def test_a_sleep_survives_closing_and_reopening_the_runtime(root: Path) -> None:
    """A durable sleep survives closing and reopening the runtime and ends on time."""
    calls: list[str] = []

    async def record(what: str) -> None:
        calls.append(what)

    class Agent(actors.Actor, name="Agent"):
        async def go(self) -> None:
            await self.step("a", record, "a")
            await self.sleep(86400)
            await self.step("b", record, "b")
            self.kv["done"] = True

        @actors.query
        async def done(self) -> bool:
            return bool(self.kv.get("done", False))

    async with runtime(root, Agent) as rt:
        await rt.ref(Agent, "a").send(Agent.go)
        await anyio.sleep(10)
    assert calls == ["a"]
    await anyio.sleep(86400)  # the process is down past the deadline
    async with runtime(root, Agent) as rt:
        ref = rt.ref(Agent, "a")
        while not await ref.ask(Agent.done):  # noqa: ASYNC110 (virtual time)
            await anyio.sleep(1)
    assert calls == ["a", "b"]


async def test_an_event_wakes_the_waiting_turn_and_does_not_queue_behind_it(root: Path) -> None:
    """An event wakes the turn waiting for it at once; it does not queue behind that turn."""

    class Approval(actors.Actor, name="Approval"):
        async def request(self, what: str) -> str:
            decision: dict[str, str] = await self.wait_for_event("decision")
            self.kv.setdefault("log", [])
            self.kv["log"] = [*self.kv["log"], f"{what}: {decision['verdict']}"]
            return decision["verdict"]

        async def note(self, text: str) -> None:
            self.kv["log"] = [*self.kv.get("log", []), text]

        @actors.query
        async def log(self) -> list[str]:
            return list(self.kv.get("log", []))

    async with runtime(root, Approval, idle_timeout=30) as rt:
        ref = rt.ref(Approval, "a")
        async with anyio.create_task_group() as tg:
            verdicts: list[str] = []

            async def request() -> None:
                verdicts.append(await ref.ask(Approval.request, "deploy"))

            tg.start_soon(request)
            await anyio.sleep(1)
            await ref.send(Approval.note, "later message")  # queues behind the waiting turn
            await anyio.sleep(300)  # hibernated meanwhile
            assert await ref.ask(Approval.log) == []
            assert await ref.signal("decision", {"verdict": "approved"})
        assert verdicts == ["approved"]
        assert await ref.ask(Approval.log) == ["deploy: approved", "later message"]


async def test_an_event_sent_before_the_wait_is_kept_and_signals_are_idempotent(
    root: Path,
) -> None:
    """An event signalled before its wait is kept for it; a signal's idempotency key dedupes."""

    class Agent(actors.Actor, name="Agent"):
        async def hello(self) -> None:
            pass

        async def take(self) -> list[Any]:
            return [
                await self.wait_for_event("e"),
                await self.wait_for_event("e", timeout=5),
            ]

    async with runtime(root, Agent) as rt:
        ref = rt.ref(Agent, "a")
        await ref.ask(Agent.hello)
        assert await ref.signal("e", 1, idempotency_key="k1")
        assert not await ref.signal("e", 1, idempotency_key="k1")  # a retried webhook
        with pytest.raises(actors.MessageFailedError) as info:
            await ref.ask(Agent.take)
        assert isinstance(info.value.__cause__, actors.WaitTimeoutError)
        assert await ref.signal("e", "first")
        assert await ref.signal("e", "second")
        assert await ref.ask(Agent.take) == ["first", "second"]


async def test_signals_to_unknown_actors_are_refused(root: Path) -> None:
    """A signal to an actor that does not exist is refused."""

    class Agent(actors.Actor, name="Agent"):
        async def hello(self) -> None:
            pass

    async with runtime(root, Agent) as rt:
        with pytest.raises(actors.ActorNotFoundError):
            await rt.ref(Agent, "nobody").signal("e")
        with pytest.raises(TypeError):
            await rt.ref(Agent, "nobody").signal("")


# -- asks and fan-out -------------------------------------------------------------------------


async def test_ask_is_a_step_sent_once_even_when_the_asking_turn_is_retried(root: Path) -> None:
    """An ask from a handler is a step: sent once even when the asking turn is retried."""
    fail = [1]

    class Worker(actors.Actor, name="Worker"):
        async def work(self, item: int) -> int:
            self.kv["runs"] = self.kv.get("runs", 0) + 1
            return item * 10

        @actors.query
        async def runs(self) -> int:
            return int(self.kv.get("runs", 0))

    class Planner(actors.Actor, name="Planner"):
        retry = actors.Retry(max_attempts=2, initial_delay=1)

        async def plan(self, items: list[int]) -> list[int]:
            workers = [self.ref_to(Worker, f"w{i}") for i in items]
            results = await self.gather(
                *[self.ask(w, Worker.work, i) for w, i in zip(workers, items, strict=True)]
            )
            if fail:
                fail.pop()
                raise RuntimeError("retry: the asks replay from the journal")
            return results

    async with runtime(root, Worker, Planner) as rt:
        assert await rt.ref(Planner, "p").ask(Planner.plan, [1, 2, 3]) == [10, 20, 30]
        for i in (1, 2, 3):
            assert await rt.ref(Worker, f"w{i}").ask(Worker.runs) == 1


async def test_gathered_steps_are_numbered_in_the_order_the_code_wrote_them(root: Path) -> None:
    """Gathered steps are numbered in the order the code wrote them, not the order they end."""
    delays = {"slow": 30.0, "fast": 1.0, "medium": 10.0}

    async def work(name: str) -> str:
        await anyio.sleep(delays[name])
        return name

    class Agent(actors.Actor, name="Agent"):
        async def fan(self) -> list[str]:
            results: list[str] = await self.gather(
                *[self.step(name, work, name) for name in delays]
            )
            await self.wait_for_event("never", timeout=60)
            return results

    async with runtime(root, Agent) as rt:
        ref = rt.ref(Agent, "a")
        await ref.send(Agent.fan)
        await anyio.sleep(40)
        (turn,) = await rt.turns(ref)
        assert [(s.number, s.name) for s in turn.steps] == [
            (0, "slow"),
            (1, "fast"),
            (2, "medium"),
            (3, "never"),
        ]


async def test_an_ask_to_itself_is_refused(root: Path) -> None:
    """An actor asking itself is refused (it would wait on its own turn forever)."""

    class Agent(actors.Actor, name="Agent"):
        async def loop(self) -> str:
            try:
                await self.ask(self.ref, Agent.loop)
            except RuntimeError as exc:
                return str(exc)
            return "no"

    async with runtime(root, Agent) as rt:
        assert "itself" in await rt.ref(Agent, "a").ask(Agent.loop)


# -- determinism and versioning ---------------------------------------------------------------


async def test_a_diverging_replay_stops_the_actor_with_nondeterminism_error(root: Path) -> None:
    """A replay that diverges from the journal stops the actor with NondeterminismError."""
    code = {"first": "fetch"}

    async def noop() -> None:
        return None

    class Agent(actors.Actor, name="Agent"):
        async def go(self) -> str:
            await self.step(code["first"], noop)
            await self.wait_for_event("go-on")
            return "done"

    async with runtime(root, Agent) as rt:
        ref = rt.ref(Agent, "a")
        await ref.send(Agent.go)
        await anyio.sleep(5)
    code["first"] = "search"  # a deploy changed the step while the turn was waiting
    async with runtime(root, Agent) as rt:
        ref = rt.ref(Agent, "a")
        await ref.signal("go-on")
        await anyio.sleep(5)
        assert rt.statistics().stopped == 1
        assert any("step 0 was recorded as step 'fetch'" in r for r in rt.reports)
        assert any("'search'" in r and "patched" in r for r in rt.reports)
        (turn,) = await rt.turns(ref)
        assert turn.steps[0].name == "fetch"  # the journal is kept
        code["first"] = "fetch"  # the fix
        await rt.resume(ref)
        await anyio.sleep(5)
        assert await rt.turns(ref) == []


async def test_patched_keeps_turns_in_flight_on_the_old_path(root: Path) -> None:
    """self.patched() keeps turns already in flight on the old code path, new ones on the new."""
    version = {"new": False}
    calls: list[str] = []

    async def record(what: str) -> None:
        calls.append(what)

    class Agent(actors.Actor, name="Agent"):
        async def go(self, tag: str) -> None:
            await self.step("a", record, f"{tag}:a")
            if version["new"] and self.patched("add-check"):
                await self.step("check", record, f"{tag}:check")
            await self.wait_for_event(f"go-{tag}")
            await self.step("b", record, f"{tag}:b")

    async with runtime(root, Agent) as rt:
        await rt.ref(Agent, "old").send(Agent.go, "old")
        await anyio.sleep(5)
    version["new"] = True
    async with runtime(root, Agent) as rt:
        await rt.ref(Agent, "new").send(Agent.go, "new")
        await anyio.sleep(5)
        await rt.ref(Agent, "old").signal("go-old")
        await rt.ref(Agent, "new").signal("go-new")
        await anyio.sleep(5)
        assert rt.statistics().stopped == 0
    assert sorted(calls) == sorted(["old:a", "old:b", "new:a", "new:check", "new:b"])


# -- turns in flight --------------------------------------------------------------------------


async def test_cancel_a_waiting_turn_dead_letters_it_and_the_actor_moves_on(root: Path) -> None:
    """Cancelling a waiting turn dead-letters it and the actor goes on to its next message."""

    class Agent(actors.Actor, name="Agent"):
        async def wait(self) -> str:
            self.kv["wrote"] = True
            await self.wait_for_event("never")
            return "no"

        async def next(self) -> str:
            return f"next ran, wrote={self.kv.get('wrote', False)}"

    async with runtime(root, Agent, idle_timeout=10) as rt:
        ref = rt.ref(Agent, "a")
        async with anyio.create_task_group() as tg:
            errors: list[BaseException] = []

            async def ask() -> None:
                try:
                    await ref.ask(Agent.wait)
                except actors.MessageFailedError as exc:
                    errors.append(exc)

            tg.start_soon(ask)
            await anyio.sleep(60)  # hibernated
            (turn,) = await rt.turns(ref)
            await rt.cancel_turn(ref, turn.seq, "the user gave up")
        assert isinstance(errors[0].__cause__, actors.TurnCancelledError)
        assert "the user gave up" in str(errors[0].__cause__)
        assert await ref.ask(Agent.next) == "next ran, wrote=False"
        (dead,) = await rt.dead_letters(ref)
        assert dead.error_type.endswith("TurnCancelledError")
        with pytest.raises(LookupError):
            await rt.cancel_turn(ref, 999)


async def test_restart_a_turn_from_a_step_reruns_the_later_steps_only(root: Path) -> None:
    """Restarting a turn from a step reruns that step and the later ones, not the earlier ones."""
    calls: list[str] = []

    async def record(what: str) -> str:
        calls.append(what)
        return what

    class Agent(actors.Actor, name="Agent"):
        async def go(self) -> list[str]:
            a = await self.step("a", record, "a")
            b = await self.step("b", record, "b")
            await self.wait_for_event("finish")
            return [a, b]

    async with runtime(root, Agent) as rt:
        ref = rt.ref(Agent, "a")
        async with anyio.create_task_group() as tg:
            results: list[list[str]] = []

            async def ask() -> None:
                results.append(await ref.ask(Agent.go))

            tg.start_soon(ask)
            await anyio.sleep(5)
            (turn,) = await rt.turns(ref)
            assert await rt.restart_turn(ref, turn.seq, from_step=1) == 2  # b and the wait
            await anyio.sleep(5)
            assert calls == ["a", "b", "b"]
            await ref.signal("finish")
        assert results == [["a", "b"]]


# -- batching ---------------------------------------------------------------------------------


async def test_a_quick_message_batched_before_a_long_step_is_answered_first(root: Path) -> None:
    """A quick message batched before a long step is answered before the step ends."""
    gate = anyio.Event()

    async def hold() -> None:
        await gate.wait()

    async def think() -> str:
        await anyio.sleep(3600)
        return "thought"

    class Agent(actors.Actor, name="Agent"):
        async def hold(self) -> None:
            await self.step("hold", hold)

        async def quick(self) -> None:
            self.kv["quick"] = True

        async def slow(self) -> str:
            return str(await self.step("think", think))

        @actors.query
        async def quick_committed(self) -> bool:
            return bool(self.kv.get("quick", False))

    async with runtime(root, Agent) as rt:
        ref = rt.ref(Agent, "a")
        await ref.send(Agent.hold)
        await anyio.sleep(1)
        await ref.send(Agent.quick)  # both queue behind hold: one batch of [quick, slow]
        await ref.send(Agent.slow)
        gate.set()
        await anyio.sleep(1)
        assert await ref.ask(Agent.quick_committed)  # not held for the hour of the slow step
        assert [t.method for t in await rt.turns(ref)] == ["slow"]


async def test_a_step_failure_escaping_the_handler_is_dead_lettered_without_retries(
    root: Path,
) -> None:
    """A StepFailedError that escapes the handler dead-letters the message without retries."""

    async def refuse() -> None:
        raise actors.NonRetryable("quota exceeded")

    class Agent(actors.Actor, name="Agent"):
        retry = actors.Retry(max_attempts=5, initial_delay=60)

        async def go(self) -> None:
            await self.step("call", refuse)

    async with runtime(root, Agent) as rt:
        ref = rt.ref(Agent, "a")
        start = anyio.current_time()
        with pytest.raises(actors.MessageFailedError) as info:
            await ref.ask(Agent.go)
        assert isinstance(info.value.__cause__, actors.StepFailedError)
        assert info.value.attempts == 1  # a replay would only raise the journaled failure again
        assert anyio.current_time() - start < 1
        assert rt.statistics().retries == 0


async def test_an_event_that_ends_a_wait_early_clears_its_wake_up_hint(root: Path) -> None:
    """An event that ends a timed wait early clears the wake-up hint the wait left."""

    class Agent(actors.Actor, name="Agent"):
        async def go(self) -> str:
            return str(await self.wait_for_event("e", timeout=3600))

    async with runtime(root, Agent) as rt:
        ref = rt.ref(Agent, "a")
        await ref.send(Agent.go)
        await anyio.sleep(1)
        assert rt.statistics().actors_with_timers == 1  # the deadline is a wake-up hint
        await ref.signal("e", "early")
        await anyio.sleep(1)
        assert rt.statistics().actors_with_timers == 0
        assert rt._engine.directory.next_wake_at() is None
