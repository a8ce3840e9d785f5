"""Finding peers: the bootstrap peers, DHT lookups near our own id, and mDNS.

Dial the bootstrap peers (with backoff, forever), then ask the DHT for peers
close to our own id and dial those, so that every node finds all others through
one seed. Each connected peer is added to the DHT routing table (`gfl.net.peers`).
With mDNS, peers announced on the local network are dialled too (`gfl.net.mdns`).
"""

from __future__ import annotations

import logging
import random
from typing import Any

import trio
from libp2p.peer.peerinfo import PeerInfo

from gfl.net.errors import NetError
from gfl.net.peers import DIAL_TIMEOUT, Peers
from gfl.net.traffic import Reporter

logger = logging.getLogger(__name__)

DISCOVERY_INTERVAL = 15.0  # between DHT lookups while they find peers we lack
DISCOVERY_IDLE = 120.0  # the longest pause once lookups keep finding nobody new
BOOTSTRAP_CHECK = 2.0  # how often a connected bootstrap peer is checked
MAX_BACKOFF = 30.0
FOUND_DIAL_ATTEMPTS = 5  # dials of a peer found by mDNS before waiting to see it again
FOUND_DIAL_DEFER = 2.0
MAX_REMEMBERED_FOUND = 4096


class Discovery:
    """The discovery tasks of one host; each runs in the network's nursery until it closes.

    ``lookups=False`` keeps to the bootstrap peers and explicit connects (no DHT
    lookups): for fixed topologies in tests.
    """

    def __init__(
        self, host: Any, dht: Any, peers: Peers, report: Reporter, *, lookups: bool = True
    ) -> None:
        self._host = host
        self._dht = dht
        self._peers = peers
        self._report = report
        self.lookups = lookups
        self._found: set[str] = set()  # peers seen on mDNS
        self._dialing: set[str] = set()  # peers found by mDNS that a task is dialling

    async def keep_bootstrap(self, info: PeerInfo) -> None:
        """Stay connected to one bootstrap peer: redial with exponential backoff; after
        each (re)connection, a DHT lookup."""
        if info.peer_id == self._peers.my_id:
            return
        pid, delay = info.peer_id.to_base58(), 0.5
        async with trio.open_nursery() as after_connect:
            while True:
                if pid not in self._peers:
                    try:
                        await self._peers.dial(info)
                    except NetError as exc:
                        logger.info(
                            "bootstrap %s unreachable (%s); retry in %.1fs", pid, exc, delay
                        )
                        await trio.sleep(delay * random.uniform(0.8, 1.2))
                        delay = min(delay * 2, MAX_BACKOFF)
                        continue
                    delay = 0.5
                    if self.lookups:
                        after_connect.start_soon(self.discover_once)
                await trio.sleep(BOOTSTRAP_CHECK)

    async def discover_once(self) -> int:
        """Ask the DHT for peers near our own id and dial the ones we lack; how many."""
        found: list[Any] = []
        my_id = self._peers.my_id
        try:
            with trio.move_on_after(DIAL_TIMEOUT):
                found = await self._dht.peer_routing.find_closest_peers_network(my_id.to_bytes())
        except Exception as exc:
            logger.debug("DHT lookup failed: %s", exc)
            return 0
        store = self._host.get_peerstore()
        dialed = 0
        async with trio.open_nursery() as dials:
            for peer in found or ():
                if peer == my_id or peer.to_base58() in self._peers or self._peers.full:
                    continue
                try:
                    addrs = store.addrs(peer)
                except Exception:
                    continue
                if addrs:
                    dials.start_soon(self._peers.dial_quietly, PeerInfo(peer, addrs))
                    dialed += 1
        return dialed

    async def run_lookups(self) -> None:
        """DHT lookups: after 1, 3, 7 and 15 s, then every `DISCOVERY_INTERVAL` s while
        they find peers we lack, pausing twice as long after each that finds nobody new
        (up to `DISCOVERY_IDLE` s). Losing a peer cuts the pause back to the interval."""
        delay = 1.0
        while True:
            with trio.move_on_after(delay) as pause:
                await self._peers.loss.wait()
            if not pause.cancelled_caught:  # a peer was lost: start a shorter pause
                self._peers.clear_loss()
                delay = min(delay, DISCOVERY_INTERVAL)
                continue
            if not len(self._peers):  # the bootstrap loop reconnects us
                delay = min(delay * 2, DISCOVERY_INTERVAL)
                continue
            dialed = 0 if self._peers.full else await self.discover_once()
            longest = DISCOVERY_INTERVAL if dialed or delay < DISCOVERY_INTERVAL else DISCOVERY_IDLE
            delay = min(delay * 2, longest)

    async def run_mdns(self, found: trio.MemoryReceiveChannel[Any]) -> None:
        """Dial the peers that mDNS reports (`gfl.net.mdns` hands them over from zeroconf)."""
        async with trio.open_nursery() as dials, found:
            async for info in found:
                self._mdns_found(info, dials)

    def _mdns_found(self, info: PeerInfo, dials: trio.Nursery) -> None:
        if info.peer_id == self._peers.my_id:
            return
        pid = info.peer_id.to_base58()
        if pid not in self._found and len(self._found) < MAX_REMEMBERED_FOUND:
            self._found.add(pid)
            self._report.traffic.mdns_peers_found += 1
            self._report.emit("peer_discovered", peer_id=pid, via="mdns")
        self._host.get_peerstore().add_addrs(info.peer_id, info.addrs, 600)
        if pid in self._peers or pid in self._dialing or self._peers.full:
            return
        self._dialing.add(pid)
        dials.start_soon(self._dial_found, info)

    async def _dial_found(self, info: PeerInfo) -> None:
        """Dial a peer found on the local network, with backoff, a bounded number of times."""
        pid = info.peer_id.to_base58()
        delay = 0.5
        try:
            if pid < self._peers.my_id.to_base58():
                # both ends hear each other: the smaller id dials first, the other only
                # if no connection came (two crossing dials make the library drop one)
                await trio.sleep(FOUND_DIAL_DEFER * random.uniform(0.8, 1.2))
            for _ in range(FOUND_DIAL_ATTEMPTS):
                if pid in self._peers or self._peers.full:
                    return
                try:
                    await self._peers.dial(info)
                    return
                except NetError as exc:
                    logger.debug("peer %s found by mDNS unreachable: %s", pid, exc)
                await trio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, MAX_BACKOFF)
        finally:
            self._dialing.discard(pid)
