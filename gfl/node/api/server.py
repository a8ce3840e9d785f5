"""Serve the control API inside the node's trio loop with hypercorn's trio worker.

The listening socket is bound here, before hypercorn sees it, so that a port
in use is one clear `ApiBindError` instead of a traceback from deep inside
the server, and so that port 0 works (the caller learns the real port).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any, cast

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.types import ASGIApp

from gfl.errors import GflError

log = logging.getLogger(__name__)


class ApiBindError(GflError):
    """The control API cannot listen on its host and port."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_socket(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket; `ApiBindError` with one clear line otherwise."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ApiBindError(f"cannot resolve the API host {host!r}: {exc.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ApiBindError(
                f"the API port {port} on {host} is already in use "
                "(is another node running? choose another with --api-port)"
            ) from None
        raise ApiBindError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


async def serve_api(
    app: ASGIApp,
    sock: socket.socket,
    shutdown_trigger: Callable[[], Awaitable[object]],
    *,
    graceful_timeout: float = 2.0,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``sock`` until ``shutdown_trigger`` returns; starts with (host, port)."""
    host, port = sock.getsockname()[:2]
    if not is_loopback(host):
        log.warning(
            "the control API listens on %s, reachable from other machines; "
            "anyone with the token controls this node",
            host,
        )
    config = HypercornConfig()
    config.bind = [f"fd://{sock.detach()}"]
    config.graceful_timeout = graceful_timeout
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.include_server_header = False

    async def stop() -> None:
        await shutdown_trigger()

    async def _serve(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        await serve(cast(Any, app), config, shutdown_trigger=stop, task_status=task_status)

    async with trio.open_nursery() as nursery:
        await nursery.start(_serve)
        log.info("control API on http://%s:%d", host, port)
        task_status.started((host, port))
