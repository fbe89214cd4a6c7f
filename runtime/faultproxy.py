"""A fault-injecting HTTP proxy in front of an S3 server: for the tests, and for
``torpor bench replication`` to report the faults a runtime survived.

:class:`FaultProxy` listens on 127.0.0.1 on a free port and forwards every request to one
upstream S3 endpoint (SeaweedFS in the tests), unless a :class:`Fault` rule says otherwise::

    with FaultProxy(server.endpoint_url, seed=7) as proxy:
        store = S3Store(bucket, endpoint_url=proxy.url, path_style=True)
        with proxy.injecting(Fault("cut_body", method="GET", times=1)):
            ...
        proxy.statistics().injected["cut_body"]

Requests are forwarded byte for byte: request line, headers (``Host`` included) and body are
what the client sent, so a SigV4 signature made for the proxy's address stays valid upstream
(the server checks it against the ``Host`` header it receives, which is the proxy's). A client
may also use the proxy as a plain HTTP proxy (botocore's ``proxies={"http": proxy.url}``): the
absolute request target is forwarded unchanged, and the client then signs for the upstream's
address. Only ``http://`` upstreams are supported.

The kinds of faults (:class:`FaultKind`), as a client sees them:

- ``error_before``: an S3 error answer (``status``, 500 by default) without forwarding: nothing
  changed in the store.
- ``slow_down``: ``503 SlowDown`` without forwarding (throttling).
- ``error_after``: the request is forwarded and the store's answer read (the write happened),
  then the client gets an S3 error answer (``status``) instead: the ambiguous write.
- ``reset``: the connection is reset (TCP RST) once the request's head is read; not forwarded.
- ``reset_after``: forwarded and answered by the store, then the client's connection is reset
  instead of answered: the ambiguous write without an answer.
- ``cut_body``: forwarded; the client gets the store's status and headers (``Content-Length``
  included) and half the body, then the connection closes (an answer without a body is cut
  inside its status code instead: ``HTTP/1.1 2``).
- ``delay``: forwarded after ``delay`` seconds.
- ``outage``: refuse everything: new connections are reset as soon as they are accepted, and a
  request on an open connection is reset before it is read. An outage rule matches every
  request (no ``method`` nor ``key``).

Rules are tried in order; the first that matches a request (``method``, ``key`` as a glob over
the percent-decoded URL path without its leading ``/``, i.e. ``bucket/key`` in path-style
addressing) and fires (with ``probability``, drawn from a RNG seeded by ``seed``) decides its
fate. A rule with ``times=N`` fires N times, then is dropped. Rules change at run time, from any
thread: :meth:`FaultProxy.set_faults`, :meth:`~FaultProxy.clear_faults`, or the
:meth:`~FaultProxy.injecting` context manager. :meth:`~FaultProxy.statistics` counts requests,
forwarded ones, and faults injected by kind.
"""

from __future__ import annotations

import contextlib
import enum
import fnmatch
import io
import random
import selectors
import socket
import struct
import threading
import types
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Self

import attrs

#: Bytes moved per read when relaying a body: bodies stream through, never held whole (but the
#: body of an answer that a ``cut_body`` or ``*_after`` fault replaces or cuts).
RELAY_CHUNK_BYTES = 64 * 1024

#: The longest head (request or status line and headers) accepted from a client or upstream.
MAX_HEAD_BYTES = 64 * 1024

#: Seconds a client connection may be silent (between requests, or mid-request) before the
#: proxy drops it; also how long the upstream may take to answer. Generous: the clients' own
#: timeouts are the ones under test.
IDLE_TIMEOUT = 120.0

#: Seconds to connect to the upstream server (on 127.0.0.1 it answers at once).
UPSTREAM_CONNECT_TIMEOUT = 5.0

#: Seconds :meth:`FaultProxy.stop` waits for the threads serving connections to end once their
#: sockets are shut down (they end in milliseconds; the bound is for a bug, not for a wait).
STOP_TIMEOUT = 5.0

#: Seconds the accept loop may sleep in ``select`` before it looks at the stop flag again (it is
#: woken at once by :meth:`FaultProxy.stop`; this only bounds the loop if a wake-up is lost).
_SELECT_TIMEOUT = 1.0

_S3_ERRORS = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    502: ("BadGateway", "The upstream server did not answer."),
    503: ("ServiceUnavailable", "Service is unable to handle request."),
    504: ("GatewayTimeout", "The upstream server did not answer in time."),
}
_SLOW_DOWN = ("SlowDown", "Please reduce your request rate.")
_REASONS = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class FaultKind(enum.StrEnum):
    """What a fired :class:`Fault` does to a request (see the module's documentation)."""

    ERROR_BEFORE = "error_before"
    SLOW_DOWN = "slow_down"
    ERROR_AFTER = "error_after"
    RESET = "reset"
    RESET_AFTER = "reset_after"
    CUT_BODY = "cut_body"
    DELAY = "delay"
    OUTAGE = "outage"


def _check_method(instance: Fault, attribute: attrs.Attribute[str | None], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value.isupper()):
        raise ValueError(f"method must be None or an upper-case HTTP method (got {value!r})")


def _check_key(instance: Fault, attribute: attrs.Attribute[str | None], value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(
            f"key must be None or a glob str (got {value!r} that is a {type(value).__name__})"
        )


def _check_probability(instance: Fault, attribute: attrs.Attribute[float], value: object) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not 0.0 <= float(value) <= 1.0
    ):
        raise ValueError(f"probability must be a number in [0, 1] (got {value!r})")


def _check_times(instance: Fault, attribute: attrs.Attribute[int | None], value: object) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"times must be None or an int >= 1 (got {value!r})")


def _check_status(instance: Fault, attribute: attrs.Attribute[int], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value not in _S3_ERRORS:
        raise ValueError(
            f"status must be one of {sorted(_S3_ERRORS)} (got {value!r}); "
            "a fault is a server-side failure (5xx)"
        )


def _check_delay(instance: Fault, attribute: attrs.Attribute[float], value: object) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise ValueError(f"delay must be a number of seconds >= 0 (got {value!r})")


@attrs.frozen
class Fault:
    """A rule of a :class:`FaultProxy`: which requests it matches, when it fires, what it does.

    ``kind`` is a :class:`FaultKind` or its value (``"reset"``). ``method`` (``"GET"``, ...)
    and ``key`` (a :func:`fnmatch.fnmatchcase` glob over the decoded URL path without its
    leading ``/``, e.g. ``"*/manifest"``) narrow the requests matched; ``None`` matches all.
    ``probability`` is the chance that a matching request is hit; ``times`` stops the rule after
    that many hits (``None``: until the rules change). ``status`` is the answer of
    ``error_before`` and ``error_after``; ``delay`` the seconds a ``delay`` waits.
    """

    kind: FaultKind = attrs.field(converter=FaultKind)
    method: str | None = attrs.field(default=None, validator=_check_method, kw_only=True)
    key: str | None = attrs.field(default=None, validator=_check_key, kw_only=True)
    probability: float = attrs.field(default=1.0, validator=_check_probability, kw_only=True)
    times: int | None = attrs.field(default=None, validator=_check_times, kw_only=True)
    status: int = attrs.field(default=500, validator=_check_status, kw_only=True)
    delay: float = attrs.field(default=0.0, validator=_check_delay, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.kind is FaultKind.OUTAGE and (self.method is not None or self.key is not None):
            raise ValueError(
                "an outage refuses connections before any request is read: "
                f"it takes no method= nor key= (got method={self.method!r}, key={self.key!r})"
            )
        if self.delay and self.kind is not FaultKind.DELAY:
            raise ValueError(f"delay= goes with kind 'delay' (got kind {self.kind.value!r})")

    def matches(self, method: str, path: str) -> bool:
        """Whether this rule applies to a request (before its ``probability`` is drawn)."""
        if self.method is not None and method != self.method:
            return False
        return self.key is None or fnmatch.fnmatchcase(path, self.key)


@attrs.frozen
class FaultStatistics:
    """What a :class:`FaultProxy` has done, from :meth:`FaultProxy.statistics`.

    ``requests``: requests read from clients. ``forwarded``: requests sent on to the upstream
    server (their effects are in the store, whatever the client was told). ``injected``: faults
    injected, by kind (every :class:`FaultKind` value is a key; an ``outage`` counts each
    connection and each request it refused). ``upstream_failures``: forwarded requests the
    upstream did not answer (the client got a ``502``).
    """

    requests: int
    forwarded: int
    injected: Mapping[str, int]
    upstream_failures: int

    @property
    def faults(self) -> int:
        """All the faults injected, of every kind."""
        return sum(self.injected.values())


class _ProtocolError(Exception):
    """A peer sent something the proxy cannot relay (malformed, too large, or cut short)."""


@attrs.define
class _Rule:
    fault: Fault
    remaining: int | None


@attrs.frozen
class _Head:
    raw: bytes  # as received: first line, header lines and the blank line
    first: list[str]  # the first line, split in three at spaces
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "

    def header(self, name: str) -> str:
        return self.headers.get(name, "")


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream_url`` that injects faults by rules.

    Use it as a context manager (``with FaultProxy(url) as proxy``), or call :meth:`start` and
    :meth:`stop`. :attr:`url` is where clients connect. ``seed`` seeds the RNG drawing the
    rules' probabilities. Thread-safe: rules may change while requests flow.
    """

    def __init__(self, upstream_url: str, *, seed: int = 0) -> None:
        parts = urllib.parse.urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream_url must be an http:// URL (got {upstream_url!r})")
        if parts.path not in ("", "/") or parts.query:
            raise ValueError(
                f"upstream_url must have no path nor query: requests are forwarded unchanged "
                f"(got {upstream_url!r})"
            )
        self.upstream_url = upstream_url
        self._upstream = (parts.hostname, parts.port or 80)
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._random = random.Random(seed)
        self._requests = 0
        self._forwarded = 0
        self._upstream_failures = 0
        self._injected = dict.fromkeys((kind.value for kind in FaultKind), 0)
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._threads: set[threading.Thread] = set()
        self._sockets: set[socket.socket] = set()
        self._port = 0

    def __repr__(self) -> str:
        where = self.url if self._listener is not None else "not started"
        return f"FaultProxy({self.upstream_url!r}, {where})"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: the endpoint URL clients use."""
        if self._listener is None:
            raise RuntimeError("the proxy is not started: use it in a with block, or start() it")
        return f"http://127.0.0.1:{self._port}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Listen on a free port of 127.0.0.1 and serve in background threads."""
        if self._listener is not None or self._stopping.is_set():
            raise RuntimeError("a FaultProxy starts once")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", 0))
            listener.listen(128)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._port = listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"faultproxy-{self._port}", daemon=True
        )
        self._acceptor.start()

    def stop(self) -> None:
        """Stop accepting, cut every open connection, and wait for the serving threads.

        Returns within about :data:`STOP_TIMEOUT` seconds; calling it again does nothing.
        """
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
        if self._acceptor is not None:
            self._acceptor.join(STOP_TIMEOUT)
        with self._lock:
            open_sockets = list(self._sockets)
            threads = list(self._threads)
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(STOP_TIMEOUT)
        for own in (self._listener, self._wake_r, self._wake_w):
            if own is not None:
                own.close()

    # -- rules and statistics ---------------------------------------------------------------

    def set_faults(self, *faults: Fault) -> None:
        """Replace the rules by ``faults`` (tried in order); no argument clears them."""
        for fault in faults:
            if not isinstance(fault, Fault):
                raise TypeError(
                    f"faults must be Fault rules (got {fault!r} that is a {type(fault).__name__})"
                )
        with self._lock:
            self._rules = [_Rule(fault, fault.times) for fault in faults]

    def clear_faults(self) -> None:
        """Drop every rule: from now on requests are forwarded untouched."""
        self.set_faults()

    @contextlib.contextmanager
    def injecting(self, *faults: Fault) -> Iterator[None]:
        """Inject ``faults`` (replacing the rules) inside the block; restore the rules after."""
        with self._lock:
            saved = list(self._rules)
        self.set_faults(*faults)
        try:
            yield
        finally:
            with self._lock:
                self._rules = saved

    def faults(self) -> tuple[Fault, ...]:
        """The rules in force (those with ``times`` not used up)."""
        with self._lock:
            return tuple(rule.fault for rule in self._rules)

    def statistics(self) -> FaultStatistics:
        """Requests seen and forwarded, and faults injected by kind, since the start."""
        with self._lock:
            return FaultStatistics(
                requests=self._requests,
                forwarded=self._forwarded,
                injected=types.MappingProxyType(dict(self._injected)),
                upstream_failures=self._upstream_failures,
            )

    def _draw(self, method: str | None, path: str) -> Fault | None:
        """The rule that fires for a request (``method`` None: an outage check), counted."""
        with self._lock:
            if method is not None:
                self._requests += 1
            for rule in self._rules:
                fault = rule.fault
                if (fault.kind is FaultKind.OUTAGE) != (method is None):
                    continue
                if method is not None and not fault.matches(method, path):
                    continue
                if fault.probability < 1.0 and self._random.random() >= fault.probability:
                    continue
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining == 0:
                        self._rules.remove(rule)
                self._injected[fault.kind.value] += 1
                return fault
            return None

    def _count_forwarded(self) -> None:
        with self._lock:
            self._forwarded += 1

    def _count_upstream_failure(self) -> None:
        with self._lock:
            self._upstream_failures += 1

    # -- serving ----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None and self._wake_r is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in selector.select(_SELECT_TIMEOUT):
                    if key.fileobj is self._listener and not self._stopping.is_set():
                        self._accept()

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # e.g. the client gave up before we accepted (ECONNABORTED)
            return
        client.setblocking(True)
        if self._draw(None, "") is not None:
            _reset(client)
            return
        thread = threading.Thread(
            target=self._serve, args=(client,), name=f"faultproxy-{self._port}-conn", daemon=True
        )
        with self._lock:
            self._threads.add(thread)
            self._sockets.add(client)
        thread.start()

    def _serve(self, client: socket.socket) -> None:
        try:
            client.settimeout(IDLE_TIMEOUT)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader = _reader(client)
            try:
                while not self._stopping.is_set() and self._exchange(client, reader):
                    pass
            finally:
                reader.close()
        except (OSError, _ProtocolError):
            pass  # the client went away or sent garbage: drop its connection
        finally:
            client.close()
            with self._lock:
                self._sockets.discard(client)
                self._threads.discard(threading.current_thread())

    def _exchange(self, client: socket.socket, reader: io.BufferedReader) -> bool:
        """Serve one request; return whether the connection stays open for another."""
        if not reader.peek(1):
            return False  # the client closed its connection between requests
        if self._draw(None, "") is not None:
            _reset(client)
            return False
        head = _read_head(reader)
        if head is None:
            return False
        if len(head.first) != 3 or not head.first[2].startswith("HTTP/1."):
            raise _ProtocolError(f"not an HTTP/1.x request line: {head.first!r}")
        method, target, version = head.first
        path = _path_of(target)
        keep_alive = _keeps_alive(version, head)
        request_body = _body_framing(head)
        expects_continue = head.header("expect").lower() == "100-continue"
        fault = self._draw(method, path)
        kind = fault.kind if fault is not None else None

        if kind is FaultKind.RESET:
            _reset(client)
            return False
        if kind in (FaultKind.ERROR_BEFORE, FaultKind.SLOW_DOWN):
            assert fault is not None
            if expects_continue:
                client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            _copy_body(reader, request_body, _discard)
            client.sendall(_error_answer(fault, method, path, keep_alive=keep_alive))
            return keep_alive
        if fault is not None and kind is FaultKind.DELAY and self._stopping.wait(fault.delay):
            return False

        try:
            upstream = socket.create_connection(self._upstream, timeout=UPSTREAM_CONNECT_TIMEOUT)
        except OSError:
            self._count_upstream_failure()
            if expects_continue:
                client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            _copy_body(reader, request_body, _discard)
            client.sendall(_error_answer(Fault("error_before", status=502), method, path))
            return False
        with self._lock:
            self._sockets.add(upstream)
        try:
            upstream.settimeout(IDLE_TIMEOUT)
            self._count_forwarded()
            return self._forward(client, reader, upstream, head, fault, keep_alive=keep_alive)
        finally:
            with self._lock:
                self._sockets.discard(upstream)
            upstream.close()

    def _forward(
        self,
        client: socket.socket,
        reader: io.BufferedReader,
        upstream: socket.socket,
        head: _Head,
        fault: Fault | None,
        *,
        keep_alive: bool,
    ) -> bool:
        method, _, _ = head.first
        path = _path_of(head.first[1])
        sink = _Sink(upstream)
        sink(head.raw)
        if head.header("expect").lower() == "100-continue":
            # The proxy decided to forward: it lets the client send its body at once, and the
            # upstream's own interim answers are skipped below.
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        _copy_body(reader, _body_framing(head), sink)
        with _reader(upstream) as answer:
            status_head = _read_status(answer)
            if status_head is None:
                self._count_upstream_failure()
                client.sendall(_error_answer(Fault("error_before", status=502), method, path))
                return False
            status = int(status_head.first[1])
            framing = _answer_framing(method, status, status_head)
            kind = fault.kind if fault is not None else None
            if kind in (FaultKind.ERROR_AFTER, FaultKind.RESET_AFTER):
                assert fault is not None
                _copy_body(answer, framing, _discard)
                if kind is FaultKind.RESET_AFTER:
                    _reset(client)
                    return False
                client.sendall(_error_answer(fault, method, path, keep_alive=keep_alive))
                return keep_alive and not sink.broken
            if kind is FaultKind.CUT_BODY:
                body = bytearray()
                _copy_body(answer, framing, body.extend)
                if body:
                    client.sendall(status_head.raw + bytes(body[: len(body) // 2]))
                else:
                    # Cut inside the status code: a head cut anywhere after it reads, to some
                    # clients (http.client), as a complete head with fewer headers.
                    client.sendall(status_head.raw[: len("HTTP/1.1 2")])
                return False
            client.sendall(status_head.raw)
            _copy_body(answer, framing, client.sendall)
        closes = (
            framing == "eof"
            or sink.broken
            or "close" in status_head.header("connection").lower()
            or not keep_alive
        )
        return not closes


class _Sink:
    """Writes to the upstream; after a failed write (the upstream answered early and closed),
    swallows the rest, so the client's body is still read to its end."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.broken = False

    def __call__(self, data: bytes | bytearray) -> None:
        if self.broken:
            return
        try:
            self.sock.sendall(data)
        except OSError:
            self.broken = True


def _discard(data: bytes | bytearray) -> None:
    pass


def _reader(sock: socket.socket) -> io.BufferedReader:
    reader = sock.makefile("rb", buffering=RELAY_CHUNK_BYTES)
    assert isinstance(reader, io.BufferedReader)
    return reader


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP RST (linger 0) rather than an orderly FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _read_head(reader: io.BufferedReader) -> _Head | None:
    """Read a head up to its blank line; None if the stream ends before its first byte."""
    raw = bytearray()
    lines: list[bytes] = []
    while True:
        line = reader.readline(MAX_HEAD_BYTES + 1)
        if not line:
            if not raw:
                return None
            raise _ProtocolError("the stream ended inside a head")
        raw += line
        if len(raw) > MAX_HEAD_BYTES:
            raise _ProtocolError(f"a head longer than {MAX_HEAD_BYTES} bytes")
        if not line.endswith(b"\n"):
            raise _ProtocolError("the stream ended inside a head")
        if line in (b"\r\n", b"\n"):
            if not lines:
                raw.clear()  # an empty line before a request line is ignored (RFC 9112 2.2)
                continue
            break
        lines.append(line.rstrip(b"\r\n"))
    try:
        first = lines[0].decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep or not name or name != name.strip():
                raise _ProtocolError(f"a malformed header line: {line!r}")
            name = name.lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
    except UnicodeDecodeError as exc:  # pragma: no cover (latin-1 decodes every byte)
        raise _ProtocolError(str(exc)) from exc
    return _Head(raw=bytes(raw), first=first, headers=headers)


def _read_status(reader: io.BufferedReader) -> _Head | None:
    """The upstream's final answer head (interim 1xx answers skipped); None if it closed."""
    while True:
        head = _read_head(reader)
        if head is None:
            return None
        if (
            len(head.first) < 2
            or not head.first[0].startswith("HTTP/1.")
            or len(head.first[1]) != 3
        ):
            raise _ProtocolError(f"not an HTTP/1.x status line: {head.first!r}")
        if not head.first[1].isdigit():
            raise _ProtocolError(f"not an HTTP status: {head.first[1]!r}")
        if not head.first[1].startswith("1"):
            return head


# A body's framing: "chunked", "eof" (until the connection closes), or its length in bytes.
_Framing = int | str


def _body_framing(head: _Head) -> _Framing:
    if "chunked" in head.header("transfer-encoding").lower():
        return "chunked"
    return _content_length(head) or 0


def _answer_framing(method: str, status: int, head: _Head) -> _Framing:
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return 0
    if "chunked" in head.header("transfer-encoding").lower():
        return "chunked"
    length = _content_length(head)
    return "eof" if length is None else length


def _content_length(head: _Head) -> int | None:
    text = head.header("content-length")
    if not text:
        return None
    values = {value.strip() for value in text.split(",")}
    if len(values) != 1 or not next(iter(values)).isdigit():
        raise _ProtocolError(f"a bad Content-Length: {text!r}")
    return int(values.pop())


def _copy_body(
    reader: io.BufferedReader, framing: _Framing, out: Callable[[bytes], object]
) -> None:
    """Relay a body as it is framed on the wire (chunk sizes and trailers included)."""
    if framing == "chunked":
        while True:
            line = reader.readline(MAX_HEAD_BYTES + 1)
            if not line.endswith(b"\n"):
                raise _ProtocolError("a chunked body cut in a chunk's size line")
            out(line)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise _ProtocolError(f"a bad chunk size line: {line!r}") from exc
            if size == 0:
                break
            _copy_exactly(reader, size + 2, out)  # the chunk and its CRLF
        while True:  # trailers, up to the blank line
            line = reader.readline(MAX_HEAD_BYTES + 1)
            if not line.endswith(b"\n"):
                raise _ProtocolError("a chunked body cut in its trailers")
            out(line)
            if line in (b"\r\n", b"\n"):
                return
    elif framing == "eof":
        while chunk := reader.read1(RELAY_CHUNK_BYTES):
            out(chunk)
    else:
        assert isinstance(framing, int)
        _copy_exactly(reader, framing, out)


def _copy_exactly(reader: io.BufferedReader, n: int, out: Callable[[bytes], object]) -> None:
    while n > 0:
        chunk = reader.read1(min(n, RELAY_CHUNK_BYTES))
        if not chunk:
            raise _ProtocolError(f"a body cut short ({n} bytes missing)")
        out(chunk)
        n -= len(chunk)


def _path_of(target: str) -> str:
    """The decoded path of a request target (origin or absolute form), without its ``/``."""
    if "://" in target:
        target = urllib.parse.urlsplit(target).path or "/"
    path = target.split("?", 1)[0]
    return urllib.parse.unquote(path).removeprefix("/")


def _keeps_alive(version: str, head: _Head) -> bool:
    connection = head.header("connection").lower()
    if version == "HTTP/1.0":
        return "keep-alive" in connection
    return "close" not in connection


def _error_answer(fault: Fault, method: str, path: str, *, keep_alive: bool = False) -> bytes:
    """An S3 error answer (XML body) for an injected error."""
    if fault.kind is FaultKind.SLOW_DOWN:
        status, (code, message) = 503, _SLOW_DOWN
    else:
        status, (code, message) = fault.status, _S3_ERRORS[fault.status]
    resource = _xml_escape("/" + path)
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{resource}</Resource><RequestId>faultproxy</RequestId></Error>"
    ).encode()
    if method == "HEAD":
        body = b""
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        "Content-Type: application/xml",
        f"Content-Length: {len(body)}",
        "x-amz-request-id: faultproxy",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
