"""``torpor send`` and ``torpor ask``: their options checked, the user's classes loaded, the call
made by :mod:`runtime.ops.call`, and its outcome said."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import ActorError, WriteRefusedError
from ..ops import call as _call
from ..ops import inspect as _inspect
from ..records import TurnInfo
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
    """``torpor send`` / ``torpor ask``: check the options, load the user's classes, make the
    call (:mod:`runtime.ops.call` opens the runtime, as their program does), say the outcome."""
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
    call = {
        "root": root,
        "types": types,
        "actor_type": actor_type,
        "key": args.key,
        "handler": args.handler,
        "args": positional,
        "kwargs": keywords,
        "idempotency_key": args.idempotency_key,
        "replica": replica,
    }
    if args.command == "ask":
        asked = _call.ask(
            **call, timeout=args.timeout, waiting=lambda turns: say_waiting(args, turns)
        )
        if not asked.replied:
            raise no_reply(args, asked.turns)
        if args.json:
            print_json({"reply": _inspect.to_json(asked.reply)})
        else:
            print(json.dumps(_inspect.to_json(asked.reply), ensure_ascii=False))
        return 0
    sent = _call.send(**call)
    if args.json:
        print_json({"sent": sent.stored, "duplicate": not sent.stored})
    elif sent.stored:
        print(f"sent {args.type_name} {args.key!r} {args.handler}")
    else:
        first = f" (message {sent.seq})" if sent.seq else ""
        print(
            f"not sent again: a duplicate of the call sent with --idempotency-key "
            f"{args.idempotency_key!r}{first}; nothing new was stored"
        )
    return 0


class NoReplyError(ActorError):
    """``torpor ask --timeout``: no reply in time."""


def say_waiting(args: argparse.Namespace, turns: Sequence[TurnInfo]) -> None:
    """Say once on stderr that the actor has a turn waiting durably (for an event, or in a
    sleep): no reply comes before that wait ends."""
    give_up = "" if args.timeout else " (--timeout SECONDS gives up waiting)"
    print(
        f"torpor ask: {args.type_name} {args.key!r} is waiting: "
        f"{'; '.join(describe_waits(turns))}; no reply until then{give_up}",
        file=sys.stderr,
        flush=True,
    )


def no_reply(args: argparse.Namespace, turns: Sequence[TurnInfo]) -> NoReplyError:
    """No reply within ``--timeout``, saying what the actor waits for."""
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
    return NoReplyError(
        f"no reply from {args.type_name} {args.key!r} within {args.timeout:g} s: "
        + (f"{what}{signal}, and later messages wait behind it" if what else "no turn has started")
        + f". The message stays queued: its turn goes on when the runtime is next opened "
        f"({again})"
    )
