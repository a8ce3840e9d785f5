"""The inbound connection limit (max_peers) between real hosts."""

from contextlib import AsyncExitStack

import pytest
from net_helpers import wait_for

from gfl.identity import NodeIdentity
from gfl.net import NetError, open_network


@pytest.mark.trio
async def test_inbound_past_max_peers_is_refused_and_counted_but_own_dials_go_out(tmp_path):
    events: list = []
    async with AsyncExitStack() as stack:

        async def node(name: str, **kw):
            return await stack.enter_async_context(
                open_network(
                    NodeIdentity.generate(), blob_dir=tmp_path / name, discover=False, **kw
                )
            )

        hub = await node("hub", max_peers=2, on_event=lambda k, d: events.append((k, d)))
        a, b, c, d = [await node(x) for x in "abcd"]
        addr = hub.listen_addrs()[0]
        await a.connect(addr)
        await b.connect(addr)
        await wait_for(lambda: len(hub.peers()) == 2, timeout=10)
        assert hub.stats()["connections_refused"] == 0

        with pytest.raises(NetError):
            await c.connect(addr)
        assert hub.stats()["connections_refused"] >= 1
        assert {p["peer_id"] for p in hub.peers()} == {a.peer_id, b.peer_id}
        assert c.peers() == []
        assert any(k == "peer_refused" for k, _ in events)

        # the limit is on inbound connections: the hub's own dials (bootstrap peers
        # are dialled the same way) still go out when it is full
        assert await hub.connect(d.listen_addrs()[0]) == d.peer_id
        await wait_for(lambda: len(hub.peers()) == 3, timeout=10)
        assert hub.stats()["peers"] == 3 and hub.stats()["max_peers"] == 2
