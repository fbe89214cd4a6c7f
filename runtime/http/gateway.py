"""The gateway: a runtime's actors and runs over HTTP, as one ASGI application (DESIGN §12).

Written on Starlette (routing, requests, responses; it runs on AnyIO, so on trio as well as
asyncio); the event streams are an ASGI response of their own (``EventStream``), which closes
its feed as soon as the client goes away. An ask or a run's result that waits stops waiting
when its client goes away (the message stays stored and runs).

Every route answers JSON; every failure is ``{"error": {"type", "message"}}`` with the status
of :data:`STATUS` (first match wins), and nothing else escapes: an unexpected exception is
logged here and answered 500 without its traceback. No route runs SQL.

The server-sent event routes read a :data:`Feed`, an async iterator of ``(offset, entry)``:
``Sources`` says where an actor's streams and watches come from (``Ref.open_stream`` and
``Ref.open_watch``, unless a test gives others).
"""

from __future__ import annotations

import hmac
import inspect
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import anyio
import attrs

try:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover (the http extra is in the test extra)
    raise ImportError(
        f"actors.http needs the http extra: pip install 'torpor[http]' ({exc})"
    ) from exc

from ..errors import (
    ActorFailedError,
    ActorNotFoundError,
    ActorStoppedError,
    EncodingError,
    IdempotencyKeyReusedError,
    InvalidArgumentsError,
    InvalidKeyError,
    MessageFailedError,
    MessageTooLargeError,
    RunCancelledError,
    RunFailedError,
    RunStateError,
    RuntimeClosedError,
    StepFailedError,
    StorageError,
    UnknownActorTypeError,
    UnknownHandlerError,
)
from ..ref import Ref
from ..runtime import Runtime
from ..spec import HandlerSpec, TypeSpec
from ..workflow import Workflow
from .values import converter, structure_call, to_json

log = logging.getLogger("torpor.http")

T = TypeVar("T")

#: The largest request body read, in bytes, unless ``app(max_body_bytes=...)`` says otherwise:
#: a message is at most the runtime's ``max_message_bytes`` anyway.
DEFAULT_MAX_BODY_BYTES = 1 << 20

#: A body streamed without a declared length is read (and dropped) up to this many times the
#: limit before the 413 is answered; past it, the connection is closed under the client.
DRAIN_FACTOR = 16

#: ASGI's three callables.
Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Any]

#: What an authentication hook is given (the request's ASGI scope) and answers: whether the
#: request may go on (a bool, or an awaitable of one).
Auth = Callable[[Scope], "bool | Awaitable[bool]"]

#: What a server-sent event route reads: ``(offset, entry)`` pairs, the entry JSON-able.
Feed = AsyncIterator[tuple[int, Any]]
#: Opens an actor's stream ``topic`` after an offset (``None``: from its start).
StreamSource = Callable[[Ref[Any], str, "int | None"], AbstractAsyncContextManager[Feed]]
#: Opens a watch of a ``@query`` with its arguments: its result now and after each change.
WatchSource = Callable[
    [Ref[Any], str, tuple[Any, ...], dict[str, Any]], AbstractAsyncContextManager[Feed]
]


@attrs.frozen
class Sources:
    """Where the server-sent event routes read (``None``: the route answers 501)."""

    stream: StreamSource | None = None
    watch: WatchSource | None = None


class BadRequestError(ValueError):
    """The request itself is malformed: not JSON, or not of the route's shape."""


class BodyTooLargeError(ValueError):
    """The request body is larger than the gateway reads."""


class MethodNotAllowedError(ValueError):
    """A handler that changes state asked with GET, or the like."""


class NotCreatableError(LookupError):
    """A request would create an actor of a type marked ``http_create = False``."""


class ClientGoneError(Exception):
    """The client closed the connection while its request waited (nobody to answer)."""


class UnsupportedError(LookupError):
    """A route this gateway was built without (``build_app`` given ``Sources`` without it)."""


#: Exceptions to statuses, first match wins. The type in the body is the exception's own.
STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (BadRequestError, 400),
    (InvalidKeyError, 400),
    (UnknownActorTypeError, 404),
    (UnknownHandlerError, 404),
    (ActorNotFoundError, 404),
    (NotCreatableError, 404),
    (MethodNotAllowedError, 405),
    (RunCancelledError, 409),
    (RunStateError, 409),
    (IdempotencyKeyReusedError, 409),
    (BodyTooLargeError, 413),
    (MessageTooLargeError, 413),
    (InvalidArgumentsError, 422),
    (EncodingError, 422),
    # The handler (or the run) failed for good: the server did its part; the body says why.
    (MessageFailedError, 500),
    (RunFailedError, 500),
    (StepFailedError, 500),
    (UnsupportedError, 501),
    (ClientGoneError, 499),  # (nobody reads it: nginx's "client closed request")
    (ActorStoppedError, 503),
    (ActorFailedError, 503),
    (RuntimeClosedError, 503),
    (StorageError, 503),
    # A run's value not recorded yet (get_value), after the typed LookupErrors above.
    (LookupError, 404),
)


def status_of(exc: BaseException) -> int | None:
    """The status :data:`STATUS` gives ``exc``; ``None`` for an unexpected one."""
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return status
    return None


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    text = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return Response(text, status, headers=headers, media_type="application/json")


def error_response(status: int, kind: str, message: str, **headers: str) -> Response:
    return json_response(status, {"error": {"type": kind, "message": message}}, headers)


def _failure(exc: BaseException) -> Response:
    status = status_of(exc)
    if status is None:
        log.exception("the gateway failed on a request", exc_info=exc)
        return error_response(500, "InternalError", "the server failed; its log says why")
    message = str(exc) or type(exc).__name__
    cause = exc.__cause__
    if status == 500 and cause is not None:
        message = f"{message} (cause: {type(cause).__name__}: {cause})"
    return error_response(status, type(exc).__name__, message)


Endpoint = Callable[[Request], Awaitable[Response]]


def _answering(endpoint: Endpoint) -> Endpoint:
    """``endpoint`` with every exception answered as :data:`STATUS` says."""

    async def answer(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Exception as exc:
            return _failure(exc)

    answer.__name__ = endpoint.__name__
    return answer


async def _body(request: Request, limit: int) -> Any:
    """The request's JSON body (``{}`` when empty), at most ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(f"the request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            # Streamed without a length: read on (dropping it) up to a bound, so the client
            # gets the answer rather than a connection cut while it still sends.
            if size > DRAIN_FACTOR * limit:
                break
            continue
        chunks.append(chunk)
    if size > limit:
        raise BodyTooLargeError(f"the request body is larger than {limit} bytes")
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"the request body is not JSON ({exc})") from None


def _call_of(body: Any) -> tuple[list[Any], dict[str, Any]]:
    if not isinstance(body, dict):
        raise BadRequestError('the body must be a JSON object: {"args": [...], "kwargs": {...}}')
    args = body.get("args", [])
    kwargs = body.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise BadRequestError('"args" must be a JSON list and "kwargs" a JSON object')
    return args, kwargs


def _query_json(request: Request, name: str, default: Any) -> Any:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BadRequestError(f"?{name}= must be JSON ({exc})") from None


def _idempotency_key(request: Request) -> str | None:
    return request.headers.get("idempotency-key")


class Gateway:
    """The routes' state: the runtime, its types by name, the options."""

    def __init__(self, rt: Runtime, max_body_bytes: int, sources: Sources) -> None:
        self.rt = rt
        self.engine = rt._engine  # (the gateway is a room of the engine: it may ask for existence)
        self.max_body_bytes = max_body_bytes
        self.sources = sources

    # -- helpers ---------------------------------------------------------------------------

    def ref(self, request: Request) -> Ref[Any]:
        params = request.path_params
        return self.rt.ref_by_name(params["type"], params["key"])

    def spec(self, ref: Ref[Any]) -> TypeSpec:
        spec: TypeSpec = ref.actor_type.__torpor_spec__
        return spec

    async def check_creatable(self, ref: Ref[Any]) -> None:
        """:class:`NotCreatableError` if a message would create an actor the type keeps from
        HTTP clients (``http_create = False``)."""
        if getattr(ref.actor_type, "http_create", True):
            return
        if not await self.engine.delivery.exists(self.spec(ref), ref.key):
            raise NotCreatableError(
                f"{ref.type_name} {ref.key!r} does not exist, and this type's actors are not "
                "created over HTTP"
            )

    # -- actors ----------------------------------------------------------------------------

    async def call(self, request: Request) -> Response:
        """``POST /actors/{type}/{key}/{handler}``: an ask (200), or with ``Prefer:
        respond-async`` a send (202 once durable, as ``ref.send``)."""
        ref = self.ref(request)
        handler = self.spec(ref).handler(request.path_params["handler"])
        args, kwargs = _call_of(await _body(request, self.max_body_bytes))
        typed_args, typed_kwargs = structure_call(ref.type_name, handler, args, kwargs)
        send = "respond-async" in request.headers.get("prefer", "")
        if handler.is_query:
            if send:
                raise MethodNotAllowedError(
                    f"{ref.type_name}.{handler.name} is a @query: it answers, it is not sent"
                )
            # (a read changes nothing: an Idempotency-Key has nothing to guard)
            result = await ref.ask(handler.name, *typed_args, **typed_kwargs)
            return json_response(200, {"result": to_json(result)})
        await self.check_creatable(ref)
        calls = ref.options(idempotency_key=_idempotency_key(request))
        if send:
            await calls.send(handler.name, *typed_args, **typed_kwargs)
            return json_response(202, {"accepted": True}, {"Preference-Applied": "respond-async"})
        result = await _unless_gone(request, calls.ask(handler.name, *typed_args, **typed_kwargs))
        return json_response(200, {"result": to_json(result)})

    async def query(self, request: Request) -> Response:
        """``GET /actors/{type}/{key}/{query}?args=<json>&kwargs=<json>``: a ``@query``."""
        ref = self.ref(request)
        handler = self.spec(ref).handler(request.path_params["handler"])
        if not handler.is_query:
            raise MethodNotAllowedError(
                f"{ref.type_name}.{handler.name} is not a @query: it changes state, so POST it"
            )
        args, kwargs = _call_of(
            {"args": _query_json(request, "args", []), "kwargs": _query_json(request, "kwargs", {})}
        )
        typed_args, typed_kwargs = structure_call(ref.type_name, handler, args, kwargs)
        result = await ref.ask(handler.name, *typed_args, **typed_kwargs)
        return json_response(200, {"result": to_json(result)})

    async def signal(self, request: Request) -> Response:
        """``POST /actors/{type}/{key}/signals/{name}`` ``{"value": ...}``: 202 once stored."""
        ref = self.ref(request)
        body = await _body(request, self.max_body_bytes)
        if not isinstance(body, dict):
            raise BadRequestError('the body must be a JSON object: {"value": ...}')
        await self.check_creatable(ref)
        stored = await ref.signal(
            request.path_params["name"],
            body.get("value"),
            idempotency_key=_idempotency_key(request),
        )
        return json_response(202, {"stored": stored})

    async def stream(self, request: Request) -> Response:
        """``GET /actors/{type}/{key}/streams/{topic}``: server-sent events from an offset
        (``Last-Event-ID``, else ``?after=``)."""
        ref = self.ref(request)
        source = self.sources.stream
        if source is None:
            raise UnsupportedError("this gateway was built without streams")
        after = _offset(request)
        return _events(source(ref, request.path_params["topic"], after))

    async def watch(self, request: Request) -> Response:
        """``GET /actors/{type}/{key}/watch/{query}?args=<json>``: server-sent events of a
        ``@query``'s result, now and after each change."""
        ref = self.ref(request)
        handler = self.spec(ref).handler(request.path_params["handler"])
        if not handler.is_query:
            raise MethodNotAllowedError(f"{ref.type_name}.{handler.name} is not a @query")
        source = self.sources.watch
        if source is None:
            raise UnsupportedError("this gateway was built without watches")
        args, kwargs = _call_of(
            {"args": _query_json(request, "args", []), "kwargs": _query_json(request, "kwargs", {})}
        )
        typed_args, typed_kwargs = structure_call(ref.type_name, handler, args, kwargs)
        return _events(source(ref, handler.name, typed_args, typed_kwargs))

    # -- runs ------------------------------------------------------------------------------

    def workflow(self, request: Request) -> tuple[TypeSpec, HandlerSpec]:
        name = request.path_params["type"]
        spec = self.engine.specs.get(name)
        run = spec.handlers.get("run") if spec is not None else None
        if spec is None or run is None or not _is_workflow(spec.cls):
            raise UnknownActorTypeError(f"{name!r} is not a workflow type of this runtime")
        return spec, run

    async def start(self, request: Request) -> Response:
        """``POST /runs/{type}`` ``{"id": ..., "args": [...], "kwargs": {...}}``: 202 once the
        start is durable."""
        spec, run = self.workflow(request)
        body = await _body(request, self.max_body_bytes)
        args, kwargs = _call_of(body)
        run_id = body.get("id")
        if run_id is not None and not isinstance(run_id, str):
            raise BadRequestError('"id" must be a string')
        if not getattr(spec.cls, "http_create", True):
            raise NotCreatableError(f"runs of {spec.name!r} are not started over HTTP")
        typed_args, typed_kwargs = structure_call(spec.name, run, args, kwargs)
        handle = await self.rt.start(run.fn, *typed_args, id=run_id, **typed_kwargs)
        where = f"/runs/{spec.name}/{handle.id}"
        return json_response(202, {"id": handle.id}, {"Location": where})

    def run(self, request: Request) -> Any:
        spec, _ = self.workflow(request)
        return self.rt.run(spec.cls, request.path_params["id"])

    async def run_status(self, request: Request) -> Response:
        """``GET /runs/{type}/{id}``: its :class:`RunStatus`."""
        status = await self.run(request).status()
        return json_response(200, converter().unstructure(status))

    async def run_result(self, request: Request) -> Response:
        """``GET /runs/{type}/{id}/result``: waits for the outcome."""
        result = await _unless_gone(request, self.run(request).result())
        return json_response(200, {"result": to_json(result)})

    async def run_value(self, request: Request) -> Response:
        """``GET /runs/{type}/{id}/values/{name}``: the latest value (404 if none yet)."""
        value = await self.run(request).get_value(request.path_params["name"])
        return json_response(200, {"value": to_json(value)})

    async def run_cancel(self, request: Request) -> Response:
        """``POST /runs/{type}/{id}/cancel``: ``{"cancelled": false}`` if it had finished."""
        cancelled = await self.run(request).cancel()
        return json_response(200, {"cancelled": cancelled})


async def _unless_gone(request: Request, waiting: Awaitable[T]) -> T:
    """``waiting``'s outcome; cancelled if the client goes away first (its body read already),
    so an abandoned ask or result stops waiting. What was stored stays stored: a message
    asked runs all the same."""
    outcome: list[T] = []
    failure: list[Exception] = []
    async with anyio.create_task_group() as tg:

        async def wait() -> None:
            try:
                outcome.append(await waiting)
            except Exception as exc:  # (raised below as itself, not in an exception group)
                failure.append(exc)
            tg.cancel_scope.cancel()

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        tg.start_soon(wait)
        tg.start_soon(watch)
    if failure:
        raise failure[0]
    if not outcome:
        raise ClientGoneError("the client went away")
    return outcome[0]


def _is_workflow(cls: type) -> bool:
    return issubclass(cls, Workflow)


def _offset(request: Request) -> int | None:
    text = request.headers.get("last-event-id") or request.query_params.get("after")
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise BadRequestError(f"Last-Event-ID and ?after= are offsets (got {text!r})") from None


@asynccontextmanager
async def _open_stream(ref: Ref[Any], topic: str, after: int | None) -> AsyncIterator[Feed]:
    """An actor's stream as a feed: each :class:`StreamEntry` (its offset the event's id) as
    JSON, its item converted as results are."""
    async with ref.open_stream(topic, after=after or 0) as entries:

        async def feed() -> Feed:
            async for entry in entries:
                yield (
                    entry.offset,
                    {
                        "offset": entry.offset,
                        "topic": entry.topic,
                        "kind": entry.kind,
                        "item": entry.item,
                        "step": entry.step,
                        "step_key": entry.step_key,
                        "attempt": entry.attempt,
                        "at": entry.at,
                    },
                )

        yield feed()


@asynccontextmanager
async def _open_watch(
    ref: Ref[Any], name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> AsyncIterator[Feed]:
    """A watch of a ``@query`` as a feed: each value, numbered from 0 in this connection (a
    watch resumes by reading the value now, not by offset)."""
    async with ref.open_watch(name, *args, **kwargs) as values:

        async def feed() -> Feed:
            n = 0
            async for value in values:
                yield n, value
                n += 1

        yield feed()


#: Where ``app`` reads streams and watches: the actors' own.
ACTOR_SOURCES = Sources(stream=_open_stream, watch=_open_watch)


def _events(feed: AbstractAsyncContextManager[Feed]) -> Response:
    """Server-sent events of ``feed``: ``id:`` its offset, ``data:`` its entry as JSON."""
    return EventStream(feed)


class EventStream(Response):
    """A ``text/event-stream`` response that reads ``feed`` until the client goes away (then
    the feed is closed at once, not left to the garbage collector)."""

    def __init__(self, feed: AbstractAsyncContextManager[Feed]) -> None:
        super().__init__(
            status_code=200,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.feed = feed

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async with anyio.create_task_group() as tg:

            async def disconnected() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(disconnected)
            try:
                await self._send_entries(send)
            except Exception:  # (after the headers: the stream can only end)
                log.exception("a server-sent event stream failed")
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            tg.cancel_scope.cancel()

    async def _send_entries(self, send: Any) -> None:
        async with self.feed as entries:
            try:
                async for offset, entry in entries:
                    data = json.dumps(to_json(entry), ensure_ascii=False, separators=(",", ":"))
                    body = f"id: {offset}\ndata: {data}\n\n".encode()
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            finally:
                close = getattr(entries, "aclose", None)
                if close is not None:
                    with anyio.CancelScope(shield=True):
                        await close()


# -- middleware: authentication, rate limit ------------------------------------------------


def bearer(token: str) -> Auth:
    """An authentication hook for :func:`app`: requests must carry ``Authorization: Bearer
    <token>`` (compared in constant time)."""
    if not isinstance(token, str) or not token:
        raise ValueError("the bearer token must be a non-empty str")
    expected = f"Bearer {token}".encode()

    def check(scope: Scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                return hmac.compare_digest(value, expected)
        return False

    return check


async def _send_response(response: Response, scope: Scope, receive: Any, send: Any) -> None:
    await response(scope, receive, send)


def _with_auth(inner: ASGIApp, auth: Auth) -> ASGIApp:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        verdict = auth(scope)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        if verdict is not True:
            refused = error_response(
                401,
                "Unauthorized",
                "this gateway needs authentication",
                **{"WWW-Authenticate": "Bearer"},
            )
            await _send_response(refused, scope, receive, send)
            return
        await inner(scope, receive, send)

    return app


@attrs.frozen
class RateLimit:
    """A token bucket per client: ``per_second`` requests on average, bursts of up to
    ``burst``. A request beyond it is answered 429 with ``Retry-After``.

    A client is its address, or what ``client(scope)`` says (behind a reverse proxy every
    request comes from the proxy: name the client by a header the proxy sets, or by the
    authenticated user).
    """

    per_second: float
    burst: int = 10
    client: Callable[[Scope], str] | None = None

    def __attrs_post_init__(self) -> None:
        if not (isinstance(self.per_second, int | float) and self.per_second > 0):
            raise ValueError(f"per_second must be a number > 0 (got {self.per_second!r})")
        if not (isinstance(self.burst, int) and self.burst >= 1):
            raise ValueError(f"burst must be an int >= 1 (got {self.burst!r})")


#: Clients remembered by the rate limit at most; beyond it, the full buckets are forgotten.
MAX_CLIENTS = 10_000


def _with_rate_limit(inner: ASGIApp, limit: RateLimit, clock: Callable[[], float]) -> ASGIApp:
    buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        if limit.client is not None:
            who = limit.client(scope)
        else:
            address = scope.get("client")
            who = str(address[0]) if address else "-"
        now = clock()
        tokens, at = buckets.get(who, (float(limit.burst), now))
        tokens = min(float(limit.burst), tokens + (now - at) * limit.per_second)
        if tokens < 1:
            buckets[who] = (tokens, now)
            wait = math.ceil((1 - tokens) / limit.per_second)
            refused = error_response(
                429, "TooManyRequests", "rate limit reached", **{"Retry-After": str(wait)}
            )
            await _send_response(refused, scope, receive, send)
            return
        buckets[who] = (tokens - 1, now)
        if len(buckets) > MAX_CLIENTS:
            for name, (left, _) in list(buckets.items()):
                if left >= limit.burst - 1:
                    del buckets[name]
        await inner(scope, receive, send)

    return app


def app(
    rt: Runtime,
    *,
    auth: Auth | None = None,
    rate_limit: RateLimit | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> ASGIApp:
    """The HTTP gateway of the open runtime ``rt``: an ASGI application, to serve with any
    ASGI server (``torpor serve`` runs it with hypercorn) or to mount in FastAPI or Starlette
    (``parent.mount("/agents", actors.http.app(rt))``).

    Routes: ``POST /actors/{type}/{key}/{handler}`` (an ask; with ``Prefer: respond-async``
    a send, ``202`` once durable), ``GET /actors/{type}/{key}/{query}?args=<json>``,
    ``POST /actors/{type}/{key}/signals/{name}``, and runs: ``POST /runs/{type}``,
    ``GET /runs/{type}/{id}``, ``.../result``, ``.../values/{name}``, ``POST .../cancel``.
    Bodies are ``{"args": [...], "kwargs": {...}}``, turned into the handler's annotated types;
    ``Idempotency-Key`` is honoured. Errors are ``{"error": {"type", "message"}}``.

    ``auth`` is called with each request's ASGI scope and answers whether it may go on
    (``actors.http.bearer(token)`` checks a bearer token; any ASGI middleware around the app
    does as well). ``rate_limit`` (a :class:`RateLimit`) limits requests per client address.
    Bodies larger than ``max_body_bytes`` are refused with 413.
    """
    return build_app(rt, auth=auth, rate_limit=rate_limit, max_body_bytes=max_body_bytes)


def build_app(
    rt: Runtime,
    *,
    auth: Auth | None = None,
    rate_limit: RateLimit | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    sources: Sources | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ASGIApp:
    """:func:`app`, reading streams and watches from ``sources`` (by default the actors'
    own: ``Ref.open_stream``, ``Ref.open_watch``), and limiting rates on ``clock``."""
    if not isinstance(rt, Runtime):
        raise TypeError(f"app() takes an open actors.Runtime (got {rt!r})")
    if not isinstance(max_body_bytes, int) or max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be an int >= 1 (got {max_body_bytes!r})")
    g = Gateway(rt, max_body_bytes, sources or ACTOR_SOURCES)
    actor = "/actors/{type}/{key}"
    run = "/runs/{type}/{id}"
    routes = [
        Route(f"{actor}/signals/{{name}}", _answering(g.signal), methods=["POST"]),
        Route(f"{actor}/streams/{{topic}}", _answering(g.stream), methods=["GET"]),
        Route(f"{actor}/watch/{{handler}}", _answering(g.watch), methods=["GET"]),
        Route(f"{actor}/{{handler}}", _answering(g.call), methods=["POST"]),
        Route(f"{actor}/{{handler}}", _answering(g.query), methods=["GET"]),
        Route("/runs/{type}", _answering(g.start), methods=["POST"]),
        Route(run, _answering(g.run_status), methods=["GET"]),
        Route(f"{run}/result", _answering(g.run_result), methods=["GET"]),
        Route(f"{run}/values/{{name}}", _answering(g.run_value), methods=["GET"]),
        Route(f"{run}/cancel", _answering(g.run_cancel), methods=["POST"]),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        code = getattr(exc, "status_code", 404)
        kind = "MethodNotAllowed" if code == 405 else "NotFound"
        return error_response(code, kind, f"no route {request.method} {request.url.path}")

    asgi: ASGIApp = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    if auth is not None:
        asgi = _with_auth(asgi, auth)
    if rate_limit is not None:  # (outermost: it counts refused requests too)
        asgi = _with_rate_limit(asgi, rate_limit, clock)
    return asgi
