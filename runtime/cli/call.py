"""``torpor send`` and ``torpor ask``: open the runtime with the user's classes, make the call
through the runtime's API (as a program would), close gracefully."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any

from ..errors import ActorError, WriteRefusedError
from ..ops import inspect as _inspect
from .options import replica_store
from .render import describe_waits, print_json, turn_text


def load_types(spec: str) -> list[type]:
    """``module:Name`` items, comma-separated; a name may be a class or a list of classes."""
    import importlib

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    found: list[type] = []
    for item in (part.strip() for part in spec.split(",")):
        module_name, sep, attr = item.partition(":")
        if not sep or not module_name or not attr:
            raise LookupError(f"--types: {item!r} is not MODULE:NAME")
        try:
            value: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise LookupError(f"--types: cannot import {module_name!r} ({exc})") from exc
        for part in attr.split("."):
            if not hasattr(value, part):
                raise LookupError(f"--types: {module_name} has no {attr!r}")
            value = getattr(value, part)
        found.extend(value if isinstance(value, list | tuple) else [value])
    return found


def run_call(args: argparse.Namespace) -> int:
    """``torpor send`` / ``torpor ask``: open the runtime with the user's classes (its pending
    actors of those types resume, as at any open), make the call, close gracefully."""
    import anyio

    from ..engine import open_runtime

    root = _inspect.check_root(args.dir)
    try:
        positional = json.loads(args.args)
        keywords = json.loads(args.kwargs)
    except ValueError as exc:
        raise WriteRefusedError(f"--args/--kwargs must be JSON ({exc})") from exc
    if not isinstance(positional, list) or not isinstance(keywords, dict):
        raise WriteRefusedError("--args must be a JSON list and --kwargs a JSON object")
    types = load_types(args.types)
    by_name: dict[str, type] = {}
    durable: list[str] = []
    for t in types:
        spec = getattr(t, "__torpor_spec__", None)
        if spec is None:
            raise LookupError(f"--types: {t!r} is not an actors.Actor class")
        by_name[spec.name] = t
        if spec.durable:
            durable.append(spec.name)
    if args.type_name not in by_name:
        raise LookupError(
            f"{args.type_name!r} is not among --types ({', '.join(sorted(map(str, by_name)))})"
        )
    actor_type = by_name[args.type_name]
    replica = None
    if args.replica is not None or args.s3_bucket is not None:
        replica = replica_store(args)
    elif durable:
        raise WriteRefusedError(
            f"{', '.join(map(repr, sorted(durable)))} {'are' if len(durable) > 1 else 'is'} "
            "durable = True: replies wait for the replica, so give the runtime's replica as its "
            "program opens it (--replica DIR, or --s3-bucket BUCKET and its options)"
        )

    async def run() -> Any:
        async with open_runtime(root, types=types, replica=replica) as rt:
            ref: Any = rt.ref(actor_type, args.key)
            if args.command == "ask":
                return await ask_with_timeout(args, rt, ref, positional, keywords)
            # Ref.send, saying whether the idempotency key made it a repeat (nothing stored).
            _, seq, stored = await rt._send(
                ref._spec, ref.key, args.handler, tuple(positional), keywords, args.idempotency_key
            )
            return seq, stored

    result = anyio.run(run)
    if args.command == "ask":
        if args.json:
            print_json({"reply": _inspect.to_json(result)})
        else:
            print(json.dumps(_inspect.to_json(result), ensure_ascii=False))
        return 0
    seq, stored = result
    if args.json:
        print_json({"sent": stored, "duplicate": not stored})
    elif stored:
        print(f"sent {args.type_name} {args.key!r} {args.handler}")
    else:
        first = f" (message {seq})" if seq else ""
        print(
            f"not sent again: a duplicate of the call sent with --idempotency-key "
            f"{args.idempotency_key!r}{first}; nothing new was stored"
        )
    return 0


class NoReplyError(ActorError):
    """``torpor ask --timeout``: no reply in time."""


#: How often ``torpor ask`` looks whether the actor's turn waits (to say so once).
ASK_LOOK_EVERY = 0.5


async def ask_with_timeout(
    args: argparse.Namespace, rt: Any, ref: Any, positional: list[Any], keywords: dict[str, Any]
) -> Any:
    """``ref.ask``, giving up after ``--timeout`` (:class:`NoReplyError`, saying what the
    actor waits for). Meanwhile, says once on stderr when the actor has a turn waiting durably
    (for an event, or in a sleep): no reply comes before that wait ends."""
    import anyio

    async def look() -> None:
        with contextlib.suppress(Exception):  # only a note
            while True:
                waits = describe_waits(await rt.turns(ref))
                if waits:
                    break
                await anyio.sleep(ASK_LOOK_EVERY)
            give_up = "" if args.timeout else " (--timeout SECONDS gives up waiting)"
            print(
                f"torpor ask: {args.type_name} {args.key!r} is waiting: {'; '.join(waits)}; "
                f"no reply until then{give_up}",
                file=sys.stderr,
                flush=True,
            )

    outcome: list[Any] = []
    with anyio.move_on_after(args.timeout):
        async with anyio.create_task_group() as group:
            group.start_soon(look)
            try:
                outcome.append(
                    await ref.ask(args.handler, *positional, **keywords, **idempotency(args))
                )
            except Exception as exc:  # raised below, outside the task group (not in a group)
                outcome.append(exc)
            group.cancel_scope.cancel()
    if outcome:
        if isinstance(outcome[0], Exception):
            raise outcome[0]
        return outcome[0]
    turns = await rt.turns(ref)
    what = "; ".join(describe_waits(turns) or [f"{turn_text(t)} is {t.status}" for t in turns])
    events = [s.name for t in turns for s in t.steps if s.status == "waiting" and s.kind == "event"]
    signal = "".join(
        f" (ref.signal({name!r}, ...) sends it, from a program that opens the runtime)"
        for name in events[:1]
    )
    again = (
        f"ask again with --idempotency-key {args.idempotency_key} for its reply"
        if args.idempotency_key
        else "with an --idempotency-key, asking again with the same key gives its reply"
    )
    raise NoReplyError(
        f"no reply from {args.type_name} {args.key!r} within {args.timeout:g} s: "
        + (f"{what}{signal}, and later messages wait behind it" if what else "no turn has started")
        + f". The message stays queued: its turn goes on when the runtime is next opened "
        f"({again})"
    )


def idempotency(args: argparse.Namespace) -> dict[str, Any]:
    return {"idempotency_key": args.idempotency_key} if args.idempotency_key else {}
