"""New heads: the chain watch reads the registry's events when the chain node announces a
block (anvil: a WebSocket subscription beside its HTTP endpoint), and polls where no
subscription is served; a hostile endpoint's frames wake it at most."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
import trio
from websockets.sync.server import Server, serve

from gfl.chain.errors import ChainUnavailable
from gfl.chain.heads import MAX_FRAME, follow_heads, ws_url
from gfl.scheduler.chain_watch import watch_chain

from .conftest import ChainEnv, new_job


def test_the_watch_reads_when_a_block_comes_not_ten_times_a_second(chain: ChainEnv) -> None:
    url = ws_url(chain.url)
    reads: list[float] = []
    heard: list[bytes] = []

    async def call(fn, *args):  # the node's chain executor, counting the event reads
        if fn.__name__ == "poll_events":
            reads.append(trio.current_time())
        return await trio.to_thread.run_sync(fn, *args)

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                watch_chain,
                chain.first,
                call,
                lambda evs: heard.extend(e.job_id for e in evs),
                lambda: True,  # a job runs: without heads, it would poll every 100 ms
                url,
            )
            await trio.sleep(3)  # no block meanwhile
            quiet = len(reads)
            job_id = await trio.to_thread.run_sync(new_job, chain.first)
            with trio.fail_after(10):
                while job_id not in heard:
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
        return quiet

    quiet = trio.run(main)
    if chain.backend == "anvil":  # subscribed: no read without a block (the first look aside)
        assert quiet <= 1, reads
    else:  # the in-process chain has no URL, the served one no WebSocket: polled
        assert url is None or quiet > 5, reads


@pytest.fixture
def hostile() -> Iterator[tuple[str, list[object]]]:
    """A WebSocket endpoint that takes the subscription, then sends what the test queues."""
    frames: list[object] = []
    done = threading.Event()

    def handler(ws) -> None:
        request = json.loads(ws.recv(timeout=5))
        ws.send(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": "0xabc"}))
        for frame in frames:
            ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))
        done.wait(10)

    server: Server = serve(handler, "127.0.0.1", 0, max_size=None)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}", frames
    done.set()
    server.shutdown()
    thread.join(5)


def note(subscription: str = "0xabc") -> dict[str, object]:
    return {
        "jsonrpc": "2.0",
        "method": "eth_subscription",
        "params": {"subscription": subscription, "result": {"number": "0x1"}},
    }


def test_only_the_subscriptions_notifications_count_as_heads(hostile) -> None:
    url, frames = hostile
    frames += [
        note(),
        b"\xff\xfe not json",
        "[1, 2, 3]",
        note("0xother"),  # another subscription's
        {"jsonrpc": "2.0", "method": "eth_subscription", "params": "0xabc"},
        {"method": "eth_subscription"},
        note(),
    ]
    heads, live = [], []
    stop = threading.Event()

    def on_head() -> None:
        heads.append(1)
        if len(heads) == 2:
            stop.set()

    follow_heads(url, lambda: live.append(1), on_head, stop)
    assert (live, len(heads)) == ([1], 2)


def test_an_oversize_frame_ends_the_subscription_with_one_error(hostile) -> None:
    url, frames = hostile
    frames += [note(), "x" * (MAX_FRAME + 1), note()]
    heads: list[int] = []
    with pytest.raises(ChainUnavailable, match="no newHeads subscription"):
        follow_heads(url, lambda: None, lambda: heads.append(1), threading.Event())
    assert heads == [1]


def test_an_endpoint_without_websocket_is_refused_quickly(served) -> None:
    with pytest.raises(ChainUnavailable):
        follow_heads(ws_url(served.url), lambda: None, lambda: None, threading.Event())


def test_urls_beside_the_http_endpoint() -> None:
    assert ws_url("http://127.0.0.1:8545") == "ws://127.0.0.1:8545"
    assert ws_url("https://rpc.example/v1/key") == "wss://rpc.example/v1/key"
    assert ws_url("embedded") is None
    assert ws_url("file:///tmp/x") is None
