"""Noise tuned for bulk transfers, installed per host through ``new_host(sec_opt=...)``.

The handshake is the library's own; what changes is the read-writer of the
secured connection it returns (`TunedNoiseReadWriter`):

- **Reads ahead.** The library reads each Noise message's 2-byte length and then
  its body with separate socket reads. `ReadAheadPacketReader` reads up to
  `READ_AHEAD` bytes at a time into a buffer and cuts messages out of it. The
  library's handshake reads exactly each of its messages, so no byte is buffered
  yet when the transport reader takes over.
- **One send per write.** The library splits a write larger than one Noise
  message and sends each piece with its own socket write; `TunedNoiseReadWriter`
  encrypts the pieces in order and sends them with one write. The bytes on the
  wire are the same.

A GFL host offers only this Noise: the library's default list also offers TLS,
SECIO and plaintext, which GFL peers never choose and a plaintext session would
not authenticate the peer id that a node's gossip and blob requests rely on.
"""

from __future__ import annotations

from typing import Any, cast

from libp2p.abc import IRawConnection, ISecureConn
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol, TSecurityOptions
from libp2p.io.exceptions import IncompleteReadError
from libp2p.peer.id import ID
from libp2p.security.noise.io import (
    MAX_PLAINTEXT_LENGTH,
    SIZE_NOISE_MESSAGE_LEN,
    NoisePacketReadWriter,
    NoiseTransportReadWriter,
)
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.secure_session import SecureSession

READ_AHEAD = 256 * 1024
_LEN = SIZE_NOISE_MESSAGE_LEN


class ReadAheadPacketReader(NoisePacketReadWriter):
    """Noise packets cut out of reads of up to `READ_AHEAD` bytes."""

    def __init__(self, read_write_closer: Any) -> None:
        super().__init__(read_write_closer)
        self._buf = bytearray()

    async def read_msg(self) -> bytes:
        buf = self._buf
        while len(buf) < _LEN:
            await self._read_ahead(_LEN)
        end = _LEN + int.from_bytes(buf[:_LEN], "big")
        while len(buf) < end:
            await self._read_ahead(end)
        with memoryview(buf) as view:
            msg = bytes(view[_LEN:end])
        del buf[:end]
        return msg

    async def _read_ahead(self, wanted: int) -> None:
        chunk = await self.read_write_closer.read(max(READ_AHEAD, wanted - len(self._buf)))
        if not chunk:
            raise IncompleteReadError(
                f"connection closed with {len(self._buf)} of {wanted} bytes of a Noise message",
                expected_bytes=wanted,
                received_bytes=len(self._buf),
            )
        self._buf += chunk


class TunedNoiseReadWriter(NoiseTransportReadWriter):
    """The transport phase's read-writer: reads ahead, one socket write per write."""

    def __init__(self, conn: IRawConnection, noise_state: Any) -> None:
        super().__init__(conn, noise_state)
        self.read_writer = ReadAheadPacketReader(conn)

    async def write_msg(self, msg: bytes, prefix_encoded: bool = False) -> None:
        step = MAX_PLAINTEXT_LENGTH
        if len(msg) <= step or prefix_encoded:
            return await super().write_msg(msg, prefix_encoded)
        parts = []
        for off in range(0, len(msg), step):
            sealed = self.encrypt(bytes(msg[off : off + step]))
            parts.append(len(sealed).to_bytes(_LEN, "big"))
            parts.append(sealed)
        await self.read_writer.read_write_closer.write(b"".join(parts))


class TunedNoiseTransport(NoiseTransport):
    """The library's Noise (XX handshake), its sessions read and written by
    `TunedNoiseReadWriter`."""

    async def secure_inbound(self, conn: IRawConnection) -> ISecureConn:
        return _tuned(await super().secure_inbound(conn))

    async def secure_outbound(self, conn: IRawConnection, peer_id: ID) -> ISecureConn:
        return _tuned(await super().secure_outbound(conn, peer_id))


def _tuned(session: ISecureConn) -> ISecureConn:
    """``session`` reading and writing through `TunedNoiseReadWriter` from now on (it has
    not been used yet: the handshake has just returned it)."""
    if isinstance(session, SecureSession) and type(session.conn) is NoiseTransportReadWriter:
        stock = session.conn
        raw = cast(IRawConnection, stock.conn)  # the connection the handshake ran on
        session.conn = TunedNoiseReadWriter(raw, stock.noise_state)
    return session


def security_options(key_pair: KeyPair) -> TSecurityOptions:
    """``new_host``'s ``sec_opt``: tuned Noise only, with a fresh static X25519 key."""
    noise_key = create_x25519_key_pair().private_key
    return {TProtocol(NOISE_PROTOCOL_ID): TunedNoiseTransport(key_pair, noise_key)}
