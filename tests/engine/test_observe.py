"""Observability: Prometheus text exposition of the runtime's counters, the /metrics server on a
real loopback socket, and lifecycle transitions as structured log records."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import re
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
import trio.testing

import actors
from runtime.observe import MAX_REQUEST_HEAD_BYTES, REQUEST_TIMEOUT

START = 1_700_000_000.0
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)\Z")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"(?:,|\Z)')
TYPES = {"counter", "gauge", "summary", "histogram", "untyped"}


class Worker(actors.Actor, name="observe.Worker"):
    retry = actors.Retry(max_attempts=2, initial_delay=1)

    async def incr(self) -> int:
        self.kv["n"] = self.kv.get("n", 0) + 1
        return int(self.kv["n"])

    async def fail(self) -> None:
        raise ValueError("always")

    async def fetch(self) -> str:
        async def call() -> str:
            return "ok"

        return await self.step("call", call)


class Doomed(actors.Actor, name="observe.Doomed"):
    retry = actors.Retry(max_attempts=1)
    restart_intensity = actors.RestartIntensity(max_failures=1, period=60)

    async def fail(self) -> None:
        raise ConnectionError("upstream down")


def parse(text: str) -> tuple[dict[str, str], dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """Parse Prometheus text format 0.0.4 strictly enough to catch a malformed exposition."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, help_text = line[7:].split(" ", 1)
            assert NAME.match(name) and name not in helps and help_text, line
            helps.add(name)
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert NAME.match(name) and name not in types and kind in TYPES, line
            assert not any(n == name for n, _ in samples), f"TYPE after samples: {line}"
            types[name] = kind
        else:
            match = SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            name, labels, value = match.groups()
            family = name
            if name not in types:
                family = re.sub(r"_(sum|count|bucket)\Z", "", name)
            assert family in types, f"sample without TYPE: {line}"
            assert family in helps, f"sample without HELP: {line}"
            pairs = LABEL.findall(labels) if labels else []
            if labels:
                assert ",".join(f'{k}="{v}"' for k, v in pairs) == labels, line
            value_number = float(value)  # ValueError if not a number (NaN and +Inf are)
            key = (name, frozenset(pairs))
            assert key not in samples, f"duplicate sample: {line}"
            samples[key] = value_number
    for name, kind in types.items():
        if kind == "counter":
            assert name.endswith("_total"), name
        else:
            assert not name.endswith("_total"), name
    return types, samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def virtual_clock() -> float:
    return START + trio.current_time()


async def test_render_metrics_is_valid_exposition(root: Path) -> None:
    """Every family has one HELP and TYPE before its samples; counters end in _total."""
    async with actors.open_runtime(root, types=[Worker], clock=virtual_clock) as rt:
        await rt.ref(Worker, "w").ask(Worker.incr)
        types, samples = parse(actors.render_metrics(rt.statistics()))
    assert types == {
        "torpor_actors": "gauge",
        "torpor_max_awake": "gauge",
        "torpor_actors_with_timers": "gauge",
        "torpor_unknown_actor_types": "gauge",
        "torpor_turns_total": "counter",
        "torpor_messages_applied_total": "counter",
        "torpor_messages_sent_total": "counter",
        "torpor_retries_total": "counter",
        "torpor_dead_letters_total": "counter",
        "torpor_wakes_total": "counter",
        "torpor_hibernations_total": "counter",
        "torpor_timers_fired_total": "counter",
        "torpor_steps_total": "counter",
        "torpor_step_retries_total": "counter",
        "torpor_wake_latency_seconds": "summary",
    }
    states = {dict(labels)["state"] for name, labels in samples if name == "torpor_actors"}
    assert states == {"awake", "hibernated", "stopped", "failed"}
    quantiles = {
        dict(labels)["quantile"]
        for name, labels in samples
        if name == "torpor_wake_latency_seconds"
    }
    assert quantiles == {"0.5", "0.99"}


async def test_metrics_before_any_activity(root: Path) -> None:
    """A fresh runtime exposes zeros, its max_awake, and NaN quantiles (no wake-up yet)."""
    async with actors.open_runtime(root, types=[Worker], max_awake=7) as rt:
        _, samples = parse(actors.render_metrics(rt.statistics()))
    assert value(samples, "torpor_max_awake") == 7
    assert value(samples, "torpor_messages_sent_total") == 0
    assert value(samples, "torpor_actors", state="awake") == 0
    assert math.isnan(value(samples, "torpor_wake_latency_seconds", quantile="0.5"))
    assert math.isnan(value(samples, "torpor_wake_latency_seconds", quantile="0.99"))


async def test_metrics_follow_messages_hibernation_and_failures(root: Path) -> None:
    """Counters and gauges move with sends, asks, hibernation, steps, retries, dead letters."""
    async with actors.open_runtime(
        root, types=[Worker, Doomed], idle_timeout=10, clock=virtual_clock
    ) as rt:
        worker = rt.ref(Worker, "w")
        await worker.send(Worker.incr)
        await worker.send(Worker.incr)
        assert await worker.ask(Worker.incr) == 3
        _, s = parse(actors.render_metrics(rt.statistics()))
        assert value(s, "torpor_messages_sent_total") == 3
        assert value(s, "torpor_messages_applied_total") == 3
        assert 1 <= value(s, "torpor_turns_total") <= 3  # queued messages may share a turn
        assert value(s, "torpor_actors", state="awake") == 1
        assert value(s, "torpor_wakes_total") == 1

        await trio.sleep(11)  # idle for longer than idle_timeout
        _, s = parse(actors.render_metrics(rt.statistics()))
        assert value(s, "torpor_actors", state="awake") == 0
        assert value(s, "torpor_actors", state="hibernated") == 1
        assert value(s, "torpor_hibernations_total") == 1

        assert await worker.ask(Worker.fetch) == "ok"  # wakes it; one durable step
        with pytest.raises(actors.MessageFailedError):
            await worker.ask(Worker.fail)  # two attempts: one retry, then a dead letter
        _, s = parse(actors.render_metrics(rt.statistics()))
        assert value(s, "torpor_wakes_total") == 2
        assert value(s, "torpor_steps_total") == 1
        assert value(s, "torpor_retries_total") == 1
        assert value(s, "torpor_dead_letters_total") == 1
        assert value(s, "torpor_messages_applied_total") == 4
        p50 = value(s, "torpor_wake_latency_seconds", quantile="0.5")
        assert 0 <= p50 <= value(s, "torpor_wake_latency_seconds", quantile="0.99")

        doomed = rt.ref(Doomed, "d")
        for _ in range(2):
            with pytest.raises((actors.MessageFailedError, actors.ActorStoppedError)):
                await doomed.ask(Doomed.fail)
        _, s = parse(actors.render_metrics(rt.statistics()))
        assert value(s, "torpor_actors", state="stopped") == 1
        assert value(s, "torpor_actors", state="awake") == 1  # the worker


async def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` to 127.0.0.1:port, read until the server closes; (status, headers, body)."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(raw)
        data = b""
        with anyio.fail_after(10):
            while True:
                try:
                    data += await stream.receive()
                except anyio.EndOfStream:
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in header_lines:
        name, _, val = line.partition(":")
        headers[name.strip().lower()] = val.strip()
    return int(status), headers, body


def run_real_time(fn: Any, *args: Any) -> None:
    """Socket tests run on the real clock: a MockClock would jump past the request timeout
    while a client thread is still connecting."""
    trio.run(fn, *args)


def test_server_answers_metrics_on_loopback(tmp_path: Path) -> None:
    """GET /metrics over a real socket returns the exposition; a real HTTP client accepts it."""

    async def main() -> None:
        async with (
            actors.open_runtime(tmp_path / "rt", types=[Worker]) as rt,
            trio.open_nursery() as nursery,
        ):
            endpoint = await nursery.start(actors.serve_metrics, rt)
            assert endpoint.host == "127.0.0.1" and endpoint.port > 0
            assert endpoint.url == f"http://127.0.0.1:{endpoint.port}/metrics"
            await rt.ref(Worker, "w").ask(Worker.incr)

            status, headers, body = await request(
                endpoint.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            assert status == 200
            assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert int(headers["content-length"]) == len(body)
            assert body.decode() == actors.render_metrics(rt.statistics())
            _, samples = parse(body.decode())
            assert value(samples, "torpor_messages_applied_total") == 1

            def fetch() -> tuple[int, str, str]:
                with urllib.request.urlopen(endpoint.url, timeout=10) as response:
                    kind = response.headers["Content-Type"]
                    return response.status, kind, response.read().decode()

            code, kind, text = await trio.to_thread.run_sync(fetch)
            assert (code, kind) == (200, "text/plain; version=0.0.4; charset=utf-8")
            parse(text)
            nursery.cancel_scope.cancel()

    run_real_time(main)


def test_server_refuses_other_paths_and_methods(tmp_path: Path) -> None:
    """Other paths get 404, other methods 405 with Allow, HEAD no body, garbage 400."""

    async def main() -> None:
        async with (
            actors.open_runtime(tmp_path / "rt", types=[Worker]) as rt,
            trio.open_nursery() as nursery,
        ):
            port = (await nursery.start(actors.serve_metrics, rt)).port
            status, _, _ = await request(port, b"GET / HTTP/1.1\r\n\r\n")
            assert status == 404
            status, _, _ = await request(port, b"GET /metricsx HTTP/1.1\r\n\r\n")
            assert status == 404
            status, headers, _ = await request(
                port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
            )
            assert (status, headers["allow"]) == (405, "GET, HEAD")
            status, headers, body = await request(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
            assert status == 200 and int(headers["content-length"]) > 0 and body == b""
            status, _, body = await request(port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")
            assert status == 200 and body.startswith(b"# HELP")
            status, _, _ = await request(port, b"hello\r\n\r\n")
            assert status == 400
            big = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * MAX_REQUEST_HEAD_BYTES + b"\r\n\r\n"
            status, _, _ = await request(port, big)
            assert status == 431

            fetch = functools.partial(urllib.request.urlopen, f"http://127.0.0.1:{port}/x")
            with pytest.raises(urllib.error.HTTPError) as caught:
                await trio.to_thread.run_sync(fetch)
            assert caught.value.code == 404
            caught.value.close()
            nursery.cancel_scope.cancel()

    run_real_time(main)


def test_server_serves_clients_concurrently(tmp_path: Path) -> None:
    """A client that connects and sends nothing does not delay the next scrape or the actors."""

    async def main() -> None:
        async with (
            actors.open_runtime(tmp_path / "rt", types=[Worker]) as rt,
            trio.open_nursery() as nursery,
        ):
            port = (await nursery.start(actors.serve_metrics, rt)).port
            async with await anyio.connect_tcp("127.0.0.1", port) as stalled:
                await stalled.send(b"GET /metr")  # and nothing more
                with trio.fail_after(5):
                    assert await rt.ref(Worker, "w").ask(Worker.incr) == 1
                    status, _, _ = await request(port, b"GET /metrics HTTP/1.1\r\n\r\n")
                assert status == 200
            nursery.cancel_scope.cancel()

    run_real_time(main)


async def test_server_drops_a_silent_client_after_the_timeout(root: Path) -> None:
    """A connection that never finishes its request is closed after REQUEST_TIMEOUT seconds."""
    async with actors.open_runtime(root, types=[Worker]) as rt, trio.open_nursery() as nursery:
        port = (await nursery.start(actors.serve_metrics, rt)).port
        async with await anyio.connect_tcp("127.0.0.1", port) as silent:
            started = trio.current_time()
            with pytest.raises(anyio.EndOfStream):
                await silent.receive()
            assert trio.current_time() - started == pytest.approx(REQUEST_TIMEOUT)
        nursery.cancel_scope.cancel()


def test_server_binds_a_chosen_port(tmp_path: Path) -> None:
    """port= picks the port (here, one just freed); the endpoint reports it."""

    async def main() -> None:
        async with actors.open_runtime(tmp_path / "rt", types=[Worker]) as rt:
            async with trio.open_nursery() as nursery:
                first = await nursery.start(actors.serve_metrics, rt)
                nursery.cancel_scope.cancel()
            async with trio.open_nursery() as nursery:
                serve = functools.partial(actors.serve_metrics, rt, port=first.port)
                second = await nursery.start(serve)
                assert second.port == first.port
                status, _, _ = await request(second.port, b"GET /metrics HTTP/1.1\r\n\r\n")
                assert status == 200
                nursery.cancel_scope.cancel()

    run_real_time(main)


async def test_log_lifecycle_records_wake_and_hibernation(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each transition is one record: JSON message and the same fields as record attributes."""
    caplog.set_level(logging.INFO, logger="torpor.lifecycle")
    async with (
        actors.open_runtime(root, types=[Worker], idle_timeout=10, clock=virtual_clock) as rt,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(actors.log_lifecycle, rt)
        await rt.ref(Worker, "w").ask(Worker.incr)
        await trio.sleep(11)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    records = [r for r in caplog.records if r.name == "torpor.lifecycle"]
    assert [(r.previous, r.state, r.event) for r in records] == [  # type: ignore[attr-defined]
        ("hibernated", "waking", "wake"),
        ("waking", "awake", "opened"),
        ("awake", "hibernating", "idle"),
        ("hibernating", "hibernated", "closed"),
    ]
    fields = ("type", "key", "previous", "state", "event", "reason", "time")
    for record in records:
        assert record.levelno == logging.INFO
        body = json.loads(record.getMessage())
        assert list(body) == list(fields)
        assert body == {name: getattr(record, name) for name in fields}
        assert (body["type"], body["key"], body["reason"]) == ("observe.Worker", "w", None)
        assert isinstance(body["time"], float)


async def test_log_lifecycle_logs_failures_as_warnings(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stopped actor is logged at WARNING with the reason, on the logger and level given."""
    logger = logging.getLogger("app.actors")
    caplog.set_level(logging.DEBUG, logger="app.actors")
    async with actors.open_runtime(root, types=[Doomed]) as rt, trio.open_nursery() as nursery:
        await nursery.start(actors.log_lifecycle, rt, logger, logging.DEBUG)
        for _ in range(2):
            with pytest.raises((actors.MessageFailedError, actors.ActorStoppedError)):
                await rt.ref(Doomed, "d").ask(Doomed.fail)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    records = [r for r in caplog.records if r.name == "app.actors"]
    assert records and records[0].levelno == logging.DEBUG  # the wake
    stops = [r for r in records if r.state == "stopped"]  # type: ignore[attr-defined]
    assert len(stops) == 1 and stops[0].levelno == logging.WARNING
    assert "upstream down" in stops[0].reason  # type: ignore[attr-defined]


async def test_log_lifecycle_catches_up_when_cancelled_after_close(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Cancelled after the runtime closed, it still logs the hibernations of the shutdown."""
    caplog.set_level(logging.INFO, logger="torpor.lifecycle")
    async with trio.open_nursery() as nursery:
        async with actors.open_runtime(root, types=[Worker]) as rt:
            await nursery.start(actors.log_lifecycle, rt)
            for key in ("a", "b"):
                await rt.ref(Worker, key).ask(Worker.incr)
        nursery.cancel_scope.cancel()  # at once: the shutdown's events are still buffered
    final = {
        r.key: r.state  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "torpor.lifecycle"
    }
    assert final == {"a": "hibernated", "b": "hibernated"}


async def test_log_lifecycle_quiet_when_level_disabled(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Below the logger's level nothing is formatted or emitted, failures aside."""
    caplog.set_level(logging.WARNING, logger="torpor.lifecycle")
    async with actors.open_runtime(root, types=[Worker]) as rt, trio.open_nursery() as nursery:
        await nursery.start(actors.log_lifecycle, rt)
        await rt.ref(Worker, "w").ask(Worker.incr)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert [r for r in caplog.records if r.name == "torpor.lifecycle"] == []


class FakeRuntime:
    """Just the lifecycle stream of a runtime, fed by the test."""

    def __init__(self) -> None:
        self.send, self.receive = anyio.create_memory_object_stream[actors.LifecycleEvent](10)

    @contextlib.asynccontextmanager
    async def open_lifecycle_events(self) -> AsyncIterator[Any]:
        async with self.receive:
            yield self.receive


async def test_log_lifecycle_logs_what_was_delivered_before_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Transitions already delivered when it is cancelled are logged, not lost."""
    caplog.set_level(logging.INFO, logger="torpor.lifecycle")
    fake = FakeRuntime()
    async with fake.send, trio.open_nursery() as nursery:
        await nursery.start(actors.log_lifecycle, fake)
        for key in ("a", "b", "c"):
            fake.send.send_nowait(
                actors.LifecycleEvent("T", key, "hibernating", "hibernated", "closed", START)
            )
        nursery.cancel_scope.cancel()  # no checkpoint since the sends
    assert [r.key for r in caplog.records] == ["a", "b", "c"]  # type: ignore[attr-defined]


async def test_replication_metrics_appear_with_a_replica(tmp_path: Path) -> None:
    """With a replica, lag, files behind and store requests are exported; without, not."""
    store = actors.DirectoryStore(tmp_path / "replica")
    async with actors.open_runtime(tmp_path / "rt", types=[Worker], replica=store) as rt:
        await rt.ref(Worker, "w").ask(Worker.incr)
        await rt.replicated()
        types, samples = parse(actors.render_metrics(rt.statistics()))
    assert types["torpor_replication_lag_seconds"] == "gauge"
    assert types["torpor_replica_puts_total"] == "counter"
    values = {name: value for (name, labels), value in samples.items() if not labels}
    assert values["torpor_replica_puts_total"] >= 1
    assert values["torpor_replication_files_behind"] == 0
    assert values["torpor_replication_rounds_total"] >= 1
