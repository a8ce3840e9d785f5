"""The peers a host is connected to: who, since when, which way, and how many may come in.

Past ``max_peers`` connected peers new inbound connections are closed (our own
dials, bootstrap first, still go out) and counted. py-libp2p 0.8.1 only limits all
connections together (``max_connections``, which would also stop our own dials)
and drops extra inbound ones silently, so `Peers.gate_inbound` wraps this host's
``Swarm._handle_inbound_connection`` (the listener's per-connection handler): a
full node spends no Noise handshake on them. Several handshakes can pass that gate
at once, so the connect notification checks the limit again.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from contextlib import suppress
from typing import Any

import multiaddr
import trio
from libp2p.abc import INotifee
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr

from gfl.identity import address_from_peer_id
from gfl.net.errors import NetError
from gfl.net.traffic import Reporter

logger = logging.getLogger(__name__)

DIAL_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0


def peer_info(maddr: str, what: str = "multiaddr") -> PeerInfo:
    """The peer id and address of a full multiaddr (``.../p2p/<peer id>``); raises `NetError`."""
    try:
        return info_from_p2p_addr(multiaddr.Multiaddr(maddr))
    except Exception as exc:
        raise NetError(f"not a dialable {what} with /p2p/<peer id>: {maddr} ({exc})") from None


class Peers:
    """The connected peers of one host, its dials and its inbound limit.

    The library reports connections from its own tasks; the work that follows (adding
    the peer to the DHT's routing table, closing a refused connection) runs in
    ``nursery``, which the network owns.
    """

    def __init__(
        self, host: Any, dht: Any, report: Reporter, max_peers: int, nursery: trio.Nursery
    ) -> None:
        self._host = host
        self._dht = dht
        self._report = report
        self._nursery = nursery
        self.my_id: ID = host.get_id()
        self.max_peers = max_peers
        self.connected: dict[str, dict[str, Any]] = {}  # peer id (base58) -> what we know
        self.msgs_in: Counter[str] = Counter()  # gossip messages each peer originated
        self.loss = trio.Event()  # set when a peer is lost; `clear_loss` re-arms it

    def __contains__(self, pid: str) -> bool:
        return pid in self.connected

    def __len__(self) -> int:
        return len(self.connected)

    @property
    def full(self) -> bool:
        """At ``max_peers``: no more inbound connections, no discovery dials."""
        return len(self.connected) >= self.max_peers

    def clear_loss(self) -> None:
        self.loss = trio.Event()

    def listing(self) -> list[dict[str, Any]]:
        """Connected peers: id, eth address, addresses, since when, direction, messages."""
        store = self._host.get_peerstore()
        out = []
        for pid, info in list(self.connected.items()):
            try:
                addrs = [str(a) for a in store.addrs(ID.from_base58(pid))]
            except Exception:
                addrs = []
            out.append({**info, "addrs": addrs, "msgs_in": self.msgs_in[pid]})
        return out

    async def dial(self, info: PeerInfo) -> None:
        """Connect to ``info`` within `DIAL_TIMEOUT`; raises `NetError`."""
        swarm = self._host.get_network()
        # A failed dial blocks the peer for 60 s in the swarm; our callers back off themselves.
        swarm.unblock_peer(info.peer_id)
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                await self._host.connect(info)
        except trio.TooSlowError:
            swarm.unblock_peer(info.peer_id)
            raise NetError(f"dialing {info.peer_id} timed out") from None
        except Exception as exc:
            swarm.unblock_peer(info.peer_id)
            raise NetError(f"could not connect to {info.peer_id}: {exc}") from None

    async def dial_quietly(self, info: PeerInfo) -> None:
        """`dial`, a failure only logged (a peer found by discovery)."""
        try:
            await self.dial(info)
        except NetError as exc:
            logger.debug("discovered peer unreachable: %s", exc)

    # ---------------------------------------------------------- the library's reports

    def connected_to(self, peer: ID, direction: str) -> None:
        pid = peer.to_base58()
        if pid in self.connected:
            return
        if direction == "inbound" and self.full:
            self._refuse_inbound(pid)
            self._start_soon(self._close_refused, peer)
            return
        try:
            addr = address_from_peer_id(pid)
        except Exception:
            addr = None
        self.connected[pid] = {
            "peer_id": pid,
            "eth_address": addr,
            "connected_since": time.time(),
            "direction": direction,
        }
        self._start_soon(self._add_to_routing_table, peer)
        self._report.emit("peer_connected", peer_id=pid, eth_address=addr, direction=direction)

    def disconnected_from(self, peer: ID) -> None:
        pid = peer.to_base58()
        if self._host.get_network().get_connections(peer):
            return
        if self.connected.pop(pid, None) is not None:
            self.loss.set()
            self._report.emit("peer_disconnected", peer_id=pid)

    def gate_inbound(self) -> None:
        """Close inbound connections past ``max_peers`` before their handshake."""
        swarm = self._host.get_network()
        handle = getattr(swarm, "_handle_inbound_connection", None)
        if handle is None:  # another py-libp2p: connected_to still enforces the limit
            logger.warning("cannot gate inbound connections before their handshake")
            return

        async def gated(read_write_closer: Any, maddr: Any) -> None:
            if self.full:
                self._refuse_inbound(None)
                with trio.move_on_after(1.0), suppress(Exception):
                    await read_write_closer.close()
                return
            await handle(read_write_closer, maddr)

        swarm._handle_inbound_connection = gated

    async def disconnect_all(self) -> None:
        """Close every connection (each bounded), before the services stop."""
        for peer in list(self._host.get_network().connections.keys()):
            with trio.move_on_after(CLOSE_TIMEOUT):
                try:
                    await self._host.disconnect(peer)
                except Exception as exc:
                    logger.debug("disconnecting %s: %s", peer, exc)

    def _start_soon(self, fn: Any, *args: Any) -> None:
        """Follow-up work in the network's nursery; once it is closing, the work is moot."""
        try:
            self._nursery.start_soon(fn, *args)
        except RuntimeError as exc:  # trio: "Nursery is closed to new arrivals"
            logger.debug("network closing, %s dropped: %s", getattr(fn, "__name__", fn), exc)

    def _refuse_inbound(self, pid: str | None) -> None:
        self._report.traffic.connections_refused += 1
        logger.debug("inbound connection from %s refused: %d peers", pid, len(self.connected))
        self._report.emit(
            "peer_refused", peer_id=pid, peers=len(self.connected), limit=self.max_peers
        )

    async def _close_refused(self, peer: ID) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await self._host.disconnect(peer)
            except Exception as exc:
                logger.debug("closing refused %s: %s", peer, exc)

    async def _add_to_routing_table(self, peer: ID) -> None:
        try:
            await self._dht.add_peer(peer, skip_server_mode_check=True)
        except Exception as exc:
            logger.debug("could not add %s to the DHT routing table: %s", peer, exc)


class PeerNotifee(INotifee):
    """Hands the swarm's connect and disconnect notifications to `Peers` (in trio)."""

    def __init__(self, peers: Peers) -> None:
        self.peers = peers

    async def opened_stream(self, network: Any, stream: Any) -> None:
        pass

    async def closed_stream(self, network: Any, stream: Any) -> None:
        pass

    async def connected(self, network: Any, conn: Any) -> None:
        direction = getattr(conn, "_direction", None)
        name = getattr(direction, "name", str(direction)).lower() if direction else "unknown"
        self.peers.connected_to(conn.muxed_conn.peer_id, name)

    async def disconnected(self, network: Any, conn: Any) -> None:
        self.peers.disconnected_from(conn.muxed_conn.peer_id)

    async def listen(self, network: Any, multiaddr: Any) -> None:
        pass

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        pass
