"""A private node's relays: slots reserved on a few public nodes, and dials through them.

While the node is private (`gfl.net.reachability`), `Relays` holds a reservation on up to
`RELAY_SLOTS` relays, bootstrap peers first, renews each before it expires and replaces
the ones whose relay went away. The relayed addresses it holds
(``<relay address>/p2p/<relay>/p2p-circuit``) are advertised with the host's own (the
host's address factory asks `advertised`), and every peer learns of a change at once
(identify push). `dial` reaches a peer through one of the relays in its addresses.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import multiaddr
import trio
from libp2p.identity.identify_push.identify_push import push_identify_to_peers
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as CircuitPeerId
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

from gfl.net.errors import NetError
from gfl.net.paths import CIRCUIT, is_relayed
from gfl.net.peers import DIAL_TIMEOUT, Peers
from gfl.net.reachability import PRIVATE
from gfl.net.relay import Circuit, RelayProtocol, limit_of, ok, status_name
from gfl.net.traffic import Reporter

logger = logging.getLogger(__name__)

RELAY_SLOTS = 3
REQUEST_TIMEOUT = 10.0
RENEW_BEFORE_S = 120.0  # renew a reservation this long before it expires
CHECK_SHORT = 2.0  # between passes while short of slots
CHECK_FULL = 15.0
RETRY_FIRST = 2.0  # a relay that refused is asked again after this, doubling...
RETRY_MAX = 120.0  # ...up to this
NO_RELAY_WARNING_S = 60.0  # private this long without a relay: say what to do, once


@dataclass
class Reservation:
    """A slot held on a relay, and the relayed addresses it gives us."""

    relay: str
    expires: float  # unix time
    addrs: list[multiaddr.Multiaddr]  # <relay address>/p2p/<relay>/p2p-circuit


def split_circuit(addr: Any) -> tuple[multiaddr.Multiaddr, ID] | None:
    """(the relay's address with /p2p/<relay>, the relay's id) of a relayed address."""
    head = str(addr).split(CIRCUIT, 1)[0]
    try:
        relay_addr = multiaddr.Multiaddr(head)
        relay = relay_addr.get_peer_id()
        return (relay_addr, ID.from_base58(relay)) if relay else None
    except Exception:
        return None


class Relays:
    """Reservations on relays while the node is private, and relayed dials."""

    def __init__(
        self,
        host: Any,
        peers: Peers,
        protocol: RelayProtocol,
        report: Reporter,
        *,
        bootstrap: Sequence[str],
        slots: int = RELAY_SLOTS,
    ) -> None:
        self._host = host
        self._peers = peers
        self._protocol = protocol
        self._report = report
        self._bootstrap = list(bootstrap)
        self.slots = slots
        self.reservations: dict[str, Reservation] = {}
        self._retry: dict[str, tuple[float, float]] = {}  # relay -> (not before, next delay)
        self.active = False
        self._wake = trio.Event()
        self._without_since: float | None = None
        self._warned = False

    # ------------------------------------------------------------------ reservations

    def on_reachability(self, status: str) -> None:
        """Hold relays while private; give them up otherwise."""
        self.active = status == PRIVATE
        self._wake.set()

    def advertised(self) -> list[multiaddr.Multiaddr]:
        """The relayed addresses to advertise, without our own /p2p/<peer id>."""
        return [a for r in self.reservations.values() for a in r.addrs]

    def advertise_on(self, host: Any) -> None:
        """Add our relayed addresses to what ``host.get_addrs()`` (identify, signed peer
        records, status) returns.

        On the instance: py-libp2p 0.8.1's ``BasicHost.get_addrs`` puts each address
        through its address factory and then cuts it at its first ``/p2p/`` to append our
        own id, which turns ``<relay>/p2p/<relay id>/p2p-circuit`` into the relay's own
        address with our id: wrong. Upstream: cut at the last ``/p2p/``.
        """
        own = host.get_addrs
        suffix = f"/p2p/{host.get_id().to_base58()}"

        def get_addrs() -> list[multiaddr.Multiaddr]:
            return [*own(), *(multiaddr.Multiaddr(f"{a}{suffix}") for a in self.advertised())]

        host.get_addrs = get_addrs

    def as_dict(self) -> dict[str, Any]:
        now = time.time()
        return {
            "reservations": {
                pid: {"expires_in_s": round(r.expires - now), "addrs": [str(a) for a in r.addrs]}
                for pid, r in self.reservations.items()
            },
        }

    async def run(self) -> None:
        """Keep `slots` reservations while active, renewed before they expire."""
        while True:
            before = set(self.reservations)
            if self.active:
                await self._keep_slots()
            else:
                self.reservations.clear()
            if set(self.reservations) != before:
                logger.info("relays: %s", ", ".join(self.reservations) or "none")
                self._report.emit("relays", relays=sorted(self.reservations))
                await self.announce()
            self._warn_if_alone()
            short = self.active and len(self.reservations) < self.slots
            with trio.move_on_after(CHECK_SHORT if short else CHECK_FULL):
                await self._wake.wait()
            self._wake = trio.Event()

    def _warn_if_alone(self) -> None:
        if not self.active or self.reservations:
            self._without_since = None
            return
        now = time.monotonic()
        if self._without_since is None:
            self._without_since = now
        elif now - self._without_since > NO_RELAY_WARNING_S and not self._warned:
            self._warned = True
            logger.warning(
                "this node is not reachable from outside and no peer relays for it: peers "
                "behind NAT cannot reach it (set [net] relay_service = true on a public peer, "
                "e.g. a bootstrap node)"
            )

    async def _keep_slots(self) -> None:
        now = time.time()
        for pid, r in list(self.reservations.items()):
            gone = pid not in self._peers  # a reservation lives as long as our connection
            if gone or (r.expires - now < RENEW_BEFORE_S and not await self.reserve(pid)):
                del self.reservations[pid]
        for pid in self._candidates():
            if len(self.reservations) >= self.slots:
                break
            await self.reserve(pid)

    def _candidates(self) -> list[str]:
        """Directly connected peers that may relay, bootstrap peers first (they are asked even
        before they advertise the service: a relay turns it on once it knows it is public)."""
        store = self._host.get_peerstore()
        swarm = self._host.get_network()
        now = time.monotonic()
        out = []
        for pid in self._peers.connected:
            if pid in self.reservations or self._retry.get(pid, (0.0, 0.0))[0] > now:
                continue
            peer = ID.from_base58(pid)
            conns = swarm.get_connections(peer)
            if not conns or all(is_relayed(c) for c in conns):
                continue
            try:
                offers = HOP in store.get_protocols(peer)
            except Exception:
                offers = False
            if offers or pid in self._bootstrap:
                out.append(pid)
        return sorted(out, key=lambda p: (p not in self._bootstrap, random.random()))

    async def reserve(self, pid: str) -> bool:
        """Ask relay ``pid`` for a slot (or renew ours); True when it granted one."""
        peer = ID.from_base58(pid)
        stream = None
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                stream = await self._host.new_stream(peer, [HOP])
                await write_delimited_msg(
                    stream,
                    HopMessage(
                        type=HopMessage.RESERVE,
                        peer=CircuitPeerId(id=self._host.get_id().to_bytes()),
                    ),
                )
                resp = await read_delimited_msg(stream, HopMessage)
            if not ok(resp.status):
                raise NetError(f"the relay answered: {status_name(resp.status)}")
        except Exception as exc:
            self._failed(pid, exc)
            return False
        finally:
            if stream is not None:
                with trio.move_on_after(1.0):
                    with contextlib.suppress(Exception):
                        await stream.close()
        addrs = self._relay_addrs(peer, [bytes(a) for a in resp.reservation.addrs])
        self.reservations[pid] = Reservation(pid, float(resp.reservation.expire), addrs)
        self._retry.pop(pid, None)
        return True

    def _failed(self, pid: str, exc: Exception) -> None:
        _, delay = self._retry.get(pid, (0.0, RETRY_FIRST))
        self._retry[pid] = (time.monotonic() + delay, min(delay * 2, RETRY_MAX))
        logger.debug("no reservation on %s (%s); again in %.0fs", pid, exc, delay)

    def _relay_addrs(self, relay: ID, offered: list[bytes]) -> list[multiaddr.Multiaddr]:
        """Our relayed addresses through ``relay``: the addresses it says it has, else the one
        we reached it at."""
        suffix = f"/p2p/{relay.to_base58()}{CIRCUIT}"
        out = []
        for raw in offered:
            try:
                addr = multiaddr.Multiaddr(raw)
            except Exception:
                continue
            head = str(addr).split("/p2p/", 1)[0]
            out.append(multiaddr.Multiaddr(head + suffix))
        if not out:
            for conn in self._host.get_network().get_connections(relay):
                for addr in conn.get_transport_addresses() or ():
                    out.append(multiaddr.Multiaddr(str(addr).split("/p2p/", 1)[0] + suffix))
        return list({str(a): a for a in out}.values())

    async def announce(self) -> None:
        """Tell every connected peer our new addresses (identify push), so that the DHT and
        our peers hand out the relayed ones."""
        with trio.move_on_after(REQUEST_TIMEOUT):
            try:
                await push_identify_to_peers(self._host)
            except Exception as exc:
                logger.debug("identify push failed: %s", exc)

    # --------------------------------------------------------------------------- dials

    async def dial(self, peer: ID, addrs: Sequence[Any]) -> None:
        """Connect to ``peer`` through the first relay in ``addrs`` that puts us through."""
        errors = []
        me = self._host.get_id()
        for addr in addrs:
            parts = split_circuit(addr)
            if parts is None or parts[1] in (me, peer):
                continue
            relay_addr, relay = parts
            try:
                with trio.fail_after(DIAL_TIMEOUT):
                    await self._connect(peer, relay, relay_addr)
                return
            except trio.TooSlowError:
                errors.append(f"{relay.to_base58()[-8:]}: timed out")
            except Exception as exc:
                errors.append(f"{relay.to_base58()[-8:]}: {exc}")
        raise NetError(f"no relay put us through to {peer}: {'; '.join(errors) or 'none known'}")

    async def _connect(self, peer: ID, relay: ID, relay_addr: multiaddr.Multiaddr) -> None:
        if relay.to_base58() not in self._peers:
            head = multiaddr.Multiaddr(str(relay_addr).split("/p2p/", 1)[0])
            await self._peers.dial(PeerInfo(relay, [head]))
        stream = await self._host.new_stream(relay, [HOP])
        try:
            await write_delimited_msg(
                stream, HopMessage(type=HopMessage.CONNECT, peer=CircuitPeerId(id=peer.to_bytes()))
            )
            resp = await read_delimited_msg(stream, HopMessage)
            if not ok(resp.status):
                raise NetError(f"the relay answered: {status_name(resp.status)}")
            data, seconds = limit_of(resp)
            circuit = Circuit(relay.to_base58(), peer.to_base58(), data, seconds)
            await self._protocol.upgrade(stream, circuit, outbound=True)
        except BaseException:
            with trio.move_on_after(1.0) as cleanup:
                cleanup.shield = True
                with contextlib.suppress(Exception):
                    await stream.reset()
            raise
