"""The HTTP gateway through a real hypercorn server on 127.0.0.1 (an ephemeral port) and a real
HTTP client (httpx): every route, every error status, typed JSON, auth, rate limits, SSE."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import decimal
import enum
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import actors
import actors.http
from runtime.http.gateway import Feed, RateLimit, Sources, build_app
from runtime.http.server import serving

pytestmark = [pytest.mark.both_backends, pytest.mark.real_clock]


class Size(enum.Enum):
    SMALL = "s"
    LARGE = "l"


@dataclasses.dataclass(frozen=True)
class Item:
    name: str
    price: decimal.Decimal
    size: Size = Size.SMALL


class Shop(actors.Actor, name="Shop"):
    async def on_create(self) -> None:
        self.sql.execute("CREATE TABLE IF NOT EXISTS items (name TEXT, price TEXT)")

    async def add(self, item: Item, count: int = 1) -> list[Item]:
        for _ in range(count):
            self.sql.execute("INSERT INTO items VALUES (?, ?)", (item.name, str(item.price)))
        return [item] * count

    async def stamp(self, at: datetime.datetime, id: uuid.UUID, data: bytes) -> dict[str, Any]:
        return {"at": at, "id": id, "data": data, "tags": {"x"}, "pair": (1, 2)}

    async def fail(self) -> None:
        raise actors.TerminalError("refused on purpose")

    @actors.query
    async def total(self, prefix: str = "") -> int:
        rows = self.sql.execute("SELECT count(*) FROM items WHERE name LIKE ?", (prefix + "%",))
        (count,) = rows.fetchone() or (0,)
        return int(count)


class Vault(actors.Actor, name="Vault"):
    http_create = False

    async def put(self, value: int) -> int:
        return value


class Approval(actors.Workflow, name="Approval"):
    async def run(self, amount: int) -> str:
        await self.set_value("asked", amount)
        verdict = await self.wait_for_event("decide")
        return f"{verdict} {amount}"


def spell(word: str) -> str:
    """A step that streams its answer letter by letter, as an LLM step streams tokens."""
    step = actors.current_step()
    for letter in word:
        step.emit("tokens", letter)
    return word.upper()


class Newsroom(actors.Actor, name="Newsroom"):
    async def post(self, text: str) -> None:
        self.publish("news", {"text": text})

    async def shout(self, word: str) -> str:
        return await self.step("spell", spell, word)

    @actors.query
    async def count(self) -> int:
        return int(self.kv.get("n", 0))

    async def bump(self) -> None:
        self.kv["n"] = self.kv.get("n", 0) + 1


TYPES = [Shop, Vault, Approval, Newsroom]


@contextlib.asynccontextmanager
async def gateway(
    root: Path, *, sources: Sources | None = None, **options: Any
) -> AsyncIterator[tuple[actors.Runtime, httpx.AsyncClient]]:
    """A runtime, its gateway served on 127.0.0.1, and an httpx client of it."""
    async with (
        actors.open_runtime(root, types=TYPES, idle_timeout=60) as rt,
        serving(build_app(rt, sources=sources, **options)) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        with anyio.fail_after(30):
            yield rt, client


def error_of(response: httpx.Response) -> str:
    """The error type a gateway's answer names."""
    return str(response.json()["error"]["type"])


async def test_an_ask_returns_the_typed_result_once_committed(root: Path) -> None:
    """POST a handler: JSON arguments become its annotated types, its result comes back as JSON."""
    async with gateway(root) as (rt, client):
        item = {"name": "pen", "price": "1.50", "size": "l"}
        r = await client.post("/actors/Shop/s1/add", json={"args": [item], "kwargs": {"count": 2}})
        assert r.status_code == 200
        assert r.json() == {"result": [item, item]}
        assert await rt.ref(Shop, "s1").ask(Shop.total) == 2


async def test_values_travel_as_json_both_ways(root: Path) -> None:
    """Datetimes, UUIDs and bytes (base64) go in and come back as JSON; sets and tuples as lists."""
    async with gateway(root) as (_, client):
        u = str(uuid.uuid4())
        args = ["2026-01-02T03:04:05+00:00", u, "aGk="]
        r = await client.post("/actors/Shop/s1/stamp", json={"args": args})
        assert r.status_code == 200, r.text
        assert r.json()["result"] == {
            "at": "2026-01-02T03:04:05+00:00",
            "id": u,
            "data": "aGk=",
            "tags": ["x"],
            "pair": [1, 2],
        }


async def test_a_send_is_accepted_once_durable(root: Path) -> None:
    """Prefer: respond-async makes a POST a send, answered 202 once stored in the mailbox."""
    async with gateway(root) as (rt, client):
        item = {"name": "pen", "price": "2"}
        r = await client.post(
            "/actors/Shop/s1/add", json={"args": [item]}, headers={"Prefer": "respond-async"}
        )
        assert r.status_code == 202
        assert r.headers["preference-applied"] == "respond-async"
        assert await rt.ref(Shop, "s1").ask(Shop.add, Item("cap", decimal.Decimal(1))) == [
            Item("cap", decimal.Decimal(1))
        ]
        assert await rt.ref(Shop, "s1").ask(Shop.total) == 2


async def test_an_idempotency_key_applies_a_call_once(root: Path) -> None:
    """A call retried with its Idempotency-Key applies nothing twice; another call with it: 409."""
    async with gateway(root) as (rt, client):
        body = {"args": [{"name": "pen", "price": "2"}]}
        key = {"Idempotency-Key": "k1"}
        first = await client.post("/actors/Shop/s1/add", json=body, headers=key)
        again = await client.post("/actors/Shop/s1/add", json=body, headers=key)
        assert first.json() == again.json()
        sent = {"Idempotency-Key": "k2", "Prefer": "respond-async"}
        for _ in range(2):
            assert (
                await client.post("/actors/Shop/s1/add", json=body, headers=sent)
            ).status_code == 202
        assert await rt.ref(Shop, "s1").ask(Shop.total) == 2
        other = {"args": [{"name": "cap", "price": "3"}]}
        r = await client.post("/actors/Shop/s1/add", json=other, headers=key)
        assert (r.status_code, error_of(r)) == (409, "IdempotencyKeyReusedError")


async def test_a_query_answers_get_with_its_arguments_in_the_url(root: Path) -> None:
    """GET a @query with ?args=<json>; an actor that does not exist is 404; a handler is 405."""
    async with gateway(root) as (rt, client):
        await rt.ref(Shop, "s1").ask(Shop.add, Item("pen", decimal.Decimal(1)), 3)
        r = await client.get("/actors/Shop/s1/total", params={"args": '["pe"]'})
        assert r.json() == {"result": 3}
        r = await client.get("/actors/Shop/nobody/total")
        assert (r.status_code, error_of(r)) == (404, "ActorNotFoundError")
        r = await client.get("/actors/Shop/s1/add")
        assert r.status_code == 405


async def test_a_signal_reaches_a_waiting_run(root: Path) -> None:
    """POST signals/{name} stores an event (202); a run started over HTTP gets it and finishes."""
    async with gateway(root) as (_, client):
        r = await client.post("/runs/Approval", json={"id": "r1", "args": [500]})
        assert (r.status_code, r.json(), r.headers["location"]) == (
            202,
            {"id": "r1"},
            "/runs/Approval/r1",
        )
        status = (await client.get("/runs/Approval/r1")).json()
        assert status["id"] == "r1" and status["state"] in ("pending", "running", "waiting")
        r = await client.post(
            "/actors/Approval/r1/signals/decide",
            json={"value": "yes"},
            headers={"Idempotency-Key": "d"},
        )
        assert r.status_code == 202 and r.json() == {"stored": True}
        r = await client.post(
            "/actors/Approval/r1/signals/decide",
            json={"value": "yes"},
            headers={"Idempotency-Key": "d"},
        )
        assert r.json() == {"stored": False}
        assert (await client.get("/runs/Approval/r1/result")).json() == {"result": "yes 500"}
        assert (await client.get("/runs/Approval/r1/values/asked")).json() == {"value": 500}
        r = await client.get("/runs/Approval/r1/values/never")
        assert r.status_code == 404
        assert (await client.post("/runs/Approval/r1/cancel")).json() == {"cancelled": False}


async def test_a_cancelled_runs_result_is_409(root: Path) -> None:
    """POST cancel ends a waiting run; its result then answers 409 RunCancelledError."""
    async with gateway(root) as (_, client):
        await client.post("/runs/Approval", json={"id": "r2", "args": [1]})
        assert (await client.post("/runs/Approval/r2/cancel")).json() == {"cancelled": True}
        r = await client.get("/runs/Approval/r2/result")
        assert (r.status_code, error_of(r)) == (409, "RunCancelledError")
        r = await client.get("/runs/Approval/nobody")
        assert (r.status_code, error_of(r)) == (404, "ActorNotFoundError")
        r = await client.post("/runs/Shop", json={})
        assert (r.status_code, error_of(r)) == (404, "UnknownActorTypeError")


@pytest.mark.parametrize(
    ("method", "path", "content", "status", "kind"),
    [
        ("POST", "/actors/Shop/s1/add", b"{not json", 400, "BadRequestError"),
        ("POST", "/actors/Shop/s1/add", b'{"args": 3}', 400, "BadRequestError"),
        (
            "POST",
            "/actors/Shop/s1/add",
            b'{"args": [{"name": 1, "price": "1"}]}',
            422,
            "InvalidArgumentsError",
        ),
        (
            "POST",
            "/actors/Shop/s1/add",
            b'{"args": [{"name": "a", "price": "1"}, "2"]}',
            422,
            "InvalidArgumentsError",
        ),
        (
            "POST",
            "/actors/Shop/s1/add",
            b'{"args": [], "kwargs": {"nope": 1}}',
            422,
            "InvalidArgumentsError",
        ),
        ("POST", "/actors/Nope/s1/add", b"{}", 404, "UnknownActorTypeError"),
        ("POST", "/actors/Shop/s1/nope", b"{}", 404, "UnknownHandlerError"),
        ("GET", "/actors/Shop/s1/total?args=[", b"", 400, "BadRequestError"),
        ("POST", "/actors/Shop/s1/fail", b"{}", 500, "MessageFailedError"),
        ("POST", "/actors/Vault/v1/put", b'{"args": [1]}', 404, "NotCreatableError"),
        ("GET", "/actors/Shop/s1/streams/t?after=x", b"", 400, "BadRequestError"),
        ("GET", "/nowhere", b"", 404, "NotFound"),
    ],
)
async def test_every_error_is_json_with_its_status(
    root: Path, method: str, path: str, content: bytes, status: int, kind: str
) -> None:
    """Bad requests get the status of the gateway's table and a JSON error, never a traceback."""
    async with gateway(root) as (_, client):
        r = await client.request(method, path, content=content)
        assert (r.status_code, error_of(r)) == (status, kind), r.text
        assert "Traceback" not in r.text


# The server answers before it has read the whole body; httpx's upload generator is then left
# unfinished, which Python reports as an exception ignored when it is collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_an_oversized_body_is_413(root: Path) -> None:
    """A body over max_body_bytes is refused with 413, declared or streamed, before it is read."""
    async with gateway(root, max_body_bytes=1000) as (_, client):
        big = b'{"args": ["' + b"x" * 5000 + b'"]}'
        r = await client.post("/actors/Shop/s1/add", content=big)
        assert (r.status_code, error_of(r)) == (413, "BodyTooLargeError")

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(big), 100):
                yield big[i : i + 100]

        r = await client.post("/actors/Shop/s1/add", content=chunks())
        assert (r.status_code, error_of(r)) == (413, "BodyTooLargeError")


async def test_a_stopped_actor_is_503(root: Path) -> None:
    """An actor stopped by its restart intensity answers 503 ActorStoppedError."""

    class Fragile(actors.Actor, name="Fragile"):
        retry = actors.Retry(max_attempts=1)
        restart_intensity = actors.RestartIntensity(max_failures=1, period=60)

        async def boom(self) -> None:
            raise ValueError("boom")

    async with (
        actors.open_runtime(root, types=[Fragile]) as rt,
        serving(build_app(rt)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        with anyio.fail_after(30):
            codes = [(await client.post("/actors/Fragile/f/boom")).status_code for _ in range(3)]
        assert codes[0] == 500 and codes[-1] == 503
        r = await client.post("/actors/Fragile/f/boom")
        assert error_of(r) == "ActorStoppedError"


async def test_a_type_not_creatable_over_http_serves_its_existing_actors(root: Path) -> None:
    """http_create = False: an actor created in process is reachable; a new key is 404."""
    async with gateway(root) as (rt, client):
        await rt.ref(Vault, "v1").ask(Vault.put, 1)
        r = await client.post("/actors/Vault/v1/put", json={"args": [7]})
        assert r.json() == {"result": 7}
        r = await client.post("/actors/Vault/v2/put", json={"args": [7]})
        assert r.status_code == 404


async def test_auth_refuses_requests_without_the_bearer_token(root: Path) -> None:
    """With actors.http.bearer(token), a request without the token is 401; with it, served."""
    async with gateway(root, auth=actors.http.bearer("s3cret")) as (_, client):
        r = await client.get("/actors/Shop/s1/total")
        assert (r.status_code, r.headers["www-authenticate"]) == (401, "Bearer")
        r = await client.get("/actors/Shop/s1/total", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = await client.get("/actors/Shop/s1/total", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 404  # authenticated: the actor does not exist


async def test_a_rate_limit_answers_429_past_the_burst(root: Path) -> None:
    """A client past its token bucket gets 429 with Retry-After; time refills it."""
    now = [0.0]
    limit = RateLimit(per_second=1, burst=2)
    async with gateway(root, rate_limit=limit, clock=lambda: now[0]) as (_, client):
        codes = [(await client.get("/actors/Shop/s1/total")).status_code for _ in range(3)]
        assert codes == [404, 404, 429]
        r = await client.get("/actors/Shop/s1/total")
        assert r.headers["retry-after"] == "1"
        now[0] += 1.0
        assert (await client.get("/actors/Shop/s1/total")).status_code == 404


async def test_a_rate_limit_can_name_clients_by_a_header(root: Path) -> None:
    """RateLimit(client=...) keeps one bucket per named client (behind a proxy: a header)."""

    def user(scope: Any) -> str:
        return str(dict(scope["headers"]).get(b"x-user", b"").decode())

    limit = RateLimit(per_second=1, burst=1, client=user)
    async with gateway(root, rate_limit=limit, clock=lambda: 0.0) as (_, client):
        codes = [
            (await client.get("/actors/Shop/s1/total", headers={"X-User": who})).status_code
            for who in ("ann", "bob", "ann")
        ]
        assert codes == [404, 404, 429]


class Log:
    """A test double of an actor's stream: entries 0..n-1, then following new ones."""

    def __init__(self, entries: list[Any]) -> None:
        self.entries = entries
        self.added = anyio.Event()
        self.opened: list[int | None] = []

    def add(self, entry: Any) -> None:
        self.entries.append(entry)
        self.added.set()
        self.added = anyio.Event()

    @contextlib.asynccontextmanager
    async def open(
        self, ref: actors.Ref[Any], topic: str, after: int | None
    ) -> AsyncIterator[Feed]:
        self.opened.append(after)

        async def follow() -> Feed:
            offset = 0 if after is None else after + 1
            while True:
                while offset < len(self.entries):
                    yield offset, {"topic": topic, "item": self.entries[offset]}
                    offset += 1
                await self.added.wait()

        yield follow()


# httpx's streamed bodies are chains of async generators that it does not close when a reader
# leaves early: trio warns as each is collected. (The gateway's own and the client's are closed.)
HTTPX_GENERATORS = "ignore:Async generator 'http:ResourceWarning"


@pytest.mark.filterwarnings(HTTPX_GENERATORS)
async def test_a_stream_resumes_after_a_dropped_connection(root: Path) -> None:
    """SSE id: is the offset; reconnecting with Last-Event-ID misses nothing, repeats nothing."""
    log = Log(["a", "b", "c"])
    async with gateway(root, sources=Sources(stream=log.open)) as (_, client):
        seen: list[tuple[int, Any]] = []
        async with actors.connect(str(client.base_url)) as gw:
            ref = gw.ref("Shop", "s1")
            async with ref.open_stream("t") as entries:
                async for offset, entry in entries:
                    seen.append((offset, entry["item"]))
                    if offset == 1:
                        break  # the connection drops here
            log.add("d")
            async with ref.open_stream("t", after=seen[-1][0]) as entries:
                async for offset, entry in entries:
                    seen.append((offset, entry["item"]))
                    if offset == 3:
                        break
        assert seen == [(0, "a"), (1, "b"), (2, "c"), (3, "d")]
        assert log.opened == [None, 1]
        r = await client.get("/actors/Shop/s1/streams/t", params={"after": "x"})
        assert r.status_code == 400


@pytest.mark.filterwarnings(HTTPX_GENERATORS)
async def test_the_raw_event_stream_format(root: Path) -> None:
    """Each event is 'id: <offset>' and 'data: <entry as JSON>'; ?after= resumes too."""
    log = Log(["a", "b"])
    async with gateway(root, sources=Sources(stream=log.open)) as (_, client):
        async with client.stream("GET", "/actors/Shop/s1/streams/t?after=0") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    break
        assert line == 'data: {"topic":"t","item":"b"}'


async def test_the_client_sends_asks_signals_and_starts_runs(root: Path) -> None:
    """actors.connect gives refs and runs over the gateway, with typed results and typed errors."""
    async with gateway(root) as (rt, client):
        async with actors.connect(str(client.base_url)) as gw:
            shop = gw.ref(Shop, "s1")
            pen = Item("pen", decimal.Decimal("1.5"), Size.LARGE)
            assert await shop.ask(Shop.add, pen) == [pen]
            await shop.options(idempotency_key="once").send(Shop.add, pen)
            await shop.options(idempotency_key="once").send(Shop.add, pen)
            assert await shop.ask(Shop.total) == 2
            with pytest.raises(actors.UnknownHandlerError):
                await shop.ask("nope")
            with pytest.raises(actors.InvalidArgumentsError):
                await shop.ask("add", "not an item")
            run = await gw.start(Approval, 7, id="r9")
            assert await gw.ref("Approval", "r9").signal("decide", "no") is True
            assert await run.result() == "no 7"
            assert await run.get_value("asked") == 7
            with pytest.raises(LookupError):
                await run.get_value("never")
            assert (await gw.run(Approval, "r9").status())["state"] == "done"
        assert await rt.run(Approval, "r9").result() == "no 7"


@pytest.mark.filterwarnings(HTTPX_GENERATORS)
async def test_a_watch_streams_a_querys_results_with_its_arguments(root: Path) -> None:
    """GET watch/{query}?args= streams the watch source's values, typed arguments passed in."""
    opened: list[Any] = []

    @contextlib.asynccontextmanager
    async def watch(
        ref: actors.Ref[Any], query: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncIterator[Feed]:
        opened.append((ref.key, query, args, kwargs))

        async def values() -> Feed:
            for i in range(3):
                yield i, i * 10

        yield values()

    async with gateway(root, sources=Sources(watch=watch)) as (_, client):
        async with client.stream("GET", "/actors/Shop/s1/watch/total?args=[%22p%22]") as r:
            lines = [line async for line in r.aiter_lines() if line]
        assert lines == ["id: 0", "data: 0", "id: 1", "data: 10", "id: 2", "data: 20"]
        assert opened == [("s1", "total", ("p",), {})]
        async with (
            actors.connect(str(client.base_url)) as gw,
            gw.ref(Shop, "s2").open_watch(Shop.total, prefix="x") as values,
        ):
            assert [value async for value in values] == [0, 10, 20]
        assert opened[1] == ("s2", "total", ("x",), {})  # (bound as the signature says)
        r = await client.get("/actors/Shop/s1/watch/add")
        assert r.status_code == 405
        r = await client.get("/actors/Shop/s1/watch/total?args=[1]")
        assert (r.status_code, error_of(r)) == (422, "InvalidArgumentsError")


async def test_keys_travel_percent_encoded(root: Path) -> None:
    """A key with spaces, unicode or a question mark reaches the same actor as in process."""
    async with gateway(root) as (rt, client):
        async with actors.connect(str(client.base_url)) as gw:
            key = "ünï code?&=#"
            await gw.ref(Shop, key).ask(Shop.add, Item("pen", decimal.Decimal(1)))
            with pytest.raises(actors.InvalidKeyError, match="holds a '/'"):
                await gw.ref(Shop, "a/b").ask(Shop.total)
        assert await rt.ref(Shop, key).ask(Shop.total) == 1


async def test_a_query_posted_is_asked_and_cannot_be_sent(root: Path) -> None:
    """POST of a @query answers it (an Idempotency-Key is moot); with respond-async it is 405."""
    async with gateway(root) as (rt, client):
        await rt.ref(Shop, "s1").ask(Shop.add, Item("pen", decimal.Decimal(1)))
        r = await client.post("/actors/Shop/s1/total", headers={"Idempotency-Key": "k"})
        assert r.json() == {"result": 1}
        r = await client.post("/actors/Shop/s1/total", headers={"Prefer": "respond-async"})
        assert (r.status_code, error_of(r)) == (405, "MethodNotAllowedError")


async def test_a_client_that_leaves_a_long_wait_does_not_stop_the_server(root: Path) -> None:
    """A client gone while it waits for a run's result leaves the gateway serving the others."""
    async with gateway(root) as (_, client):
        await client.post("/runs/Approval", json={"id": "r3", "args": [3]})
        with anyio.move_on_after(0.3):
            await client.get("/runs/Approval/r3/result")
        r = await client.post("/actors/Approval/r3/signals/decide", json={"value": "ok"})
        assert r.status_code == 202
        assert (await client.get("/runs/Approval/r3/result")).json() == {"result": "ok 3"}


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value: scalars of every kind, lists and objects, a few levels deep."""
    kinds = ["null", "bool", "int", "float", "str"] + (["list", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, -1, 2**70, rng.randint(-1000, 1000)])
    if kind == "float":
        return rng.choice([0.5, -1e308, 1e-9])
    if kind == "str":
        return rng.choice(["", "x", "1.5", "2026-01-02", "aGk=", "\u00e9\u4e2d", "l", "s"])
    if kind == "list":
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    names = ["name", "price", "size", "x", "args", "kwargs", "count"]
    return {rng.choice(names): _random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}


async def test_random_bodies_never_get_a_500(root: Path) -> None:
    """Hundreds of random JSON bodies to typed handlers get 200, 400, 404 or 422, never a 500."""
    rng = random.Random(15)
    statuses: set[int] = set()
    async with gateway(root) as (_, client):
        for _ in range(300):
            handler = rng.choice(["add", "stamp", "total", "nope"])
            if rng.random() < 0.8:
                body = {"args": _random_json(rng), "kwargs": _random_json(rng)}
                if rng.random() < 0.7:
                    body = {"args": [_random_json(rng) for _ in range(rng.randint(0, 3))]}
            else:
                body = _random_json(rng)
            r = await client.post(f"/actors/Shop/fuzz/{handler}", json=body)
            statuses.add(r.status_code)
            assert r.status_code in (200, 400, 404, 422), r.text
            assert r.status_code == 200 or "error" in r.json()
    assert {400, 404, 422} <= statuses


# A reader that stops early leaves httpx's response generators unexhausted (closed with the
# response, but collected unfinished): Python reports that as an exception ignored.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_an_actors_stream_reaches_sse_clients_and_resumes_by_offset(root: Path) -> None:
    """Items a turn publishes and chunks a step emits reach SSE readers once, resumable by id."""
    async with gateway(root) as (_, client), actors.connect(str(client.base_url)) as gw:
        news = gw.ref("Newsroom", "n1")
        await news.ask("post", "one")
        await news.ask("post", "two")
        seen: list[tuple[int, str]] = []
        async with news.open_stream("news") as entries:
            async for offset, entry in entries:
                assert (entry["kind"], entry["topic"]) == ("item", "news")
                seen.append((offset, entry["item"]["text"]))
                if len(seen) == 2:
                    break
        await news.ask("post", "three")
        async with news.open_stream("news", after=seen[-1][0]) as entries:
            async for offset, entry in entries:
                seen.append((offset, entry["item"]["text"]))
                break
        assert [text for _, text in seen] == ["one", "two", "three"]
        assert [offset for offset, _ in seen] == sorted({offset for offset, _ in seen})
        assert await news.ask("shout", "hey") == "HEY"
        chunks = []
        async with news.open_stream("tokens") as entries:
            async for _, entry in entries:
                chunks.append((entry["kind"], entry["step"], entry["item"]))
                if len(chunks) == 3:
                    break
        assert chunks == [("chunk", "spell", "h"), ("chunk", "spell", "e"), ("chunk", "spell", "y")]


# A reader that stops early leaves httpx's response generators unexhausted (closed with the
# response, but collected unfinished): Python reports that as an exception ignored.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_watch_over_sse_yields_after_each_commit(root: Path) -> None:
    """The watch route sends a query's value now, then again after a commit changed it."""
    async with gateway(root) as (_, client), actors.connect(str(client.base_url)) as gw:
        news = gw.ref("Newsroom", "n2")
        await news.ask("bump")
        async with news.open_watch("count") as values:
            got = []
            async for value in values:
                got.append(value)
                if len(got) == 1:
                    await news.ask("bump")
                else:
                    break
        assert got == [1, 2]
