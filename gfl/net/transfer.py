"""Blob transfers over ``/gfl/blob/1.0.0`` (`gfl.net.blob_protocol`): fetching and serving.

`BlobClient` fetches a blob from the first provider that delivers it (the ones
named, then the DHT's), writing it to the store while it arrives; a fetch of a
blob another task is already fetching waits for that one. Providers we reach
directly are asked first, those only reachable through a relay last, and only for
a blob the relay still carries (`circuit_to`); a larger one is left to another
holder. `BlobServer` streams stored blobs to whoever asks, a few at a time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import suppress
from typing import Any

import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from gfl.net import blob_protocol
from gfl.net.blobs import BlobReader, BlobStore, BlobWriter
from gfl.net.errors import BlobError, NetError, RelayLimitError
from gfl.net.peers import Peers
from gfl.net.providers import Providers
from gfl.net.relay import Circuit
from gfl.net.traffic import Reporter

logger = logging.getLogger(__name__)

MAX_CONCURRENT_SERVES = 8
SERVE_PIECE = 2 << 20  # a served blob is read from disk in pieces this big...
SERVE_READ_AHEAD = 2  # ...this many ahead of the send (a thread hop per piece costs ms)
SMALL_BLOB = 1 << 20  # a blob this small is read or stored whole, in one thread hop
BATCH_READ = 8 << 20  # a batch's small blobs are read together, up to this many bytes
CLOSE_TIMEOUT = 1.0
# What a blob may take of a circuit's remaining bytes: the circuit also carries Noise and
# Yamux framing (under 0.1 %) and whatever else flows meanwhile (gossip).
RELAY_SHARE = 0.95
PATH_ORDER = {"direct": 0, None: 1, "relayed": 2}  # not connected yet: between the two


class Flight:
    """A blob fetch in progress; `pieces` is set once it succeeded."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.pieces: list[bytes] | None = None


class BlobClient:
    """Fetches blobs by hash into the store."""

    def __init__(
        self,
        host: Any,
        blobs: BlobStore,
        peers: Peers,
        providers: Providers,
        report: Reporter,
        circuit_to: Callable[[ID], Circuit | None] = lambda peer: None,
    ) -> None:
        self._host = host
        self._blobs = blobs
        self._peers = peers
        self._providers = providers
        self._report = report
        self._circuit_to = circuit_to
        self.flights: dict[bytes, Flight] = {}  # blob hash -> the fetch in progress

    async def fetch(
        self,
        h: bytes,
        providers: Sequence[str] = (),
        *,
        max_size: int,
        timeout: float,
        tag: str | None = None,
    ) -> bytes:
        """``Network.fetch_blob``: the blob's bytes, from the store or a provider."""
        pieces = await self._obtain(bytes(h), providers, max_size, timeout)
        await self._tag(h, tag)
        if len(pieces) <= 1:
            return pieces[0] if pieces else b""
        return await trio.to_thread.run_sync(b"".join, pieces)

    async def store(
        self,
        h: bytes,
        providers: Sequence[str] = (),
        *,
        max_size: int,
        timeout: float,
        tag: str | None = None,
    ) -> int:
        """``Network.store_blob``: the blob in the store, never joined in memory; its size."""
        size = self._blobs.size_of(h)
        if size is None:
            pieces = await self._obtain(bytes(h), providers, max_size, timeout)
            size = sum(len(p) for p in pieces)
        await self._tag(h, tag)
        return size

    async def fetch_batch(
        self,
        hashes: Sequence[bytes],
        pid: str,
        *,
        max_size: int,
        timeout: float,
        tag: str | None = None,
    ) -> dict[bytes, bytes]:
        """``Network.fetch_blobs``: those of ``hashes`` that ``pid`` has, asked for in
        batches of at most `blob_protocol.MAX_BATCH` on one stream each, stored and
        returned by hash. Raises `BlobError` when a batch fails (busy, unreachable,
        relayed, malformed, too slow): the caller fetches the rest blob by blob."""
        wanted = list(dict.fromkeys(bytes(h) for h in hashes))
        out: dict[bytes, bytes] = {}
        with trio.move_on_after(timeout) as scope:
            for i in range(0, len(wanted), blob_protocol.MAX_BATCH):
                got = await self._batch(pid, wanted[i : i + blob_protocol.MAX_BATCH], max_size)
                out.update(await trio.to_thread.run_sync(self._keep, got, tag))
        if scope.cancelled_caught:
            raise BlobError(f"a batch of {len(wanted)} blobs from {pid[-8:]} timed out")
        for h, blob in out.items():
            self._fetched(h, pid, len(blob))
        return out

    async def _batch(
        self, pid: str, hashes: list[bytes], max_size: int
    ) -> dict[bytes, list[bytes]]:
        """One batch request to ``pid`` (direct connections only: a relay's budget is per
        blob); its blobs, checked, in pieces."""
        stream = None
        try:
            peer = ID.from_base58(pid)
            await self._peers.reach(peer)
            if self._circuit_to(peer) is not None:
                raise BlobError("batches go over direct connections only")
            stream = await self._host.new_stream(peer, [TProtocol(blob_protocol.PROTOCOL)])
            got = await blob_protocol.request_blobs(stream, hashes, max_size=max_size)
        except (BlobError, trio.Cancelled):
            if stream is not None:
                await blob_protocol.abort(stream)
            raise
        except Exception as exc:  # the library raises many stream/muxer errors
            if stream is not None:
                await blob_protocol.abort(stream)
            raise BlobError(f"a batch from {pid[-8:]} failed: {type(exc).__name__}") from exc
        with trio.move_on_after(CLOSE_TIMEOUT), suppress(Exception):
            await stream.close()
        return got

    def _keep(self, got: dict[bytes, list[bytes]], tag: str | None) -> dict[bytes, bytes]:
        """A batch's checked blobs, stored (blocking: a worker thread) and joined."""
        for h, pieces in got.items():
            self._blobs.put_verified(pieces, h, tag=tag, durable=False)
        return {h: b"".join(pieces) for h, pieces in got.items()}

    async def _tag(self, h: bytes, tag: str | None) -> None:
        if tag is not None:
            await trio.to_thread.run_sync(self._blobs.tag, h, tag)

    async def _obtain(
        self, h: bytes, providers: Sequence[str], max_size: int, timeout: float
    ) -> list[bytes]:
        """The blob's pieces, from the store or one transfer (`_fetch`), or from the
        transfer of it already in progress."""
        errors: list[str] = []
        with trio.move_on_after(timeout):
            while (flight := self.flights.get(h)) is not None:
                await flight.done.wait()
                if flight.pieces is not None:  # that fetch succeeded: its bytes are ours
                    if sum(len(p) for p in flight.pieces) > max_size:
                        raise BlobError(f"blob {h.hex()[:16]}… is over the {max_size}-byte limit")
                    return flight.pieces
            # none in progress (or the one we waited for failed): fetch it ourselves
            flight = self.flights[h] = Flight()
            try:
                flight.pieces = await self._fetch(h, providers, max_size, errors)
            finally:
                del self.flights[h]
                flight.done.set()
            return flight.pieces
        why = "; ".join(errors) or "no provider answered"
        raise BlobError(
            f"could not fetch blob {h.hex()[:16]}…: timed out after {timeout:.0f}s ({why})"
        )

    async def _fetch(
        self, h: bytes, providers: Sequence[str], max_size: int, errors: list[str]
    ) -> list[bytes]:
        """`_obtain`'s one transfer (the caller owns the timeout); notes why each
        provider failed in ``errors``."""
        if self._blobs.has(h):  # (a thread hop is not free: only when it is there to read)
            local = await trio.to_thread.run_sync(self._blobs.get, h)
            if local is not None:
                return [local]
        tried = {self._peers.my_id.to_base58()}
        pieces = await self._fetch_from_first(providers, h, max_size, errors, tried)
        if pieces is None:
            pids = await self._providers.find(h)
            pieces = await self._fetch_from_first(pids, h, max_size, errors, tried)
        if pieces is None:
            why = "; ".join(errors) or "no provider known"
            raise BlobError(f"could not fetch blob {h.hex()[:16]}…: {why}")
        return pieces

    async def _fetch_from_first(
        self, pids: Sequence[str], h: bytes, max_size: int, errors: list[str], tried: set[str]
    ) -> list[bytes] | None:
        """The first of ``pids`` not ``tried`` yet that delivers the blob (each is
        added to ``tried``), direct ones first; None if none did."""
        pids = sorted(pids, key=lambda pid: PATH_ORDER[self._peers.path(pid)])
        for pid in pids:
            if pid in tried:
                continue
            tried.add(pid)
            pieces = await self._fetch_from(pid, h, max_size, errors)
            if pieces is not None:
                return pieces
        return None

    async def _fetch_from(
        self, pid: str, h: bytes, max_size: int, errors: list[str]
    ) -> list[bytes] | None:
        """One provider's transfer, stored as it arrives (a small one once it is all
        here); None (and why in ``errors``) when the provider failed. A failure to store
        it here raises."""
        if max_size <= SMALL_BLOB:  # (held whole anyway: one thread hop, not five)
            whole = await self._transfer(pid, h, max_size, errors, None)
            if whole is None:
                return None
            await trio.to_thread.run_sync(lambda: self._blobs.put_verified(whole, h, durable=False))
            self._fetched(h, pid, sum(len(p) for p in whole))
            return whole
        writer = await trio.to_thread.run_sync(lambda: self._blobs.writer(h, durable=False))
        try:
            pieces = await self._transfer(pid, h, max_size, errors, writer)
            if writer.error is not None:  # our disk, not the provider: no point in another
                raise writer.error
            if pieces is not None:
                await trio.to_thread.run_sync(writer.commit)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(writer.discard)
        if pieces is None:
            return None
        self._fetched(h, pid, writer.size)
        return pieces

    def _fetched(self, h: bytes, pid: str, size: int) -> None:
        """Count and report a blob received from ``pid``."""
        self._report.traffic.blobs_fetched += 1
        self._report.traffic.blob_bytes_in += size
        self._report.emit("blob_fetched", hash=bytes(h).hex(), peer_id=pid, size=size)

    async def _transfer(
        self, pid: str, h: bytes, max_size: int, errors: list[str], writer: BlobWriter | None
    ) -> list[bytes] | None:
        """Request ``h`` from ``pid``; its pieces go to ``writer`` (written by a worker
        thread) while the rest arrives, unless it is None."""
        peer = ID.from_base58(pid)
        stream = None
        try:
            await self._peers.reach(peer)
            budget = None
            circuit = self._circuit_to(peer)
            if circuit is not None and circuit.budget() is not None:
                budget = int(RELAY_SHARE * (circuit.budget() or 0))
            stream = await self._host.new_stream(peer, [TProtocol(blob_protocol.PROTOCOL)])
            if writer is None:
                pieces = await blob_protocol.request_blob(
                    stream, h, max_size=max_size, budget=budget
                )
            else:
                pieces = await _written(stream, h, max_size, budget, writer)
        except RelayLimitError as exc:  # another holder may be closer
            errors.append(f"{pid[-8:]}: {exc}")
            self._report.emit("blob_over_relay_limit", hash=bytes(h).hex(), peer_id=pid)
            if stream is not None:
                await blob_protocol.abort(stream)
            return None
        except (BlobError, NetError) as exc:
            errors.append(f"{pid[-8:]}: {exc}")
            if "hash" in str(exc):
                self._refused(h, pid, "bad_hash")
            elif "declares" in str(exc):
                self._refused(h, pid, "oversize")
            if stream is not None:
                await blob_protocol.abort(stream)
            return None
        except trio.TooSlowError:
            errors.append(f"{pid[-8:]}: stalled")
            if stream is not None:
                await blob_protocol.abort(stream)
            return None
        except Exception as exc:  # the library raises many stream/muxer errors
            errors.append(f"{pid[-8:]}: {type(exc).__name__}: {exc}")
            if stream is not None:
                await blob_protocol.abort(stream)
            return None
        with trio.move_on_after(CLOSE_TIMEOUT), suppress(Exception):
            await stream.close()
        return pieces

    def _refused(self, h: bytes, pid: str, reason: str) -> None:
        self._report.emit("blob_refused", hash=bytes(h).hex(), peer_id=pid, reason=reason)


async def _written(
    stream: Any, h: bytes, max_size: int, budget: int | None, writer: BlobWriter
) -> list[bytes]:
    """`blob_protocol.request_blob`, each piece written to ``writer`` by a worker thread
    while the rest arrives."""
    failure: Exception | None = None
    complete = False
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, writer.drain)
        try:
            pieces = await blob_protocol.request_blob(
                stream, h, max_size=max_size, on_piece=writer.feed, budget=budget
            )
            complete = True
        except Exception as exc:  # raised below, outside the nursery's group
            failure = exc
        finally:  # also when cancelled: the nursery waits for the drain thread
            writer.end(complete=complete)
    if failure is not None:
        raise failure
    return pieces


class BlobServer:
    """Serves stored blobs to peers, at most `MAX_CONCURRENT_SERVES` at once (busy past that)."""

    def __init__(self, blobs: BlobStore, report: Reporter) -> None:
        self._blobs = blobs
        self._report = report
        self._slots = trio.Semaphore(MAX_CONCURRENT_SERVES)

    async def serve(self, stream: Any) -> None:
        """The stream handler of `blob_protocol.PROTOCOL`: one request (one blob or a
        batch), its answers in order; a batch takes one serving slot."""
        pid = stream.muxed_conn.peer_id.to_base58()
        try:
            hashes = await blob_protocol.read_request(stream)
            if self._slots.value == 0:
                await blob_protocol.refuse(stream, busy=True)
                return
            async with self._slots:
                small = self._small(hashes)
                read = await trio.to_thread.run_sync(self._read, small) if small else {}
                for h in hashes:
                    await self._answer(stream, h, pid, read)
            with trio.move_on_after(2 * CLOSE_TIMEOUT):
                await stream.close()
        except Exception as exc:
            logger.debug("serving a blob to %s failed: %s", pid, exc)
            await blob_protocol.abort(stream)

    def _small(self, hashes: list[bytes]) -> list[bytes]:
        """Those of a request's blobs that are read whole, together: small ones, up to
        `BATCH_READ` bytes in all (what a serve holds at once)."""
        out, total = [], 0
        for h in hashes:
            size = self._blobs.size_of(h)
            if size is not None and size <= SMALL_BLOB and total + size <= BATCH_READ:
                out.append(h)
                total += size
        return out

    def _read(self, hashes: list[bytes]) -> dict[bytes, bytes | None]:
        """Stored blobs, whole (blocking: a worker thread); None for one gone or corrupt."""
        return {h: self._blobs.get(h) for h in hashes}

    async def _answer(
        self, stream: Any, h: bytes, pid: str, read: dict[bytes, bytes | None]
    ) -> None:
        """One answer: the stored blob ``h`` (from ``read`` if it was read already), or
        not found."""
        if h in read:
            data = read[h]
            if data is None:
                await blob_protocol.refuse(stream)
                return
            await blob_protocol.respond(stream, len(data), _once(data))
            size = len(data)
        else:
            reader = await trio.to_thread.run_sync(self._blobs.open_reader, h)
            if reader is None:
                await blob_protocol.refuse(stream)
                return
            try:
                await self._send(stream, reader)
            finally:
                reader.close()
            size = reader.size
        self._report.traffic.blobs_served += 1
        self._report.traffic.blob_bytes_out += size
        self._report.emit("blob_served", hash=h.hex(), peer_id=pid, size=size)

    async def _send(self, stream: Any, reader: BlobReader) -> None:
        """Stream a stored blob: a worker thread reads the next pieces while the current
        one is sent, so a serve holds a few MiB, not the whole blob, and the first byte
        leaves before the file was read.

        A failed read ends the pieces early instead of cancelling the send (a write
        cancelled halfway would break the connection's framing); `respond` then
        raises for the missing bytes and the stream is reset. The requester checks
        the hash; the reader checks it too, the first time this process serves a copy
        it did not write itself, to delete a corrupt one (`BlobStore`).
        """
        send, recv = trio.open_memory_channel[bytes](SERVE_READ_AHEAD)

        async def read_pieces() -> None:
            async with send:
                left = reader.size
                while left > 0:
                    try:
                        piece = await trio.to_thread.run_sync(reader.read, min(SERVE_PIECE, left))
                    except OSError as exc:
                        logger.warning("reading a stored blob failed: %s", exc)
                        return
                    if not piece:
                        return
                    left -= len(piece)
                    await send.send(piece)

        async with trio.open_nursery() as n:
            n.start_soon(read_pieces)
            await blob_protocol.respond(stream, reader.size, recv)
        if not await trio.to_thread.run_sync(reader.intact):
            raise BlobError("the stored copy is corrupt; it was deleted")


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
