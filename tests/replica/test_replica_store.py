"""Replica stores: one conformance suite run against the directory store and a real S3 server.

The S3 server is SeaweedFS (``tests/s3server.py``), started once per session. Each S3 test
works under a prefix of its own in the one bucket, so tests never see each other's keys.
"""

from __future__ import annotations

import concurrent.futures
import io
import multiprocessing
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from multiprocessing.queues import Queue
from pathlib import Path
from unittest.mock import ANY

import boto3.session
import botocore.response
import botocore.stub
import pytest

import actors
from actors import (
    DirectoryStore,
    PreconditionFailedError,
    ReplicaError,
    ReplicaStatistics,
    ReplicaStore,
    ReplicaUnavailableError,
    S3Store,
)
from runtime.replica.s3_store import S3_MAX_ATTEMPTS
from tests.support.s3server import S3Server

MakeStore = Callable[[str], ReplicaStore]

RACERS = 8

ODD_KEYS = [
    "with space/and more  spaces",
    "plus+equals=amp&hash#question?",
    "percent%25/%2F/%",
    "tilde~and*star!quote'dq\"(paren)[br]{cb}<lt>|pipe^caret`tick$dollar,comma;semi:",
    "Case/Upper",
    "case/upper",  # differs from the one above only in case
    "caf\u00e9",  # é composed
    "cafe\u0301",  # é decomposed: a different key
    "emoji/\U0001f600/\u2603/\u4e2d\u6587",
    ".hidden/..../.../x.",
    "a",
    "a/b",  # "a" is both a key and the start of one
    "a/b/c",
    "long/" + "\u00e9" * 127 + "/" + "x" * 255,  # parts of 254 and 255 bytes
    "-dash/_under",
]

BAD_KEYS = [
    "",
    "/leading",
    "trailing/",
    "double//slash",
    "./dot",
    "dot/./dot",
    "up/../up",
    "..",
    "nul\x00byte",
    "new\nline",
    "lone\udc80surrogate",
    "k" * 1025,
    "x" * 256,
    "back\\slash",
    "part/" + "\u00e9" * 128,
]


@pytest.fixture(params=["directory", "s3"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    """Make stores of one kind side by side: in one bucket (S3) or one parent directory."""
    made: list[ReplicaStore] = []
    base = f"test-{uuid.uuid4().hex[:12]}"

    def make(name: str) -> ReplicaStore:
        store: ReplicaStore
        if request.param == "directory":
            store = DirectoryStore(tmp_path / name)
        else:
            server: S3Server = request.getfixturevalue("s3_credentials")
            store = S3Store(
                server.bucket,
                prefix=f"{base}/{name}",
                endpoint_url=server.endpoint_url,
                region=server.region,
                path_style=True,
            )
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(make_store: MakeStore) -> ReplicaStore:
    """One fresh, empty store."""
    return make_store("replica")


@pytest.fixture
def s3_store(s3_credentials: S3Server) -> Iterator[S3Store]:
    """A fresh S3 store under a prefix of its own."""
    store = S3Store(
        s3_credentials.bucket,
        prefix=f"test-{uuid.uuid4().hex[:12]}",
        endpoint_url=s3_credentials.endpoint_url,
        region=s3_credentials.region,
        path_style=True,
    )
    yield store
    store.close()


def race(n: int, fn: Callable[[int], str]) -> tuple[list[str], list[BaseException]]:
    """Run ``fn(i)`` for ``i < n`` on n threads released together; return wins and failures."""
    barrier = threading.Barrier(n)

    def run(i: int) -> str:
        barrier.wait()
        return fn(i)

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(run, i) for i in range(n)]
    wins, failures = [], []
    for future in futures:
        error = future.exception()
        if error is None:
            wins.append(future.result())
        else:
            failures.append(error)
    return wins, failures


# -- conformance: both stores -------------------------------------------------------------


def test_round_trip(store: ReplicaStore) -> None:
    """put returns the ETag that get returns with the same bytes; bytes-likes are accepted."""
    etag = store.put("manifest", b"v1")
    assert store.get("manifest") == (b"v1", etag)
    etag2 = store.put("manifest", bytearray(b"v2"))
    assert etag2 != etag
    assert store.get("manifest") == (b"v2", etag2)
    etag3 = store.put("segments/1", memoryview(b"xxsegmentxx")[2:-2])
    assert store.get("segments/1") == (b"segment", etag3)
    empty = store.put("empty", b"")
    assert store.get("empty") == (b"", empty)


def test_etag_follows_content(store: ReplicaStore) -> None:
    """Reading twice gives the same ETag; a changed content gives another one."""
    first = store.put("k", b"one")
    assert store.get("k") == store.get("k") == (b"one", first)
    assert store.put("k", b"two") != first
    assert isinstance(first, str) and first


def test_missing_key(store: ReplicaStore) -> None:
    """A missing key reads as None, and deleting it is not an error."""
    assert store.get("nothing/here") is None
    store.delete("nothing/here")
    assert store.get("nothing/here") is None


def test_create_only(store: ReplicaStore) -> None:
    """if_none_match=True creates a key once; a second create fails and changes nothing."""
    etag = store.put("segments/000001", b"first", if_none_match=True)
    with pytest.raises(PreconditionFailedError) as info:
        store.put("segments/000001", b"second", if_none_match=True)
    assert info.value.key == "segments/000001"
    assert isinstance(info.value, actors.ActorError)
    assert store.get("segments/000001") == (b"first", etag)


def test_create_only_race(store: ReplicaStore) -> None:
    """Of eight threads creating one key at once, exactly one wins, and its bytes are stored."""
    wins, failures = race(
        RACERS, lambda i: store.put("segments/race", f"writer {i}".encode(), if_none_match=True)
    )
    assert len(wins) == 1
    assert len(failures) == RACERS - 1
    assert all(isinstance(e, PreconditionFailedError) for e in failures), failures
    got = store.get("segments/race")
    assert got is not None and got[1] == wins[0] and got[0].startswith(b"writer ")


def test_compare_and_swap(store: ReplicaStore) -> None:
    """if_match with the current ETag replaces; with a stale one it fails and changes nothing."""
    v1 = store.put("manifest", b"epoch 1")
    v2 = store.put("manifest", b"epoch 2", if_match=v1)
    assert store.get("manifest") == (b"epoch 2", v2)
    with pytest.raises(PreconditionFailedError):
        store.put("manifest", b"stale writer", if_match=v1)
    assert store.get("manifest") == (b"epoch 2", v2)


def test_if_match_on_missing_key(store: ReplicaStore) -> None:
    """if_match on a key that does not exist fails and creates nothing."""
    etag = store.put("elsewhere", b"x")
    with pytest.raises(PreconditionFailedError):
        store.put("manifest", b"x", if_match=etag)
    assert store.get("manifest") is None


def test_compare_and_swap_race(store: ReplicaStore) -> None:
    """Of eight threads swapping from one ETag at once, exactly one wins."""
    base = store.put("manifest", b"base")
    wins, failures = race(
        RACERS, lambda i: store.put("manifest", f"writer {i}".encode(), if_match=base)
    )
    assert len(wins) == 1, wins
    assert all(isinstance(e, PreconditionFailedError) for e in failures), failures
    got = store.get("manifest")
    assert got is not None and got[1] == wins[0]


def test_conditions_are_exclusive(store: ReplicaStore) -> None:
    """Asking for both conditions at once is a mistake, refused before any request."""
    with pytest.raises(ValueError, match="at most one"):
        store.put("k", b"x", if_match='"abc"', if_none_match=True)
    with pytest.raises(TypeError, match="data must be bytes"):
        store.put("k", "text")  # type: ignore[arg-type]
    assert store.statistics().puts == 0


def test_delete(store: ReplicaStore) -> None:
    """A deleted key reads as missing and can be created again."""
    store.put("a/b", b"x")
    store.put("a", b"y")
    store.delete("a/b")
    assert store.get("a/b") is None
    assert store.get("a") is not None
    store.put("a/b", b"z", if_none_match=True)
    assert store.get("a/b") is not None


def test_list(store: ReplicaStore) -> None:
    """list yields the keys with a string prefix, in byte order, relative to the store."""
    keys = ["a", "a/b", "a/b/c", "ab", "b/x", "segments/0002", "segments/0010"]
    for key in reversed(keys):
        store.put(key, key.encode())
    assert list(store.list()) == keys
    assert list(store.list("a")) == ["a", "a/b", "a/b/c", "ab"]
    assert list(store.list("a/")) == ["a/b", "a/b/c"]
    assert list(store.list("a/b/")) == ["a/b/c"]
    assert list(store.list("segments/000")) == ["segments/0002"]
    assert list(store.list("zzz")) == []
    assert list(store.list("no/such/dir/")) == []
    store.delete("a/b")
    assert list(store.list("a/")) == ["a/b/c"]


def test_large_object(store: ReplicaStore) -> None:
    """A 20 MB object round-trips byte for byte, and its ETag works as a condition."""
    data = os.urandom(20 * 1024 * 1024)
    etag = store.put("snapshots/big", data, if_none_match=True)
    got = store.get("snapshots/big")
    assert got is not None and got[1] == etag and got[0] == data
    new = store.put("snapshots/big", data[:1000], if_match=etag)
    assert store.get("snapshots/big") == (data[:1000], new)


def test_odd_keys(store: ReplicaStore) -> None:
    """Keys with spaces, punctuation, any case or Unicode form stay distinct and listable."""
    for i, key in enumerate(ODD_KEYS):
        store.put(key, f"{i}".encode())
    for i, key in enumerate(ODD_KEYS):
        got = store.get(key)
        assert got is not None and got[0] == f"{i}".encode(), key
    assert list(store.list()) == sorted(ODD_KEYS)
    assert list(store.list("Case/")) == ["Case/Upper"]
    assert list(store.list("caf")) == sorted(["caf\u00e9", "cafe\u0301"])
    for key in ODD_KEYS:
        store.delete(key)
    assert list(store.list()) == []


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_refused(store: ReplicaStore, key: str) -> None:
    """Keys S3 or a file system would mangle are refused with ValueError, before any request."""
    with pytest.raises(ValueError, match="key"):
        store.put(key, b"x")
    with pytest.raises(ValueError, match="key"):
        store.get(key)
    with pytest.raises(ValueError, match="key"):
        store.delete(key)
    assert store.statistics() == ReplicaStatistics(gets=0, puts=0, deletes=0, lists=0)


def test_key_type_is_checked(store: ReplicaStore) -> None:
    """A key that is not a str is a TypeError naming the type."""
    with pytest.raises(TypeError, match=r"key must be a str .* that is a bytes"):
        store.get(b"k")  # type: ignore[arg-type]


def test_request_counters(store: ReplicaStore) -> None:
    """Each get, put, delete and list page counts one request of its kind, failed ones too."""
    assert store.statistics() == ReplicaStatistics(gets=0, puts=0, deletes=0, lists=0)
    store.put("k", b"1")
    with pytest.raises(PreconditionFailedError):
        store.put("k", b"2", if_none_match=True)
    store.get("k")
    store.get("missing")
    store.delete("k")
    list(store.list())
    list(store.list("k"))
    assert store.statistics() == ReplicaStatistics(gets=2, puts=2, deletes=1, lists=2)


def test_prefixes_are_isolated(make_store: MakeStore) -> None:
    """Two stores side by side (names sharing a string prefix) never see each other's keys."""
    one, other = make_store("p"), make_store("p-x")
    one.put("manifest", b"one")
    other.put("manifest", b"other")
    other.put("only-other", b"x")
    assert one.get("manifest") == (b"one", ANY)
    assert other.get("manifest") == (b"other", ANY)
    assert one.get("only-other") is None
    assert list(one.list()) == ["manifest"]
    assert list(other.list()) == ["manifest", "only-other"]
    one.delete("manifest")
    assert other.get("manifest") is not None


def test_stores_are_replica_stores(store: ReplicaStore) -> None:
    """Both implementations are ReplicaStores and say what they point at."""
    assert isinstance(store, ReplicaStore)
    assert type(store).__name__ in repr(store)


# -- the directory store --------------------------------------------------------------------


def _create_in_process(path: str, barrier: threading.Barrier, i: int, wins: Queue[int]) -> None:
    store = DirectoryStore(path)
    barrier.wait()
    try:
        store.put("k", f"process {i}".encode(), if_none_match=True)
    except PreconditionFailedError:
        return
    wins.put(i)


def test_directory_create_race_across_processes(tmp_path: Path) -> None:
    """Of four processes creating one key at once, exactly one wins (flock, not a thread lock)."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    wins: Queue[int] = context.Queue()
    processes = [
        context.Process(target=_create_in_process, args=(str(tmp_path), barrier, i, wins))
        for i in range(4)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    winner = wins.get(timeout=5)
    assert wins.empty()
    assert DirectoryStore(tmp_path).get("k") == (f"process {winner}".encode(), ANY)


def test_directory_layout(tmp_path: Path) -> None:
    """Keys are readable paths of percent-encoded parts; no temporary file is left behind."""
    store = DirectoryStore(tmp_path)
    store.put("actors/chat/manifest", b"m")
    store.put("actors/chat", b"c")
    store.put("Upper Case/\u00e9", b"u")
    assert (tmp_path / "actors" / "chat" / "manifest~obj").read_bytes() == b"m"
    assert (tmp_path / "actors" / "chat~obj").read_bytes() == b"c"
    assert (tmp_path / "%55pper%20%43ase" / "%C3%A9~obj").read_bytes() == b"u"
    assert list((tmp_path / "~tmp").iterdir()) == []


def test_directory_store_is_created(tmp_path: Path) -> None:
    """DirectoryStore makes its directory, parents included, and reopens it as it was."""
    DirectoryStore(tmp_path / "deep" / "replica").put("k", b"v")
    got = DirectoryStore(tmp_path / "deep" / "replica").get("k")
    assert got is not None and got[0] == b"v"


def test_directory_unwritable_is_a_replica_error(tmp_path: Path) -> None:
    """A path that cannot be a directory is a ReplicaError, not a bare OSError."""
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ReplicaError, match="cannot open"):
        DirectoryStore(tmp_path / "file" / "replica")


# -- the S3 store ---------------------------------------------------------------------------


def test_s3_credentials_come_from_the_standard_chain(s3_store: S3Store) -> None:
    """With the environment's credentials the store works; nothing secret is passed to it."""
    s3_store.put("k", b"v")
    assert s3_store.get("k") is not None


def test_s3_virtual_host_default_against_an_ip(s3_credentials: S3Server) -> None:
    """Without path_style, botocore still addresses an IP endpoint by path."""
    store = S3Store(
        s3_credentials.bucket,
        prefix=f"test-{uuid.uuid4().hex[:12]}",
        endpoint_url=s3_credentials.endpoint_url,
        region=s3_credentials.region,
    )
    try:
        etag = store.put("k", b"v")
        assert store.get("k") == (b"v", etag)
    finally:
        store.close()


def test_s3_server_side_encryption(s3_credentials: S3Server) -> None:
    """sse='AES256' asks for encryption at rest on every put, and objects read back."""
    store = S3Store(
        s3_credentials.bucket,
        prefix=f"test-{uuid.uuid4().hex[:12]}",
        endpoint_url=s3_credentials.endpoint_url,
        region=s3_credentials.region,
        path_style=True,
        sse="AES256",
    )
    try:
        etag = store.put("secret", b"classified", if_none_match=True)
        assert store.get("secret") == (b"classified", etag)
        head = store.client.head_object(Bucket=store.bucket, Key=f"{store.prefix}/secret")
        assert head["ServerSideEncryption"] == "AES256"
        store.put("secret", b"declassified", if_match=etag)
    finally:
        store.close()


def test_s3_wrong_credentials(s3_credentials: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rejected credentials are a ReplicaError that says what to check, not 'unavailable'."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    store = S3Store(
        s3_credentials.bucket, endpoint_url=s3_credentials.endpoint_url, path_style=True
    )
    try:
        with pytest.raises(ReplicaError, match="AWS_ACCESS_KEY_ID") as info:
            store.get("k")
        assert not isinstance(info.value, ReplicaUnavailableError | PreconditionFailedError)
    finally:
        store.close()


def test_s3_missing_bucket(s3_credentials: S3Server) -> None:
    """A bucket that does not exist is a ReplicaError naming it."""
    store = S3Store(
        "no-such-bucket-here", endpoint_url=s3_credentials.endpoint_url, path_style=True
    )
    try:
        with pytest.raises(ReplicaError, match=r"NoSuchBucket.*create the bucket"):
            store.put("k", b"v")
    finally:
        store.close()


def test_s3_unreachable_endpoint(s3_credentials: S3Server) -> None:
    """A closed port is ReplicaUnavailableError after the retries, each counted as a request."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = S3Store("b", endpoint_url=f"http://127.0.0.1:{port}", path_style=True)
    try:
        with pytest.raises(ReplicaUnavailableError, match="unreachable") as info:
            store.get("k")
        assert isinstance(info.value, OSError)
        assert store.statistics().gets == S3_MAX_ATTEMPTS
    finally:
        store.close()


def test_s3_shared_client_counts_per_store(s3_credentials: S3Server) -> None:
    """Two stores on one client count only their own requests; close leaves the client open."""
    client = boto3.session.Session().client(
        "s3", endpoint_url=s3_credentials.endpoint_url, region_name=s3_credentials.region
    )
    one = S3Store(s3_credentials.bucket, prefix=f"test-{uuid.uuid4().hex[:12]}", client=client)
    other = S3Store(s3_credentials.bucket, prefix=f"test-{uuid.uuid4().hex[:12]}", client=client)
    one.put("k", b"v")
    other.get("k")
    other.get("k")
    assert one.statistics() == ReplicaStatistics(gets=0, puts=1, deletes=0, lists=0)
    assert other.statistics() == ReplicaStatistics(gets=2, puts=0, deletes=0, lists=0)
    one.close()
    assert other.get("k") is None
    other.close()
    client.close()


def test_s3_settings_are_checked() -> None:
    """Impossible settings fail at construction with the setting's name."""
    with pytest.raises(ValueError, match="sse must be"):
        S3Store("b", sse="rot13")
    with pytest.raises(ValueError, match="sse_kms_key_id needs sse='aws:kms'"):
        S3Store("b", sse="AES256", sse_kms_key_id="k")
    with pytest.raises(ValueError, match="either client= or"):
        S3Store("b", client=object(), endpoint_url="http://x")
    with pytest.raises(ValueError, match="bucket"):
        S3Store("")
    with pytest.raises(ValueError, match="prefix"):
        S3Store("b", prefix="a//b")


@pytest.fixture
def stubbed() -> Iterator[tuple[S3Store, botocore.stub.Stubber]]:
    """An S3 store whose client answers from a script (for answers a real server rarely gives)."""
    client = boto3.session.Session().client(
        "s3", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
    )
    store = S3Store("bucket", prefix="p", client=client, sse="aws:kms", sse_kms_key_id="key-1")
    with botocore.stub.Stubber(client) as stubber:
        yield store, stubber
        stubber.assert_no_pending_responses()
    client.close()


def test_s3_kms_settings_reach_the_request(stubbed: tuple[S3Store, botocore.stub.Stubber]) -> None:
    """sse='aws:kms' and sse_kms_key_id are sent with every put, with the conditions."""
    store, stubber = stubbed
    stubber.add_response(
        "put_object",
        {"ETag": '"e1"'},
        {
            "Bucket": "bucket",
            "Key": "p/k",
            "Body": b"v",
            "ServerSideEncryption": "aws:kms",
            "SSEKMSKeyId": "key-1",
            "IfNoneMatch": "*",
        },
    )
    assert store.put("k", b"v", if_none_match=True) == '"e1"'


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (409, "ConditionalRequestConflict", PreconditionFailedError),
        (404, "NoSuchKey", PreconditionFailedError),  # AWS's answer to If-Match on a missing key
        (503, "SlowDown", ReplicaUnavailableError),
        (500, "InternalError", ReplicaUnavailableError),
        (403, "AccessDenied", ReplicaError),
    ],
)
def test_s3_error_mapping(
    stubbed: tuple[S3Store, botocore.stub.Stubber], status: int, code: str, error: type
) -> None:
    """S3's answers to a conditional put map to the precise replica errors."""
    store, stubber = stubbed
    stubber.add_client_error("put_object", code, "message", http_status_code=status)
    with pytest.raises(error) as info:
        store.put("k", b"v", if_match='"e0"')
    assert type(info.value) is error


def test_s3_condition_lost_to_own_retry(stubbed: tuple[S3Store, botocore.stub.Stubber]) -> None:
    """A 412 after a retry, on an object holding our bytes, means our first attempt won."""
    store, stubber = stubbed
    stubber.add_client_error(
        "put_object",
        "PreconditionFailed",
        "",
        http_status_code=412,
        response_meta={"RetryAttempts": 1},
    )
    stubber.add_response(
        "get_object",
        {"Body": botocore.response.StreamingBody(io.BytesIO(b"v"), 1), "ETag": '"mine"'},
        {"Bucket": "bucket", "Key": "p/k"},
    )
    assert store.put("k", b"v", if_none_match=True) == '"mine"'


def test_s3_condition_lost_after_retry_to_another(
    stubbed: tuple[S3Store, botocore.stub.Stubber],
) -> None:
    """A 412 after a retry, on an object holding other bytes, is a lost condition."""
    store, stubber = stubbed
    stubber.add_client_error(
        "put_object",
        "PreconditionFailed",
        "",
        http_status_code=412,
        response_meta={"RetryAttempts": 2},
    )
    stubber.add_response(
        "get_object",
        {"Body": botocore.response.StreamingBody(io.BytesIO(b"theirs"), 6), "ETag": '"t"'},
    )
    with pytest.raises(PreconditionFailedError):
        store.put("k", b"v", if_none_match=True)
