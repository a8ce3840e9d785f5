"""A job's held blobs (an update's shard frames, reduced shards) are served but get no DHT
provider record: their fetchers know whom to ask (docs/protocol.md 5.2), and a sharded round
would otherwise make a DHT lookup and ~20 provider streams per frame."""

import hashlib
import os
from typing import Any

import pytest
import trio
from net_helpers import nodes, wait_for

from gfl.scheduler.exchange import NetExchange, PeerBook


@pytest.mark.trio
async def test_a_held_blob_is_served_without_a_dht_record_and_a_published_one_is_provided(
    tmp_path,
):
    async with nodes(2, tmp_path) as (a, b):
        await wait_for(lambda: len(a.peers()) == 1 and len(b.peers()) == 1, 30)
        sent: list[dict[str, Any]] = []

        async def gossip(topic: str, body: dict[str, Any]) -> None:
            sent.append(body)

        async with trio.open_nursery() as nursery:
            exchange = NetExchange(a, PeerBook(a), os.urandom(32), gossip, nursery)
            part = await exchange.hold(os.urandom(4096))
            update = await exchange.publish("update", 0, os.urandom(4096))
            providing = a._parts.providers.providing
            await wait_for(lambda: update in providing, 15, "the published blob provided")
            await trio.sleep(0.5)  # (the held blob's provide, were there one, came first)
            assert providing == {update}
            assert [m["hash"] for m in sent] == [update], "only the published blob is announced"
            got = await b.fetch_blob(part, [a.peer_id], max_size=1 << 20, timeout=15)
            assert hashlib.sha256(got).digest() == part and b.blobs.has(part)
            nursery.cancel_scope.cancel()
