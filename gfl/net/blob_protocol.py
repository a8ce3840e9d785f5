"""The ``/gfl/blob/1.0.0`` stream protocol: fetch a blob by its sha256 from one peer.

Request:  version (1 byte, = 1) | sha256 (32 bytes)
Response: status (1 byte: 0 found, 1 not found, 2 busy) | size (8 bytes, big endian)
          | size bytes of data

A batch asks for several blobs on one stream (a sharded round's aggregator wants one
piece of each of its shards from every author: one stream per author, not one per piece):

Request:  version (1 byte, = 2) | count (1 byte, 1..MAX_BATCH) | count sha256s
Response: one answer as above per hash, in the request's order; a busy provider answers
          one busy header for the whole batch.

The size comes first so that the requester refuses an oversize blob before it
allocates or reads anything; the hash is checked before the bytes are used.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import struct
from collections.abc import AsyncIterable, Callable, Sequence
from typing import Any

import trio

from gfl.net.errors import BlobError, BusyError, RelayLimitError

logger = logging.getLogger(__name__)

PROTOCOL = "/gfl/blob/1.0.0"
VERSION = 1
BATCH = 2  # the request version of a batch
MAX_BATCH = 64  # hashes in one batch
FOUND, NOT_FOUND, BUSY = 0, 1, 2
_HEADER = struct.Struct(">BQ")
READ_CHUNK = 1 << 20
MIN_PIECE = 64 << 10  # smaller reads are gathered before they are kept
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


async def request_blob(
    stream: Any,
    h: bytes,
    *,
    max_size: int,
    on_piece: Callable[[bytes], None] | None = None,
    budget: int | None = None,
) -> list[bytes]:
    """Ask for ``h`` on an open stream; returns the blob in pieces, as they arrived:
    their concatenation's sha256 is ``h`` (checked). Joining them costs a copy of the
    whole blob, which a caller that only stores it does not need. ``on_piece`` gets
    each piece as it is kept (to store it while the rest arrives; its bytes are not
    checked yet); an exception from it ends the request.

    Raises `BlobError` for not found, busy, oversize, a short read or a hash
    mismatch, `RelayLimitError` for a blob over ``budget`` (what the relay between us
    still carries), and ``trio.TooSlowError`` when the provider stalls. The caller owns
    the overall timeout.
    """
    await stream.write(bytes([VERSION]) + h)
    status, size = await _read_header(stream)
    if status == NOT_FOUND:
        raise BlobError("the peer does not have this blob")
    return await _read_blob(stream, h, size, max_size=max_size, on_piece=on_piece, budget=budget)


async def request_blobs(
    stream: Any, hashes: Sequence[bytes], *, max_size: int
) -> dict[bytes, list[bytes]]:
    """Ask for several blobs on an open stream (a batch); returns those the peer has, each
    in pieces as `request_blob` does (each checked against its hash), by hash. A blob the
    peer does not have is left out. Raises as `request_blob` does, for the first answer
    that is busy, malformed, oversize or wrong: the rest of the stream is then unusable.
    """
    if not 1 <= len(hashes) <= MAX_BATCH or any(len(h) != 32 for h in hashes):
        raise BlobError(f"a batch asks for 1..{MAX_BATCH} hashes of 32 bytes")
    await stream.write(bytes([BATCH, len(hashes)]) + b"".join(hashes))
    out: dict[bytes, list[bytes]] = {}
    for h in hashes:
        status, size = await _read_header(stream)
        if status == FOUND:
            out[bytes(h)] = await _read_blob(stream, h, size, max_size=max_size)
    return out


async def _read_header(stream: Any) -> tuple[int, int]:
    """One answer's (status, size): found or not found; raises for busy or unknown."""
    with trio.fail_after(STALL_TIMEOUT):
        status, size = _HEADER.unpack(await read_exact(stream, _HEADER.size))
    if status == BUSY:
        raise BusyError("the peer is busy serving other blobs")
    if status not in (FOUND, NOT_FOUND):
        raise BlobError(f"the peer answered with unknown status {status}")
    return status, size


async def _read_blob(
    stream: Any,
    h: bytes,
    size: int,
    *,
    max_size: int,
    on_piece: Callable[[bytes], None] | None = None,
    budget: int | None = None,
) -> list[bytes]:
    """The ``size`` bytes of a found answer, as `request_blob` returns them."""
    if size > max_size:
        raise BlobError(f"the peer declares a blob of {size} bytes, over the {max_size}-byte limit")
    if budget is not None and size > budget:
        raise RelayLimitError(
            f"a blob of {size} bytes is over what the relay still carries ({budget} bytes)"
        )
    # Each piece is kept as it arrives (no buffer grown, then copied) and hashed while it
    # is still in the cache, right after its decryption on this thread: a piece is at most
    # READ_CHUNK bytes, so well under a millisecond of hashing, like its decryption. Small
    # reads are gathered into one piece: a list of tiny ones costs many times their bytes.
    pieces: list[bytes] = []

    def keep(piece: bytes) -> None:
        pieces.append(piece)
        if on_piece is not None:
            on_piece(piece)

    small = bytearray()
    hasher = hashlib.sha256()
    got = 0
    # one scope whose deadline moves with each chunk: cheaper than a fail_after per read
    with trio.move_on_after(STALL_TIMEOUT) as stall:
        while got < size:
            chunk = await stream.read(min(READ_CHUNK, size - got))
            if not chunk:
                raise BlobError("the peer closed the stream before sending the whole blob")
            if len(chunk) > size - got:
                raise BlobError("the peer sent more bytes than it declared")
            hasher.update(chunk)
            got += len(chunk)
            stall.deadline = trio.current_time() + STALL_TIMEOUT
            if small or len(chunk) < MIN_PIECE:
                small += chunk
                if len(small) < MIN_PIECE:
                    continue
                chunk = bytes(small)
                small.clear()
            keep(chunk)
    if stall.cancelled_caught:
        raise trio.TooSlowError
    if hasher.digest() != bytes(h):
        raise BlobError("the blob's bytes do not match its hash; refused")
    if small:
        keep(bytes(small))
    return pieces


async def refuse(stream: Any, *, busy: bool = False) -> None:
    """Answer that we do not have the blob, or that we are busy."""
    await stream.write(_HEADER.pack(BUSY if busy else NOT_FOUND, 0))


async def respond(stream: Any, size: int, pieces: AsyncIterable[bytes]) -> None:
    """Answer found: the header, then the ``size`` bytes that ``pieces`` yields."""
    header = _HEADER.pack(FOUND, size)
    sent = 0
    async for piece in pieces:
        sent += len(piece)
        if sent > size:
            raise BlobError("more bytes to send than the blob's size")
        await stream.write(header + piece if header else piece)
        header = b""
    if sent != size:
        raise BlobError(f"sent {sent} of the blob's {size} bytes")
    if header:  # an empty blob
        await stream.write(header)


async def read_request(stream: Any) -> list[bytes]:
    """The hashes a requester asks for (one, or a batch's, in order); raises `BlobError`
    on a malformed request."""
    with trio.fail_after(STALL_TIMEOUT):
        version = (await read_exact(stream, 1))[0]
        if version == VERSION:
            return [await read_exact(stream, 32)]
        if version != BATCH:
            raise BlobError(f"unsupported blob protocol version {version}")
        count = (await read_exact(stream, 1))[0]
        if not 1 <= count <= MAX_BATCH:
            raise BlobError(f"a batch asks for 1..{MAX_BATCH} blobs, not {count}")
        req = await read_exact(stream, 32 * count)
    return [req[i : i + 32] for i in range(0, len(req), 32)]
