"""DHT provider records for the blobs a node holds: announced, refreshed, looked up.

Provider records expire (48 h in py-libp2p, less elsewhere) and only reach the
peers closest to the key at the moment they are announced, so every
``reprovide_interval`` seconds the blobs we still hold are announced again, and
the ones evicted are forgotten.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from libp2p.kad_dht.kad_dht import _encode_key

from gfl.net.blobs import BlobStore
from gfl.net.errors import BlobError
from gfl.net.peers import DIAL_TIMEOUT
from gfl.net.traffic import Reporter

logger = logging.getLogger(__name__)

REPROVIDE_INTERVAL = 600.0
MAX_CONCURRENT_REPROVIDES = 8
PROVIDER_ADDR_TTL = 600  # seconds a found provider's addresses stay in the peerstore


def dht_key(h: bytes) -> str:
    """A blob hash as the DHT key KadDHT.provide/find_providers accept (a sha256 multihash, hex)."""
    return "1220" + bytes(h).hex()


class Providers:
    """The blobs this node announces in the DHT, and lookups of other providers."""

    def __init__(self, host: Any, dht: Any, blobs: BlobStore, report: Reporter) -> None:
        self._host = host
        self._dht = dht
        self._blobs = blobs
        self._report = report
        self.providing: set[bytes] = set()

    async def provide(self, h: bytes) -> None:
        """Announce that we hold blob ``h`` (we must have it); kept announced while we do."""
        if not self._blobs.has(h):
            raise BlobError("cannot provide a blob this node does not hold")
        self.providing.add(bytes(h))
        await self._announce(h)

    async def find(self, h: bytes) -> list[str]:
        """The DHT's providers of ``h`` other than us, their addresses added to the peerstore."""
        infos: list[Any] = []
        try:
            with trio.move_on_after(DIAL_TIMEOUT):
                infos = list(await self._dht.find_providers(dht_key(h)))
        except Exception as exc:
            logger.debug("DHT provider lookup failed: %s", exc)
        me = self._host.get_id()
        pids = []
        for info in infos:
            if info.peer_id != me:
                self._host.get_peerstore().add_addrs(info.peer_id, info.addrs, PROVIDER_ADDR_TTL)
                pids.append(info.peer_id.to_base58())
        return pids

    async def run_reprovide(self, interval: float) -> None:
        """Every ``interval`` seconds, `reprovide_once`."""
        while True:
            await trio.sleep(interval)
            await self.reprovide_once()

    async def reprovide_once(self) -> None:
        """Announce again every blob we provide and still hold; forget the evicted ones."""
        limit = trio.CapacityLimiter(MAX_CONCURRENT_REPROVIDES)

        async def one(h: bytes) -> None:
            async with limit:
                if await self._announce(h):
                    self._report.traffic.reprovides += 1

        async with trio.open_nursery() as n:
            for h in list(self.providing):
                if self._blobs.has(h):
                    n.start_soon(one, h)
                else:
                    self.providing.discard(h)
                    # and stop the library's own 22 h republishing of it
                    self._dht.provider_store.providing_keys.discard(_encode_key(dht_key(h)))

    async def _announce(self, h: bytes) -> bool:
        try:
            with trio.move_on_after(DIAL_TIMEOUT):
                return bool(await self._dht.provide(dht_key(h)))
        except Exception as exc:
            logger.info("DHT provide failed (the blob is still served): %s", exc)
        return False
