"""``actors.connect(url)``: refs and runs of a runtime in another process, over its gateway.

httpx is imported when a connection opens (``import actors`` imports no HTTP library). Errors
the gateway answers come back as the torpor error of the same name when there is one (an
``InvalidArgumentsError`` is one here too), else as ``GatewayError``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from .. import errors as _errors
from ..errors import ActorError, GatewayError, InvalidKeyError
from ..spec import QUERY_MARK
from ..typecheck import resolve
from .values import from_json, to_json

if TYPE_CHECKING:
    import httpx


def _error(response: httpx.Response) -> Exception:
    try:
        found = response.json()["error"]
        kind, message = str(found["type"]), str(found["message"])
    except Exception:
        kind, message = "HTTPError", f"HTTP {response.status_code}: {response.text[:200]}"
    cls = getattr(_errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, ActorError) and cls is not ActorError:
        try:
            return cls(message)
        except TypeError:  # an error whose __init__ takes more (MessageFailedError)
            pass
    return GatewayError(f"{kind}: {message}", status=response.status_code, kind=kind)


def _names(target: Any, method: Any) -> tuple[str, str, Any, bool]:
    """(type name, handler name, handler function or None, whether it is a @query)."""
    spec = getattr(target, "__torpor_spec__", None)
    type_name = spec.name if spec is not None else target
    if not isinstance(type_name, str):
        raise TypeError(f"a type name or an actors.Actor class (got {target!r})")
    if isinstance(method, str):
        return type_name, method, None, False
    handler = spec.by_function.get(method) if spec is not None else None
    name = handler.name if handler is not None else getattr(method, "__name__", None)
    if not isinstance(name, str):
        raise TypeError(f"a handler or its name (got {method!r})")
    return type_name, name, method, bool(getattr(method, QUERY_MARK, False))


def _result(fn: Any, value: Any) -> Any:
    """The JSON ``value`` as the handler's return annotation says (if the handler is known)."""
    if fn is None:
        return value
    import inspect

    annotation = resolve(inspect.signature(fn).return_annotation, fn)
    return from_json(annotation, value)


class Connection:
    """A gateway's actors and runs, from ``async with actors.connect(url) as gw``."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def _request(
        self, method: str, path: str, *, body: Any = None, headers: dict[str, str] | None = None
    ) -> Any:
        content = None if body is None else json.dumps(body, ensure_ascii=False)
        sent = {"content-type": "application/json"} if content is not None else {}
        response = await self._client.request(
            method, path, content=content, headers={**sent, **(headers or {})}
        )
        if response.status_code >= 400:
            raise _error(response)
        return response.json()

    def ref(self, actor_type: Any, key: str) -> RemoteRef:
        """A ref to the actor ``key`` of ``actor_type`` (its class, or its persisted name)."""
        return RemoteRef(self, actor_type, key)

    async def start(
        self, workflow: Any, /, *args: Any, id: str | None = None, **kwargs: Any
    ) -> RemoteRun:
        """Start a run of ``workflow`` (its class, or its persisted name) with ``run``'s
        arguments: ``await gw.start(Flow, ..., id=...)``; returns once the start is durable.
        (Unlike ``rt.start(Flow.run, ...)``: a function does not say its class.)"""
        spec = getattr(workflow, "__torpor_spec__", None)
        type_name = spec.name if spec is not None else workflow
        if not isinstance(type_name, str):
            raise TypeError(f"a workflow class or its persisted name (got {workflow!r})")
        body: dict[str, Any] = {"args": to_json(list(args)), "kwargs": to_json(kwargs)}
        if id is not None:
            body["id"] = id
        found = await self._request("POST", f"/runs/{quote(type_name, safe='')}", body=body)
        return RemoteRun(self, type_name, found["id"])

    def run(self, workflow: Any, id: str) -> RemoteRun:
        """The handle of run ``id`` of ``workflow`` (its class or its persisted name)."""
        spec = getattr(workflow, "__torpor_spec__", None)
        return RemoteRun(self, spec.name if spec is not None else workflow, id)


class RemoteRef:
    """An actor of another process: ``send``, ``ask``, ``signal``, ``open_stream`` and
    ``open_watch`` over the gateway, as a :class:`Ref` has the first three."""

    def __init__(
        self, conn: Connection, actor_type: Any, key: str, idempotency_key: str | None = None
    ) -> None:
        self._conn = conn
        self._type = actor_type
        self.key = key
        self._idempotency_key = idempotency_key

    def __repr__(self) -> str:
        return f"RemoteRef({self._type_name()}, {self.key!r})"

    def _type_name(self) -> str:
        spec = getattr(self._type, "__torpor_spec__", None)
        return spec.name if spec is not None else str(self._type)

    def _path(self, *parts: str) -> str:
        if "/" in self.key:
            raise InvalidKeyError(
                f"the key {self.key!r} holds a '/', which the gateway's routes cannot carry "
                "(servers decode %2F before routing); reach this actor in process"
            )
        return "/".join(
            ["", "actors", quote(self._type_name(), safe=""), quote(self.key, safe="")]
            + [quote(p, safe="") for p in parts]
        )

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self._idempotency_key is not None:
            headers["Idempotency-Key"] = self._idempotency_key
        return headers

    def options(self, *, idempotency_key: str | None = None) -> RemoteRef:
        """This ref with an ``Idempotency-Key`` on its sends and asks."""
        return RemoteRef(self._conn, self._type, self.key, idempotency_key)

    async def send(self, method: Any, /, *args: Any, **kwargs: Any) -> None:
        """Send a message; return once the gateway says it is durable (202)."""
        _, name, _, _ = _names(self._type, method)
        body = {"args": to_json(list(args)), "kwargs": to_json(kwargs)}
        headers = self._headers({"Prefer": "respond-async"})
        await self._conn._request("POST", self._path(name), body=body, headers=headers)

    async def ask(self, method: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Ask and return the handler's result (as its return annotation says, when
        ``method`` is the handler function); a ``@query`` goes by GET."""
        _, name, fn, is_query = _names(self._type, method)
        if is_query:
            params = {"args": json.dumps(to_json(list(args)))}
            if kwargs:
                params["kwargs"] = json.dumps(to_json(kwargs))
            path = self._path(name) + "?" + urlencode(params)
            found = await self._conn._request("GET", path)
        else:
            body = {"args": to_json(list(args)), "kwargs": to_json(kwargs)}
            found = await self._conn._request(
                "POST", self._path(name), body=body, headers=self._headers()
            )
        return _result(fn, found["result"])

    async def signal(
        self, name: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> bool:
        """Deliver event ``name``; ``False`` if ``idempotency_key`` was used already."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
        found = await self._conn._request(
            "POST", self._path("signals", name), body={"value": to_json(payload)}, headers=headers
        )
        return bool(found["stored"])

    @contextlib.asynccontextmanager
    async def open_stream(
        self, topic: str, *, after: int | None = None
    ) -> AsyncIterator[AsyncIterator[tuple[int, Any]]]:
        """Read stream ``topic`` as server-sent events, after offset ``after``: ``async with
        ref.open_stream("tokens") as entries: async for offset, entry in entries: ...``."""
        async with _events(self._conn, self._path("streams", topic), after) as entries:
            yield entries

    @contextlib.asynccontextmanager
    async def open_watch(
        self, query: Any, /, *args: Any, **kwargs: Any
    ) -> AsyncIterator[AsyncIterator[Any]]:
        """Follow a ``@query``'s result as server-sent events, now and after each change:
        ``async with ref.open_watch(Chat.summary) as values: async for value in values: ...``."""
        _, name, fn, _ = _names(self._type, query)
        params = {"args": json.dumps(to_json(list(args)))}
        if kwargs:
            params["kwargs"] = json.dumps(to_json(kwargs))
        path = self._path("watch", name) + "?" + urlencode(params)
        async with _events(self._conn, path, None) as entries:

            async def values() -> AsyncIterator[Any]:
                async for _, value in entries:
                    yield _result(fn, value)

            read = values()
            try:
                yield read
            finally:
                await read.aclose()  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def _events(
    conn: Connection, path: str, after: int | None
) -> AsyncIterator[AsyncIterator[tuple[int, Any]]]:
    from httpx_sse import aconnect_sse

    headers = {"Last-Event-ID": str(after)} if after is not None else {}
    async with aconnect_sse(conn._client, "GET", path, headers=headers) as source:
        if source.response.status_code >= 400:
            await source.response.aread()
            raise _error(source.response)

        async def entries() -> AsyncIterator[tuple[int, Any]]:
            # (closed when the reader stops early: httpx's generators under it, too)
            async with contextlib.aclosing(source.aiter_sse()) as events:
                async for event in events:
                    yield int(event.id), json.loads(event.data)

        read = entries()  # (an async generator: aclose below)
        try:
            yield read
        finally:
            await read.aclose()  # type: ignore[attr-defined]


class RemoteRun:
    """A run of another process, over the gateway: ``status``, ``result``, ``get_value``,
    ``cancel``."""

    def __init__(self, conn: Connection, workflow: str, id: str) -> None:
        self._conn = conn
        self.workflow = workflow
        self.id = id

    def __repr__(self) -> str:
        return f"RemoteRun({self.workflow}, {self.id!r})"

    def _path(self, *parts: str) -> str:
        return "/".join(
            ["", "runs", quote(self.workflow, safe=""), quote(self.id, safe="")]
            + [quote(p, safe="") for p in parts]
        )

    async def status(self) -> dict[str, Any]:
        """The run's status, as JSON (the fields of :class:`RunStatus`)."""
        found: dict[str, Any] = await self._conn._request("GET", self._path())
        return found

    async def result(self) -> Any:
        """Wait for the run's outcome; its result, or its failure raised."""
        return (await self._conn._request("GET", self._path("result")))["result"]

    async def get_value(self, name: str) -> Any:
        """The latest value recorded under ``name`` (``LookupError`` if none yet)."""
        try:
            return (await self._conn._request("GET", self._path("values", name)))["value"]
        except GatewayError as exc:
            if exc.kind == "LookupError":
                raise LookupError(str(exc).partition(": ")[2]) from None
            raise

    async def cancel(self) -> bool:
        """Cancel the run; ``False`` if it had finished already."""
        return bool((await self._conn._request("POST", self._path("cancel")))["cancelled"])


@contextlib.asynccontextmanager
async def connect(url: str, *, token: str | None = None) -> AsyncIterator[Connection]:
    """Connect to a runtime's gateway (``actors.http.app``, ``torpor serve``) at ``url``:
    ``async with actors.connect("http://127.0.0.1:8080") as gw: await gw.ref("Chat",
    "c1").ask("post", "hi")``. ``token`` is sent as ``Authorization: Bearer``. Requests have no
    timeout (an ask waits as long as its turn takes): bound them with a cancel scope
    (``anyio.move_on_after``). Needs the ``http``
    extra: ``pip install 'torpor[http]'``."""
    try:
        import httpx
    except ImportError as exc:
        raise ImportError("actors.connect needs httpx: pip install 'torpor[http]'") from exc
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=None) as client:
        yield Connection(client)
