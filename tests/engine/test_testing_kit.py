"""actors.testing: crash injection at every step and await point, under virtual time."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import looptime
import pytest

import actors
from actors.testing import check_crashes


async def fake_llm(prompt: str) -> str:
    return f"summary of {prompt}"


class Researcher(actors.Actor, name="kit.Researcher"):
    async def research(self, topic: str) -> str:
        notes = await self.step("llm", fake_llm, topic)
        self.sql.execute("CREATE TABLE IF NOT EXISTS notes(topic TEXT, text TEXT)")
        self.sql.execute("INSERT INTO notes VALUES (?, ?)", (topic, notes))
        approved = await self.wait_for_event("approval", timeout=3600)
        await self.sleep(60)
        self.kv["status"] = "published" if approved else "discarded"
        return str(self.kv["status"])


async def research_scenario(rt: Any) -> None:
    ref = rt.ref(Researcher, "r1")
    await ref.options(idempotency_key="start").send(Researcher.research, "cats")
    await ref.signal("approval", True, idempotency_key="approve")
    result = await ref.options(idempotency_key="start").ask(Researcher.research, "cats")
    assert result == "published"


RESEARCH_POINTS = (
    "before step 'llm' (kit.Researcher 'r1', message 1, step 0)",
    "after step 'llm' (kit.Researcher 'r1', message 1, step 0)",
    "before wait 'approval' (kit.Researcher 'r1', message 1, step 1)",
    "after wait 'approval' (kit.Researcher 'r1', message 1, step 1)",
    "before wait 'sleep' (kit.Researcher 'r1', message 1, step 2)",
    "after wait 'sleep' (kit.Researcher 'r1', message 1, step 2)",
    "before commit (kit.Researcher 'r1', message 1)",
    "after commit (kit.Researcher 'r1', message 1)",
)


def test_a_correct_agent_survives_a_crash_at_every_point() -> None:
    """check_crashes passes an agent whose state is the same after a crash at every point."""
    report = check_crashes(research_scenario, types=[Researcher])
    assert report.points == RESEARCH_POINTS
    assert report.calls == {("kit.Researcher", "r1", "llm"): 1}
    state = report.state[("kit.Researcher", "r1")]
    assert state["notes"] == [("cats", "summary of cats")]


def test_the_same_scenario_survives_every_crash_on_asyncio() -> None:
    """check_crashes(backend="asyncio"): the same crash points, calls and state as on trio."""
    loops: list[asyncio.AbstractEventLoop] = []

    async def on_asyncio(rt: Any) -> None:
        loops.append(asyncio.get_running_loop())
        await research_scenario(rt)

    report = check_crashes(on_asyncio, types=[Researcher], backend="asyncio")
    assert len(loops) == 1 + 2 * len(RESEARCH_POINTS)  # crash-free; crashed, then rerun
    assert all(isinstance(loop, looptime.LoopTimeEventLoop) for loop in loops)  # virtual time
    assert report.points == RESEARCH_POINTS
    assert report.calls == {("kit.Researcher", "r1", "llm"): 1}
    state = report.state[("kit.Researcher", "r1")]
    assert state["notes"] == [("cats", "summary of cats")]


class Forgetful(actors.Actor, name="kit.Forgetful"):
    """A bug the kit must find: a random id drawn with uuid.uuid4() instead of self.uuid() is
    not journaled, so a turn that runs again after a crash stores another one."""

    async def work(self) -> None:
        self.kv["request_id"] = str(uuid.uuid4())
        await self.step("llm", fake_llm, "x")


async def forgetful_scenario(rt: Any) -> None:
    await rt.ref(Forgetful, "f").options(idempotency_key="w").ask(Forgetful.work)


def test_nondeterministic_state_is_reported_with_its_crash_point() -> None:
    """check_crashes reports state that differs after a crash, naming the crash point."""
    with pytest.raises(AssertionError, match=r"after a crash at point 2 \(after step 'llm'"):
        check_crashes(forgetful_scenario, types=[Forgetful], points=[2])


class Counter(actors.Actor, name="kit.Counter"):
    async def add(self) -> None:
        await self.step("audit", fake_llm, "add")
        self.kv["n"] = self.kv.get("n", 0) + 1


async def retrying_without_keys(rt: Any) -> None:
    await rt.ref(Counter, "c").ask(Counter.add)  # no idempotency key: a retry adds twice


def test_a_scenario_retried_without_idempotency_keys_is_caught() -> None:
    """check_crashes catches a scenario whose retried ask, without a key, applies twice."""
    with pytest.raises(AssertionError, match="after a crash at point 4"):
        check_crashes(retrying_without_keys, types=[Counter], points=[4])


def test_bad_crash_points_are_refused() -> None:
    """check_crashes refuses crash points the scenario never reaches."""
    with pytest.raises(ValueError, match="crash points"):
        check_crashes(research_scenario, types=[Researcher], points=[99])


def test_an_unknown_backend_is_refused() -> None:
    """check_crashes names the backends it runs on."""
    with pytest.raises(ValueError, match=r"one of \('trio', 'asyncio'\) \(got 'curio'\)"):
        check_crashes(research_scenario, types=[Researcher], backend="curio")  # type: ignore[arg-type]
