"""S3Store under S3 faults: a real SeaweedFS behind the fault proxy (runtime/faultproxy.py), the
store's own boto3 client.

Whatever goes wrong on the way (refused or reset connections, answers cut mid-body, 5xx,
throttling, timeouts), S3Store raises ReplicaUnavailableError and nothing else, within seconds,
and works again once the faults stop; conditional writes keep their exact meaning through
answers that were lost after the write landed (issue 11, item 7).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from actors import PreconditionFailedError, ReplicaUnavailableError, S3Store
from runtime.faultproxy import Fault, FaultKind, FaultProxy
from runtime.replica import s3_store
from runtime.replica.s3_store import (
    S3_MAX_ATTEMPTS,
    S3_RETRY_DELAY,
    S3_THROTTLE_RETRY_DELAY,
)
from tests.support.s3server import S3Server

#: Seconds a failing call may take beyond its backoff waits: three quick requests on 127.0.0.1.
SLACK = 1.0

#: The longest the waits between attempts can add up to, after throttling answers.
THROTTLED_WAITS = S3_THROTTLE_RETRY_DELAY * (2 ** (S3_MAX_ATTEMPTS - 1) - 1)

#: The same after other failures.
WAITS = S3_RETRY_DELAY * (2 ** (S3_MAX_ATTEMPTS - 1) - 1)


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's SeaweedFS, with no rules yet."""
    with FaultProxy(s3_server.endpoint_url, seed=11) as proxy:
        yield proxy


def make_store(server: S3Server, proxy: FaultProxy, prefix: str) -> S3Store:
    return S3Store(
        server.bucket,
        prefix=prefix,
        endpoint_url=proxy.url,
        region=server.region,
        path_style=True,
    )


@pytest.fixture
def store(s3_credentials: S3Server, proxy: FaultProxy) -> Iterator[S3Store]:
    """An S3 store under a fresh prefix, reaching the server through the proxy."""
    store = make_store(s3_credentials, proxy, f"faults-{uuid.uuid4().hex[:12]}")
    yield store
    store.close()


#: The store's calls, each given the ETag of the key "seed" (for a compare-and-swap) and a
#: number that makes keys fresh.
CALLS: dict[str, Callable[[S3Store, str, int], object]] = {
    "get": lambda store, etag, n: store.get("seed"),
    "put": lambda store, etag, n: store.put("plain", b"plain bytes"),
    "create": lambda store, etag, n: store.put(f"create/{n}", b"new", if_none_match=True),
    "swap": lambda store, etag, n: store.put("seed", f"swap {n}".encode(), if_match=etag),
    "delete": lambda store, etag, n: store.delete("plain"),
    "list": lambda store, etag, n: list(store.list()),
}

FAILING_KINDS = [kind for kind in FaultKind if kind is not FaultKind.DELAY]


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("kind", FAILING_KINDS)
def test_every_fault_is_replica_unavailable(
    store: S3Store, proxy: FaultProxy, kind: FaultKind, call: str
) -> None:
    """Any fault: each call raises ReplicaUnavailableError only, in seconds, then recovers."""
    etag = store.put("seed", b"seed bytes")
    proxy.set_faults(Fault(kind))
    started = time.monotonic()
    with pytest.raises(ReplicaUnavailableError) as info:
        CALLS[call](store, etag, 0)
    assert type(info.value) is ReplicaUnavailableError
    assert time.monotonic() - started < THROTTLED_WAITS + SLACK
    # The store's retries and no more; a conditional put whose last answer was 412 after an
    # attempt in doubt reads its key back (with its own attempts).
    injected = proxy.statistics().injected[kind.value]
    assert S3_MAX_ATTEMPTS <= injected <= 2 * S3_MAX_ATTEMPTS
    if call not in ("create", "swap"):
        assert injected == S3_MAX_ATTEMPTS
    proxy.clear_faults()
    current = store.get("seed")
    assert current is not None
    CALLS[call](store, current[1], 1)


def test_throttling_fails_fast(store: S3Store, proxy: FaultProxy) -> None:
    """Under 503 SlowDown to everything a call gives up in seconds, not minutes of backoff."""
    store.put("k", b"v")
    before = store.statistics().gets
    proxy.set_faults(Fault("slow_down"))
    started = time.monotonic()
    with pytest.raises(ReplicaUnavailableError, match="SlowDown") as info:
        store.get("k")
    elapsed = time.monotonic() - started
    assert elapsed < THROTTLED_WAITS + SLACK
    assert f"after {S3_MAX_ATTEMPTS} attempt(s)" in str(info.value)
    assert store.statistics().gets - before == S3_MAX_ATTEMPTS


def test_a_blip_is_retried_inside_the_call(store: S3Store, proxy: FaultProxy) -> None:
    """One failed attempt (of any kind) is retried by the store at once: the call succeeds."""
    data = b"0123456789" * 1000
    etag = store.put("k", data)
    for kind in FAILING_KINDS:
        proxy.set_faults(Fault(kind, times=1))
        started = time.monotonic()
        assert store.get("k") == (data, etag), kind
        assert time.monotonic() - started < S3_THROTTLE_RETRY_DELAY + SLACK
    assert proxy.statistics().faults == len(FAILING_KINDS)


def test_a_get_cut_mid_body(store: S3Store, proxy: FaultProxy) -> None:
    """A GET cut mid-body is retried, then ReplicaUnavailableError, never a urllib3 error."""
    data = bytes(range(256)) * 4096  # 1 MiB
    etag = store.put("big", data)
    proxy.set_faults(Fault("cut_body", method="GET", times=1))
    assert store.get("big") == (data, etag)
    proxy.set_faults(Fault("cut_body", method="GET"))
    with pytest.raises(ReplicaUnavailableError, match="reading from response stream") as info:
        store.get("big")
    assert type(info.value) is ReplicaUnavailableError
    assert info.value.__cause__ is not None
    proxy.clear_faults()
    assert store.get("big") == (data, etag)


def test_a_reset_connection(store: S3Store, proxy: FaultProxy) -> None:
    """A reset connection is ReplicaUnavailableError, wrote nothing, and the store recovers."""
    proxy.set_faults(Fault("reset"))
    with pytest.raises(ReplicaUnavailableError, match="ConnectionClosedError"):
        store.put("k", b"v", if_none_match=True)
    proxy.clear_faults()
    assert store.get("k") is None
    etag = store.put("k", b"v", if_none_match=True)
    assert store.get("k") == (b"v", etag)


def test_a_read_timeout(
    s3_credentials: S3Server, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A silent store is ReplicaUnavailableError after the read timeout, within the window."""
    monkeypatch.setattr(s3_store, "S3_READ_TIMEOUT", 0.3)
    store = make_store(s3_credentials, proxy, f"faults-{uuid.uuid4().hex[:12]}")
    try:
        store.put("k", b"v")
        proxy.set_faults(Fault("delay", method="GET", delay=30.0))
        started = time.monotonic()
        with pytest.raises(ReplicaUnavailableError, match="ReadTimeoutError"):
            store.get("k")
        assert time.monotonic() - started < S3_MAX_ATTEMPTS * (0.3 + SLACK)
        assert store.statistics().gets == S3_MAX_ATTEMPTS
        # An attempt that outlasts the retry window is the last one.
        monkeypatch.setattr(s3_store, "S3_RETRY_WINDOW", 0.1)
        with pytest.raises(ReplicaUnavailableError, match="after 1 attempt"):
            store.get("k")
        assert store.statistics().gets == S3_MAX_ATTEMPTS + 1
        proxy.clear_faults()
        assert store.get("k") is not None
    finally:
        store.close()


def test_a_delay_within_the_timeouts_is_only_slow(store: S3Store, proxy: FaultProxy) -> None:
    """A slow answer is no failure: the call waits for it."""
    etag = store.put("k", b"v")
    proxy.set_faults(Fault("delay", delay=0.2))
    started = time.monotonic()
    assert store.get("k") == (b"v", etag)
    assert time.monotonic() - started >= 0.2
    assert store.statistics().gets == 1


def test_an_outage_then_recovery(store: S3Store, proxy: FaultProxy) -> None:
    """During an outage every call is ReplicaUnavailableError at once; after it, all work."""
    etag = store.put("seed", b"v")
    with proxy.injecting(Fault("outage")):
        for call in CALLS.values():
            started = time.monotonic()
            with pytest.raises(ReplicaUnavailableError, match="unreachable"):
                call(store, etag, 0)
            assert time.monotonic() - started < WAITS + SLACK
    for n, call in enumerate(CALLS.values(), start=1):
        current = store.get("seed")
        call(store, current[1] if current else etag, n)


# -- conditional writes through lost answers ----------------------------------------------------


@pytest.mark.parametrize("kind", ["error_after", "reset_after", "cut_body"])
def test_create_whose_answer_was_lost(store: S3Store, proxy: FaultProxy, kind: str) -> None:
    """A create that landed but lost its answer returns its ETag (its retry's 412 is ours)."""
    proxy.set_faults(Fault(kind, method="PUT", times=1))
    etag = store.put("segment", b"our bytes", if_none_match=True)
    assert store.get("segment") == (b"our bytes", etag)
    assert proxy.statistics().injected[kind] == 1
    with pytest.raises(PreconditionFailedError):  # and a second create still fails
        store.put("segment", b"our bytes", if_none_match=True)


def test_swap_whose_answer_was_lost(store: S3Store, proxy: FaultProxy) -> None:
    """A compare-and-swap that landed but was answered 500 is recognised on its retry's 412."""
    base = store.put("manifest", b"epoch 1")
    proxy.set_faults(Fault("error_after", method="PUT", times=1))
    etag = store.put("manifest", b"epoch 2", if_match=base)
    assert store.get("manifest") == (b"epoch 2", etag)


def test_a_write_answered_500_every_time(store: S3Store, proxy: FaultProxy) -> None:
    """A write landed but answered 500 every time is ReplicaUnavailableError (outcome unknown)."""
    proxy.set_faults(Fault("error_after", method="PUT"))
    with pytest.raises(ReplicaUnavailableError, match="read the key back"):
        store.put("segment", b"landed", if_none_match=True)
    proxy.clear_faults()
    got = store.get("segment")
    assert got is not None and got[0] == b"landed"


def test_a_lost_condition_after_a_failed_attempt(store: S3Store, proxy: FaultProxy) -> None:
    """A 412 after a failed attempt, on another writer's bytes, is PreconditionFailedError."""
    theirs = store.put("segment", b"their bytes")
    proxy.set_faults(Fault("error_before", method="PUT", times=1))
    with pytest.raises(PreconditionFailedError):
        store.put("segment", b"our bytes", if_none_match=True)
    assert store.get("segment") == (b"their bytes", theirs)


def test_a_plain_lost_condition_reads_nothing(store: S3Store, proxy: FaultProxy) -> None:
    """A 412 on the first attempt is a lost condition at once: no retry, no read-back."""
    store.put("segment", b"their bytes")
    before = store.statistics()
    with pytest.raises(PreconditionFailedError):
        store.put("segment", b"their bytes", if_none_match=True)
    after = store.statistics()
    assert (after.puts - before.puts, after.gets - before.gets) == (1, 0)
    assert proxy.statistics().faults == 0


RACERS = 8

#: Every failing kind at once, each hitting about one request in ten.
MIXED_FAULTS = [Fault(kind, probability=0.1) for kind in FAILING_KINDS]


@pytest.mark.parametrize("condition", ["create", "swap"])
def test_a_race_under_mixed_faults(store: S3Store, proxy: FaultProxy, condition: str) -> None:
    """Racing conditional puts under random faults: at most one wins, and the store holds it."""
    base = store.put("manifest", b"base") if condition == "swap" else None
    proxy.set_faults(*MIXED_FAULTS)
    barrier = threading.Barrier(RACERS)

    def write(i: int) -> str:
        barrier.wait()
        data = f"writer {i}".encode()
        if base is None:
            return store.put("manifest", data, if_none_match=True)
        return store.put("manifest", data, if_match=base)

    with concurrent.futures.ThreadPoolExecutor(RACERS) as pool:
        futures = {i: pool.submit(write, i) for i in range(RACERS)}
    wins = {i: f.result() for i, f in futures.items() if f.exception() is None}
    errors = [f.exception() for f in futures.values() if f.exception() is not None]
    assert all(type(e) in (PreconditionFailedError, ReplicaUnavailableError) for e in errors)
    assert len(wins) <= 1, wins
    proxy.clear_faults()
    got = store.get("manifest")
    assert got is not None
    for i, etag in wins.items():
        assert got == (f"writer {i}".encode(), etag)
