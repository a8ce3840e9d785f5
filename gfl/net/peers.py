"""The peers a host is connected to: who, since when, which way, and how many may come in.

Past ``max_peers`` connected peers new inbound connections are closed (our own
dials, bootstrap first, still go out) and counted. py-libp2p 0.8.1 only limits all
connections together (``max_connections``, which would also stop our own dials)
and drops extra inbound ones silently, so `Peers.gate_inbound` wraps this host's
``Swarm._handle_inbound_connection`` (the listener's per-connection handler): a
full node spends no Noise handshake on them. Several handshakes can pass that gate
at once, so the connect notification checks the limit again.

A peer behind NAT is dialled through a relay (`gfl.net.relay_client`) when its addresses
include relayed ones: the direct dial goes first, the relayed one `RELAY_DIAL_DELAY` later
or as soon as the direct one failed, and the first connection wins.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from contextlib import suppress
from typing import Any, Protocol

import multiaddr
import trio
from libp2p.abc import INotifee
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.peer.peerstore import PeerStoreError

from gfl.identity import address_from_peer_id
from gfl.net.errors import NetError
from gfl.net.paths import is_circuit_addr, is_relayed
from gfl.net.traffic import Reporter

logger = logging.getLogger(__name__)

DIAL_TIMEOUT = 10.0
FIND_TIMEOUT = 10.0  # a DHT lookup of the addresses of a peer we know only by its id
CLOSE_TIMEOUT = 2.0
RELAY_DIAL_DELAY = 1.0  # a direct dial that has not succeeded by then is raced by a relayed one


class RelayedDialer(Protocol):
    async def dial(self, peer: ID, addrs: Any) -> None: ...


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
        self._relays: RelayedDialer | None = None
        self._wrap_inbound: Any = None

    def use_relays(self, relays: RelayedDialer) -> None:
        """Dial peers with relayed addresses through ``relays`` too."""
        self._relays = relays

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
            out.append(
                {**info, "addrs": addrs, "msgs_in": self.msgs_in[pid], "path": self.path(pid)}
            )
        return out

    def path(self, pid: str) -> str | None:
        """How we reach peer ``pid``: direct when some connection is, relayed when all run
        through a relay, None when not connected."""
        try:
            conns = self._host.get_network().get_connections(ID.from_base58(pid))
        except Exception:  # not a peer id
            return None
        if not conns:
            return None
        return "relayed" if all(is_relayed(c) for c in conns) else "direct"

    async def reach(self, peer: ID) -> None:
        """Be connected to ``peer``: dial the addresses we hold for it or, when we hold
        none (a peer we know only from the gossip it signed, forwarded by others), those
        a DHT lookup finds within `FIND_TIMEOUT`; raises `NetError`."""
        if peer.to_base58() in self.connected:
            return
        try:
            addrs = list(self._host.get_peerstore().addrs(peer))
        except PeerStoreError:  # none held, or they expired
            addrs = []
        if not addrs:
            found = None
            with trio.move_on_after(FIND_TIMEOUT), suppress(Exception):
                found = await self._dht.find_peer(peer)
            if found is None or not found.addrs:
                raise NetError(f"no address of {peer} is known here or in the DHT")
            addrs = list(found.addrs)
        await self.dial(PeerInfo(peer, addrs))

    async def dial(self, info: PeerInfo) -> None:
        """Connect to ``info`` within `DIAL_TIMEOUT`, through a relay if it has relayed
        addresses and the direct dial does not get through; raises `NetError`."""
        relayed = [a for a in info.addrs if is_circuit_addr(a)]
        if self._relays is None or not relayed:
            await self._dial_direct(info)
            return
        errors: list[str] = []
        direct_failed = trio.Event()
        connected = False

        async def direct(cancel: trio.CancelScope) -> None:
            nonlocal connected
            try:
                await self._dial_direct(info)
                connected = True
                cancel.cancel()
            except NetError as exc:
                errors.append(str(exc))
                direct_failed.set()

        async def via_relay(cancel: trio.CancelScope) -> None:
            nonlocal connected
            with trio.move_on_after(RELAY_DIAL_DELAY):
                await direct_failed.wait()
            assert self._relays is not None
            try:
                await self._relays.dial(info.peer_id, relayed)
                connected = True
                cancel.cancel()
            except NetError as exc:
                errors.append(str(exc))

        async with trio.open_nursery() as race:
            race.start_soon(direct, race.cancel_scope)
            race.start_soon(via_relay, race.cancel_scope)
        if not connected:
            raise NetError("; ".join(errors) or f"could not connect to {info.peer_id}")

    async def _dial_direct(self, info: PeerInfo) -> None:
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
            self.start_soon(self._close_refused, peer)
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
        self.start_soon(self._add_to_routing_table, peer)
        self._report.emit("peer_connected", peer_id=pid, eth_address=addr, direction=direction)

    def disconnected_from(self, peer: ID) -> None:
        pid = peer.to_base58()
        if self._host.get_network().get_connections(peer):
            return
        if self.connected.pop(pid, None) is not None:
            self.loss.set()
            self._report.emit("peer_disconnected", peer_id=pid)

    def gate_inbound(self, wrap: Any = None) -> None:
        """Close inbound connections past ``max_peers`` before their handshake; ``wrap``
        (if given) wraps each one that passes."""
        self._wrap_inbound = wrap
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
            if self._wrap_inbound is not None:  # count its bytes (`gfl.net.paths.count_tcp`)
                read_write_closer = self._wrap_inbound(read_write_closer)
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

    def start_soon(self, fn: Any, *args: Any) -> None:
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
