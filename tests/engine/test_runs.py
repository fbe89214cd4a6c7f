"""Runs beside the mailbox (DESIGN §9, issue 14): workflows, starts, handles, outcomes, values,
wait_any, cancel, restart and retention. Virtual time throughout; both backends."""

from __future__ import annotations

import dataclasses
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


calls: list[str] = []


class Refund(actors.Workflow, name="Refund"):
    async def run(self, order: str, amount: int) -> str:
        calls.append(f"run {order}")
        await self.set_value("stage", "awaiting approval")
        verdict = await self.wait_for_event("approval")
        await self.set_value("stage", "approved")
        return f"{order}:{amount}:{verdict}"

    @actors.query
    async def order(self) -> str:
        return "refund"


class Nap(actors.Workflow, name="Nap"):
    async def run(self, seconds: float) -> str:
        await self.sleep(seconds)
        return f"slept {seconds:g}"


class Broken(actors.Workflow, name="Broken"):
    retry = actors.Retry(max_attempts=2, initial_delay=1)

    async def run(self) -> str:
        raise ValueError("no such order")


class Agent(actors.Actor, name="Agent"):
    async def refund(self, order: str) -> str:
        return self.start(Refund.run, order, 10).id

    async def nap(self, seconds: float) -> str:
        return self.start(Nap.run, seconds).id

    async def broken(self) -> str:
        return self.start(Broken.run).id

    async def refund_of(self, order: str, amount: int) -> str:
        return self.start(Refund.run, order, amount, id=f"refund-{order}").id

    async def chat(self, text: str) -> str:
        return text.upper()

    async def nap_and_wait(self, seconds: float) -> str:
        run = self.start(Nap.run, seconds)
        return await run.result()

    async def on_run_done(self, run: actors.Run[Any], outcome: Any) -> None:
        shown = f"{type(outcome).__name__}" if isinstance(outcome, Exception) else outcome
        self.kv["done"] = [*self.kv.get("done", []), [run.id, shown]]

    @actors.query
    async def done(self) -> list[list[str]]:
        return list(self.kv.get("done", []))


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    calls.clear()


# -- starting ---------------------------------------------------------------------------------


async def test_a_run_started_from_outside_returns_its_result(root: Path) -> None:
    """rt.start starts a run; run.result() waits for it and returns what run returned."""
    async with runtime(root, Refund) as rt:
        run = await rt.start(Refund.run, "o-1", 30, id="r-1")
        assert run.id == "r-1"
        assert await run.wait_value("stage") == "awaiting approval"
        assert await run.signal("approval", "yes")
        assert await run.result() == "o-1:30:yes"
        assert await run.result() == "o-1:30:yes"  # a done run keeps its one outcome
        generated = await rt.start(Refund.run, "o-2", 5)
        assert len(generated.id) == 32 and generated.id != run.id


async def test_a_start_with_an_id_already_used_returns_that_run_and_starts_nothing(
    root: Path,
) -> None:
    """A second start with the same id is the same run; with other arguments it is refused."""
    async with runtime(root, Refund) as rt:
        first = await rt.start(Refund.run, "o-1", 30, id="r-1")
        again = await rt.start(Refund.run, "o-1", 30, id="r-1")
        assert again == first
        with pytest.raises(actors.IdempotencyKeyReusedError):
            await rt.start(Refund.run, "o-1", 99, id="r-1")
        await first.signal("approval", "ok")
        assert await again.result() == "o-1:30:ok"
        assert await rt.start(Refund.run, "o-1", 30, id="r-1") == first  # also once done
    assert calls == ["run o-1"]


async def test_a_handler_starting_a_used_id_with_other_arguments_is_not_retried(
    root: Path,
) -> None:
    """self.start with a used id and other arguments fails its message at once, not_retryable."""
    # No retry can make the id name another run: the message is dead-lettered on its first
    # attempt, as a refund asked again for another amount is (found by examples/support_agent).
    async with runtime(root, Agent, Refund) as rt:
        agent = rt.ref(Agent, "a")
        assert await agent.ask(Agent.refund_of, "o-1", 10) == "refund-o-1"
        with pytest.raises(actors.MessageFailedError) as caught:
            await agent.ask(Agent.refund_of, "o-1", 99)
        assert (caught.value.reason, caught.value.attempts) == ("not_retryable", 1)
        assert isinstance(caught.value.__cause__, actors.IdempotencyKeyReusedError)
        assert rt.statistics().retries == 0
        assert len(rt.runs(agent)) == 1


async def test_self_start_is_journaled_so_a_retried_turn_starts_one_run(root: Path) -> None:
    """A turn that starts a run and then fails is retried without starting a second run."""
    failures = [1]

    class Starter(actors.Actor, name="Starter"):
        retry = actors.Retry(max_attempts=3, initial_delay=1)

        async def go(self) -> str:
            run = self.start(Nap.run, 5)
            if failures:
                failures.pop()
                raise RuntimeError("the turn fails after the start")
            return run.id

    async with runtime(root, Starter, Nap) as rt:
        ref = rt.ref(Starter, "s")
        run_id = await ref.ask(Starter.go)
        assert [run.id for run in rt.runs(ref)] == [run_id]
        assert await rt.run(Nap, run_id).result() == "slept 5"


async def test_the_starter_keeps_serving_messages_while_its_run_waits(root: Path) -> None:
    """While a run waits for an approval, its starter answers other messages at once."""
    async with runtime(root, Agent, Refund) as rt:
        agent = rt.ref(Agent, "a")
        run_id = await agent.ask(Agent.refund, "o-7")
        run = rt.run(Refund, run_id)
        before = anyio.current_time()
        assert await agent.ask(Agent.chat, "still here") == "STILL HERE"
        assert await agent.ask(Agent.chat, "and here") == "AND HERE"
        assert anyio.current_time() == before  # nobody waited for the run
        assert (await run.status()).state == "waiting"
        await run.signal("approval", "granted")
        assert await run.result() == "o-7:10:granted"
        await anyio.sleep(1)
        assert await agent.ask(Agent.done) == [[run_id, "o-7:10:granted"]]


async def test_a_turn_waiting_for_a_run_is_woken_by_its_outcome_not_by_a_queued_message(
    root: Path,
) -> None:
    """A turn awaiting run.result() waits durably, hibernating, and ends with the run."""
    async with runtime(root, Agent, Nap, idle_timeout=5) as rt:
        agent = rt.ref(Agent, "a")
        t0 = anyio.current_time()
        assert await agent.ask(Agent.nap_and_wait, 3600) == "slept 3600"
        assert anyio.current_time() - t0 == pytest.approx(3600, abs=2)
        assert rt.statistics().hibernations >= 2  # the starter and the run slept meanwhile
        await anyio.sleep(1)
        (run,) = rt.runs(agent)
        assert await agent.ask(Agent.done) == [[run.id, "slept 3600"]]


async def test_a_failed_run_reaches_its_starter_and_its_waiters_as_its_error(root: Path) -> None:
    """A failed run raises RunFailedError from result() and gives it to on_run_done."""
    async with runtime(root, Agent, Broken) as rt:
        agent = rt.ref(Agent, "a")
        run = rt.run(Broken, await agent.ask(Agent.broken))
        with pytest.raises(actors.RunFailedError) as caught:
            await run.result()
        assert caught.value.error_type == "ValueError"
        assert caught.value.error_message == "no such order"
        assert isinstance(caught.value.__cause__, actors.StoredError)
        status = await run.status()
        assert (status.state, status.error) == ("failed", "ValueError: no such order")
        await anyio.sleep(1)
        assert await agent.ask(Agent.done) == [[run.id, "RunFailedError"]]


# -- values, status, handles ------------------------------------------------------------------


async def test_values_are_read_while_the_run_goes_on_and_never_recorded_twice(root: Path) -> None:
    """set_value is read at once without waking the run, and a replay does not record it."""
    counter = [0]
    failures = [1]

    class Count(actors.Workflow, name="Count"):
        retry = actors.Retry(max_attempts=3, initial_delay=1)

        async def run(self) -> int:
            counter[0] += 1
            await self.set_value("seen", counter[0])  # journaled: a replay skips it
            if failures:
                failures.pop()
                raise RuntimeError("the turn fails after the value")
            await self.wait_for_event("go")
            return counter[0]

    async with runtime(root, Count, idle_timeout=5) as rt:
        run = await rt.start(Count.run, id="c")
        with pytest.raises(LookupError):
            await run.get_value("other")
        assert await run.wait_value("seen") == 1
        await anyio.sleep(60)  # the run hibernates in its wait
        assert rt.statistics().awake == 0
        assert await run.get_value("seen") == 1
        assert rt.statistics().awake == 0  # read from its files, not woken
        await run.signal("go")
        assert await run.result() == 3  # ran: first, retried, replayed after its hibernation
        assert await run.get_value("seen") == 1  # recorded once


async def test_wait_value_waits_for_the_first_value(root: Path) -> None:
    """wait_value returns once the run records the value; a cancel scope bounds it."""

    class Later(actors.Workflow, name="Later"):
        async def run(self) -> None:
            await self.sleep(30)
            await self.set_value("ready", {"at": 30})
            await self.wait_for_event("end")

    async with runtime(root, Later) as rt:
        run = await rt.start(Later.run, id="l")
        with anyio.move_on_after(10) as scope:
            await run.wait_value("ready")
        assert scope.cancelled_caught
        assert await run.wait_value("ready") == {"at": 30}
        assert anyio.current_time() == pytest.approx(30, abs=1)


async def test_wait_value_of_a_run_done_without_it_does_not_wait_forever(root: Path) -> None:
    """wait_value on a run that finished without recording the value ends (it never will)."""
    # Found by examples/checkout.py: a web handler that waits for the order id hangs if the run
    # ends (a sold-out branch that forgot set_value, a failure before it) without recording it.

    class Quiet(actors.Workflow, name="Quiet"):
        async def run(self) -> str:
            return "no value"

    async with runtime(root, Quiet) as rt:
        run = await rt.start(Quiet.run, id="q")
        assert await run.result() == "no value"
        with anyio.move_on_after(3600) as scope, pytest.raises(LookupError):
            await run.wait_value("ready")
        assert not scope.cancelled_caught


async def test_a_starter_waits_durably_for_its_runs_value_in_a_handler(root: Path) -> None:
    """Inside the starter's handler, run.wait_value is a durable wait, also inside wait_any."""

    class Later(actors.Workflow, name="Later"):
        async def run(self, seconds: float) -> None:
            await self.sleep(seconds)
            await self.set_value("ready", f"after {seconds:g}")
            await self.wait_for_event("end")

    class Watcher(actors.Actor, name="Watcher"):
        async def observe(self, seconds: float, patience: float) -> list[Any]:
            run = self.start(Later.run, seconds)
            index, value = await self.wait_any(run.wait_value("ready"), self.sleep(patience))
            return [index, value]

    async with runtime(root, Later, Watcher, idle_timeout=5) as rt:
        watcher = rt.ref(Watcher, "w")
        assert await watcher.ask(Watcher.observe, 60, 600) == [0, "after 60"]
        assert anyio.current_time() == pytest.approx(60, abs=1)
        assert await watcher.ask(Watcher.observe, 600, 60) == [1, None]


async def test_a_starters_wait_value_of_a_run_done_without_it_ends(root: Path) -> None:
    """A starter's durable wait_value ends when the run finishes without recording the value."""
    # Until then the starter's turn holds the actor: its later messages queue behind it forever.

    class Quiet(actors.Workflow, name="Quiet"):
        async def run(self) -> str:
            return "no value"

    class Watcher(actors.Actor, name="Watcher"):
        async def observe(self) -> Any:
            return await self.start(Quiet.run).wait_value("ready")

    async with runtime(root, Quiet, Watcher) as rt:
        with anyio.move_on_after(24 * 3600) as scope, pytest.raises(actors.MessageFailedError):
            await rt.ref(Watcher, "w").ask(Watcher.observe)
        assert not scope.cancelled_caught


async def test_status_says_where_the_run_is_with_its_steps(root: Path) -> None:
    """status() goes pending/waiting (for what)/done, with the run's steps, without waking it."""
    async with runtime(root, Refund, idle_timeout=5) as rt:
        run = await rt.start(Refund.run, "o", 1, id="r")
        await anyio.sleep(60)
        status = await run.status()
        assert rt.statistics().awake == 0
        assert status.state == "waiting"
        assert status.waiting_for == ("event 'approval'",)
        assert [(s.kind, s.name, s.status) for s in status.steps] == [
            ("value", "stage", "done"),
            ("event", "approval", "waiting"),
        ]
        await run.signal("approval", "y")
        await run.result()
        done = await run.status()
        assert (done.state, done.waiting_for, done.error) == ("done", (), None)
        assert done.finished_at is not None
        assert [s.status for s in done.steps] == ["done", "done", "done"]


async def test_rt_run_and_rt_runs_find_existing_runs(root: Path) -> None:
    """rt.run gives the handle of an existing run; rt.runs lists a starter's runs."""
    async with runtime(root, Agent, Refund) as rt:
        agent = rt.ref(Agent, "a")
        ids = [await agent.ask(Agent.refund, f"o-{i}") for i in range(3)]
        assert sorted(run.id for run in rt.runs(agent)) == sorted(ids)
        outside = await rt.start(Refund.run, "x", 1, id="outside")
        assert rt.runs() == [outside]
        assert rt.run(Refund, ids[0]).id == ids[0]
        with pytest.raises(actors.ActorNotFoundError):
            rt.run(Refund, "nope")
        with pytest.raises(TypeError):
            rt.run(Agent, ids[0])


def test_a_workflow_definition_is_checked_when_the_class_is_made() -> None:
    """A workflow needs run; its other handlers must be queries; run may not take 'id'."""
    with pytest.raises(TypeError, match="needs an `async def run"):

        class NoRun(actors.Workflow, name="NoRun"):
            pass

    with pytest.raises(TypeError, match="wait behind it"):

        class Chatty(actors.Workflow, name="Chatty"):
            async def run(self) -> None: ...

            async def poke(self) -> None: ...

    with pytest.raises(TypeError, match="'id'"):

        class Named(actors.Workflow, name="Named"):
            async def run(self, id: str) -> None: ...


def test_a_workflow_whose_run_is_renamed_is_refused_with_the_reason() -> None:
    """@actors.handler(name=...) on a workflow's run says run keeps its name; retry= is fine."""
    # It said "needs an `async def run(self, ...)`" of a class that has one.
    with pytest.raises(TypeError, match=r"renamed 'execute'.*keeps the name 'run'"):

        class Renamed(actors.Workflow, name="Renamed"):
            @actors.handler(name="execute")
            async def run(self) -> None: ...

    class Patient(actors.Workflow, name="Patient"):
        @actors.handler(retry=actors.Retry(max_attempts=2))
        async def run(self) -> None: ...

    assert Patient.__torpor_spec__.handlers["run"].retry == actors.Retry(max_attempts=2)


# -- wait_any ---------------------------------------------------------------------------------


class Approval(actors.Workflow, name="Approval"):
    async def run(self) -> list[Any]:
        index, value = await self.wait_any(
            self.sleep(60), self.wait_for_event("approve"), self.wait_for_event("reject")
        )
        return [index, value]


async def test_wait_any_returns_the_first_wait_to_end_with_its_value(root: Path) -> None:
    """wait_any returns which wait ended first, with its value (the sleep, if nothing came)."""
    async with runtime(root, Approval) as rt:
        rejected = await rt.start(Approval.run, id="a")
        await anyio.sleep(10)
        await rejected.signal("reject", "too expensive")
        assert await rejected.result() == [2, "too expensive"]
        timed_out = await rt.start(Approval.run, id="b")
        assert await timed_out.result() == [0, None]
        assert anyio.current_time() == pytest.approx(70, abs=1)
        status = await timed_out.status()
        assert [s.status for s in status.steps] == ["done", "abandoned", "abandoned", "done"]


async def test_wait_any_is_journaled_so_a_replay_returns_the_same_winner(root: Path) -> None:
    """A turn replayed after its wait_any ended gets the same winner, at once."""
    failures = [1]

    class Once(actors.Workflow, name="Once"):
        retry = actors.Retry(max_attempts=2, initial_delay=1)

        async def run(self) -> list[Any]:
            index, value = await self.wait_any(self.wait_for_event("a"), self.sleep(100))
            if failures:
                failures.pop()
                raise RuntimeError("fail after the wait")
            return [index, value, anyio.current_time()]

    async with runtime(root, Once) as rt:
        run = await rt.start(Once.run, id="o")
        await anyio.sleep(5)
        await run.signal("a", "first")
        index, value, ended = await run.result()
        assert (index, value) == (0, "first")
        assert ended == pytest.approx(6, abs=1)  # the replay did not wait for the sleep


async def test_wait_any_over_an_ask_and_a_run_result(root: Path) -> None:
    """wait_any takes asks and run results: the first reply or outcome wins."""

    class Oracle(actors.Actor, name="Oracle"):
        async def think(self, seconds: float) -> str:
            await self.sleep(seconds)
            return f"thought {seconds:g}"

    class Race(actors.Actor, name="Race"):
        async def go(self, think: float, nap: float) -> list[Any]:
            oracle = self.ref_to(Oracle, "o")
            run = self.start(Nap.run, nap)
            index, value = await self.wait_any(self.ask(oracle, Oracle.think, think), run.result())
            return [index, value]

    async with runtime(root, Oracle, Race, Nap) as rt:
        race = rt.ref(Race, "r")
        assert await race.ask(Race.go, 10, 100) == [0, "thought 10"]
        assert await race.ask(Race.go, 100, 10) == [1, "slept 10"]


async def test_wait_any_refuses_what_is_not_a_durable_wait(root: Path) -> None:
    """wait_any takes only durable waits not awaited yet; anything else is a TypeError."""

    async def plain() -> None:
        return None

    class Picky(actors.Actor, name="Picky"):
        async def go(self) -> list[str]:
            refused = []
            coroutine = plain()
            try:
                self.wait_any(coroutine)
            except TypeError as exc:
                refused.append(str(exc).split(";")[0])
            coroutine.close()
            try:
                self.wait_any(self.step("s", plain))
            except TypeError as exc:
                refused.append(str(exc).split(";")[0])
            return refused

    async with runtime(root, Picky) as rt:
        refused = await rt.ref(Picky, "p").ask(Picky.go)
        assert len(refused) == 2
        assert all(text.startswith("wait_any takes durable waits") for text in refused)


# -- control ----------------------------------------------------------------------------------


async def test_cancel_interrupts_the_step_in_flight_and_cascades_to_its_runs(root: Path) -> None:
    """run.cancel() interrupts the step in flight and cancels the runs it started too."""
    started = anyio.Event()

    async def forever() -> None:
        started.set()
        await anyio.sleep_forever()

    class Child(actors.Workflow, name="Child"):
        async def run(self) -> None:
            await self.wait_for_event("never")

    class Parent(actors.Workflow, name="Parent"):
        async def run(self) -> None:
            self.start(Child.run, id="child")
            await self.step("forever", forever)

    async with runtime(root, Parent, Child) as rt:
        parent = await rt.start(Parent.run, id="parent")
        await started.wait()
        assert await parent.cancel()
        with pytest.raises(actors.RunCancelledError):
            await parent.result()
        child = rt.run(Child, "child")
        with pytest.raises(actors.RunCancelledError):
            await child.result()
        assert (await child.status()).state == "cancelled"
        assert not await parent.cancel()  # finished: nothing to cancel


async def test_deleting_a_run_that_has_not_finished_tells_its_starter(root: Path) -> None:
    """ref.delete() of a waiting run ends it cancelled for its starter: no turn waits forever."""
    # The starter's turn waited in run.result() for an outcome that no deletion ever sent: the
    # actor held its mailbox for good, and on_run_done never came.

    class Patron(actors.Actor, name="Patron"):
        async def refund_and_wait(self) -> str:
            try:
                return await self.start(Refund.run, "o", 1, id="r").result()
            except actors.RunCancelledError as exc:
                return f"cancelled: {exc.error_message}"

        async def on_run_done(self, run: actors.Run[Any], outcome: Any) -> None:
            self.kv["done"] = [run.id, type(outcome).__name__]

        @actors.query
        async def done(self) -> Any:
            return self.kv.get("done")

    async with runtime(root, Patron, Refund, idle_timeout=5) as rt:
        patron = rt.ref(Patron, "p")
        answers: list[str] = []

        async def ask() -> None:
            answers.append(await patron.ask(Patron.refund_and_wait))

        with anyio.move_on_after(3600):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ask)
                await anyio.sleep(60)  # both hibernate: the run waits for its approval
                run = rt.run(Refund, "r")
                assert (await run.status()).state == "waiting"
                await run.ref.delete()
        (answer,) = answers
        assert answer.endswith("was cancelled: the run was deleted before it finished")
        await anyio.sleep(1)
        assert await patron.ask(Patron.done) == ["r", "RunCancelledError"]
        assert rt.runs(patron) == []
        with pytest.raises(actors.ActorNotFoundError):
            rt.run(Refund, "r")
        with pytest.raises(actors.ActorNotFoundError, match="never started, or deleted"):
            await run.result()  # (it said "was not started")


async def test_a_run_that_destroys_itself_tells_its_starter_first(root: Path) -> None:
    """self.destroy() in run: the starter gets the result and on_run_done, then the run goes."""

    class Once(actors.Workflow, name="Once"):
        async def run(self) -> str:
            await self.sleep(5)
            self.destroy()
            return "gone"

    class Boss(actors.Actor, name="Boss"):
        async def go(self) -> str:
            return await self.start(Once.run, id="once").result()

        async def on_run_done(self, run: actors.Run[Any], outcome: Any) -> None:
            self.kv["done"] = [run.id, outcome]

        @actors.query
        async def done(self) -> Any:
            return self.kv.get("done")

    async with runtime(root, Boss, Once) as rt, rt.open_lifecycle_events() as events:
        boss = rt.ref(Boss, "b")
        assert await boss.ask(Boss.go) == "gone"
        async for event in events:  # (its files go in a worker thread: wait for the event)
            if (event.key, event.state) == ("once", "deleted"):
                break
        assert await boss.ask(Boss.done) == ["once", "gone"]
        assert rt.runs(boss) == []
        with pytest.raises(actors.ActorNotFoundError):
            rt.run(Once, "once")


async def test_a_terminal_error_fails_the_run_at_once_and_restart_runs_it_again(
    root: Path,
) -> None:
    """TerminalError in a run's step fails it without retries; restart(0) runs the step again."""
    attempts: list[int] = []

    async def charge() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise actors.TerminalError("card declined")
        return "charged"

    class Pay(actors.Workflow, name="Pay"):
        retry = actors.Retry(max_attempts=5, initial_delay=1)

        async def run(self) -> str:
            return str(await self.step("charge", charge))

    class Racer(actors.Actor, name="Racer"):
        async def race(self, run_id: str) -> str:
            run = self.start(Pay.run, id=run_id)
            try:
                await self.wait_any(run.result(), self.sleep(3600))
            except actors.RunFailedError as exc:
                return exc.error_type
            return "no error"

    async with runtime(root, Pay, Racer) as rt:
        assert await rt.ref(Racer, "r").ask(Racer.race, "p") == "TerminalError"
        assert anyio.current_time() < 60  # not retried, nor waiting for the sleep
        run = rt.run(Pay, "p")
        status = await run.status()
        assert (status.state, status.error) == ("failed", "TerminalError: card declined")
        await run.restart(from_step=0)
        assert await run.result() == "charged"
        assert len(attempts) == 2


@dataclasses.dataclass
class Parcel:
    ref: str
    grams: int


actors.register_type(Parcel, name="tests.Parcel")


async def test_a_run_takes_and_returns_typed_values(root: Path) -> None:
    """A dataclass argument of run is checked at rt.start and comes back typed in values/result."""

    class Ship(actors.Workflow, name="Ship"):
        async def run(self, parcel: Parcel) -> Parcel:
            await self.set_value("parcel", parcel)
            await self.wait_for_event("go")
            return Parcel(parcel.ref, parcel.grams + 10)

    async with runtime(root, Ship) as rt:
        with pytest.raises(TypeError):
            await rt.start(Ship.run, {"ref": "x", "grams": 1}, id="bad")
        with pytest.raises(actors.ActorNotFoundError):
            rt.run(Ship, "bad")  # refused before anything was stored
        run = await rt.start(Ship.run, Parcel("x", 1), id="s")
        assert await run.wait_value("parcel") == Parcel("x", 1)
        assert (await run.status()).state == "waiting"
        await run.signal("go")
        assert await run.result() == Parcel("x", 11)


async def test_restart_runs_a_failed_run_again_from_a_step(root: Path) -> None:
    """restart(from_step) keeps earlier steps and reruns the rest; a done run cannot."""
    effects: list[str] = []
    broken = [True]

    async def effect(name: str) -> str:
        effects.append(name)
        if name == "pay" and broken[0]:
            raise actors.NonRetryable("card declined")
        return name

    class Order(actors.Workflow, name="Order"):
        retry = actors.Retry(max_attempts=1)

        async def run(self) -> str:
            await self.step("reserve", effect, "reserve")
            return str(await self.step("pay", effect, "pay"))

    async with runtime(root, Order) as rt:
        run = await rt.start(Order.run, id="o")
        with pytest.raises(actors.RunFailedError):
            await run.result()
        broken[0] = False
        await run.restart(from_step=1)
        assert await run.result() == "pay"
        assert effects == ["reserve", "pay", "pay"]
        assert (await run.status()).restarts == 1
        with pytest.raises(actors.RunStateError):
            await run.restart()


async def test_finished_runs_are_deleted_after_their_retention(root: Path) -> None:
    """A finished run's files and handle go once run_retention has passed; running ones stay."""
    async with (
        runtime(root, Nap, Refund, run_retention=3600, idle_timeout=5) as rt,
        rt.open_lifecycle_events() as events,
    ):
        nap = await rt.start(Nap.run, 10, id="nap")
        waiting = await rt.start(Refund.run, "o", 1, id="waiting")
        await nap.result()
        await anyio.sleep(1800)
        assert (await nap.status()).state == "done"
        async for event in events:  # (its files go in a worker thread: wait for the event)
            if (event.key, event.state) == ("nap", "deleted"):
                break
        assert anyio.current_time() >= 3600
        with pytest.raises(actors.ActorNotFoundError):
            rt.run(Nap, "nap")
        assert (await waiting.status()).state == "waiting"
    async with runtime(root, Nap, Refund, run_retention=3600) as rt:
        with pytest.raises(actors.ActorNotFoundError):
            rt.run(Nap, "nap")
        assert rt.run(Refund, "waiting").id == "waiting"


async def test_a_run_whose_starter_cannot_take_its_outcome_holds_up_no_other_retention(
    root: Path,
) -> None:
    """Retention keeps a run until its outcome left, and deletes other finished runs on time."""
    # The sweep deleted one run at a time: one whose outcome could not leave held up all.
    async with runtime(root, Agent, Nap, run_retention=600, idle_timeout=5) as rt:
        engine = rt._engine
        deliver = engine.deliver
        refusing = [True]

        async def starter_refuses(spec: Any, *args: Any) -> Any:
            if refusing[0] and spec.name == "Agent":
                raise RuntimeError("the starter cannot take it now")
            return await deliver(spec, *args)

        engine.deliver = starter_refuses  # (the run's outbox delivers through it)
        agent = rt.ref(Agent, "a")
        run_id = await agent.ask(Agent.nap, 1)
        other = await rt.start(Nap.run, 1, id="other")
        await other.result()
        await anyio.sleep(700)
        statuses = {info.key: info.status for info in await rt.actors(Nap)}
        assert statuses.get("other", "deleting") == "deleting"  # (gone, or going)
        assert statuses[run_id] == "deleting"  # its outcome is still in its outbox
        refusing[0] = False
        await anyio.sleep(120)
        assert await agent.ask(Agent.done) == [[run_id, "slept 1"]]


@pytest.mark.parametrize("retention", [600, 620, 640])  # (awake, or hibernated, at expiry)
async def test_retention_never_deletes_an_outcome_its_starter_has_not_taken(
    root: Path, retention: float
) -> None:
    """A run past its retention whose outcome is still in its outbox delivers it, then goes."""
    # A run that hibernated between two delivery attempts was deleted with its outcome: the
    # starter's on_run_done never came (and a turn waiting in run.result() waited forever).
    async with runtime(root, Agent, Nap, run_retention=retention, idle_timeout=5) as rt:
        engine = rt._engine
        deliver = engine.deliver
        refusing = [True]

        async def starter_refuses(spec: Any, *args: Any) -> Any:
            if refusing[0] and spec.name == "Agent":
                raise RuntimeError("the starter cannot take it now")
            return await deliver(spec, *args)

        engine.deliver = starter_refuses  # (the run's outbox delivers through it)
        agent = rt.ref(Agent, "a")
        run_id = await agent.ask(Agent.nap, 1)
        await anyio.sleep(700)
        refusing[0] = False
        await anyio.sleep(120)
        assert await agent.ask(Agent.done) == [[run_id, "slept 1"]]
        assert all(info.status == "deleting" for info in await rt.actors(Nap))  # (or gone)


@pytest.mark.real_clock
async def test_retention_deletes_a_finished_run_from_the_replica_too(tmp_path: Path) -> None:
    """With a replica, a finished run goes after its retention, and no restore brings it back."""
    replica = actors.DirectoryStore(tmp_path / "replica")
    async with (
        runtime(tmp_path / "a", Nap, replica=replica, run_retention=0.2) as rt,
        rt.open_lifecycle_events() as events,
    ):
        nap = await rt.start(Nap.run, 0, id="nap")
        await nap.result()
        with anyio.fail_after(20):  # (a bound on a failure, not a timing)
            async for event in events:
                if (event.key, event.state) == ("nap", "deleted"):
                    break
        with pytest.raises(actors.ActorNotFoundError):
            rt.run(Nap, "nap")
        await rt.replicated()
    async with runtime(tmp_path / "b", Nap, replica=replica) as rt:
        with pytest.raises(actors.ActorNotFoundError):
            rt.run(Nap, "nap")


@pytest.mark.real_clock
async def test_a_run_goes_on_on_a_fresh_machine_restored_from_the_replica(tmp_path: Path) -> None:
    """A waiting run replicated to a store resumes on an empty machine and tells its starter."""
    replica = actors.DirectoryStore(tmp_path / "replica")
    told = anyio.Event()

    class Boss(actors.Actor, name="Boss"):
        async def refund(self, order: str) -> str:
            return self.start(Refund.run, order, 10).id

        async def on_run_done(self, run: actors.Run[Any], outcome: Any) -> None:
            self.kv["told"] = [run.id, outcome]
            told.set()

        @actors.query
        async def told(self) -> Any:
            return self.kv.get("told")

    async with runtime(tmp_path / "a", Boss, Refund, replica=replica) as rt:
        run_id = await rt.ref(Boss, "b").ask(Boss.refund, "o-9")
        assert await rt.run(Refund, run_id).wait_value("stage") == "awaiting approval"
        await rt.replicated()
    async with runtime(tmp_path / "b", Boss, Refund, replica=replica) as rt:
        run = rt.run(Refund, run_id)
        assert (await run.status()).state in ("waiting", "running")
        assert await run.get_value("stage") == "awaiting approval"
        await run.signal("approval", "yes")
        assert await run.result() == "o-9:10:yes"
        with anyio.fail_after(10):
            await told.wait()  # on_run_done follows the run's commit
        assert await rt.ref(Boss, "b").ask(Boss.told) == [run_id, "o-9:10:yes"]


billed: list[str] = []


async def charge(order: str) -> str:
    billed.append(order)
    return f"receipt-{order}"


class PaidRefund(actors.Workflow, name="PaidRefund"):
    async def run(self, order: str) -> str:
        await self.set_value("stage", "waiting")
        approved = await self.wait_for_event("approve")
        receipt = await self.step("charge", charge, order) if approved else "none"
        await self.set_value("stage", "done")
        return str(receipt)


class Clerk(actors.Actor, name="Clerk"):
    async def refund(self, order: str) -> str:
        run = self.start(PaidRefund.run, order, id=f"refund-{order}")
        self.kv["started"] = run.id
        return run.id

    async def on_run_done(self, run: actors.Run[Any], outcome: Any) -> None:
        self.kv["outcomes"] = [*self.kv.get("outcomes", []), [run.id, outcome]]


async def paid_refund(rt: actors.Runtime) -> None:
    clerk = rt.ref(Clerk, "c")
    run_id = await clerk.options(idempotency_key="k").ask(Clerk.refund, "o1")
    run = rt.run(PaidRefund, run_id)
    await run.signal("approve", True, idempotency_key="approve")
    assert await run.result() == "receipt-o1"


def test_a_crash_at_every_point_of_a_run_changes_nothing(backend: str) -> None:
    """A crash at each point of a start, a run and its outcome ends as the crash-free run."""
    from actors.testing import check_crashes

    report = check_crashes(paid_refund, types=[Clerk, PaidRefund], backend=backend)  # type: ignore[arg-type]
    assert len(report.points) >= 12
    assert any("step 'PaidRefund.run'" in point for point in report.points)
    assert report.calls == {("PaidRefund", "refund-o1", "charge"): 1}
