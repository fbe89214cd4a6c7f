"""actors.testing: self.uuid() and self.random() draw the same values in every run of a scenario."""

from __future__ import annotations

from typing import Any

import actors
from actors.testing import check_crashes
from runtime.steps import VALUE_SEED


async def fake_llm(prompt: str) -> str:
    return f"summary of {prompt}"


class Drawer(actors.Actor, name="seeds.Drawer"):
    async def draw(self, topic: str) -> list[Any]:
        ticket = str(self.uuid())
        score = self.random()
        summary = await self.step("llm", fake_llm, topic)
        later = str(self.uuid())  # drawn after the step: not journaled before the commit
        self.kv["ticket"] = ticket
        self.kv["score"] = score
        self.kv["later"] = later
        self.kv["summary"] = summary
        return [ticket, score, later]


def drawing_scenario(replies: list[list[Any]]) -> Any:
    async def scenario(rt: Any) -> None:
        ref = rt.ref(Drawer, "d")
        replies.append(await ref.options(idempotency_key="draw").ask(Drawer.draw, "cats"))
        replies.append(
            await rt.ref(Drawer, "e").options(idempotency_key="e").ask(Drawer.draw, "dogs")
        )

    return scenario


def test_an_agent_using_self_uuid_and_self_random_survives_a_crash_at_every_point() -> None:
    """An agent storing self.uuid() and self.random() values passes the kit at every crash point."""
    replies: list[list[Any]] = []
    report = check_crashes(drawing_scenario(replies), types=[Drawer])
    assert len(report.points) >= 8
    state = report.state[("seeds.Drawer", "d")]["_torpor_kv"]
    assert len(state) == 4
    first, second = replies[0], replies[1]
    assert all(reply in (first, second) for reply in replies)  # every run replied the same
    assert len({first[0], first[2], second[0], second[2]}) == 4  # each place draws its own
    assert first[1] != second[1]
    assert VALUE_SEED.get() is None  # seeded inside the kit's runs only


def test_the_seed_chooses_the_values_and_is_the_same_for_every_run() -> None:
    """check_crashes(seed=...) fixes the drawn values: same seed, same values; another, others."""
    runs: dict[object, list[list[Any]]] = {}
    for seed in (1, 1, 2):
        replies: list[list[Any]] = []
        check_crashes(drawing_scenario(replies), types=[Drawer], seed=seed, points=[2])
        assert all(reply in replies[:2] for reply in replies)
        runs.setdefault(seed, replies[:2])
        assert runs[seed] == replies[:2]
    assert runs[1] != runs[2]
