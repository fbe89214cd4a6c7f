"""An ASGI application served by hypercorn on the running event loop, trio or asyncio: what
``torpor serve``, the tests and ``torpor bench gateway`` run."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import anyio
import sniffio


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``127.0.0.1``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.asynccontextmanager
async def serving(asgi: Any, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve ``asgi`` on ``host``:``port`` (``0``: a free port) until the block ends; yields
    the base URL. The socket is bound here, so the port is known before the first request."""
    from hypercorn.config import Config

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
        config = Config()
        # hypercorn closes the socket it is given: a duplicate, so this one stays ours.
        config.bind = [f"fd://{os.dup(sock.fileno())}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("torpor.http.server")
        config.graceful_timeout = 1.0
        if sniffio.current_async_library() == "trio":
            from hypercorn.trio import serve
        else:
            from hypercorn.asyncio import serve  # type: ignore[assignment]
        stop = anyio.Event()
        shown = f"[{host}]" if ":" in host else host
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(serve, asgi, config, shutdown_trigger=stop.wait))
            try:
                yield f"http://{shown}:{sock.getsockname()[1]}"
            finally:
                stop.set()
    finally:
        sock.close()
