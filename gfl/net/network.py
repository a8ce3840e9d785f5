"""`Network`: what the rest of GFL uses of a node's libp2p host, in one object.

Each concern lives in its own module and object, built and wired by
`gfl.net.host.open_network`: connected peers and the inbound limit
(`gfl.net.peers`), finding peers (`gfl.net.discovery`), gossip
(`gfl.net.pubsub`), questions to one peer (`gfl.net.asks`), blob transfers
(`gfl.net.transfer`), DHT provider records (`gfl.net.providers`), and NAT traversal: reachability
(`gfl.net.reachability`), relays (`gfl.net.relay`, `gfl.net.relay_client`) and
hole punching (`gfl.net.holepunch`). `Network` only forwards to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio

from gfl.net.asks import Answer, Asks
from gfl.net.blobs import BlobStore
from gfl.net.gossip import GossipMessage
from gfl.net.holepunch import HolePunch
from gfl.net.peers import Peers, peer_info
from gfl.net.providers import Providers
from gfl.net.pubsub import GflPubsub, Gossip, Validator
from gfl.net.reachability import Reachability
from gfl.net.relay import RelayProtocol
from gfl.net.relay_client import Relays
from gfl.net.traffic import Reporter, Traffic
from gfl.net.transfer import BlobClient, BlobServer


@dataclass(frozen=True)
class Parts:
    """The objects a `Network` forwards to (built by `open_network`)."""

    host: Any  # libp2p's IHost
    pubsub: GflPubsub
    dht: Any  # libp2p's KadDHT
    report: Reporter
    peers: Peers
    gossip: Gossip
    providers: Providers
    client: BlobClient
    server: BlobServer
    asks: Asks
    reachability: Reachability
    relays: Relays
    relay: RelayProtocol
    holepunch: HolePunch


class Network:
    """A running libp2p host; get one from `open_network`."""

    def __init__(self, eth_address: str, blobs: BlobStore, parts: Parts) -> None:
        self._parts = parts
        self._host = parts.host  # for tests and benchmarks that open raw streams
        self._pubsub = parts.pubsub
        self._my_id = parts.peers.my_id
        self.peer_id: str = self._my_id.to_base58()
        self.eth_address = eth_address
        self.blobs = blobs
        self.traffic: Traffic = parts.report.traffic

    def listen_addrs(self) -> list[str]:
        """Full multiaddrs (with ``/p2p/<peer id>``) that other nodes can dial."""
        out = []
        for a in self._host.get_addrs():
            s = str(a)
            if "/p2p/" not in s:
                s = f"{s}/p2p/{self.peer_id}"
            out.append(s)
        return out

    def peers(self) -> list[dict[str, Any]]:
        """Connected peers: id, eth address, addresses, since when, direction, messages,
        path ("direct" or "relayed") and, where this node started one, the latest hole
        punch's outcome."""
        punched = self._parts.holepunch.last
        return [
            {**p, "hole_punch": punched[p["peer_id"]]} if p["peer_id"] in punched else p
            for p in self._parts.peers.listing()
        ]

    @property
    def reachability(self) -> str:
        """Whether others can dial us: public, private or unknown (`gfl.net.reachability`)."""
        return self._parts.reachability.status

    def nat(self) -> dict[str, Any]:
        """Reachability verdicts, relays held, the relay service, hole punches by outcome."""
        parts = self._parts
        return {
            "autonat": parts.reachability.as_dict(),
            **parts.relays.as_dict(),
            "relay_service": parts.relay.service_stats(),
            "hole_punches": dict(parts.holepunch.outcomes),
        }

    def stats(self) -> dict[str, Any]:
        """Peers, topics, traffic and discovery counters, drops by reason, reachability, NAT
        traversal, and bytes by path (direct, relayed, relayed for others)."""
        gossip = self._parts.gossip
        paths = [p["path"] for p in self._parts.peers.listing()]
        return {
            "peer_id": self.peer_id,
            "reachability": self.reachability,
            "peers": len(self._parts.peers),
            "connections": {"direct": paths.count("direct"), "relayed": paths.count("relayed")},
            "nat": self.nat(),
            "max_peers": self._parts.peers.max_peers,
            "providing": len(self._parts.providers.providing),
            "topics": gossip.topics,
            "mesh": {t: gossip.mesh_size(t) for t in gossip.topics},
            "blobs": {
                "count": len(self.blobs),
                "bytes": self.blobs.total_bytes,
                "cap_bytes": self.blobs.cap_bytes,
                "evicted": self.blobs.evictions,  # past the cap, and ended jobs'
            },
            "dht_routing_table": self._parts.dht.get_routing_table_size(),
            **self.traffic.as_dict(),
        }

    async def connect(self, maddr: str) -> str:
        """Dial a full multiaddr (``.../p2p/<id>``); returns the peer id."""
        info = peer_info(maddr)
        if info.peer_id != self._my_id:
            await self._parts.peers.dial(info)
        return info.peer_id.to_base58()

    async def subscribe(
        self, topic: str, validator: Validator | None = None
    ) -> trio.MemoryReceiveChannel[GossipMessage]:
        """Join ``topic``; validated messages from other nodes arrive on the returned channel.

        ``validator`` sees each decoded message before it is delivered or forwarded;
        returning False drops it (counted as "rejected"). Our own messages are not
        delivered back to us.
        """
        return await self._parts.gossip.subscribe(topic, validator)

    async def unsubscribe(self, topic: str) -> None:
        """Leave ``topic``; its channel is closed."""
        await self._parts.gossip.unsubscribe(topic)

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        """Sign and gossip ``payload``; raises `MessageError` if it breaks the envelope."""
        await self._parts.gossip.publish(topic, payload)

    async def provide(self, h: bytes) -> None:
        """Announce in the DHT that we hold blob ``h`` (we must have it); re-announced
        every ``reprovide_interval`` seconds while we hold it."""
        await self._parts.providers.provide(h)

    async def fetch_blob(
        self,
        h: bytes,
        providers: Sequence[str] = (),
        *,
        max_size: int,
        timeout: float,
        tag: str | None = None,
    ) -> bytes:
        """Get blob ``h`` locally or from a provider; stores it and returns its bytes.

        Tries ``providers`` in order, then the DHT's providers. Raises `BlobError`
        when no provider delivered the right bytes within ``timeout`` seconds.
        ``tag`` (a job's) is added to the stored blob, for `BlobStore.evict`. A fetch
        of a blob that another task is fetching waits for that one instead of
        transferring the bytes twice.
        """
        return await self._parts.client.fetch(
            h, providers, max_size=max_size, timeout=timeout, tag=tag
        )

    async def fetch_blobs(
        self,
        hashes: Sequence[bytes],
        provider: str,
        *,
        max_size: int,
        timeout: float,
        tag: str | None = None,
    ) -> dict[bytes, bytes]:
        """Those of ``hashes`` that ``provider`` has, fetched in batches (one stream per
        `blob_protocol.MAX_BATCH`), stored and returned by hash; `BlobError` when a batch
        fails. For many small blobs of one holder (a sharded round's pieces)."""
        return await self._parts.client.fetch_batch(
            hashes, provider, max_size=max_size, timeout=timeout, tag=tag
        )

    async def store_blob(
        self,
        h: bytes,
        providers: Sequence[str] = (),
        *,
        max_size: int,
        timeout: float,
        tag: str | None = None,
    ) -> int:
        """`fetch_blob` for a blob wanted in the store, not in memory (a prefetch); returns
        its size. A copy already stored is not read, and a fetched one is written as its
        pieces arrived, never joined into one object (a copy of the whole blob)."""
        return await self._parts.client.store(
            h, providers, max_size=max_size, timeout=timeout, tag=tag
        )

    def answer(self, type_: str, fn: Answer) -> None:
        """Answer peers' questions of ``type_`` with ``fn`` (`gfl.net.asks`)."""
        self._parts.asks.answer(type_, fn)

    async def ask(
        self, peer_id: str, question: dict[str, Any], timeout: float
    ) -> list[dict[str, Any]]:
        """``peer_id``'s answer to ``question``: messages, each checked against its schema;
        `NetError` when none comes within ``timeout`` seconds."""
        return await self._parts.asks.ask(peer_id, question, timeout)

    async def _serve_blob(self, stream: Any) -> None:
        """The blob protocol's stream handler (benchmarks time it)."""
        await self._parts.server.serve(stream)
