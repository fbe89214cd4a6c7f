"""Observability: runtime counters for Prometheus, lifecycle transitions as log records.

Both run in the application's own task group, next to the runtime, and read only what the
runtime already keeps in memory (:meth:`Runtime.statistics`, :meth:`Runtime.open_lifecycle_events`):
they never wait on an actor, and a slow or misbehaving scraper cannot hold up a turn.

The HTTP server is deliberately minimal (one request per connection, ``GET``/``HEAD`` on
``/metrics`` only) and stdlib-only: it is for a Prometheus scraper on a trusted network, bound
to loopback unless told otherwise, not a general web server.
"""

from __future__ import annotations

import errno
import json
import logging
import math
from collections.abc import Callable
from typing import Any, NoReturn

import anyio
import anyio.abc
import attrs

from .records import LifecycleEvent, RuntimeStatistics
from .runtime import Runtime

#: The ``Content-Type`` of Prometheus' text exposition format, version 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Longest request head (request line and headers) the metrics server reads. A scraper sends a
#: few hundred bytes; 8 KiB is what common servers accept before answering 431.
MAX_REQUEST_HEAD_BYTES = 8192
#: Seconds a client gets to send its request head, then the connection is dropped: a scrape
#: sends it at once, and an idle connection should not hold a task and a descriptor forever.
REQUEST_TIMEOUT = 10.0
#: Seconds the accept loop pauses when the process is out of descriptors (EMFILE and friends),
#: instead of spinning or crashing the application's task group.
ACCEPT_BACKOFF = 0.1

_ACCEPT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
}

_log = logging.getLogger("torpor.metrics")

# name, help, value from the statistics. Counters count since the runtime opened.
_COUNTERS: tuple[tuple[str, str, Callable[[RuntimeStatistics], int]], ...] = (
    (
        "torpor_turns_total",
        "Turns committed (a turn may apply a batch of queued messages).",
        lambda s: s.turns,
    ),
    (
        "torpor_messages_applied_total",
        "Messages whose handler ran and committed.",
        lambda s: s.messages_applied,
    ),
    (
        "torpor_messages_sent_total",
        "Messages stored in a mailbox (send, ask, timers; duplicates not counted).",
        lambda s: s.messages_sent,
    ),
    (
        "torpor_retries_total",
        "Failed attempts of a message or on_create that will be retried.",
        lambda s: s.retries,
    ),
    (
        "torpor_dead_letters_total",
        "Messages dead-lettered after their last attempt.",
        lambda s: s.dead_letters,
    ),
    ("torpor_wakes_total", "Actors woken: files opened and object built.", lambda s: s.wakes),
    (
        "torpor_hibernations_total",
        "Actors hibernated: files closed and object dropped.",
        lambda s: s.hibernations,
    ),
    (
        "torpor_timers_fired_total",
        "Durable timer firings (each sends a message).",
        lambda s: s.timers_fired,
    ),
    (
        "torpor_steps_total",
        "Durable steps and asks journaled with their final result or error.",
        lambda s: s.steps,
    ),
    (
        "torpor_step_retries_total",
        "Failed durable step attempts that were retried.",
        lambda s: s.step_retries,
    ),
)


@attrs.frozen
class MetricsEndpoint:
    """Where :func:`serve_metrics` listens: ``nursery.start`` returns it once the port is bound.

    ``port`` is the bound port (useful with ``port=0``, which picks a free one); ``url`` is the
    address to scrape.
    """

    host: str
    port: int

    @property
    def url(self) -> str:
        """``http://host:port/metrics``, with an IPv6 host in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"


def render_metrics(stats: RuntimeStatistics) -> str:
    """The Prometheus text exposition (format 0.0.4) of one :class:`RuntimeStatistics`.

    A pure function: ``serve_metrics`` answers each scrape with
    ``render_metrics(rt.statistics())``; call it yourself to push the figures elsewhere.
    Counters (``*_total``) count since the runtime opened; ``torpor_actors`` has one sample per
    state; ``torpor_wake_latency_seconds`` is a summary of the last 1,000 wake-ups with the
    quantiles only (``NaN`` before the first), since the runtime keeps no sum or count.
    """
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{labels} {_number(value)}" for labels, value in samples)

    family(
        "torpor_actors",
        "gauge",
        "Actors by lifecycle state (awake counts actors waking and hibernating too).",
        [
            ('{state="awake"}', stats.awake),
            ('{state="hibernated"}', stats.hibernated),
            ('{state="stopped"}', stats.stopped),
            ('{state="failed"}', stats.failed),
        ],
    )
    family(
        "torpor_max_awake",
        "gauge",
        "Most actors allowed awake at once (open_runtime max_awake).",
        [("", stats.max_awake)],
    )
    family(
        "torpor_actors_with_timers",
        "gauge",
        "Actors with a durable timer or wait pending.",
        [("", stats.actors_with_timers)],
    )
    family(
        "torpor_unknown_actor_types",
        "gauge",
        "Actor types found on disk but not registered with this runtime.",
        [("", len(stats.unknown_types))],
    )
    for name, help_text, value in _COUNTERS:
        family(name, "counter", help_text, [("", value(stats))])
    nan = math.nan
    family(
        "torpor_wake_latency_seconds",
        "summary",
        "Seconds from a message needing a hibernated actor to its handler starting, over the "
        "last 1,000 wake-ups.",
        [
            ('{quantile="0.5"}', nan if stats.wake_latency_p50 is None else stats.wake_latency_p50),
            (
                '{quantile="0.99"}',
                nan if stats.wake_latency_p99 is None else stats.wake_latency_p99,
            ),
        ],
    )
    rep = stats.replication
    if rep is not None:
        family(
            "torpor_replication_lag_seconds",
            "gauge",
            "Seconds since the oldest commit not yet in the replica was made (0 when none).",
            [("", rep.lag)],
        )
        family(
            "torpor_replication_files_behind",
            "gauge",
            "Files with commits not yet in the replica (awake ones, and hibernated ones left "
            "behind while the store was unreachable).",
            [("", rep.files_behind)],
        )
        family(
            "torpor_replication_ack_seconds",
            "summary",
            "Seconds from a commit to its acknowledgement by the replica, over the last 1,000.",
            [
                ('{quantile="0.5"}', nan if rep.lag_p50 is None else rep.lag_p50),
                ('{quantile="0.99"}', nan if rep.lag_p99 is None else rep.lag_p99),
            ],
        )
        for metric, text, count in (
            ("torpor_replica_requests_total", "Requests made to the replica store.", rep.requests),
            ("torpor_replica_puts_total", "PUT requests made to the replica store.", rep.puts),
            ("torpor_replica_uploaded_bytes_total", "Bytes uploaded.", rep.bytes_uploaded),
            ("torpor_replication_rounds_total", "Log objects written.", rep.rounds),
            ("torpor_replication_snapshots_total", "Snapshots uploaded.", rep.snapshots),
            ("torpor_replication_errors_total", "Failed store requests.", rep.errors),
            ("torpor_replication_fenced_total", "Files taken over by another runtime.", rep.fenced),
            (
                "torpor_replication_restores_total",
                "Actors restored from the replica.",
                rep.restores,
            ),
        ):
            family(metric, "counter", text, [("", count)])
    return "\n".join(out) + "\n"


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


async def serve_metrics(
    rt: Runtime,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: anyio.abc.TaskStatus[MetricsEndpoint] = anyio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve ``rt``'s counters to Prometheus on ``GET /metrics`` until cancelled.

    Start it in a task group: ``endpoint = await nursery.start(actors.serve_metrics, rt)``
    returns a :class:`MetricsEndpoint` once the socket listens (``port=0``, the default, picks a
    free port; pass ``functools.partial(actors.serve_metrics, rt, port=9464)`` for a fixed one).
    It binds to loopback unless ``host`` says otherwise. Each connection is served in a task of
    its own and closed after one response: ``GET``/``HEAD /metrics`` get
    :func:`render_metrics` of ``rt.statistics()``, other paths 404, other methods 405.
    """
    multi = await anyio.create_tcp_listener(local_host=host, local_port=port)
    async with multi, anyio.create_task_group() as tg:
        # One socket per address family of ``host`` ("localhost" may give two), one port.
        bound = multi.extra(anyio.abc.SocketAttribute.local_port)
        for listener in multi.listeners:
            assert isinstance(listener, anyio.abc.SocketListener)
            tg.start_soon(_accept_loop, rt, listener, tg)
        task_status.started(MetricsEndpoint(host, bound))
        await anyio.sleep_forever()
    raise AssertionError("unreachable: sleep_forever returned")


async def _accept_loop(
    rt: Runtime, listener: anyio.abc.SocketListener, tg: anyio.abc.TaskGroup
) -> None:
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in _ACCEPT_ERRNOS:
                raise
            _log.warning("metrics server: accept failed (%s); retrying", exc)
            await anyio.sleep(ACCEPT_BACKOFF)
            continue
        tg.start_soon(_serve_connection, rt, stream)


async def _serve_connection(rt: Runtime, stream: anyio.abc.SocketStream) -> None:
    """Answer one request on ``stream`` and close it; a client's mistake never propagates."""
    async with stream:
        try:
            with anyio.fail_after(REQUEST_TIMEOUT):
                head = await _read_head(stream)
            if head is None:
                await _respond(stream, 431, "request head too large\n", head_only=False)
                return
            status, body, head_only, extra = _route(rt, head)
            await _respond(stream, status, body, head_only=head_only, headers=extra)
        except (TimeoutError, OSError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
            _log.debug("metrics server: connection dropped: %r", exc)


async def _read_head(stream: anyio.abc.SocketStream) -> bytes | None:
    """The request head up to its blank line; ``None`` if longer than the limit."""
    buffer = bytearray()
    while True:
        end = buffer.find(b"\r\n\r\n", 0, MAX_REQUEST_HEAD_BYTES + 4)
        if end >= 0:
            return bytes(buffer[:end])
        if len(buffer) >= MAX_REQUEST_HEAD_BYTES + 4:
            return None
        chunk = await stream.receive(4096)  # EndOfStream if the client gives up
        buffer += chunk


def _route(rt: Runtime, head: bytes) -> tuple[int, str, bool, dict[str, str]]:
    """(status, body, head_only, extra headers) for a request head."""
    request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return 400, "malformed request line\n", False, {}
    method, target, _ = parts
    path = target.split("?", 1)[0]
    if path != "/metrics":
        return 404, "not found; metrics are at /metrics\n", method == "HEAD", {}
    if method not in ("GET", "HEAD"):
        return 405, "only GET and HEAD\n", False, {"Allow": "GET, HEAD"}
    return 200, render_metrics(rt.statistics()), method == "HEAD", {}


async def _respond(
    stream: anyio.abc.SocketStream,
    status: int,
    body: str,
    *,
    head_only: bool,
    headers: dict[str, str] | None = None,
) -> None:
    payload = body.encode()
    content_type = CONTENT_TYPE if status == 200 else "text/plain; charset=utf-8"
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(payload)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    response = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    await stream.send(response if head_only else response + payload)


async def log_lifecycle(
    rt: Runtime,
    logger: logging.Logger | None = None,
    level: int = logging.INFO,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Log every lifecycle transition of ``rt``'s actors until cancelled.

    Start it in a task group: ``await nursery.start(actors.log_lifecycle, rt)`` returns once
    subscribed, so no transition after that is missed. Each transition is one record on
    ``logger`` (default ``logging.getLogger("torpor.lifecycle")``) at ``level`` (``INFO``), or at
    ``WARNING`` if higher when an actor becomes failed or stopped. The message is a JSON object
    and the same fields are attributes of the record (``extra``): ``type`` (the actor type's
    name), ``key``, ``previous``, ``state``, ``event``, ``reason`` (why it failed or stopped,
    else ``None``) and ``time`` (seconds since the epoch).

    On cancellation it first logs the transitions already delivered to it, so cancelling it
    after the runtime has closed records the last hibernations too. Records are emitted on the
    event loop's thread; give a slow handler a ``logging.handlers.QueueHandler``.
    """
    log = logger if logger is not None else logging.getLogger("torpor.lifecycle")
    async with rt.open_lifecycle_events() as events:
        task_status.started()
        try:
            async for event in events:
                _emit(log, level, event)
        finally:
            # Cancelled (or the stream ended): what is already buffered was delivered to us.
            while True:
                try:
                    event = events.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    break
                _emit(log, level, event)


def _lifecycle_fields(event: LifecycleEvent) -> dict[str, Any]:
    """The structured fields :func:`log_lifecycle` puts on a record."""
    return {
        "type": event.type_name,
        "key": event.key,
        "previous": event.previous,
        "state": event.state,
        "event": event.event,
        "reason": event.detail,
        "time": event.at,
    }


def _emit(log: logging.Logger, level: int, event: LifecycleEvent) -> None:
    if event.state in ("failed", "stopped"):
        level = max(level, logging.WARNING)
    if not log.isEnabledFor(level):
        return
    fields = _lifecycle_fields(event)
    log.log(level, json.dumps(fields, separators=(",", ":")), extra=fields)
