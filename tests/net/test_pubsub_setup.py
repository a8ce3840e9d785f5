"""A topic joined while a new peer's pubsub stream is being set up still reaches that peer."""

from contextlib import AsyncExitStack

import pytest
import trio
from libp2p.pubsub.pubsub import Pubsub
from net_helpers import wait_for

from gfl.identity import NodeIdentity
from gfl.net import JOBS_TOPIC, open_network
from gfl.net.pubsub import GflPubsub


def _hold_first_pubsub_write(net, gate: trio.Event, held: trio.Event) -> None:
    """Make the first write on ``net``'s next pubsub stream (its hello) wait for ``gate``."""
    host = net._host
    new_stream = host.new_stream

    async def opening(peer_id, protocols):
        stream = await new_stream(peer_id, protocols)
        if any("meshsub" in str(p) for p in protocols) and not held.is_set():
            write = stream.write

            async def held_write(data):
                stream.write = write
                held.set()
                await gate.wait()
                await write(data)

            stream.write = held_write
        return stream

    host.new_stream = opening


@pytest.mark.trio
@pytest.mark.parametrize("fixed", [True, False], ids=["gfl", "stock"])
async def test_topic_joined_during_peer_setup_is_announced(tmp_path, monkeypatch, fixed):
    if not fixed:
        monkeypatch.setattr(GflPubsub, "_handle_new_peer", Pubsub._handle_new_peer)
    gate, held = trio.Event(), trio.Event()
    async with AsyncExitStack() as stack:
        x = await stack.enter_async_context(
            open_network(NodeIdentity.generate(), blob_dir=tmp_path / "x", discover=False)
        )
        a = await stack.enter_async_context(
            open_network(NodeIdentity.generate(), blob_dir=tmp_path / "a", discover=False)
        )
        _hold_first_pubsub_write(a, gate, held)
        await a.connect(x.listen_addrs()[0])
        with trio.fail_after(5):
            await held.wait()  # a's hello to x is built (no topics) but not yet written
        assert x._pubsub.my_id not in a._pubsub.peers
        await a.subscribe(JOBS_TOPIC)  # broadcast to a's peers: x is not one yet
        gate.set()

        def x_knows() -> bool:
            return a._pubsub.my_id in x._pubsub.peer_topics.get(JOBS_TOPIC, ())

        if fixed:
            await wait_for(x_knows)
        else:  # py-libp2p 0.8.1 alone never tells x
            await trio.sleep(2.0)
            assert not x_knows()
