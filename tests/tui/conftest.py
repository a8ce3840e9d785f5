"""Fixtures for the console tests: the asyncio backend for anyio, bounded waits, a training node.

The behavioural tests drive `ConsoleApp` with Textual's Pilot against a real
`gfl up` process (the root conftest's ``start_node``); only the snapshot tests
feed canned data, because live uptime and hashes change every run. The canned
node is an HTTP handler behind the real `AsyncNodeClient` (httpx's MockTransport),
so the client's request building and error handling are the real ones there too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gfl.node.config import Config, load_config, write_config
from gfl.node.datadir import DataDir


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Textual runs on asyncio


# Generous: the live tests share two cores with node processes and other test runs.
WAIT_S = 60.0


async def _wait_until(pilot: Any, condition: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Let the app run until ``condition()`` is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        await pilot.pause(0.1)
    raise AssertionError(f"condition not met within {timeout} s")


@pytest.fixture
def wait_until() -> Callable[..., Awaitable[Any]]:
    """``await wait_until(pilot, lambda: ..., timeout=60)``: the condition's truthy value."""
    return _wait_until


@pytest.fixture
def training_home(init_home: Callable[..., Path]) -> Path:
    """A datadir whose node joins jobs and trains on scikit-learn's digits."""
    home = init_home("trainer")
    path = DataDir(home).config_path
    config: Config = load_config(path)
    config = dataclasses.replace(config, data={"digits": ""})
    write_config(path, config.replace("jobs", auto_join=True))
    return home


def token_of(home: Path) -> str:
    return DataDir(home).read_token()


# -- canned data for the snapshot tests only ------------------------------------------------

JOB_A = "5e7f74047a2fa416d9a044d15d48554d0cde3bd1a0879ed13761f51348b79e81"
JOB_B = "02425c9f5bb8dc886456ddc5218d22fce000930338e20a2a603f4c14c7d10316"
ME = "0x17Ceb71Ac7AEB4ec809607Ca05deC6530FBa460D"
PEER = "0x71D0482A2a5C78eBDE78dD7205b9b16C48CfeC8d"
PEER_ID = "16Uiu2HAmUfKLupdGpFps9vMwPAjXaebc2M3TYchv69PTvZVD5Sfo"
T0 = 1_795_832_700.0

CANNED_PEERS = [
    {
        "peer_id": "16Uiu2HAm74Z8s3hJ7ApABAJKFoEEWtKjzCh6tD6pLqo75dC4GoAq",
        "eth_address": PEER,
        "addrs": ["/ip4/127.0.0.1/tcp/41703"],
        "connected_since": T0,
        "direction": "outbound",
        "msgs_in": 42,
    },
]
CANNED_STATUS = {
    "version": "0.1.0",
    "name": "alice",
    "address": ME,
    "peer_id": PEER_ID,
    "listen_addrs": [f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER_ID}"],
    "peers": CANNED_PEERS,
    "uptime_s": 3725.2,
    "chain": {
        "endpoint": "embedded",
        "chain_id": 131277322940537,
        "block": 42,
        "registry": "0xF2E246BB76DF876Cef8b38ae84130F4F55De395b",
        "account": ME,
    },
    "api": {"host": "127.0.0.1", "port": 9434},
    "home": "/home/alice/.gfl",
    "pid": 4242,
    "net": None,
    "jobs": {
        "ready": True,
        "jobs": {"active": 1, "finished": 1},
        "running": 1,
        "rejected": {"rejected.bad_signature": 2},
        "alarms": {"alarms.divergence": 0},
    },
}


def _round(n: int, acc: float, loss: float, model: str, phase: str = "done") -> dict[str, Any]:
    return {
        "round": n,
        "phase": phase,
        "update_hash": f"{n}1574dd44305000c6d15d44b947cacc6e2d696f9c15436bc5d3b3d5b58edd466",
        "model_hash": model,
        "majority_hash": None,
        "divergent": False,
        "metrics": {
            "accuracy": acc,
            "loss": loss,
            "updates": 2,
            "t_train_s": 0.5 + n / 10,
            "bytes_received": 11000,
            "bytes_sent_update": 11075,
        },
    }


MODELS = [f"{i}f2e46aff9d7f9e0e97ad8160e33b423b9f27f92d0a5c4fa51c4a75e9be85ffe" for i in range(3)]
CANNED_JOBS = [
    {
        "job_id": JOB_A,
        "name": "digits-mlp",
        "owner": ME,
        "status": "active",
        "role": "participant",
        "rounds": 5,
        "round": 3,
        "accuracy": 0.7431,
        "loss": 0.91,
        "model_hash": MODELS[2],
        "participants": 2,
        "divergent_rounds": [],
        "bytes_sent": 33225,
        "bytes_received": 33000,
        "created_at": T0,
    },
    {
        "job_id": JOB_B,
        "name": "demo",
        "owner": PEER,
        "status": "finished",
        "role": "participant",
        "rounds": 3,
        "round": 3,
        "accuracy": 0.5222,
        "loss": 1.797,
        "model_hash": "2be1743f91c3",
        "participants": 3,
        "divergent_rounds": [1],
        "bytes_sent": 34001,
        "bytes_received": 68000,
        "created_at": T0 - 100,
    },
]
CANNED_DETAIL = {
    **CANNED_JOBS[0],
    "spec": {"name": "digits-mlp", "rounds": 5},
    "rounds_detail": [
        _round(0, 0.3122, 2.01, MODELS[0]),
        _round(1, 0.6011, 1.32, MODELS[1]),
        _round(2, 0.7431, 0.91, MODELS[2]),
        {**_round(3, 0.0, 0.0, None, "committed"), "metrics": {}},
    ],
    "commitments": [
        c
        for n in range(3)
        for c in (
            {
                "round": n,
                "kind": "update",
                "participant": ME,
                "hash": f"{n}aa" * 8,
                "samples": 719,
                "verified": True,
            },
            {
                "round": n,
                "kind": "update",
                "participant": PEER,
                "hash": f"{n}bb" * 8,
                "samples": 718,
                "verified": True,
            },
            {
                "round": n,
                "kind": "model",
                "participant": ME,
                "hash": MODELS[n],
                "samples": 0,
                "verified": None,
            },
        )
    ],
}
CANNED_VERIFY = [
    {
        "round": n,
        "closed": True,
        "updates": 2,
        "votes": 2,
        "decision": "finalized",
        "chain_model": MODELS[n],
        "local_model": MODELS[n],
        "dissenters": [],
        "verified": True,
    }
    for n in range(3)
]
CANNED_EVENTS = [
    {"seq": 1, "ts": T0, "type": "chain.connected", "data": {"endpoint": "embedded"}},
    {"seq": 2, "ts": T0 + 1, "type": "node.started", "data": {"peer_id": PEER_ID, "address": ME}},
    {"seq": 3, "ts": T0 + 2, "type": "peer_connected", "data": {"peer_id": PEER_ID}},
    {"seq": 4, "ts": T0 + 3, "type": "job.published", "data": {"job_id": JOB_A, "name": "demo"}},
    {
        "seq": 5,
        "ts": T0 + 5,
        "type": "job.round_finished",
        "data": {
            "job_id": JOB_A,
            "round": 0,
            "model_hash": MODELS[0],
            "accuracy": 0.3122,
            "loss": 2.01,
            "updates": 2,
        },
    },
    {
        "seq": 6,
        "ts": T0 + 6,
        "type": "job.divergence",
        "data": {
            "job_id": JOB_B,
            "round": 1,
            "mine": "ab" * 32,
            "majority": "cd" * 32,
            "dissenters": [PEER],
        },
    },
    {"seq": 7, "ts": T0 + 7, "type": "gossip_dropped", "data": {"reason": "bad_signature"}},
]


def _sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(f"id: {e['seq']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


async def _stream(body: bytes) -> AsyncIterator[bytes]:
    yield b": gfl events\n\n"
    yield body
    await asyncio.Event().wait()  # a live stream that stays quiet


def canned_node(token_refused: bool = False) -> httpx.MockTransport:
    """A node that answers every route the console uses with the canned data above."""
    routes: dict[tuple[str, str], Any] = {
        ("GET", "/status"): CANNED_STATUS,
        ("GET", "/peers"): CANNED_PEERS,
        ("GET", "/jobs"): CANNED_JOBS,
        ("GET", f"/jobs/{JOB_A}"): CANNED_DETAIL,
        ("GET", f"/jobs/{JOB_A}/verify"): CANNED_VERIFY,
    }

    def handle(request: httpx.Request) -> httpx.Response:
        key = (request.method, request.url.path)
        if token_refused:
            return httpx.Response(401, json={"error": "a valid bearer token is required"})
        if key == ("GET", "/events"):
            return httpx.Response(
                200,
                headers={"content-type": "text/event-stream"},
                content=_stream(_sse(CANNED_EVENTS)),
            )
        if key == ("POST", "/jobs"):
            return httpx.Response(400, json={"error": "rounds must be at least 1"})
        if key in routes:
            return httpx.Response(200, json=routes[key])
        return httpx.Response(404, json={"error": f"no route {request.method} {key[1]}"})

    return httpx.MockTransport(handle)


@pytest.fixture
def canned_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """``canned_app(token_refused=False)`` → a `ConsoleApp` on canned data, log times in UTC."""
    from gfl_console.app import ConsoleApp
    from gfl_console.client import AsyncNodeClient

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()

    def make(token_refused: bool = False) -> ConsoleApp:
        client = AsyncNodeClient("127.0.0.1", 9434, "token", transport=canned_node(token_refused))
        return ConsoleApp("127.0.0.1", 9434, "token", client=client)

    yield make
    monkeypatch.undo()
    time.tzset()
