"""The node's own endpoints: status, peers, shutdown and the event stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import StreamingResponse

from gfl.node.api.app import ApiError, Endpoint, NodeService, Param, query_int
from gfl.node.events import EventBus

PEER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["peer_id"],
    "properties": {
        "peer_id": {"type": "string"},
        "eth_address": {"type": ["string", "null"], "description": "the peer's Ethereum address"},
        "addrs": {"type": "array", "items": {"type": "string"}},
        "connected_since": {"type": "number"},
        "direction": {"type": "string"},
        "msgs_in": {"type": "integer"},
    },
}

CHAIN_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "required": ["endpoint", "chain_id", "block", "registry", "account"],
    "properties": {
        "endpoint": {"type": "string"},
        "chain_id": {"type": ["integer", "null"]},
        "block": {"type": ["integer", "null"]},
        "registry": {"type": ["string", "null"]},
        "account": {"type": ["string", "null"]},
        "balance_wei": {
            "type": ["integer", "null"],
            "description": "the account's balance (null when the chain did not answer in time)",
        },
    },
}

STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "version",
        "name",
        "address",
        "peer_id",
        "listen_addrs",
        "peers",
        "uptime_s",
        "chain",
        "api",
        "home",
        "pid",
    ],
    "properties": {
        "version": {"type": "string"},
        "name": {"type": "string"},
        "address": {"type": "string", "description": "the node's Ethereum address"},
        "peer_id": {"type": "string", "description": "the node's libp2p peer ID"},
        "listen_addrs": {"type": "array", "items": {"type": "string"}},
        "peers": {"type": "array", "items": PEER_SCHEMA},
        "uptime_s": {"type": "number"},
        "chain": CHAIN_SCHEMA,
        "api": {
            "type": "object",
            "required": ["host", "port"],
            "properties": {"host": {"type": "string"}, "port": {"type": "integer"}},
        },
        "home": {"type": "string"},
        "pid": {"type": "integer"},
        "net": {
            "type": ["object", "null"],
            "description": "libp2p traffic counters, topics and gossip drops by reason",
        },
        "jobs": {
            "type": ["object", "null"],
            "description": "job counts by status, rejected announcements by reason, alarms, "
            "and `ready` (torch imported and data loaded)",
        },
    },
}

EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["seq", "ts", "type", "data"],
    "properties": {
        "seq": {"type": "integer", "description": "0 for a synthetic `gap` event"},
        "ts": {"type": "number"},
        "type": {"type": "string"},
        "data": {"type": "object"},
    },
}


def _node(request: Request) -> NodeService:
    node: NodeService = request.app.state.node
    return node


async def get_status(request: Request) -> dict[str, Any]:
    return await _node(request).status()


async def get_peers(request: Request) -> list[dict[str, Any]]:
    return await _node(request).peers()


async def post_shutdown(request: Request) -> dict[str, Any]:
    request.app.state.node.request_shutdown()
    return {"stopping": True}


def _since(request: Request) -> int | None:
    since = query_int(request, "since")
    header = request.headers.get("last-event-id")
    if header is not None:
        try:
            last = int(header)
        except ValueError:
            raise ApiError("Last-Event-ID must be an integer") from None
        if last < 0:
            raise ApiError("Last-Event-ID must not be negative")
        since = last if since is None else max(since, last)
    return since


def _jsonable(value: Any) -> Any:
    # event data comes from every layer; a stray bytes or set must not kill the stream
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


async def _sse(bus: EventBus, since: int | None, heartbeat_s: float) -> AsyncIterator[bytes]:
    # The first comment flushes the headers so clients know the stream is open.
    yield f": gfl events; heartbeat every {heartbeat_s:g}s\n\n".encode()
    sub = bus.subscription(since)
    while True:
        with trio.move_on_after(heartbeat_s) as waited:
            event = await sub.get()
        if waited.cancelled_caught:
            yield b": heartbeat\n\n"
            continue
        if event is None:
            return
        data = json.dumps(event.to_json(), separators=(",", ":"), default=_jsonable)
        ident = f"id: {event.seq}\n" if event.seq else ""
        yield f"{ident}data: {data}\n\n".encode()


async def get_events(request: Request) -> StreamingResponse:
    node = request.app.state.node
    since = _since(request)
    heartbeat_s = float(getattr(node, "heartbeat_s", 10.0))
    return StreamingResponse(
        _sse(node.events, since, heartbeat_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Heartbeat-Interval": f"{heartbeat_s:g}"},
    )


def core_endpoints() -> list[Endpoint]:
    """The endpoints every node serves."""
    return [
        Endpoint(
            "GET",
            "/status",
            get_status,
            "The node's identity, peers, chain and uptime",
            STATUS_SCHEMA,
        ),
        Endpoint(
            "GET",
            "/peers",
            get_peers,
            "Connected libp2p peers",
            {"type": "array", "items": PEER_SCHEMA},
        ),
        Endpoint(
            "POST",
            "/shutdown",
            post_shutdown,
            "Stop the node cleanly",
            {"type": "object", "properties": {"stopping": {"type": "boolean"}}},
        ),
        Endpoint(
            "GET",
            "/events",
            get_events,
            "Live node events (server-sent events)",
            {
                "type": "string",
                "description": "SSE: `id: <seq>` and `data: <Event JSON>` per "
                "event; comment lines are heartbeats",
            },
            params=(
                Param(
                    "since",
                    {"type": "integer", "minimum": 0},
                    "replay buffered events with seq above this",
                ),
            ),
            headers=(
                Param(
                    "Last-Event-ID",
                    {"type": "string", "pattern": "^[0-9]+$"},
                    "as `since`, sent by reconnecting SSE clients",
                ),
            ),
            media_type="text/event-stream",
            description="Each event is " + json.dumps(EVENT_SCHEMA),
        ),
    ]
