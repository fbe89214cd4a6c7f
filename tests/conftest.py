"""Test setup: async tests run under trio with a MockClock that jumps when everything sleeps.

An ``async def test_...`` runs in ``trio.run(..., clock=MockClock(autojump_threshold=0))``, so a
test that waits a year of retries or timers finishes at once. Its fixtures are ordinary
(synchronous) pytest fixtures.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

pytest_plugins = ["tests.conftest_s3"]


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
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    if pyfuncitem.get_closest_marker("real_clock") is not None:
        # Work in worker threads (replication's store requests) lets an autojump clock jump
        # to the next deadline at any moment; these tests wait on events, not on time.
        trio.run(functools.partial(fn, **kwargs))
    else:
        trio.run(
            functools.partial(fn, **kwargs), clock=trio.testing.MockClock(autojump_threshold=0)
        )
    return True


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fresh runtime directory."""
    return tmp_path / "rt"


def files_of(root: Path) -> dict[str, Any]:
    return {p.name: p for p in root.rglob("*.db")}
