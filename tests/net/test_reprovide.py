"""Provider records expire; blobs still held are announced again in the DHT."""

import os
from contextlib import AsyncExitStack

import pytest
from libp2p.kad_dht import provider_store
from libp2p.kad_dht.kad_dht import _encode_key
from net_helpers import wait_for

from gfl.identity import NodeIdentity
from gfl.net import BlobError, open_network
from gfl.net.providers import dht_key

EXPIRY = 3  # seconds, instead of py-libp2p's 48 h


@pytest.mark.trio
async def test_a_late_joiner_finds_a_provider_after_the_first_record_expired(tmp_path, monkeypatch):
    monkeypatch.setattr(provider_store, "PROVIDER_RECORD_EXPIRATION_INTERVAL", EXPIRY)
    async with AsyncExitStack() as stack:

        async def node(name: str, **kw):
            return await stack.enter_async_context(
                open_network(NodeIdentity.generate(), blob_dir=tmp_path / name, **kw)
            )

        seed = await node("seed")
        boot = seed.listen_addrs()[:1]
        keeper = await node("keeper", bootstrap=boot, reprovide_interval=1.0)
        forgetter = await node("forgetter", bootstrap=boot)  # re-provides every 600 s
        await wait_for(lambda: all(len(n.peers()) == 2 for n in (seed, keeper, forgetter)), 30)

        kept = keeper.blobs.put(os.urandom(4096), tag="job1")
        lost = forgetter.blobs.put(os.urandom(4096))
        await keeper.provide(kept)
        await forgetter.provide(lost)
        # every first record has expired: the forgetter's is in no provider store any more
        lost_key = _encode_key(dht_key(lost))
        stores = [n._parts.dht.provider_store for n in (seed, keeper, forgetter)]
        await wait_for(lambda: not any(s.get_providers(lost_key) for s in stores), EXPIRY + 30)

        late = await node("late", bootstrap=boot)
        await wait_for(lambda: len(late.peers()) >= 1, 30)
        got = await late.fetch_blob(kept, [], max_size=1 << 20, timeout=30)
        assert late.blobs.has(kept) and len(got) == 4096
        with pytest.raises(BlobError, match="could not fetch blob"):
            await late.fetch_blob(lost, [], max_size=1 << 20, timeout=15)
        await wait_for(lambda: keeper.stats()["reprovides"] >= 3, 15)
        assert forgetter.stats()["reprovides"] == 0

        # a blob that is evicted (its job finished) is no longer announced
        keeper.blobs.evict("job1")
        await wait_for(lambda: keeper.stats()["providing"] == 0, 15)
