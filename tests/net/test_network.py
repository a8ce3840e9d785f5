import pytest
import trio
from net_helpers import nodes, wait_for

from gfl.identity import NodeIdentity
from gfl.net import JOBS_TOPIC, NetError, open_network


@pytest.mark.trio
async def test_two_nodes_connect_gossip_and_shut_down(tmp_path):
    events: list = []
    async with nodes(2, tmp_path, bootstrap_first=False, events=events) as (a, b):
        ident_addr = a.eth_address
        assert a.listen_addrs()[0].endswith("/p2p/" + a.peer_id)
        assert await b.connect(a.listen_addrs()[0]) == a.peer_id
        await wait_for(lambda: a.peers() and b.peers())
        [pa] = b.peers()
        assert pa["peer_id"] == a.peer_id and pa["eth_address"] == ident_addr
        ra = await a.subscribe(JOBS_TOPIC)
        await b.subscribe(JOBS_TOPIC)
        await wait_for(lambda: a.stats()["mesh"][JOBS_TOPIC] >= 1)
        await b.publish(JOBS_TOPIC, {"v": 1, "type": "test.job", "n": 7})
        with trio.fail_after(5):
            msg = await ra.receive()
        assert msg.payload == {"v": 1, "type": "test.job", "n": 7}
        assert msg.sender_peer_id == b.peer_id and msg.sender_address == b.eth_address
        assert a.stats()["msgs_in"] == 1
    kinds = {(i, k) for i, k, _ in events}
    assert (0, "peer_connected") in kinds and (1, "peer_connected") in kinds


@pytest.mark.trio
async def test_connect_to_nobody_fails_with_a_clear_error(tmp_path):
    async with open_network(NodeIdentity.generate(), blob_dir=tmp_path) as a:
        other = NodeIdentity.generate().peer_id
        with pytest.raises(NetError):
            await a.connect(f"/ip4/127.0.0.1/tcp/1/p2p/{other}")
        with pytest.raises(NetError):
            await a.connect("/ip4/127.0.0.1/tcp/1")


@pytest.mark.trio
async def test_a_peer_connecting_while_the_network_closes_is_no_crash(tmp_path):
    """py-libp2p reports connections from its own tasks, also during our shutdown: the work
    they ask for (routing table, refusal) is dropped once the network's nursery is closed."""
    from gfl.identity import NodeIdentity
    from gfl.net import open_network

    async with open_network(
        NodeIdentity.generate(), blob_dir=tmp_path / "n", discover=False
    ) as net:
        pass
    other = NodeIdentity.generate()
    from libp2p.peer.id import ID

    net._parts.peers.connected_to(ID.from_base58(other.peer_id), "outbound")  # must not raise
    assert other.peer_id in {p["peer_id"] for p in net.peers()}
