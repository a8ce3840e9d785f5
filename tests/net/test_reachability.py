"""AutoNAT between real hosts on 127.0.0.1: who can be dialled back, and who cannot.

On loopback every listening node is reachable, so "private" is shown by asking a server
to dial an address where nothing listens. Real NATs: tests/nat/.
"""

from __future__ import annotations

import socket
from contextlib import AsyncExitStack

import multiaddr
import pytest
from libp2p.host.autonat.autonat import AutoNATService
from net_helpers import nodes, wait_for

from gfl.identity import NodeIdentity
from gfl.net import open_network
from gfl.net.reachability import PRIVATE, PUBLIC


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.trio
async def test_nodes_that_answer_a_dial_back_learn_they_are_public(tmp_path):
    async with nodes(3, tmp_path) as nets:
        await wait_for(lambda: all(n.reachability == PUBLIC for n in nets), timeout=30)
        for n in nets:
            verdicts = n.stats()["nat"]["autonat"]["verdicts"]
            assert verdicts and all(verdicts.values()), verdicts


@pytest.mark.trio
@pytest.mark.parametrize("server", ["ours", "stock"])
async def test_an_address_nobody_answers_on_makes_a_node_private(tmp_path, server):
    """A node whose advertised address does not answer is private. py-libp2p 0.8.1's
    server dials back with ``host.connect``, which returns the connection the request
    came on: it vouches for any address of a peer it is connected to."""
    async with AsyncExitStack() as stack:

        async def node(name: str, **kw):
            return await stack.enter_async_context(
                open_network(
                    NodeIdentity.generate(), blob_dir=tmp_path / name, discover=False, **kw
                )
            )

        s = await node("server", reachability="public")
        x = await node("x", reachability="public", bootstrap=s.listen_addrs()[:1])
        await wait_for(lambda: bool(x.peers()), timeout=10)
        if server == "stock":
            autonat = s._parts.reachability.server
            autonat._try_dial = AutoNATService._try_dial.__get__(autonat)
        reach = x._parts.reachability
        nowhere = multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{closed_port()}")
        reach.candidate_addrs = lambda toward=None: [nowhere]
        status = await reach.check([s.peer_id])
        if server == "stock":
            assert status == PUBLIC, "the library's server refused this time"
            return
        assert status == PRIVATE
        assert x.stats()["reachability"] == PRIVATE
        assert reach.verdicts == {s.peer_id: False}
        # and the real address answers again
        reach.candidate_addrs = lambda toward=None: [multiaddr.Multiaddr(x.listen_addrs()[0])]
        reach._asked.clear()
        s._parts.reachability.server._last_request.clear()  # its per-peer interval
        assert await reach.check([s.peer_id]) == PUBLIC


@pytest.mark.trio
async def test_a_node_listening_on_every_interface_is_dialled_back_where_it_is_seen(tmp_path):
    """With 0.0.0.0 the request names the address our packets to the server leave from."""
    async with AsyncExitStack() as stack:
        a, b = [
            await stack.enter_async_context(
                open_network(
                    NodeIdentity.generate(),
                    listen=["/ip4/0.0.0.0/tcp/0"],
                    blob_dir=tmp_path / name,
                    discover=False,
                )
            )
            for name in "ab"
        ]
        await b.connect(a.listen_addrs()[0].replace("/0.0.0.0/", "/127.0.0.1/"))
        await wait_for(lambda: a.reachability == b.reachability == PUBLIC, timeout=30)
