"""Circuit relay v2: relaying for others (the hop service) and the relayed connections we hold.

`RelayProtocol` is py-libp2p 0.8.1's `CircuitV2Protocol` with three parts replaced:

- **The hop handler** answers one request per stream, as the spec has it. The library's
  keeps reading the stream after each answer and, when the client closes it, logs an
  error and writes a status into the closed stream: once per reservation.
- **The forwarding loop** (`_relay_data`) closes only its own circuit's streams. The
  library's looks circuits up by peer, so when two peers relay to the same node, the end of
  one circuit resets the other. Ours also counts what it forwards and stops a circuit at its
  byte and duration limits.
- **The stop handler** (a relayed connection arriving) keeps the limits the relay sent and
  counts the circuit's bytes (`Circuit`), so that blob transfers can stay within them.

The hop service is offered only while `serve` is on: GFL turns it on for a node with
``[net] relay_service`` once it knows it is publicly reachable.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio
from libp2p.connection_types import ConnectionType
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage, Limit, StopMessage
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.utils import (
    maybe_consume_signed_record,
    read_delimited_msg,
)

from gfl.net.paths import CountingStream, PathBytes, is_relayed, stream_relayed
from gfl.net.traffic import Reporter

logger = logging.getLogger(__name__)

MESSAGE_TIMEOUT = 10.0
FORWARD_READ = 256 << 10
STREAM_CLOSE_TIMEOUT = 2.0


@dataclass(frozen=True)
class RelaySettings:
    """``[net] relay_service`` and what a relay lends each peer (0: no limit)."""

    serve: bool = False
    max_reservations: int = 32
    max_circuits: int = 8  # open at once, per reserved peer
    circuit_bytes: int = 64 << 20  # both directions together
    circuit_s: int = 600
    reservation_s: int = 3600

    def limits(self) -> RelayLimits:
        return RelayLimits(
            duration=self.circuit_s,
            data=self.circuit_bytes,
            max_circuit_conns=self.max_circuits,
            max_reservations=self.max_reservations,
            reservation_ttl=self.reservation_s,
        )


@dataclass
class Circuit:
    """One relayed connection of ours: its relay, its limits, its bytes so far."""

    relay: str
    peer: str
    data_limit: int  # 0: none
    duration_s: int  # 0: none
    opened: float = field(default_factory=time.monotonic)
    bytes_in: int = 0
    bytes_out: int = 0

    def budget(self) -> int | None:
        """Bytes the relay still carries on this circuit (None: no limit)."""
        if not self.data_limit:
            return None
        return max(0, self.data_limit - self.bytes_in - self.bytes_out)

    def seconds_left(self) -> float | None:
        if not self.duration_s:
            return None
        return max(0.0, self.duration_s - (time.monotonic() - self.opened))


def circuit_addr(relay: str, peer: str) -> multiaddr.Multiaddr:
    """The address a relayed connection from ``relay`` to ``peer`` goes by."""
    return multiaddr.Multiaddr(f"/p2p/{relay}/p2p-circuit/p2p/{peer}")


class RelayProtocol(CircuitV2Protocol):
    """The hop service (while `serve` is on) and the stop side of relayed connections."""

    def __init__(self, host: Any, settings: RelaySettings, paths: PathBytes, report: Reporter):
        super().__init__(host, limits=settings.limits(), allow_hop=False)
        self.settings = settings
        self.serving = False
        self._paths = paths
        self._report = report
        # our relayed connections, by their muxed connection
        self._circuits: weakref.WeakKeyDictionary[Any, Circuit] = weakref.WeakKeyDictionary()
        self.circuits_served = 0

    # ------------------------------------------------------------------ hop (relaying)

    def serve(self, on: bool) -> None:
        """Offer the hop service (reservations and circuits for others), or stop offering it."""
        if on == self.serving:
            return
        self.serving = on
        if on:
            self.host.set_stream_handler(HOP, self._handle_hop_stream)
        else:
            self.host.remove_stream_handler(HOP)
        logger.info("relay service %s", "on" if on else "off")
        self._report.emit("relay_service", serving=on)

    def service_stats(self) -> dict[str, Any]:
        manager = self.resource_manager
        manager._clean_expired()  # the library only cleans when a reservation arrives
        return {
            "serving": self.serving,
            "reservations": len(manager._reservations),
            "circuits_served": self.circuits_served,
            "limits": {
                "reservations": self.settings.max_reservations,
                "circuits_per_peer": self.settings.max_circuits,
                "circuit_bytes": self.settings.circuit_bytes,
                "circuit_s": self.settings.circuit_s,
            },
        }

    async def _handle_hop_stream(self, stream: Any) -> None:
        """One request (RESERVE or CONNECT) per stream."""
        remote = stream.muxed_conn.peer_id
        try:
            if not self.serving or stream_relayed(stream):
                # spec: no reservations or circuits over a relayed connection
                await self._send_status(stream, StatusCode.PERMISSION_DENIED, "refused")
                return
            with trio.fail_after(MESSAGE_TIMEOUT):
                msg = await read_delimited_msg(stream, HopMessage)
            if msg.HasField("senderRecord") and not maybe_consume_signed_record(
                msg, self.host, remote
            ):
                return
            if msg.type == HopMessage.RESERVE:
                await self._handle_reserve(stream, msg)
            elif msg.type == HopMessage.CONNECT:
                self.circuits_served += 1
                await self._handle_connect(stream, msg)
                return  # _relay_data closed the streams
            else:
                await self._send_status(stream, StatusCode.UNEXPECTED_MESSAGE, "unexpected")
        except Exception as exc:
            logger.debug("hop request from %s failed: %s", remote, exc)
        finally:
            await self._close_quietly(stream)

    async def _relay_data(
        self,
        src_stream: Any,
        dst_stream: Any,
        peer_id: ID,
        deadline: float | None = None,
        circuit_data_limit: list[int] | None = None,
    ) -> None:
        """Forward one direction of a circuit until it ends or meets a limit."""
        paths = self._paths
        try:
            while True:
                wait = float("inf") if deadline is None else deadline - time.monotonic()
                with trio.move_on_after(max(0.0, wait)) as timer:
                    try:
                        data = await src_stream.read(FORWARD_READ)
                    except StreamEOF:
                        data = b""
                if timer.cancelled_caught:
                    logger.info("circuit from %s ended: its duration limit", peer_id)
                    break
                if not data:
                    with trio.move_on_after(STREAM_CLOSE_TIMEOUT):
                        await dst_stream.close()  # half-close: the other way may go on
                    return
                if circuit_data_limit is not None:
                    if len(data) > circuit_data_limit[0]:
                        logger.info("circuit from %s ended: its data limit", peer_id)
                        break
                    circuit_data_limit[0] -= len(data)
                paths.served_in += len(data)
                with trio.fail_after(self.write_timeout):
                    await dst_stream.write(data)
                paths.served_out += len(data)
        except Exception as exc:
            logger.debug("relaying from %s ended: %s", peer_id, exc)
        # a limit or an error: both ends learn at once (the other direction's read fails)
        for s in (src_stream, dst_stream):
            with trio.move_on_after(1.0):
                with contextlib.suppress(Exception):
                    await s.reset()

    # ------------------------------------------------------------- stop (relayed to us)

    async def _handle_stop_stream(self, stream: Any) -> None:
        """A peer reaches us through a relay: accept, then upgrade the circuit."""
        relay = stream.muxed_conn.peer_id
        try:
            with trio.fail_after(MESSAGE_TIMEOUT):
                msg = await read_delimited_msg(stream, StopMessage)
            if msg.type != StopMessage.CONNECT:
                await self._send_stop_status(stream, StatusCode.UNEXPECTED_MESSAGE, "expected")
                await self._close_quietly(stream)
                return
            peer = ID(msg.peer.id)
            await self._send_stop_status(stream, StatusCode.OK, "ok")
            circuit = Circuit(
                relay.to_base58(),
                peer.to_base58(),
                msg.limit.data if msg.HasField("limit") else 0,
                msg.limit.duration if msg.HasField("limit") else 0,
            )
            await self.upgrade(stream, circuit, outbound=False)
        except Exception as exc:
            logger.debug("relayed connection through %s refused: %s", relay, exc)
            await self._close_quietly(stream)

    async def upgrade(self, stream: Any, circuit: Circuit, *, outbound: bool) -> None:
        """Make a circuit's stream a connection of the swarm (secured, muxed, counted)."""
        paths = self._paths

        def add_in(n: int) -> None:
            circuit.bytes_in += n
            paths.relayed_in += n

        def add_out(n: int) -> None:
            circuit.bytes_out += n
            paths.relayed_out += n

        addr = circuit_addr(circuit.relay, circuit.peer)
        raw = RawConnection(
            CountingStream(stream, add_in, add_out),
            initiator=outbound,
            connection_type=ConnectionType.RELAYED,
            addresses=[addr],
        )
        if outbound:
            swarm_conn = await self.host.upgrade_outbound_connection(
                raw, ID.from_base58(circuit.peer)
            )
            muxed = swarm_conn.muxed_conn
        else:
            muxed = await self.host.upgrade_inbound_connection(raw, addr)
        self._circuits[muxed] = circuit
        self._report.emit(
            "relayed_connection",
            peer_id=circuit.peer,
            relay=circuit.relay,
            direction="outbound" if outbound else "inbound",
        )

    def circuit_to(self, peer: ID) -> Circuit | None:
        """The circuit new streams to ``peer`` use: None when a direct connection exists
        (the swarm picks direct ones first) or when we have no connection."""
        conns = self.host.get_network().get_connections(peer)
        if not conns or any(not is_relayed(c) for c in conns):
            return None
        for conn in conns:
            circuit = self._circuits.get(getattr(conn, "muxed_conn", None))
            if circuit is not None:
                return circuit
        return None

    async def _close_quietly(self, stream: Any) -> None:
        with trio.move_on_after(STREAM_CLOSE_TIMEOUT):
            with contextlib.suppress(Exception):
                await stream.close()


def limit_of(msg: Any) -> tuple[int, int]:
    """(data bytes, seconds) of a relay's STATUS answer; 0 where it sets none."""
    if not msg.HasField("limit"):
        return 0, 0
    limit: Limit = msg.limit
    return int(limit.data), int(limit.duration)


def ok(status: int) -> bool:
    """Whether a relay's status code is OK."""
    return int(status) == int(StatusCode.OK)


def status_name(status: int) -> str:
    """A relay's status code in words, for an error message."""
    try:
        return StatusCode(int(status)).name.lower().replace("_", " ")
    except ValueError:
        return f"status {int(status)}"
