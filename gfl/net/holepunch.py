"""Upgrading relayed connections to direct ones: DCUtR (``/libp2p/dcutr``), hole punching.

py-libp2p 0.8.1's `DCUtRProtocol` does the exchange and the TCP simultaneous open (its
listener and hole-punch dials share the listen port with SO_REUSEPORT, and it predicts our
external address as the IP peers see us at with our listen port). `HolePunch` changes who
starts: the library's service drives a hole punch from both ends of every relayed
connection every 2 s, so two sessions for one pair of peers race each other. Here, as the
spec has it, only the end that accepted the relayed connection starts one
(`HolePunchNotifee`), once per connection; the other end answers with the library's handler.
When both ends dialled each other through relays at once, each accepted one: the end with
the smaller peer id starts. Outcomes are counted and reported (``hole_punch`` events).
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from typing import Any

import trio
from libp2p.abc import INotifee
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol

from gfl.net.paths import is_relayed
from gfl.net.peers import Peers
from gfl.net.traffic import Reporter

logger = logging.getLogger(__name__)

START_DELAY = 0.5  # let the new connection settle (identify, pubsub) before the exchange
DIAL_TIMEOUT = 5  # per hole-punch dial; a NAT that drops the SYN makes a failure a timeout
MAX_REMEMBERED = 4096  # peers whose latest outcome is kept


class HolePunch(DCUtRProtocol):
    """DCUtR, started by GFL from the end that accepted the relayed connection."""

    def __init__(self, host: Any, report: Reporter) -> None:
        super().__init__(host, dial_timeout=DIAL_TIMEOUT)
        self.peers: Peers | None = None  # set once the network built them
        self._report = report
        self.outcomes: Counter[str] = Counter()  # "direct" | "relayed"
        self.last: OrderedDict[str, str] = OrderedDict()  # peer id -> its latest outcome

    async def _auto_drive_loop(self) -> None:
        # the library's loop would start a hole punch from both ends; `HolePunchNotifee`
        # starts one from the accepting end only
        await trio.sleep_forever()

    async def upgrade(self, peer: ID) -> None:
        """Try to replace our relayed connection to ``peer`` with a direct one."""
        await trio.sleep(START_DELAY)
        pid, peers = peer.to_base58(), self.peers
        assert peers is not None
        if peers.path(pid) != "relayed" or peer in self._in_progress:
            return  # direct already, gone, or the peer started a session we answer
        if pid < peers.my_id.to_base58() and self._dialled_through_relay(peer):
            return  # crossing dials: the smaller id starts
        t0 = trio.current_time()
        try:
            direct = await self.initiate_hole_punch(peer)
        except Exception as exc:  # the library catches its own; a stray one must not spread
            logger.debug("hole punch to %s failed: %s", peer, exc)
            direct = False
        outcome = "direct" if direct or peers.path(pid) == "direct" else "relayed"
        self.outcomes[outcome] += 1
        self.last[pid] = outcome
        self.last.move_to_end(pid)
        while len(self.last) > MAX_REMEMBERED:
            self.last.popitem(last=False)
        logger.info("hole punch to %s: %s", peer, outcome)
        self._report.emit(
            "hole_punch",
            peer_id=peer.to_base58(),
            outcome=outcome,
            seconds=round(trio.current_time() - t0, 3),
        )

    def _dialled_through_relay(self, peer: ID) -> bool:
        """Whether we also hold a relayed connection to ``peer`` that we dialled."""
        for conn in self.host.get_network().get_connections(peer):
            direction = getattr(getattr(conn, "_direction", None), "name", "")
            if is_relayed(conn) and str(direction).lower() == "outbound":
                return True
        return False


class HolePunchNotifee(INotifee):
    """Starts a hole punch when a peer reaches us through a relay."""

    def __init__(self, holepunch: HolePunch, peers: Peers) -> None:
        self._holepunch = holepunch
        self._peers = peers

    async def connected(self, network: Any, conn: Any) -> None:
        direction = getattr(getattr(conn, "_direction", None), "name", "")
        if str(direction).lower() == "inbound" and is_relayed(conn):
            self._peers.start_soon(self._holepunch.upgrade, conn.muxed_conn.peer_id)

    async def disconnected(self, network: Any, conn: Any) -> None:
        pass

    async def opened_stream(self, network: Any, stream: Any) -> None:
        pass

    async def closed_stream(self, network: Any, stream: Any) -> None:
        pass

    async def listen(self, network: Any, multiaddr: Any) -> None:
        pass

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        pass
