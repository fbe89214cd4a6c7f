"""``torpor serve DIR --types module:Name``: open the runtime and serve its HTTP gateway
(:mod:`runtime.http`) with hypercorn, on trio (or asyncio: ``--backend``), until SIGINT or
SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from ..errors import WriteRefusedError
from .call import load_types
from .options import replica_store

#: The environment variable ``--token`` may be read from (a token on the command line is
#: visible to other users of the machine in the process list).
TOKEN_VARIABLE = "TORPOR_TOKEN"


def add_serve_command(commands: Any) -> None:
    text = "serve a runtime's actors and runs over HTTP (the gateway; needs torpor[http])"
    sub = commands.add_parser("serve", help=text, description=text)
    sub.set_defaults(run=run_serve)
    sub.add_argument("dir", help="the runtime directory (created if missing)")
    sub.add_argument(
        "--types",
        action="append",
        required=True,
        metavar="MODULE:NAME[,...]",
        help="your actor classes (a class, or a list of them), e.g. myapp.agents:Chat; "
        "repeat it or separate with commas; the current directory is importable",
    )
    sub.add_argument("--host", default="127.0.0.1", help="the address to bind (127.0.0.1)")
    sub.add_argument("--port", type=int, default=8080, help="the port (8080; 0: a free one)")
    sub.add_argument(
        "--token",
        help=f"require 'Authorization: Bearer TOKEN' (or set ${TOKEN_VARIABLE}); needed to bind "
        "an address other than loopback",
    )
    sub.add_argument(
        "--backend",
        choices=["trio", "asyncio"],
        default="trio",
        help="the event loop the runtime and the server run on (trio)",
    )
    sub.add_argument(
        "--rate-limit",
        type=float,
        metavar="PER_SECOND",
        help="requests per second allowed per client address (bursts of 10)",
    )
    from .options import add_replica_options

    add_replica_options(sub)


def run_serve(args: argparse.Namespace) -> int:
    try:
        from ..http import gateway
        from ..http.server import is_loopback
    except ImportError as exc:
        raise WriteRefusedError(
            f"torpor serve needs the http extra: pip install 'torpor[http]' ({exc})"
        ) from None
    token = args.token or os.environ.get(TOKEN_VARIABLE) or None
    if not is_loopback(args.host) and token is None:
        raise WriteRefusedError(
            f"--host {args.host} is reachable from other machines: give --token (or set "
            f"${TOKEN_VARIABLE}) so that requests must authenticate"
        )
    types = load_types(",".join(args.types))
    replica = None
    if args.replica is not None or args.s3_bucket is not None:
        replica = replica_store(args)
    import anyio

    anyio.run(_serve, args, types, replica, token, gateway, backend=args.backend)
    return 0


async def _serve(
    args: argparse.Namespace, types: list[type], replica: Any, token: str | None, gateway: Any
) -> None:
    import anyio

    from ..http.server import serving
    from ..runtime import open_runtime

    auth = gateway.bearer(token) if token is not None else None
    limit = gateway.RateLimit(args.rate_limit) if args.rate_limit else None
    async with open_runtime(args.dir, types=types, replica=replica) as rt:
        asgi = gateway.app(rt, auth=auth, rate_limit=limit)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with serving(asgi, args.host, args.port) as url:
                print(f"torpor serve: {url} (runtime {args.dir})", flush=True)
                async for _ in signals:
                    break
    print("torpor serve: stopped", file=sys.stderr, flush=True)
