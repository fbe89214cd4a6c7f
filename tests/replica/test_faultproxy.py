"""The fault-injecting S3 proxy (runtime/faultproxy.py), in front of a real SeaweedFS server.

Each fault kind is observed by a raw HTTP client (http.client, with presigned URLs so that the
server accepts the requests), and its effect on the store checked through a direct client. The
replica store conformance suite runs through the proxy with no faults: the proxy is transparent.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import inspect
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3.session
import botocore.config
import botocore.exceptions
import pytest

from actors import ReplicaStore, S3Store
from runtime.faultproxy import STOP_TIMEOUT, Fault, FaultKind, FaultProxy
from tests.replica import test_replica_store as conformance
from tests.support.s3server import S3Server


def boto_client(server: S3Server, endpoint_url: str, **config: Any) -> Any:
    """A boto3 S3 client with the server's identity, one attempt a request (no retries)."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=server.region,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        config=botocore.config.Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            retries={"mode": "standard", "total_max_attempts": 1},
            **config,
        ),
    )


class Raw:
    """A raw HTTP client of the proxy: presigned requests over one http.client connection."""

    def __init__(self, server: S3Server, proxy: FaultProxy) -> None:
        self.server = server
        self.proxy = proxy
        self.signer = boto_client(server, proxy.url)
        self.prefix = f"raw-{uuid.uuid4().hex[:12]}"
        self.connection = self.connect()

    def connect(self) -> http.client.HTTPConnection:
        port = urllib.parse.urlsplit(self.proxy.url).port
        return http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def target(self, operation: str, key: str) -> str:
        """The path and query of a presigned request for ``key`` under this client's prefix."""
        url = self.signer.generate_presigned_url(
            operation, Params={"Bucket": self.server.bucket, "Key": f"{self.prefix}/{key}"}
        )
        parts = urllib.parse.urlsplit(url)
        return f"{parts.path}?{parts.query}"

    def request(
        self,
        method: str,
        key: str,
        body: bytes | Iterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
        *,
        connection: http.client.HTTPConnection | None = None,
    ) -> http.client.HTTPResponse:
        operation = {"GET": "get_object", "PUT": "put_object", "HEAD": "head_object"}[method]
        conn = connection or self.connection
        chunked = body is not None and not isinstance(body, bytes)
        conn.request(
            method, self.target(operation, key), body, headers or {}, encode_chunked=chunked
        )
        return conn.getresponse()

    def close(self) -> None:
        self.connection.close()
        self.signer.close()


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's SeaweedFS, with no rules yet."""
    with FaultProxy(s3_server.endpoint_url, seed=1) as proxy:
        yield proxy


@pytest.fixture
def raw(s3_server: S3Server, proxy: FaultProxy) -> Iterator[Raw]:
    """A raw HTTP client of the proxy, working under a prefix of its own."""
    client = Raw(s3_server, proxy)
    yield client
    client.close()


@pytest.fixture
def upstream(s3_server: S3Server) -> Iterator[Any]:
    """A boto3 client of the server itself, behind no proxy: what the store really holds."""
    client = boto_client(s3_server, s3_server.endpoint_url)
    yield client
    client.close()


def stored(upstream: Any, raw: Raw, key: str) -> bytes | None:
    """The bytes the server holds under ``key`` of ``raw``'s prefix, or None."""
    try:
        response = upstream.get_object(Bucket=raw.server.bucket, Key=f"{raw.prefix}/{key}")
    except botocore.exceptions.ClientError as exc:
        if exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
            return None
        raise
    data: bytes = response["Body"].read()
    return data


def error_code(response: http.client.HTTPResponse) -> str:
    body = response.read().decode()
    return body.split("<Code>", 1)[1].split("</Code>", 1)[0]


def wait_for(condition: Callable[[], bool], what: str, within: float = 10.0) -> None:
    """Wait until ``condition()`` holds (an event in another thread), failing after ``within``."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


# -- transparency -----------------------------------------------------------------------------


def test_signed_requests_pass_unchanged(s3_server: S3Server, proxy: FaultProxy) -> None:
    """A boto3 client pointed at the proxy signs for it, and the server accepts its requests."""
    client = boto_client(s3_server, proxy.url)
    key = f"plain-{uuid.uuid4().hex[:12]}/k"
    try:
        put = client.put_object(Bucket=s3_server.bucket, Key=key, Body=b"through the proxy")
        got = client.get_object(Bucket=s3_server.bucket, Key=key)
        assert got["Body"].read() == b"through the proxy"
        assert got["ETag"] == put["ETag"]
        listed = client.list_objects_v2(Bucket=s3_server.bucket, Prefix=key)
        assert [item["Key"] for item in listed["Contents"]] == [key]
        client.delete_object(Bucket=s3_server.bucket, Key=key)
    finally:
        client.close()
    stats = proxy.statistics()
    assert stats.requests == stats.forwarded == 4
    assert stats.faults == 0 and stats.upstream_failures == 0


def test_works_as_a_plain_http_proxy(s3_server: S3Server, proxy: FaultProxy) -> None:
    """A client may use it as its HTTP proxy (absolute targets), signing for the server itself."""
    client = boto_client(s3_server, s3_server.endpoint_url, proxies={"http": proxy.url})
    key = f"proxied-{uuid.uuid4().hex[:12]}"
    try:
        with proxy.injecting(Fault("error_before", method="GET", key=f"*/{key}", times=1)):
            client.put_object(Bucket=s3_server.bucket, Key=key, Body=b"v")
            with pytest.raises(botocore.exceptions.ClientError, match="InternalError"):
                client.get_object(Bucket=s3_server.bucket, Key=key)
        assert client.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() == b"v"
    finally:
        client.close()
    assert proxy.statistics().forwarded == 2


def test_chunked_body_with_expect_continue(raw: Raw, upstream: Any, proxy: FaultProxy) -> None:
    """A chunked request body sent after 100 Continue reaches the server byte for byte."""
    parts = [b"first part, ", b"x" * 200_000, b", last part"]
    response = raw.request("PUT", "chunked", iter(parts), {"Expect": "100-continue"})
    assert response.status == 200, response.read()
    response.read()
    assert stored(upstream, raw, "chunked") == b"".join(parts)
    assert proxy.statistics().forwarded == 1


def _proxied_conformance() -> dict[str, Callable[..., None]]:
    """The conformance tests of test_replica_store.py (those that take only a store)."""
    tests: dict[str, Callable[..., None]] = {}
    for name, fn in vars(conformance).items():
        if name.startswith("test_") and inspect.isfunction(fn):
            parameters = set(inspect.signature(fn).parameters)
            if parameters and parameters <= {"store", "make_store", "key"}:
                tests[f"test_proxied_{name.removeprefix('test_')}"] = fn
    return tests


PROXIED_CONFORMANCE = _proxied_conformance()
globals().update(PROXIED_CONFORMANCE)


@pytest.fixture(scope="module")
def clean_proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    """One proxy with no rules for the conformance suite; it must inject nothing."""
    with FaultProxy(s3_server.endpoint_url) as proxy:
        yield proxy
        stats = proxy.statistics()
        assert stats.faults == 0 and stats.upstream_failures == 0
        assert stats.forwarded == stats.requests > 0


@pytest.fixture
def make_store(
    s3_credentials: S3Server, clean_proxy: FaultProxy
) -> Iterator[conformance.MakeStore]:
    """Make S3 stores side by side, reaching the server through the clean proxy."""
    made: list[ReplicaStore] = []
    base = f"proxied-{uuid.uuid4().hex[:12]}"

    def make(name: str) -> ReplicaStore:
        store = S3Store(
            s3_credentials.bucket,
            prefix=f"{base}/{name}",
            endpoint_url=clean_proxy.url,
            region=s3_credentials.region,
            path_style=True,
        )
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(make_store: conformance.MakeStore) -> ReplicaStore:
    """One fresh, empty store behind the clean proxy."""
    return make_store("replica")


def test_the_whole_conformance_suite_runs_proxied() -> None:
    """Every store-only conformance test also runs through the proxy (none is left out)."""
    assert "test_proxied_round_trip" in PROXIED_CONFORMANCE
    assert "test_proxied_large_object" in PROXIED_CONFORMANCE
    assert "test_proxied_compare_and_swap_race" in PROXIED_CONFORMANCE
    assert len(PROXIED_CONFORMANCE) >= 18


# -- each fault kind, seen by a raw client ------------------------------------------------------


def test_error_before_is_not_forwarded(raw: Raw, upstream: Any, proxy: FaultProxy) -> None:
    """error_before answers an S3 error at once; the store never sees the request."""
    proxy.set_faults(Fault("error_before", times=1), Fault("error_before", status=503, times=1))
    first = raw.request("PUT", "k", b"data")
    assert (first.status, error_code(first)) == (500, "InternalError")
    second = raw.request("PUT", "k", b"data")  # the same connection: it stays usable
    assert (second.status, error_code(second)) == (503, "ServiceUnavailable")
    assert stored(upstream, raw, "k") is None
    stats = proxy.statistics()
    assert (stats.requests, stats.forwarded, stats.injected["error_before"]) == (2, 0, 2)


def test_slow_down_is_503_not_forwarded(raw: Raw, upstream: Any, proxy: FaultProxy) -> None:
    """slow_down answers 503 SlowDown to everything, without forwarding."""
    proxy.set_faults(Fault("slow_down"))
    for method in ("PUT", "GET"):
        response = raw.request(method, "k", b"data" if method == "PUT" else None)
        assert (response.status, error_code(response)) == (503, "SlowDown")
    head = raw.request("HEAD", "k")
    assert head.status == 503 and head.read() == b""
    proxy.clear_faults()
    assert stored(upstream, raw, "k") is None
    assert proxy.statistics().injected["slow_down"] == 3
    assert proxy.statistics().forwarded == 0


def test_error_after_changes_the_store(raw: Raw, upstream: Any, proxy: FaultProxy) -> None:
    """error_after forwards the write, then answers 500: the write happened all the same."""
    proxy.set_faults(Fault("error_after", method="PUT"))
    response = raw.request("PUT", "k", b"landed")
    assert (response.status, error_code(response)) == (500, "InternalError")
    assert stored(upstream, raw, "k") == b"landed"
    assert proxy.statistics().forwarded == 1


def test_reset_is_not_forwarded(raw: Raw, upstream: Any, proxy: FaultProxy) -> None:
    """reset answers with a TCP reset, and the store never sees the request."""
    proxy.set_faults(Fault("reset"))
    with pytest.raises(ConnectionResetError) as info:
        raw.request("PUT", "k", b"data")
    assert not isinstance(info.value, http.client.RemoteDisconnected)  # a RST, not a FIN
    proxy.clear_faults()
    assert stored(upstream, raw, "k") is None
    assert proxy.statistics().forwarded == 0


def test_reset_after_changes_the_store(raw: Raw, upstream: Any, proxy: FaultProxy) -> None:
    """reset_after forwards the write, then resets the client's connection instead of answering."""
    proxy.set_faults(Fault("reset_after"))
    with pytest.raises(ConnectionResetError):
        raw.request("PUT", "k", b"landed anyway")
    proxy.clear_faults()
    assert stored(upstream, raw, "k") == b"landed anyway"
    assert proxy.statistics().injected["reset_after"] == 1


def test_cut_body_sends_half(raw: Raw, upstream: Any, proxy: FaultProxy) -> None:
    """cut_body sends the status, headers and half the promised body, then closes."""
    data = bytes(range(256)) * 40
    assert raw.request("PUT", "k", data).read() == b""
    proxy.set_faults(Fault("cut_body", method="GET"))
    response = raw.request("GET", "k")
    assert response.status == 200
    assert int(response.headers["Content-Length"]) == len(data)
    with pytest.raises(http.client.IncompleteRead) as info:
        response.read()
    assert info.value.partial == data[: len(data) // 2]


def test_cut_body_of_an_empty_answer(raw: Raw, proxy: FaultProxy) -> None:
    """An answer without a body is cut in its status line: never read as a complete answer."""
    assert raw.request("PUT", "empty", b"").read() == b""
    proxy.set_faults(Fault("cut_body", method="PUT"))
    with pytest.raises(http.client.BadStatusLine):
        raw.request("PUT", "empty", b"")


def test_delay_then_forwards(raw: Raw, proxy: FaultProxy) -> None:
    """delay holds a request for its seconds, then forwards it untouched."""
    proxy.set_faults(Fault("delay", delay=0.3))
    started = time.monotonic()
    response = raw.request("PUT", "k", b"late")
    assert response.status == 200 and response.read() == b""
    assert time.monotonic() - started >= 0.3
    assert proxy.statistics().injected["delay"] == proxy.statistics().forwarded == 1


def test_outage_refuses_everything(raw: Raw, upstream: Any, proxy: FaultProxy) -> None:
    """An outage resets open connections at their next request and new ones at once."""
    assert raw.request("PUT", "k", b"before").read() == b""  # the connection is now open
    proxy.set_faults(Fault("outage"))
    with pytest.raises(ConnectionResetError):
        raw.request("PUT", "k", b"during")
    fresh = raw.connect()
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        raw.request("GET", "k", connection=fresh)
    fresh.close()
    proxy.clear_faults()
    raw.connection.close()
    assert raw.request("GET", "k").read() == b"before"  # on a new connection
    assert stored(upstream, raw, "k") == b"before"
    stats = proxy.statistics()
    assert stats.injected["outage"] == 2
    assert stats.forwarded == 2  # the PUT before, the GET after


# -- rules --------------------------------------------------------------------------------------


def test_rules_match_method_and_key(raw: Raw, proxy: FaultProxy) -> None:
    """A rule hits only the requests of its method whose path matches its glob."""
    proxy.set_faults(Fault("error_before", method="PUT", key="*/segments/*"))
    assert raw.request("PUT", "manifest", b"m").status == 200
    raw.connection.close()
    assert raw.request("PUT", "segments/1", b"s").status == 500
    raw.connection.close()
    assert raw.request("GET", "segments/1").status == 404  # not written, and a GET passes


def test_times_then_the_rule_is_gone(raw: Raw, proxy: FaultProxy) -> None:
    """A rule with times=N hits the next N matching requests, then is dropped."""
    proxy.set_faults(Fault("error_before", times=2), Fault("slow_down", method="DELETE"))
    statuses = []
    for _ in range(4):
        response = raw.request("GET", "k")
        response.read()
        statuses.append(response.status)
    assert statuses == [500, 500, 404, 404]
    assert proxy.faults() == (Fault("slow_down", method="DELETE"),)


def _draws(s3_server: S3Server, seed: int) -> list[int]:
    with FaultProxy(s3_server.endpoint_url, seed=seed) as proxy:
        client = Raw(s3_server, proxy)
        try:
            proxy.set_faults(Fault("error_before", probability=0.5))
            statuses = []
            for _ in range(40):
                response = client.request("GET", "missing")
                response.read()
                statuses.append(response.status)
        finally:
            client.close()
    return statuses


def test_probability_is_drawn_from_the_seed(s3_server: S3Server) -> None:
    """A probability rule hits some requests, the same ones for the same seed."""
    first, again, other = _draws(s3_server, 5), _draws(s3_server, 5), _draws(s3_server, 6)
    assert first == again
    assert first != other
    assert set(first) == {404, 500}


def test_injecting_restores_the_rules(proxy: FaultProxy) -> None:
    """injecting() replaces the rules inside its block and puts the old ones back after."""
    outer = Fault("reset", method="GET")
    proxy.set_faults(outer)
    with proxy.injecting(Fault("outage"), Fault("delay", delay=1.0)):
        assert [f.kind for f in proxy.faults()] == [FaultKind.OUTAGE, FaultKind.DELAY]
    assert proxy.faults() == (outer,)
    proxy.clear_faults()
    assert proxy.faults() == ()


def test_rules_change_while_requests_flow(raw: Raw, s3_server: S3Server, proxy: FaultProxy) -> None:
    """Rules replaced under concurrent requests: each request is forwarded or hit, counted."""
    done = threading.Event()

    def client(_: int) -> list[int]:
        one = Raw(s3_server, proxy)
        statuses: list[int] = []
        try:
            while not done.is_set() or len(statuses) < 5:
                response = one.request("GET", "missing")
                response.read()
                statuses.append(response.status)
        finally:
            one.close()
        return statuses

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client, i) for i in range(4)]
        for i in range(200):
            proxy.set_faults(*([Fault("error_before")] if i % 2 else []))
        done.set()
        statuses = [s for future in futures for s in future.result()]
    assert set(statuses) <= {404, 500}
    stats = proxy.statistics()
    assert stats.requests == len(statuses)
    assert stats.forwarded + stats.injected["error_before"] == stats.requests
    assert statuses.count(500) == stats.injected["error_before"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"kind": "explode"}, "'explode' is not a valid FaultKind"),
        ({"kind": "reset", "method": "get"}, "method must be None or an upper-case"),
        ({"kind": "reset", "key": 3}, "key must be None or a glob str"),
        ({"kind": "reset", "probability": 1.5}, r"probability must be a number in \[0, 1\]"),
        ({"kind": "reset", "times": 0}, "times must be None or an int >= 1"),
        ({"kind": "error_before", "status": 404}, "status must be one of"),
        ({"kind": "reset", "delay": 1.0}, "delay= goes with kind 'delay'"),
        ({"kind": "delay", "delay": -1}, "delay must be a number of seconds >= 0"),
        ({"kind": "outage", "method": "GET"}, "an outage refuses connections"),
    ],
)
def test_bad_rules_are_refused(arguments: dict[str, Any], message: str) -> None:
    """A rule that makes no sense is refused when made, with the reason."""
    with pytest.raises((ValueError, TypeError), match=message):
        Fault(**arguments)


def test_bad_upstream_is_refused() -> None:
    """Only an http:// endpoint without a path can be proxied."""
    with pytest.raises(ValueError, match="http:// URL"):
        FaultProxy("https://s3.amazonaws.com")
    with pytest.raises(ValueError, match="no path"):
        FaultProxy("http://127.0.0.1:9000/bucket")
    with pytest.raises(RuntimeError, match="not started"):
        _ = FaultProxy("http://127.0.0.1:9000").url


# -- the proxy itself ---------------------------------------------------------------------------


def test_unreachable_upstream_is_502() -> None:
    """When the server cannot be reached the client gets 502 BadGateway, counted."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with FaultProxy(f"http://127.0.0.1:{port}") as proxy:
        connection = http.client.HTTPConnection("127.0.0.1", urllib.parse.urlsplit(proxy.url).port)
        connection.request("GET", "/bucket/key")
        response = connection.getresponse()
        assert (response.status, error_code(response)) == (502, "BadGateway")
        connection.close()
        assert proxy.statistics().upstream_failures == 1


def test_stop_is_prompt_and_clean(raw: Raw, proxy: FaultProxy) -> None:
    """stop() cuts open connections and held requests, ends its threads, and frees the port."""
    assert raw.request("PUT", "k", b"v").read() == b""  # an idle keep-alive connection
    proxy.set_faults(Fault("delay", delay=600.0))
    held = Raw(raw.server, proxy)
    failures: list[BaseException] = []

    def ask() -> None:
        try:
            held.request("GET", "k").read()
        except (OSError, http.client.HTTPException) as exc:
            failures.append(exc)

    thread = threading.Thread(target=ask)
    thread.start()
    wait_for(lambda: proxy.statistics().injected["delay"] == 1, "the request to be held")
    port = urllib.parse.urlsplit(proxy.url).port
    started = time.monotonic()
    proxy.stop()
    assert time.monotonic() - started < STOP_TIMEOUT
    thread.join(10)
    held.close()
    assert len(failures) == 1  # the held request ends, unanswered
    assert not [t for t in threading.enumerate() if t.name.startswith(f"faultproxy-{port}")]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    proxy.stop()  # again: nothing to do
    assert proxy.statistics().forwarded == 1  # the held request never reached the server
