"""The ``/gfl/blob/1.0.0`` stream protocol: fetch a blob by its sha256 from one peer.

Request:  version (1 byte, = 1) | sha256 (32 bytes)
Response: status (1 byte: 0 found, 1 not found, 2 busy) | size (8 bytes, big endian)
          | size bytes of data

The size comes first so that the requester refuses an oversize blob before it
allocates or reads anything; the hash is checked before the bytes are used.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import struct
from typing import Any

import trio

from gfl.net.errors import BlobError

logger = logging.getLogger(__name__)

PROTOCOL = "/gfl/blob/1.0.0"
VERSION = 1
FOUND, NOT_FOUND, BUSY = 0, 1, 2
_HEADER = struct.Struct(">BQ")
READ_CHUNK = 1 << 20
WRITE_CHUNK = 1 << 20
STALL_TIMEOUT = 10.0  # no byte for this long: the provider is gone


async def read_exact(stream: Any, n: int) -> bytes:
    """Read exactly ``n`` bytes (n is small: headers only)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.read(n - len(buf))
        if not chunk:
            raise BlobError("the peer closed the stream early")
        buf += chunk
    return bytes(buf)


async def abort(stream: Any) -> None:
    """Reset a stream without ever waiting long: a peer that stopped reading can hang close."""
    with trio.move_on_after(1.0) as scope:
        scope.shield = True
        with contextlib.suppress(Exception):
            await stream.reset()


async def request_blob(stream: Any, h: bytes, *, max_size: int) -> bytes:
    """Ask for ``h`` on an open stream; returns bytes whose sha256 is ``h``.

    Raises `BlobError` for not found, busy, oversize, a stall, a short read or a
    hash mismatch. The caller owns the overall timeout.
    """
    await stream.write(bytes([VERSION]) + h)
    with trio.fail_after(STALL_TIMEOUT):
        status, size = _HEADER.unpack(await read_exact(stream, _HEADER.size))
    if status == NOT_FOUND:
        raise BlobError("the peer does not have this blob")
    if status == BUSY:
        raise BlobError("the peer is busy serving other blobs")
    if status != FOUND:
        raise BlobError(f"the peer answered with unknown status {status}")
    if size > max_size:
        raise BlobError(f"the peer declares a blob of {size} bytes, over the {max_size}-byte limit")
    data = bytearray()
    hasher = hashlib.sha256()
    while len(data) < size:
        with trio.fail_after(STALL_TIMEOUT):
            chunk = await stream.read(min(READ_CHUNK, size - len(data)))
        if not chunk:
            raise BlobError("the peer closed the stream before sending the whole blob")
        if len(chunk) > size - len(data):
            raise BlobError("the peer sent more bytes than it declared")
        hasher.update(chunk)
        data += chunk
    if hasher.digest() != bytes(h):
        raise BlobError("the blob's bytes do not match its hash; refused")
    return bytes(data)


async def respond(stream: Any, data: bytes | None, *, busy: bool = False) -> None:
    """Write the response header and the data (``None``: not found)."""
    if busy:
        await stream.write(_HEADER.pack(BUSY, 0))
        return
    if data is None:
        await stream.write(_HEADER.pack(NOT_FOUND, 0))
        return
    view = memoryview(data)
    await stream.write(_HEADER.pack(FOUND, len(data)) + bytes(view[:WRITE_CHUNK]))
    for off in range(WRITE_CHUNK, len(data), WRITE_CHUNK):
        await stream.write(bytes(view[off : off + WRITE_CHUNK]))


async def read_request(stream: Any) -> bytes:
    """The hash a requester asks for; raises `BlobError` on a malformed request."""
    with trio.fail_after(STALL_TIMEOUT):
        req = await read_exact(stream, 33)
    if req[0] != VERSION:
        raise BlobError(f"unsupported blob protocol version {req[0]}")
    return req[1:]
