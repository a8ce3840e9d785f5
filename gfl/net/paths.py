"""Direct and relayed connections: which kind a connection is, and the bytes each kind carried.

A relayed connection (circuit relay v2) is a secure session tunnelled through a stream on
our direct connection to the relay, so its bytes cross that TCP connection too. To count
each byte once, the TCP connections are counted on the wire (`count_tcp`: a counting
wrapper under each raw connection this host dials or accepts), the relayed ones where the
tunnel starts (`CountingStream` under the circuit's raw connection), and a relay counts
what it forwards for others; direct bytes are then the wire bytes less the other two
(`PathBytes.direct`). The tunnel's own framing on the wire (Yamux headers, Noise tags,
well under 0.1 %) stays in the direct figure.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from libp2p.abc import IMuxedConn
from libp2p.connection_types import ConnectionType
from libp2p.io.abc import ReadWriteCloser
from libp2p.transport.tcp.tcp import TCP

CIRCUIT = "/p2p-circuit"


@dataclass
class PathBytes:
    """Bytes in and out, on the wire (TCP), through our circuits, and relayed for others."""

    wire_in: int = 0
    wire_out: int = 0
    relayed_in: int = 0
    relayed_out: int = 0
    served_in: int = 0  # forwarded for others, as a relay
    served_out: int = 0

    def as_dict(self) -> dict[str, dict[str, int]]:
        """``{"direct": {"in", "out"}, "relayed": {...}, "relay_service": {...}}``."""
        return {
            "direct": {
                "in": max(0, self.wire_in - self.relayed_in - self.served_in),
                "out": max(0, self.wire_out - self.relayed_out - self.served_out),
            },
            "relayed": {"in": self.relayed_in, "out": self.relayed_out},
            "relay_service": {"in": self.served_in, "out": self.served_out},
        }


class CountingStream(ReadWriteCloser):
    """A raw byte stream that adds what it reads and writes to two counters."""

    def __init__(
        self, inner: Any, count_in: Callable[[int], None], count_out: Callable[[int], None]
    ):
        self._inner = inner
        self._count_in = count_in
        self._count_out = count_out

    async def read(self, n: int | None = None) -> bytes:
        data: bytes = await self._inner.read(n)
        self._count_in(len(data))
        return data

    async def write(self, data: bytes) -> None:
        await self._inner.write(data)
        self._count_out(len(data))

    async def close(self) -> None:
        await self._inner.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        addr: tuple[str, int] | None = self._inner.get_remote_address()
        return addr

    def __getattr__(self, name: str) -> Any:  # the rest of the wrapped stream's interface
        return getattr(self._inner, name)


def count_tcp(host: Any, counters: PathBytes) -> Callable[[Any], Any]:
    """Count the wire bytes of every TCP connection ``host`` dials; returns the wrapper for
    the connections it accepts (`gfl.net.peers.Peers.gate_inbound` applies it).

    The dial methods of this host's TCP transport are wrapped on the instance (another
    host's transport, and the library's class, are untouched).
    """

    def add_in(n: int) -> None:
        counters.wire_in += n

    def add_out(n: int) -> None:
        counters.wire_out += n

    def wrap_stream(rwc: Any) -> Any:
        if isinstance(rwc, IMuxedConn):  # a transport with its own muxer (QUIC): not TCP
            return rwc
        return CountingStream(rwc, add_in, add_out)

    def wrap_dial(dial: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def counted(*args: Any) -> Any:
            raw = await dial(*args)
            if hasattr(raw, "stream") and not isinstance(raw, IMuxedConn):
                raw.stream = wrap_stream(raw.stream)
            return raw

        return counted

    for transport in host.get_network().transport_manager.get_transports():
        if isinstance(transport, TCP):
            transport.dial = wrap_dial(transport.dial)  # type: ignore[method-assign,assignment]
            transport.dial_with_source = wrap_dial(  # type: ignore[method-assign,assignment]
                transport.dial_with_source
            )
    return wrap_stream


def is_relayed(conn: Any) -> bool:
    """Whether a swarm connection (or a stream's muxed connection) runs through a relay."""
    try:
        if conn.get_connection_type() == ConnectionType.RELAYED:
            return True
    except Exception:
        pass
    try:
        return any(CIRCUIT in str(a) for a in conn.get_transport_addresses() or ())
    except Exception:
        return False


def stream_relayed(stream: Any) -> bool:
    """Whether a stream runs over a relayed connection."""
    return is_relayed(getattr(stream, "muxed_conn", None))


def is_circuit_addr(addr: Any) -> bool:
    return CIRCUIT in str(addr)
