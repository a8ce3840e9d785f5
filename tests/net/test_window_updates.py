"""Yamux credit for small reads goes back in bulk, not one WINDOW_UPDATE frame per read
(gfl.net.yamux), bulk streams still flow, and a writer out of window waits for the
credit itself, not for a 10 ms poll."""

from __future__ import annotations

import pytest
import trio
from libp2p.stream_muxer.yamux import yamux
from net_helpers import connected_pair, wait_for

from gfl.net import JOBS_TOPIC
from gfl.net.yamux import TunedYamuxStream


@pytest.fixture
def updates(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, int]]:
    """Each WINDOW_UPDATE frame sent: its stream and its increment."""
    sent: list[tuple[object, int]] = []
    original = yamux.YamuxStream.send_window_update

    async def counting(self, increment: int, skip_lock: bool = False) -> None:
        if increment > 0:
            sent.append((self, increment))
        await original(self, increment, skip_lock)

    monkeypatch.setattr(yamux.YamuxStream, "send_window_update", counting)
    return sent


def _gossip_stream_from(receiver, sender) -> object:
    """The Yamux stream ``receiver`` reads ``sender``'s gossip from (the one it did not open)."""
    own = receiver._pubsub.peers[sender._my_id]
    (conn,) = receiver._host.get_network().get_connections(sender._my_id)
    (stream,) = [
        s for s in conn.get_streams() if "meshsub" in str(s.get_protocol()) and s is not own
    ]
    return stream.muxed_stream


async def _gossip(tmp_path, updates: list[tuple[object, int]], n_msgs: int) -> int:
    """WINDOW_UPDATE frames b sends for ``n_msgs`` small messages from a, each its own read."""
    async with connected_pair(tmp_path) as (a, b):
        rb = await b.subscribe(JOBS_TOPIC)
        await a.subscribe(JOBS_TOPIC)
        await wait_for(lambda: a.stats()["mesh"][JOBS_TOPIC] >= 1)
        stream = _gossip_stream_from(b, a)
        before = sum(1 for s, _ in updates if s is stream)
        for k in range(n_msgs):  # one at a time: each arrives in a read of its own
            await a.publish(JOBS_TOPIC, {"v": 1, "type": "bench", "k": k})
            with trio.fail_after(10):
                assert (await rb.receive()).payload["k"] == k
        return sum(1 for s, _ in updates if s is stream) - before


@pytest.mark.trio
async def test_small_reads_do_not_each_return_credit(tmp_path, updates):
    assert await _gossip(tmp_path, updates, 30) <= 2


@pytest.mark.trio
async def test_the_library_alone_answers_most_small_reads(tmp_path, updates, monkeypatch):
    monkeypatch.setattr(
        TunedYamuxStream,
        "_auto_tune_and_send_window_update",
        yamux.YamuxStream._auto_tune_and_send_window_update,
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
            await wait_for(lambda: yamux_stream.window_waiter is not None, timeout=5)
            waiter = yamux_stream.window_waiter
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
            await wait_for(lambda: stream.muxed_stream.window_waiter is not None, 5)
            reset.set()
        # not the 5 s zero-window timeout: the reset itself ends the wait
        assert failed and "closed" in failed[0] and "Timed out" not in failed[0]
