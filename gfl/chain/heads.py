"""New blocks as the chain node announces them, so that a node reads its registry's events
when a block comes instead of asking for the block number ten times a second.

A JSON-RPC ``eth_subscribe("newHeads")`` over a WebSocket beside the HTTP endpoint (the same
host, port and path: anvil and geth serve both on one port), read in a worker thread (the
``websockets`` client blocks). A head only says "look now"; what a node believes still
comes from ``eth_getLogs`` and contract calls over HTTP, so a wrong or missing head costs
time (the watch also looks every few seconds), never a wrong event.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.exceptions import WebSocketException
from websockets.sync.client import connect

from gfl.chain.errors import ChainUnavailable

OPEN_TIMEOUT_S = 5.0  # connecting, and the answer to the subscription
TICK_S = 1.0  # how often the reading thread looks whether it should stop
MAX_FRAME = 1 << 20  # bytes; a head is ~2 KB
SUBSCRIBE = {"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]}


def ws_url(endpoint: str) -> str | None:
    """The WebSocket URL beside a JSON-RPC ``endpoint``, None when it is not http(s)/ws(s)
    (the in-process chain)."""
    parts = urlsplit(endpoint)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    return None if scheme is None or not parts.netloc else urlunsplit(parts._replace(scheme=scheme))


def follow_heads(
    url: str, on_live: Callable[[], None], on_head: Callable[[], None], stop: threading.Event
) -> None:
    """Blocking: subscribe to new heads at ``url``, call ``on_live`` once the endpoint took
    the subscription, then ``on_head`` for each head, until ``stop`` is set. Frames that are
    not this subscription's notifications are ignored. Raises `ChainUnavailable` when the
    subscription cannot be made or the connection breaks."""
    try:
        with connect(url, open_timeout=OPEN_TIMEOUT_S, close_timeout=1, max_size=MAX_FRAME) as ws:
            ws.send(json.dumps(SUBSCRIBE))
            reply = _decoded(ws.recv(timeout=OPEN_TIMEOUT_S))
            sub = reply.get("result")
            if reply.get("id") != 1 or not isinstance(sub, str):
                why = reply.get("error") or "no subscription id in its answer"
                raise ChainUnavailable(f"{url} refused a newHeads subscription: {why}")
            on_live()
            while not stop.is_set():
                try:
                    frame = ws.recv(timeout=TICK_S)
                except TimeoutError:
                    continue
                msg = _decoded(frame)
                params = msg.get("params")
                if (
                    msg.get("method") == "eth_subscription"
                    and isinstance(params, dict)
                    and params.get("subscription") == sub
                ):
                    on_head()
    except (OSError, TimeoutError, WebSocketException) as exc:
        why = str(exc) or type(exc).__name__
        raise ChainUnavailable(f"no newHeads subscription at {url}: {why}") from None


def _decoded(frame: str | bytes) -> dict[str, Any]:
    """A frame's JSON object; {} for anything else (it is then ignored)."""
    try:
        msg = json.loads(frame)
    except (ValueError, UnicodeDecodeError):
        return {}
    return msg if isinstance(msg, dict) else {}
