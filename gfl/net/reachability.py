"""Whether other nodes can dial this one: AutoNAT (``/libp2p/autonat/1.0.0``), both sides.

A node asks a few peers it is directly connected to (bootstrap peers first) to dial it back
on the addresses it would advertise; each answer is a verdict. More successes than failures
among the latest verdicts make the node "public", more failures "private"; until then it is
"unknown" (and asks again soon). ``[net] reachability`` can fix the answer instead.

The candidate addresses include the predicted external one: the IP that peers see us at
(identify's observed address) with our listen port. A server dials only addresses at the
IP it sees us at (amplification guard), so without it a node behind NAT would only ever
be refused, never told "private". A wildcard listen address (0.0.0.0) is given as the
address our packets to that server leave from, the one it sees when there is no NAT.

As a server, py-libp2p 0.8.1's `AutoNATService` dials back with ``host.connect``, which
returns the connection the request came on: every node passes. `AutoNatServer` opens a
fresh connection instead, proves the peer's identity on it (the security handshake) and
closes it, without adding it to the swarm (no connect/disconnect churn in gossip), a few
dial-backs at a time.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

import multiaddr
import trio
from libp2p.host.autonat.autonat import AUTONAT_PROTOCOL_ID, AutoNATService
from libp2p.host.autonat.pb.autonat_pb2 import Message
from libp2p.peer.id import ID

from gfl.net.paths import is_circuit_addr, is_relayed
from gfl.net.peers import Peers
from gfl.net.traffic import Reporter

logger = logging.getLogger(__name__)

UNKNOWN, PUBLIC, PRIVATE = "unknown", "public", "private"
MODES = ("auto", PUBLIC, PRIVATE)

SERVERS_PER_CHECK = 3
VERDICTS_KEPT = 5  # the latest verdict of this many servers decides
FIRST_CHECK_DELAY = 2.0  # after a server connects: identify has told us our external IP
UNKNOWN_POLL = 1.0  # while unknown, how often we look for a server to ask...
UNKNOWN_REASK = 15.0  # ...and how soon the same one is asked again (servers allow 10 s)
KNOWN_RECHECK = 300.0
QUERY_TIMEOUT = 20.0
DIALBACK_TIMEOUT = 5.0  # per address: a NAT drops the SYN, so a failure is a timeout
MAX_DIALBACK_ADDRS = 4
MAX_CONCURRENT_DIALBACKS = 4
DIALBACK_INTERVAL = 10.0  # per requesting peer


def _source_ip(destination: str) -> str | None:
    """The local IPv4 address packets to ``destination`` leave from (a route lookup: a UDP
    socket's connect sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((destination, 9))
            return str(probe.getsockname()[0])
    except OSError:
        return None


class AutoNatServer(AutoNATService):
    """Answers dial-back requests with a fresh, verified, unregistered connection."""

    def __init__(self, host: Any) -> None:
        super().__init__(host, serve=True, confirmations=1)
        self._slots = trio.Semaphore(MAX_CONCURRENT_DIALBACKS)
        self._last_request: OrderedDict[ID, float] = OrderedDict()

    async def handle_stream(self, stream: Any) -> None:  # the AutoNAT stream handler
        peer = stream.muxed_conn.peer_id
        last = self._last_request.get(peer)
        now = time.monotonic()
        if (last is not None and now - last < DIALBACK_INTERVAL) or self._slots.value == 0:
            await stream.reset()  # too often, or too many at once: the client asks another
            return
        self._last_request[peer] = now
        self._last_request.move_to_end(peer)
        while len(self._last_request) > 1024:
            self._last_request.popitem(last=False)
        async with self._slots:
            await super().handle_stream(stream)

    async def _try_dial(self, peer_id: ID, addrs: list[bytes]) -> bytes | None:
        swarm: Any = self.host.get_network()
        for raw_addr in addrs[:MAX_DIALBACK_ADDRS]:
            with suppress(Exception):
                maddr = multiaddr.Multiaddr(raw_addr)
                transport = swarm.transport_manager.transport_for_dialing(maddr)
                if transport is None:
                    continue
                raw = None
                try:
                    with trio.fail_after(DIALBACK_TIMEOUT):
                        raw = await transport.dial(maddr)
                        secured = await swarm.upgrader.upgrade_security(raw, True, peer_id)
                    with trio.move_on_after(1.0):
                        await secured.close()
                    return bytes(raw_addr)
                finally:
                    if raw is not None:
                        with trio.move_on_after(1.0), suppress(Exception):
                            await raw.close()
        return None


class Reachability:
    """This host's reachability, checked now and then; `on_change` callbacks hear of changes."""

    def __init__(
        self, host: Any, peers: Peers, report: Reporter, *, mode: str, bootstrap: Sequence[str]
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"reachability must be one of {', '.join(MODES)}, not {mode!r}")
        self._host = host
        self._peers = peers
        self._report = report
        self._bootstrap = list(bootstrap)  # peer ids, asked first
        self.mode = mode
        self.status = UNKNOWN if mode == "auto" else mode
        self.server = AutoNatServer(host)
        self.verdicts: OrderedDict[str, bool] = OrderedDict()  # server peer id -> dialled us
        self._asked: dict[str, float] = {}
        self._listeners: list[Callable[[str], None]] = []
        self.checks = 0

    def on_change(self, fn: Callable[[str], None]) -> None:
        """Call ``fn(status)`` now and whenever the status changes."""
        self._listeners.append(fn)
        fn(self.status)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "mode": self.mode,
            "verdicts": {pid: ok for pid, ok in self.verdicts.items()},
            "checks": self.checks,
        }

    async def run(self) -> None:
        """Check now and then while the network runs (only in mode "auto")."""
        if self.mode != "auto":
            await trio.sleep_forever()
        while True:
            # a full node's gate refuses the dial-back (`Peers.gate_inbound`): no check then
            servers = [] if self._peers.full else self._servers()
            if servers:
                await trio.sleep(FIRST_CHECK_DELAY if self.checks == 0 else 0)
                await self.check(servers[:SERVERS_PER_CHECK])
            await trio.sleep(UNKNOWN_POLL if self.status == UNKNOWN else KNOWN_RECHECK)

    async def check(self, servers: Sequence[str]) -> str:
        """Ask ``servers`` (peer ids) to dial us back, at once; the status after their verdicts."""
        self.checks += 1

        async def ask(pid: str) -> None:
            self._asked[pid] = time.monotonic()
            addrs = [a.to_bytes() for a in self.candidate_addrs(self._remote_ip(pid))]
            try:
                status, _ = await self.server.query_server(
                    ID.from_base58(pid), addrs, timeout=QUERY_TIMEOUT
                )
            except Exception as exc:  # the peer left, reset the stream or timed out
                logger.debug("AutoNAT query to %s failed: %s", pid, exc)
                return
            if status == Message.OK:
                self._verdict(pid, True)
            elif status == Message.E_DIAL_ERROR:
                self._verdict(pid, False)
            # E_DIAL_REFUSED and the rest: the server would not try; no verdict

        async with trio.open_nursery() as nursery:
            for pid in servers:
                nursery.start_soon(ask, pid)
        self._decide()
        return self.status

    def candidate_addrs(self, toward: str | None = None) -> list[multiaddr.Multiaddr]:
        """Our listen addresses and, for each external IP peers see us at (and, with a
        wildcard listen address, the address we reach ``toward`` from), that IP with each
        of our TCP listen ports."""
        listen = [a for a in self._host.get_transport_addrs() if not is_circuit_addr(a)]
        out = list(listen)
        seen = {str(a) for a in out}
        ips = self._external_ips()
        if toward is not None and any(str(a).startswith("/ip4/0.0.0.0/") for a in listen):
            local = _source_ip(toward)
            if local is not None and ("ip4", local) not in ips:
                ips.append(("ip4", local))
        for ip_proto, ip in ips:
            for a in listen:
                with suppress(Exception):
                    if a.protocols()[0].name != ip_proto:
                        continue
                    predicted = multiaddr.Multiaddr(
                        f"/{ip_proto}/{ip}/tcp/{a.value_for_protocol('tcp')}"
                    )
                    if str(predicted) not in seen:
                        seen.add(str(predicted))
                        out.append(predicted)
        return out

    def _external_ips(self) -> list[tuple[str, str]]:
        # identify's observed addresses; the manager is the host's (py-libp2p has no public
        # accessor for them yet: its DCUtR reads the same attribute)
        manager = getattr(self._host, "_observed_addr_manager", None)
        out: list[tuple[str, str]] = []
        if manager is None:
            return out
        with suppress(Exception):
            for a in manager.addrs(min_observers=1):
                if is_circuit_addr(a):
                    continue
                proto = a.protocols()[0].name
                if proto in ("ip4", "ip6"):
                    entry = (proto, str(a.value_for_protocol(proto)))
                    if entry not in out:
                        out.append(entry)
        return out

    def _remote_ip(self, pid: str) -> str | None:
        """The IPv4 address we reach peer ``pid`` at, on a direct connection."""
        for conn in self._host.get_network().get_connections(ID.from_base58(pid)):
            if is_relayed(conn):
                continue
            with suppress(Exception):
                for a in conn.get_transport_addresses():
                    return str(a.value_for_protocol("ip4"))
        return None

    def _servers(self) -> list[str]:
        """Directly connected peers that speak AutoNAT and were not asked lately."""
        store = self._host.get_peerstore()
        swarm = self._host.get_network()
        wait = UNKNOWN_REASK if self.status == UNKNOWN else KNOWN_RECHECK
        now = time.monotonic()
        out = []
        for pid in self._peers.connected:
            if now - self._asked.get(pid, -wait) < wait:
                continue
            peer = ID.from_base58(pid)
            conns = swarm.get_connections(peer)
            if not conns or all(is_relayed(c) for c in conns):
                continue  # a server refuses requests over a relay
            with suppress(Exception):
                if AUTONAT_PROTOCOL_ID in store.get_protocols(peer):
                    out.append(pid)
        return sorted(out, key=lambda p: p not in self._bootstrap)

    def _verdict(self, pid: str, ok: bool) -> None:
        self.verdicts[pid] = ok
        self.verdicts.move_to_end(pid)
        while len(self.verdicts) > VERDICTS_KEPT:
            self.verdicts.popitem(last=False)

    def _decide(self) -> None:
        yes = sum(self.verdicts.values())
        no = len(self.verdicts) - yes
        status = PUBLIC if yes > no else PRIVATE if no > yes else self.status
        if status != self.status:
            logger.info("reachability: %s (verdicts %d public, %d private)", status, yes, no)
            self.set(status)

    def set(self, status: str) -> None:
        """Record a new status and tell the listeners."""
        self.status = status
        self._report.emit("reachability", status=status)
        for fn in self._listeners:
            try:
                fn(status)
            except Exception:
                logger.exception("reachability listener failed")
