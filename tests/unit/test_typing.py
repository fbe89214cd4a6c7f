"""The public API typed end to end: a type checker catches wrong arguments to ``send``, ``ask``
and ``step`` and knows what ``ask`` and ``step`` return; the untyped spellings they replace keep
working, with a DeprecationWarning."""

from __future__ import annotations

import re
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mypy import api as mypy_api

import actors

ROOT = Path(__file__).resolve().parents[2]

#: A user's program, checked by mypy once for every test below. A line ending in
#: ``# error: <code>`` must get that error (and only such lines get errors); a line with
#: ``reveal_type(...)  # type: <T>`` must reveal ``<T>``.
PROGRAM = textwrap.dedent(
    """
    from typing import reveal_type

    import actors


    class Counter(actors.Actor):
        async def on_create(self, owner: str) -> None:
            self.kv["owner"] = owner

        async def add(self, n: int, *, note: str = "") -> int:
            return n

        @actors.query
        async def total(self) -> int:
            return 0

        @actors.handler(name="chat", retry=actors.Retry(max_attempts=None), validator=bool)
        async def reply(self, text: str) -> str:
            return text

        @actors.handler
        async def plain(self, n: int) -> int:
            return n


    class Other(actors.Actor):
        async def go(self, text: str) -> str:
            counter = self.ref_to(Counter, "c")
            reveal_type(await self.ask(counter, Counter.add, 1))  # type: int
            reveal_type(await self.step("sync", count_words, text))  # type: list[int]
            reveal_type(await self.step("async", fetch, text))  # type: dict[str, int]
            reveal_type(await self.step("r", actors.Retry(), fetch, text))  # type: dict[str, int]
            self.send(counter, Counter.add, 1, note="ok")
            self.send(counter, Counter.add, "1")  # error: call-overload
            self.send(counter, "add", "1")  # a name: not checked
            await self.ask(counter, Other.go, "x")  # error: call-overload
            await self.step("wrong", fetch, 1)  # error: call-overload
            await self.step("missing", count_words)  # error: call-overload
            await self.step("old", fetch, text, retry=actors.Retry())  # error: call-arg
            return text


    class Flow(actors.Workflow):
        async def run(self, order: str) -> int:
            return len(order)


    class Starter(actors.Actor):
        async def go(self) -> int:
            run = self.start(Flow.run, "o-1", id="r")
            reveal_type(run)  # type: runtime.run.Run[int]
            reveal_type(await run.result())  # type: int
            index, _value = await self.wait_any(run.result(), self.sleep(1))
            reveal_type(index)  # type: int
            return index


    async def starts(rt: actors.Runtime) -> None:
        run = await rt.start(Flow.run, "o-2", id="r2")
        reveal_type(await run.result())  # type: int
        reveal_type(await run.status())  # type: runtime.run.RunStatus


    def count_words(text: str) -> list[int]:
        return [len(text.split())]


    async def fetch(url: str) -> dict[str, int]:
        return {url: 1}


    async def client(rt: actors.Runtime) -> None:
        ref = rt.ref(Counter, "c")
        reveal_type(ref)  # type: runtime.ref.Ref[snippet.Counter]
        reveal_type(await ref.ask(Counter.add, 1))  # type: int
        reveal_type(await ref.ask(Counter.total))  # type: int
        reveal_type(await ref.ask(Counter.reply, "hi"))  # type: str
        reveal_type(await ref.ask(Counter.plain, 1))  # type: int
        await ref.send(Counter.reply, 1)  # error: call-overload
        reveal_type(await ref.ask("add", 1))  # type: Any
        reveal_type(await ref.options(idempotency_key="k").ask(Counter.add, 2))  # type: int
        await ref.send(Counter.add, 1, note="x")
        await ref.send("add", 1, idempotency_key="k")
        await ref.send(Counter.add, "1")  # error: call-overload
        await ref.send(Counter.add, 1, colour="red")  # error: call-arg
        await ref.ask(Other.go, "x")  # error: call-overload
        await ref.options(idempotency_key="k").send(Counter.add, "1")  # error: call-overload
        await ref.send(Counter.add, 1, idempotency_key="k")  # error: call-arg
        await rt.ref(Other, "o").send(Other.go, "x")
    """
)


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[str]]:
    """mypy's messages on PROGRAM, by line number."""
    folder = tmp_path_factory.mktemp("typing")
    (folder / "snippet.py").write_text(PROGRAM)
    out, err, _status = mypy_api.run(
        [
            "--strict",
            "--no-error-summary",
            "--show-error-codes",
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            str(folder / "snippet.py"),
        ]
    )
    assert not err, err
    found: dict[int, list[str]] = {}
    for line in out.splitlines():
        match = re.match(r".*snippet\.py:(\d+): (error|note): (.*)", line)
        if match:
            found.setdefault(int(match[1]), []).append(f"{match[2]}: {match[3]}")
    return found


def expected(marker: str) -> dict[int, str]:
    """What PROGRAM expects after ``# <marker>: ``, by line number."""
    return {
        n: line.split(f"# {marker}: ", 1)[1].strip()
        for n, line in enumerate(PROGRAM.splitlines(), 1)
        if f"# {marker}: " in line
    }


def test_a_type_checker_reports_wrong_arguments_to_send_ask_and_step(
    mypy_output: dict[int, list[str]],
) -> None:
    """A wrong argument to send/ask/step is a type error, at its line; a right one is none."""
    errors = {
        n: [m for m in messages if m.startswith("error:")] for n, messages in mypy_output.items()
    }
    errors = {n: m for n, m in errors.items() if m}
    wanted = expected("error")
    assert set(errors) == set(wanted), errors
    for n, code in wanted.items():
        assert any(m.endswith(f"[{code}]") for m in errors[n]), (n, errors[n])


def test_a_type_checker_knows_what_ask_and_step_return(
    mypy_output: dict[int, list[str]],
) -> None:
    """ask returns the handler's result type, a step its function's (awaited if async)."""
    for n, kind in expected("type").items():
        assert f'note: Revealed type is "{kind}"' in mypy_output.get(n, []), (n, mypy_output)


# -- the deprecated spellings -----------------------------------------------------------------


class Counter(actors.Actor, name="typing.Counter"):
    async def add(self, n: int) -> int:
        total: int = self.kv.get("total", 0) + n
        self.kv["total"] = total
        return total


async def test_idempotency_key_among_a_handlers_arguments_still_works_and_warns(
    root: Path,
) -> None:
    """ref.send/ask(Counter.add, ..., idempotency_key=k) dedups as before, and says the new form."""
    async with actors.open_runtime(root, types=[Counter]) as rt:
        ref: Any = rt.ref(Counter, "c")  # Any: the old form is a type error now
        with pytest.warns(DeprecationWarning, match=r"ref\.options\(idempotency_key=\.\.\.\)"):
            await ref.send(Counter.add, 5, idempotency_key="k1")
        with pytest.warns(DeprecationWarning, match=r"\.ask\(Counter\.add, \.\.\.\)"):
            assert await ref.ask(Counter.add, 5, idempotency_key="k1") == 5  # the send's
        assert await ref.options(idempotency_key="k2").ask(Counter.add, 1) == 6
        assert await ref.options(idempotency_key="k2").ask(Counter.add, 1) == 6


async def test_idempotency_key_with_a_handlers_name_is_not_deprecated(root: Path) -> None:
    """With a handler's name (tools, the CLI), idempotency_key= stays the plain form."""
    async with actors.open_runtime(root, types=[Counter]) as rt:
        ref = rt.ref(Counter, "c")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert await ref.ask("add", 5, idempotency_key="k") == 5
            assert await ref.ask("add", 5, idempotency_key="k") == 5


async def test_a_step_takes_its_retry_policy_before_its_function(root: Path) -> None:
    """self.step(name, retry, fn, *args) applies the policy; retry= still works, with a warning."""
    attempts: list[str] = []

    def flaky(label: str) -> str:
        attempts.append(label)
        raise ValueError("down")

    class Agent(actors.Actor, name="typing.Agent"):
        async def run(self, old: bool) -> int:
            policy = actors.Retry(max_attempts=2, initial_delay=0.01)
            step: Any = self.step  # Any: the old form is a type error now
            try:
                if old:
                    with pytest.warns(DeprecationWarning, match=r"'s', policy, fn"):
                        await step("s", flaky, "old", retry=policy)
                else:
                    await self.step("s", policy, flaky, "new")
            except actors.StepFailedError as exc:
                return exc.attempts
            return 0

        async def misuse(self) -> list[str]:
            step: Any = self.step
            found = []
            calls: list[Callable[[], object]] = [
                lambda: step("s", actors.Retry()),
                lambda: step("s", actors.Retry(), flaky, "x", retry=actors.Retry()),
            ]
            for call in calls:
                try:
                    call()
                except TypeError as exc:
                    found.append(str(exc))
            return found

    async with actors.open_runtime(root, types=[Agent]) as rt:
        ref = rt.ref(Agent, "a")
        assert await ref.ask(Agent.run, False) == 2
        assert await ref.ask(Agent.run, True) == 2
        assert attempts == ["new", "new", "old", "old"]
        found = await ref.ask(Agent.misuse)
        assert "a retry policy goes before the function" in found[0]
        assert "two retry policies" in found[1]
