"""A job's held blobs (an update's shard frames, reduced shards) are served but get no DHT
provider record: their fetchers know whom to ask (docs/protocol.md 5.2), and a sharded round
would otherwise make a DHT lookup and ~20 provider streams per frame."""

import hashlib
import os
from typing import Any

import pytest
import trio
from net_helpers import nodes, strangers, wait_for

from gfl.scheduler.exchange import NetExchange, PeerBook
from gfl.scheduler.messages import INLINE_MAX, check_update


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
            update = await exchange.publish("update", 0, os.urandom(INLINE_MAX + 1))
            providing = a._parts.providers.providing
            await wait_for(lambda: update in providing, 15, "the published blob provided")
            await trio.sleep(0.5)  # (the held blob's provide, were there one, came first)
            assert providing == {update}
            assert [m["hash"] for m in sent] == [update], "only the published blob is announced"
            assert "data" not in sent[0]
            got = await b.fetch_blob(part, [a.peer_id], max_size=1 << 20, timeout=15)
            assert hashlib.sha256(got).digest() == part and b.blobs.has(part)
            nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_small_update_rides_in_its_announcement_and_gets_no_dht_record(tmp_path):
    """A sharded update's manifest (~1 KB at 32 shards) comes with its announcement: every
    member holds it without a stream to its author, and without a DHT lookup and ~20
    provider streams per author and round."""
    async with nodes(1, tmp_path) as (a,):
        sent: list[dict[str, Any]] = []

        async def gossip(topic: str, body: dict[str, Any]) -> None:
            sent.append(body)

        async with trio.open_nursery() as nursery:
            exchange = NetExchange(a, PeerBook(a), os.urandom(32), gossip, nursery)
            manifest = os.urandom(INLINE_MAX)
            h = await exchange.publish("update", 0, manifest, 10, b"\x01" * 65)
            await trio.sleep(0.5)  # (a provide, were there one, would have started)
            assert a._parts.providers.providing == set()
            [msg] = sent
            assert (msg["hash"], msg["data"], msg["size"]) == (h, manifest, INLINE_MAX)
            assert check_update(msg)
            nursery.cancel_scope.cancel()


def test_an_inline_blob_must_be_the_announced_one() -> None:
    data = os.urandom(1000)
    good = {
        "v": 2, "type": "update", "job_id": os.urandom(32), "round": 0,
        "hash": hashlib.sha256(data).digest(), "size": len(data), "samples": 1,
        "sig": b"\x01" * 65, "data": data,
    }  # fmt: skip
    assert check_update(good)
    assert check_update({k: v for k, v in good.items() if k != "data"})
    assert not check_update({**good, "data": data[:-1] + bytes([data[-1] ^ 1])})  # other bytes
    assert not check_update({**good, "size": len(data) + 1})
    big = os.urandom(INLINE_MAX + 1)
    big_hash = hashlib.sha256(big).digest()
    assert not check_update({**good, "data": big, "hash": big_hash, "size": len(big)})
    assert not check_update({**good, "data": "text"})


@pytest.mark.trio
async def test_a_holder_known_only_by_its_id_is_found_in_the_dht(tmp_path):
    """An aggregator knows an author from the gossip it signed, forwarded by others, so
    it may hold no address for it: the batch finds one in the DHT instead of failing."""
    async with strangers(tmp_path) as (_hub, author, fetcher):
        pieces = [os.urandom(4096) for _ in range(3)]
        held = [await trio.to_thread.run_sync(author.blobs.put, p) for p in pieces]
        got = await fetcher.fetch_blobs(held, author.peer_id, max_size=1 << 20, timeout=20)
        assert [got[h] for h in held] == pieces
        assert author.peer_id in {p["peer_id"] for p in fetcher.peers()}
