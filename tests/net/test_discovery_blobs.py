import os

import pytest
import trio
from net_helpers import nodes, wait_for

from gfl.net import JOBS_TOPIC, BlobError, blob_hash

MiB = 1 << 20


@pytest.mark.trio
async def test_five_nodes_find_each_other_gossip_and_fetch_50mib(tmp_path):
    async with nodes(5, tmp_path) as net:
        ids = {n.peer_id for n in net}
        # everyone learns everyone through the DHT from the one bootstrap peer
        await wait_for(lambda: all(len(n.peers()) == 4 for n in net), timeout=20)
        for n in net:
            assert {p["peer_id"] for p in n.peers()} == ids - {n.peer_id}
        chans = [await n.subscribe(JOBS_TOPIC) for n in net]
        await wait_for(lambda: all(n.stats()["mesh"][JOBS_TOPIC] >= 3 for n in net), timeout=10)
        await net[3].publish(JOBS_TOPIC, {"v": 1, "type": "test.job", "id": b"\x01" * 32})
        for i, ch in enumerate(chans):
            if i == 3:
                continue
            with trio.fail_after(5):
                m = await ch.receive()
            assert m.payload["id"] == b"\x01" * 32 and m.sender_peer_id == net[3].peer_id

        data = os.urandom(50 * MiB)
        h = await trio.to_thread.run_sync(net[2].blobs.put, data)
        await net[2].provide(h)
        # by provider id given in an announcement
        got = await net[0].fetch_blob(h, [net[2].peer_id], max_size=64 * MiB, timeout=60)
        assert blob_hash(got) == h and net[0].blobs.has(h)
        # a late joiner with no hint finds the provider in the DHT
        got = await net[4].fetch_blob(h, [], max_size=64 * MiB, timeout=60)
        assert got == data
        assert net[2].stats()["blobs_served"] >= 1


@pytest.mark.trio
async def test_blob_larger_than_max_size_is_refused_before_reading(tmp_path):
    async with nodes(2, tmp_path) as (a, b):
        await wait_for(lambda: a.peers())
        h = a.blobs.put(b"x" * 5000)
        with pytest.raises(BlobError, match="over the 4096-byte limit"):
            await b.fetch_blob(h, [a.peer_id], max_size=4096, timeout=10)
        assert not b.blobs.has(h)
        missing = blob_hash(b"nobody has this")
        with pytest.raises(BlobError, match="does not have"):
            await b.fetch_blob(missing, [a.peer_id], max_size=4096, timeout=10)
