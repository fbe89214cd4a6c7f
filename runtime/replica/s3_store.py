"""A replica store in an S3 bucket, through boto3: AWS S3 or any S3-compatible store.

Conditional writes use S3's ``If-None-Match: *`` and ``If-Match: <etag>`` headers (botocore's
``IfNoneMatch`` / ``IfMatch`` parameters of ``PutObject``). Requests are counted as they are
sent (a ``before-send`` hook), so retries count: that is what the provider bills.

Every failure on the way (a refused or reset connection, a timeout, an answer cut short, a 5xx
or throttling answer) is a :class:`ReplicaUnavailableError` once the store's few quick retries
are spent, never a botocore, urllib3 or socket exception: the runtime retries those itself.
The store retries, not botocore, so that reading a GET's body is retried like the rest, a call
is bounded in time, and a conditional write knows whether an earlier attempt may have landed.

boto3 is imported when the first :class:`S3Store` is made, not when ``actors`` is imported.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import attrs

from ..errors import PreconditionFailedError, ReplicaError, ReplicaUnavailableError
from .store import (
    Data,
    ReplicaStore,
    check_condition,
    check_data,
    check_key,
    check_list_prefix,
    check_prefix,
)

#: Attempts per request, the first included. The store retries (botocore's own retries are off)
#: a request that failed on the way or got a 5xx or throttling answer, after a short wait. Few
#: and quick: they ride over a blip (one reset connection, one 500); an outage is for the
#: runtime's own, slower, retry loop, and a turn held for a durable reply should learn of it in
#: seconds. A store made on a passed ``client`` makes one attempt: that client's retries apply.
S3_MAX_ATTEMPTS = 3

#: Seconds of the wait before the first retry, doubled before each next one, with full jitter (a
#: random wait between 0 and that): at most 0.05 + 0.1 s in all.
S3_RETRY_DELAY = 0.05

#: The same after a throttling answer (``503 SlowDown``, ``429``), to spread retries out: at
#: most 0.5 + 1 s in all. botocore waits up to 1 + 2 s (and more on ``x-amz-retry-after``), and
#: every wake and hibernation of the runtime would wait with it.
S3_THROTTLE_RETRY_DELAY = 0.5

#: Seconds after the first attempt started past which a failed request is not retried: an
#: attempt that ran into a timeout is not repeated. A call thus ends within about this, plus
#: one attempt's timeouts, plus the waits above.
S3_RETRY_WINDOW = 5.0

#: Seconds to open a connection. A reachable endpoint answers in milliseconds; an endpoint that
#: accepts nothing for 2 s is down for our purposes (the AWS SDKs for Java and .NET use 2 s too).
S3_CONNECT_TIMEOUT = 2.0

#: Seconds to wait for the next bytes of an answer (not for the whole answer): S3 answers a PUT
#: within a second or two of its last byte, and streams a GET. 30 s, as the AWS SDK for Java;
#: botocore's 60 s, retried, held a call on a silent connection for minutes.
S3_READ_TIMEOUT = 30.0

#: Connections kept per store: one per worker thread that may call it at once (botocore's
#: default of 10 makes the 11th concurrent request wait, and warn).
S3_MAX_POOL_CONNECTIONS = 32

SSE_MODES = ("AES256", "aws:kms")

#: Error codes that mean the request may succeed later.
_TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ServiceUnavailable",
        "InternalError",
        "RequestLimitExceeded",
        "TooManyRequests",
    }
)

#: Error codes (besides the statuses 429 and 503) that ask the client to slow down.
_THROTTLING_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"}
)

_T = TypeVar("_T")

_HINTS = {
    "NoSuchBucket": "create the bucket, or fix the bucket name",
    "AccessDenied": "grant s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket "
    "on the bucket and prefix to these credentials",
    "InvalidAccessKeyId": "the credentials found by boto3's chain are not known to this "
    "endpoint: check AWS_ACCESS_KEY_ID / AWS_PROFILE",
    "SignatureDoesNotMatch": "the secret key does not match the access key: check "
    "AWS_SECRET_ACCESS_KEY / the profile",
    "PermanentRedirect": "the bucket is in another region: pass region=",
    "AuthorizationHeaderMalformed": "the bucket is in another region: pass region=",
    "NotImplemented": "this S3-compatible store lacks the feature (conditional writes, or "
    "the server-side encryption asked for)",
}


class S3Store(ReplicaStore):
    """A replica store in an S3 bucket under ``prefix``: AWS S3 or an S3-compatible store.

    Credentials come from boto3's standard chain (environment, shared config and credentials
    files with ``AWS_PROFILE``, container and instance roles); nothing secret is passed here.
    ``endpoint_url`` points at an S3-compatible store (MinIO, SeaweedFS, R2, ...);
    ``path_style=True`` addresses buckets as ``endpoint/bucket/key`` for stores that lack
    virtual-host addressing. ``sse="AES256"`` or ``sse="aws:kms"`` (with ``sse_kms_key_id`` for a
    key other than the account's default) asks for server-side encryption of every object
    written. ``client`` uses a ready boto3 S3 client instead of making one (its own endpoint,
    region, timeouts and retry settings then apply, and this store makes one attempt a request).

    Conditional writes need a store that supports ``If-Match`` and ``If-None-Match`` on
    ``PutObject`` (AWS S3 since 2024). The credentials need ``s3:GetObject``, ``s3:PutObject``,
    ``s3:DeleteObject`` and ``s3:ListBucket`` (without the latter, a missing key answers 403
    instead of 404). A request that fails on the way (refused, reset, timed out, cut short) or
    gets a 5xx or throttling answer makes up to 3 attempts, within seconds, before
    :class:`ReplicaUnavailableError`. ETags are S3's, quoted as S3 sends them.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        path_style: bool = False,
        sse: str | None = None,
        sse_kms_key_id: str | None = None,
        client: Any = None,
    ) -> None:
        super().__init__()
        if not isinstance(bucket, str) or not bucket:
            raise ValueError(f"bucket must be a non-empty str (got {bucket!r})")
        if sse not in (None, *SSE_MODES):
            raise ValueError(f"sse must be None, 'AES256' or 'aws:kms' (got {sse!r})")
        if sse_kms_key_id is not None and sse != "aws:kms":
            raise ValueError(f"sse_kms_key_id needs sse='aws:kms' (got sse={sse!r})")
        if client is not None and (endpoint_url or region or path_style):
            raise ValueError(
                "pass either client= or endpoint_url=/region=/path_style=, not both: "
                "a ready client keeps its own settings"
            )
        self.bucket = bucket
        self.prefix = check_prefix(prefix)
        self._key_prefix = f"{self.prefix}/" if self.prefix else ""
        self._prefix_bytes = len(self._key_prefix.encode())
        self._sse: dict[str, str] = {}
        if sse is not None:
            self._sse["ServerSideEncryption"] = sse
        if sse_kms_key_id is not None:
            self._sse["SSEKMSKeyId"] = sse_kms_key_id

        import botocore.exceptions
        import botocore.parsers
        import urllib3.exceptions

        self._botocore_errors = botocore.exceptions
        # What an attempt can raise: botocore's errors, and besides them urllib3's and
        # http.client's errors and socket errors that botocore lets through (reading an answer's
        # body, for one), and a body botocore could not parse (cut short: botocore does not check
        # its length). All but botocore's mean the answer did not arrive whole.
        self._failures: tuple[type[Exception], ...] = (
            botocore.exceptions.ClientError,
            botocore.exceptions.BotoCoreError,
            urllib3.exceptions.HTTPError,
            http.client.HTTPException,
            OSError,
            botocore.parsers.ResponseParserError,
            _BadAnswerError,
        )
        self._owns_client = client is None
        self._max_attempts = S3_MAX_ATTEMPTS if client is None else 1
        if client is None:
            client = _make_client(endpoint_url, region, path_style=path_style)
        self.client = client
        self._local = threading.local()
        client.meta.events.register("before-send.s3", self._on_send)

    def __repr__(self) -> str:
        return f"S3Store({self.bucket!r}, prefix={self.prefix!r})"

    def get(self, key: str) -> tuple[bytes, str] | None:
        """Return ``(data, etag)`` for ``key``, or ``None`` if there is no such key."""
        full = self._full(key)

        def attempt() -> tuple[bytes, str] | None:
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=full)
            except self._botocore_errors.ClientError as exc:
                if _status(exc) == 404 and _code(exc) in ("NoSuchKey", "404", "NotFound"):
                    return None
                raise
            # Inside the attempt: a body cut short or timed out is retried like the request.
            return response["Body"].read(), _etag(response)

        return self._send("gets", "GET", key, attempt)

    def put(
        self, key: str, data: Data, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """Store ``data`` under ``key`` and return the ETag S3 gives it.

        ``if_none_match=True`` sends ``If-None-Match: *``, ``if_match=etag`` sends
        ``If-Match``; when the condition fails, :class:`PreconditionFailedError`. A condition
        that fails only after an attempt whose outcome is unknown (its answer was lost, or was a
        5xx) is checked with a GET: if the object holds exactly ``data``, that attempt won and
        its ETag is returned.
        """
        full = self._full(key)
        check_data(data)
        check_condition(if_match, if_none_match)
        body = bytes(data) if isinstance(data, memoryview) else data
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": full, "Body": body, **self._sse}
        if if_none_match:
            params["IfNoneMatch"] = "*"
        if if_match is not None:
            params["IfMatch"] = if_match
        conditional = if_none_match or if_match is not None
        doubt = _Doubt()
        try:
            return self._send(
                "puts",
                "PUT",
                key,
                lambda: _etag(self.client.put_object(**params)),
                conditional=conditional,
                doubt=doubt,
            )
        except PreconditionFailedError:
            if doubt.earlier_attempt_may_have_landed:
                current = self.get(key)
                if current is not None and current[0] == body:
                    return current[1]
            raise

    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""
        full = self._full(key)
        self._send(
            "deletes",
            "DELETE",
            key,
            lambda: self.client.delete_object(Bucket=self.bucket, Key=full),
        )

    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield the keys starting with ``prefix``, in UTF-8 byte order (admin tools only).

        Pages are requested as the iteration reaches them (one LIST per 1,000 keys).
        """
        check_list_prefix(prefix)
        return self._pages(self._key_prefix + prefix)

    def close(self) -> None:
        """Close the connections of the client this store made (a passed ``client`` stays open)."""
        self.client.meta.events.unregister("before-send.s3", self._on_send)
        if self._owns_client:
            self.client.close()

    def _pages(self, full_prefix: str) -> Iterator[str]:
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full_prefix}
        while True:
            response: dict[str, Any] = self._send(
                "lists", "LIST", full_prefix, lambda: self.client.list_objects_v2(**params)
            )
            for item in response.get("Contents", ()):
                yield str(item["Key"])[len(self._key_prefix) :]
            if not response.get("IsTruncated"):
                return
            params["ContinuationToken"] = response["NextContinuationToken"]

    def _full(self, key: str) -> str:
        return self._key_prefix + check_key(key, prefix_bytes=self._prefix_bytes)

    def _send(
        self,
        kind: str,
        request: str,
        key: str,
        attempt: Callable[[], _T],
        *,
        conditional: bool = False,
        doubt: _Doubt | None = None,
    ) -> _T:
        """Run ``attempt`` (one request, its answer read whole) until it succeeds, fails for
        good, or its attempts or time run out; raise only :class:`ReplicaError` and subclasses.

        ``doubt`` learns whether an attempt before the last one may have been applied.
        """
        started = time.monotonic()
        attempts = 0
        may_have_landed = False
        while True:
            attempts += 1
            try:
                with self._request(kind):
                    return attempt()
            except self._failures as exc:
                failure = self._failure(
                    exc, request, key, conditional=conditional, attempts=attempts
                )
                cause = exc
            if doubt is not None:
                # A passed client may have retried inside the attempt, after a lost answer.
                botocore_retried = isinstance(
                    cause, self._botocore_errors.ClientError
                ) and _retried(cause)
                doubt.earlier_attempt_may_have_landed = may_have_landed or botocore_retried
            may_have_landed = may_have_landed or failure.may_have_landed
            if (
                not failure.retryable
                or attempts >= self._max_attempts
                or time.monotonic() - started >= S3_RETRY_WINDOW
            ):
                raise failure.error from cause
            base = S3_THROTTLE_RETRY_DELAY if failure.throttled else S3_RETRY_DELAY
            time.sleep(random.uniform(0.0, base * 2 ** (attempts - 1)))

    @contextlib.contextmanager
    def _request(self, kind: str) -> Iterator[None]:
        outer = getattr(self._local, "kind", None)
        self._local.kind = kind
        try:
            yield
        finally:
            self._local.kind = outer

    def _on_send(self, **kwargs: Any) -> None:
        # Called by botocore for every HTTP attempt, on the calling thread. Another store
        # sharing the client sees no kind set on its own thread-local, and does not count it.
        kind = getattr(self._local, "kind", None)
        if kind is not None:
            self._count(kind)

    def _failure(
        self, exc: Exception, request: str, key: str, *, conditional: bool, attempts: int
    ) -> _Failure:
        """What a failed attempt means: the error to raise, and whether to try again."""
        where = f"{request} {key!r} in s3://{self.bucket}/{self._key_prefix}"
        errors = self._botocore_errors
        if isinstance(exc, errors.ClientError):
            status, code = _status(exc), _code(exc)
            message = exc.response.get("Error", {}).get("Message", "")
            answer = f"{status} {code}" + (f": {message}" if message else "")
            if conditional and (
                status == 412
                or code in ("PreconditionFailed", "ConditionalRequestConflict")
                or (status == 404 and code == "NoSuchKey")
            ):
                return _Failure(
                    PreconditionFailedError(
                        f"{where}: the condition did not hold ({answer}); nothing was written",
                        key=key,
                    )
                )
            if (status is not None and status >= 500) or status == 429 or code in _TRANSIENT_CODES:
                return _Failure(
                    ReplicaUnavailableError(
                        f"{where} failed after {attempts + _retries(exc)} attempt(s) ({answer}); "
                        "retry later, and read the key back before trusting a write"
                    ),
                    retryable=True,
                    throttled=status in (429, 503) or code in _THROTTLING_CODES,
                    may_have_landed=True,
                )
            hint = _HINTS.get(code, "see the store's error code")
            return _Failure(ReplicaError(f"{where} was refused ({answer}): {hint}"))
        if isinstance(exc, errors.NoCredentialsError | errors.PartialCredentialsError):
            return _Failure(
                ReplicaError(
                    f"{where}: {exc}; boto3 found no complete credentials in its standard chain "
                    "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials, "
                    "or a container or instance role)"
                )
            )
        transient = (
            errors.ConnectionError,
            errors.HTTPClientError,
            errors.IncompleteReadError,
            errors.ChecksumError,
            errors.FlexibleChecksumError,
        )
        if isinstance(exc, errors.BotoCoreError) and not isinstance(exc, transient):
            return _Failure(ReplicaError(f"{where} failed ({type(exc).__name__}: {exc})"))
        # The request did not get through, or its answer did not arrive whole.
        unsent = isinstance(exc, errors.EndpointConnectionError | errors.ConnectTimeoutError)
        return _Failure(
            ReplicaUnavailableError(
                f"{where} failed after {attempts} attempt(s) ({type(exc).__name__}: {exc}); "
                "the endpoint is unreachable or cut the connection: retry later, and read the "
                "key back before trusting a write"
            ),
            retryable=True,
            may_have_landed=not unsent,
        )


@attrs.frozen
class _Failure:
    """A failed attempt: the error to raise if it is the last, and whether to retry."""

    error: ReplicaError
    retryable: bool = False
    throttled: bool = False
    may_have_landed: bool = False  # the request may have reached the store and been applied


@attrs.define
class _Doubt:
    """Filled by :meth:`S3Store._send` for a put: may an attempt before the last have landed?"""

    earlier_attempt_may_have_landed: bool = False


class _BadAnswerError(Exception):
    """An answer that came whole but lacks what S3 always sends (an ETag): a broken hop."""


def _etag(response: dict[str, Any]) -> str:
    etag = response.get("ETag")
    if not etag:
        raise _BadAnswerError("the answer has no ETag")
    return str(etag)


_loader_lock = threading.Lock()
_loader: Any = None


def _shared_loader() -> Any:
    """botocore's reader of service models, shared by the stores' sessions: each session would
    otherwise parse the S3 model again (about 0.1 s a store)."""
    global _loader
    with _loader_lock:
        if _loader is None:
            import botocore.loaders

            _loader = botocore.loaders.create_loader()
        return _loader


def _make_client(endpoint_url: str | None, region: str | None, *, path_style: bool) -> Any:
    import boto3.session
    import botocore.config
    import botocore.session

    config = botocore.config.Config(
        region_name=region,
        # The store retries (S3Store._send): botocore would not retry reading a GET's body, nor
        # bound a call's time, nor say whether an earlier attempt of a conditional write landed.
        retries={"mode": "standard", "total_max_attempts": 1},
        s3={"addressing_style": "path" if path_style else "auto"},
        connect_timeout=S3_CONNECT_TIMEOUT,
        read_timeout=S3_READ_TIMEOUT,
        max_pool_connections=S3_MAX_POOL_CONNECTIONS,
    )
    # A session per store: boto3's default session is shared module state and not thread-safe,
    # and each store resolves credentials from the chain when it is made.
    core = botocore.session.Session()
    core.register_component("data_loader", _shared_loader())
    session = boto3.session.Session(botocore_session=core)
    return session.client("s3", endpoint_url=endpoint_url, config=config)


def _status(exc: Any) -> int | None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _retries(exc: Any) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0))


def _retried(exc: Any) -> bool:
    return _retries(exc) > 0
