"""GFL's Yamux and Noise tuning is per host: a tuned and a stock host share one process,
each with its own transport, and exchange gossip and blobs both ways."""

from __future__ import annotations

import os
from contextlib import AsyncExitStack

import pytest
import trio
from libp2p.security.noise.io import NoiseTransportReadWriter
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream
from net_helpers import wait_for

from gfl.identity import NodeIdentity
from gfl.net import JOBS_TOPIC, blob_hash, open_network
from gfl.net.noise import TunedNoiseReadWriter
from gfl.net.rebind import with_globals
from gfl.net.yamux import FRAME_BYTES, TunedYamux, TunedYamuxStream

MiB = 1 << 20


def _transport_of(net, other) -> tuple[type, type, set[type]]:
    """The classes of ``net``'s connection to ``other``: muxer, Noise read-writer, streams."""
    (conn,) = net._host.get_network().get_connections(other._my_id)
    muxed = conn.muxed_conn
    streams = {type(s.muxed_stream) for s in conn.get_streams()}
    return type(muxed), type(muxed.secured_conn.conn), streams


@pytest.mark.trio
async def test_a_tuned_and_a_stock_host_in_one_process_talk_both_ways(tmp_path):
    async with AsyncExitStack() as stack:
        tuned = await stack.enter_async_context(
            open_network(NodeIdentity.generate(), blob_dir=tmp_path / "t", discover=False)
        )
        stock = await stack.enter_async_context(
            open_network(
                NodeIdentity.generate(), blob_dir=tmp_path / "s", discover=False, tuned=False
            )
        )
        await stock.connect(tuned.listen_addrs()[0])
        rt, rs = await tuned.subscribe(JOBS_TOPIC), await stock.subscribe(JOBS_TOPIC)
        await wait_for(lambda: tuned.stats()["mesh"].get(JOBS_TOPIC, 0) >= 1, 30)
        await wait_for(lambda: stock.stats()["mesh"].get(JOBS_TOPIC, 0) >= 1, 30)

        assert _transport_of(tuned, stock) == (
            TunedYamux,
            TunedNoiseReadWriter,
            {TunedYamuxStream},
        )
        assert _transport_of(stock, tuned) == (Yamux, NoiseTransportReadWriter, {YamuxStream})

        await tuned.publish(JOBS_TOPIC, {"v": 1, "type": "t", "from": "tuned"})
        await stock.publish(JOBS_TOPIC, {"v": 1, "type": "t", "from": "stock"})
        with trio.fail_after(20):
            assert (await rs.receive()).payload["from"] == "tuned"
            assert (await rt.receive()).payload["from"] == "stock"

        # several tuned frames (FRAME_BYTES each, beyond the stock 64 KiB) in each direction
        for src, dst in ((tuned, stock), (stock, tuned)):
            data = os.urandom(5 * MiB + 17)
            h = src.blobs.put(data)
            got = await dst.fetch_blob(h, [src.peer_id], max_size=8 * MiB, timeout=60)
            assert got == data and blob_hash(got) == h
        assert FRAME_BYTES > 64 * 1024


def test_with_globals_copies_a_function_with_our_names() -> None:
    def uses_len(x: list) -> int:
        return len(x)

    seven = with_globals(uses_len, len=lambda x: 7)
    assert seven([]) == 7 and uses_len([]) == 0  # the original is left as it was
    assert seven.__wrapped__ is uses_len  # type: ignore[attr-defined]


def test_with_globals_refuses_a_name_the_function_does_not_use() -> None:
    with pytest.raises(ValueError, match="does not use YamuxStreem"):
        with_globals(Yamux.open_stream, YamuxStreem=TunedYamuxStream)
    with pytest.raises(TypeError, match="not a plain function"):
        with_globals(len, len=None)
