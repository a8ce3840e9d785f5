"""Yamux credit for small reads goes back in bulk, not one WINDOW_UPDATE frame per read
(gfl.net.patches, tuning 4), bulk streams still flow, and a writer out of window waits
for the credit itself, not for a 10 ms poll (tuning 7)."""

from __future__ import annotations

import pytest
import trio
from libp2p.stream_muxer.yamux import yamux
from net_helpers import connected_pair, nodes, wait_for

from gfl.net import JOBS_TOPIC, patches


@pytest.fixture
def updates(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The increments of every WINDOW_UPDATE frame sent."""
    sent: list[int] = []
    original = yamux.YamuxStream.send_window_update

    async def counting(self, increment: int, skip_lock: bool = False) -> None:
        if increment > 0:
            sent.append(increment)
        await original(self, increment, skip_lock)

    monkeypatch.setattr(yamux.YamuxStream, "send_window_update", counting)
    return sent


async def _gossip(tmp_path, updates: list[int], n_msgs: int) -> int:
    """WINDOW_UPDATE frames sent while ``n_msgs`` small messages cross from a to b."""
    async with nodes(2, tmp_path) as (a, b):
        rb = await b.subscribe(JOBS_TOPIC)
        await a.subscribe(JOBS_TOPIC)
        await wait_for(lambda: a.stats()["mesh"][JOBS_TOPIC] >= 1)
        await trio.sleep(0.5)  # set-up traffic done
        before = len(updates)
        for k in range(n_msgs):  # under the library's 10 messages/s per peer and topic
            await a.publish(JOBS_TOPIC, {"v": 1, "type": "bench", "k": k})
            await trio.sleep(0.12)
        with trio.fail_after(10):
            for _ in range(n_msgs):
                await rb.receive()
        return len(updates) - before


@pytest.mark.trio
async def test_small_reads_do_not_each_return_credit(tmp_path, updates):
    assert await _gossip(tmp_path, updates, 30) <= 2


@pytest.mark.trio
async def test_the_library_alone_answers_most_small_reads(tmp_path, updates, monkeypatch):
    monkeypatch.setattr(
        yamux.YamuxStream, "_auto_tune_and_send_window_update", patches._original_window_update
    )
    assert await _gossip(tmp_path, updates, 30) >= 30


RAW = "/gfl/test-raw/1"


async def _raw_stream(a, b, reader):
    """A stream from a to b, served on b by ``reader``."""
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID

    b._host.set_stream_handler(TProtocol(RAW), reader)
    stream = await a._host.new_stream(ID.from_base58(b.peer_id), [TProtocol(RAW)])
    return stream


@pytest.mark.trio
async def test_a_writer_out_of_window_is_woken_by_the_window_update(tmp_path):
    data = bytes(range(256)) * 4096  # 1 MiB: four frames against a 256 KiB window
    go, got = trio.Event(), bytearray()

    async def reader(stream):
        await go.wait()
        while len(got) < len(data):
            got.extend(await stream.read(len(data)))

    async with connected_pair(tmp_path) as (a, b):
        stream = await _raw_stream(a, b, reader)
        async with trio.open_nursery() as n:
            n.start_soon(stream.write, data)
            yamux_stream = stream.muxed_stream
            await wait_for(lambda: patches._WAITER_ATTR in yamux_stream.__dict__, timeout=5)
            waiter = yamux_stream.__dict__[patches._WAITER_ATTR]
            go.set()
        await wait_for(lambda: len(got) == len(data), timeout=10)
        assert got == data and waiter.is_set()


@pytest.mark.trio
async def test_a_writer_out_of_window_learns_that_the_reader_reset_the_stream(tmp_path):
    from libp2p.network.stream.exceptions import StreamReset

    reset = trio.Event()

    async def reader(stream):
        await reset.wait()
        await stream.reset()

    async with connected_pair(tmp_path) as (a, b):
        stream = await _raw_stream(a, b, reader)
        failed: list[str] = []

        async def write():
            try:
                await stream.write(b"x" * (1 << 20))
            except StreamReset as exc:  # the muxer's error, as the host's stream reports it
                failed.append(str(exc.__cause__))

        async with trio.open_nursery() as n:
            n.start_soon(write)
            await wait_for(lambda: patches._WAITER_ATTR in stream.muxed_stream.__dict__, 5)
            reset.set()
        # not the 5 s zero-window timeout: the reset itself ends the wait
        assert failed and "closed" in failed[0] and "Timed out" not in failed[0]
