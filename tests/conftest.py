"""Test setup: async tests run under virtual time that jumps when everything sleeps.

The suites, grouped by behaviour: ``tests/unit`` (pure: codec, lifecycle table, WAL parsing,
replica formats, import graph, exports, typing), ``tests/engine`` (a runtime in this process:
turns, steps, timers, hibernation, supervision, files, bad input, close, observe),
``tests/replica`` (replication, stores, restore, S3 faults), ``tests/crash`` (the SIGKILL
harnesses and their child workloads), ``tests/ops`` (CLI, ops, bench) and ``tests/docs`` (docs
and examples). Shared support lives in ``tests/support``: actor types, strategies, replication
helpers, the S3 server fixtures (a plugin, below) and the crash harness.

An ``async def test_...`` runs in ``runtime.testing.run_virtual``: on trio, ``trio.run(...,
clock=MockClock(autojump_threshold=0))``; on asyncio, a looptime event loop that jumps the same
way. So a test that waits a year of retries or timers finishes at once. Its fixtures are ordinary
(synchronous) pytest fixtures. ``@pytest.mark.real_clock`` runs a test on the real clock instead.

Backends: the async tests of a module marked ``pytestmark = pytest.mark.both_backends`` run
twice, as ``test_x[trio]`` and ``test_x[asyncio]`` (they write ``anyio`` calls, not ``trio``
ones, and may take the ``backend`` fixture). So far these are the suites that prove the core:
engine/test_turns, engine/test_steps, engine/test_timers and engine/test_hibernation. Any other
test that takes the ``backend`` fixture runs twice as well: the SIGKILL crash harnesses
(crash/test_crash, crash/test_crash_steps, crash/test_crash_timers) run their child program on
it. Every other module runs on trio only, for now; new tests are written for both.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio

from runtime.testing import BACKENDS, Backend, run_virtual

pytest_plugins = ["tests.support.s3_fixtures"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run the long crash runs too")
    parser.addoption(
        "--crash-kills", type=int, default=None, help="SIGKILLs in the crash harness (default 50)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Module | pytest.Class, name: str, obj: Any) -> None:
    if (
        collector.istestfunction(obj, name)
        and inspect.iscoroutinefunction(obj)
        and collector.get_closest_marker("both_backends") is not None
    ):
        pytest.mark.usefixtures("backend")(obj)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The async backend this test runs on, "trio" or "asyncio" (modules marked both_backends)."""
    return str(request.param)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    call = functools.partial(fn, **{name: pyfuncitem.funcargs[name] for name in names})
    # The backend fixture's value (BACKENDS); trio for a test without it.
    backend: Backend = "asyncio" if pyfuncitem.funcargs.get("backend") == "asyncio" else "trio"
    if pyfuncitem.get_closest_marker("real_clock") is not None:
        # Work in worker threads (replication's store requests) lets an autojump clock jump
        # to the next deadline at any moment; these tests wait on events, not on time.
        if backend == "trio":
            trio.run(call)
        else:
            anyio.run(call, backend=backend)
    else:
        run_virtual(call, backend=backend)
    return True


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fresh runtime directory."""
    return tmp_path / "rt"


def files_of(root: Path) -> dict[str, Any]:
    return {p.name: p for p in root.rglob("*.db")}
