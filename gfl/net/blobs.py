"""A content-addressed blob store on disk: sha256 -> bytes, bounded in size.

Layout under the store's directory: ``<hh>/<hash hex>`` for data (``hh`` the
first byte of the hash), ``tags/<tag>/<hash hex>`` as empty marker files that
say which jobs a blob belongs to, and ``tmp/`` for writes in progress. Writes
go to a temp file renamed into place once complete. A blob this node makes (its
update and its pieces, a model, a reduced shard) is synced before the rename and
the rename after it, so a power cut leaves either the whole blob or nothing. A copy
fetched from a peer is not synced (`put_verified`'s ``durable``): a sharded round
stores ~120 of them per node, which would cost two fsyncs each; a power cut may leave
one torn, and the hash check of the first read after a restart deletes it, to be
fetched again.
Reads for use (`get`) verify the hash, so a corrupted file is deleted
and reported missing instead of used. A blob is served (`open_reader`) without
hashing it again once this process wrote it from verified bytes or read it back
intact: the receiver verifies every byte anyway (IPFS's Kubo, likewise, does not
hash blocks it reads unless ``Datastore.HashOnRead`` is set); the first serve
after a restart still checks it, so a copy that rotted while the node was down
is deleted, not served twice. When the store grows past its cap the least
recently used blobs are evicted; a finished job's blobs are evicted by its tag,
except those another job's tag also holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import queue
import re
import threading
from collections import OrderedDict
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import BinaryIO

from gfl.net.errors import BlobError

logger = logging.getLogger(__name__)

HASH_LEN = 32
SYNC_EVERY = 8 << 20  # a `BlobWriter` syncs what it wrote each time this much more arrived
_writer_ids = itertools.count()
_TAG_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def blob_hash(data: bytes) -> bytes:
    """The content address of ``data`` (sha256)."""
    return hashlib.sha256(data).digest()


def _hex(h: bytes) -> str:
    if not isinstance(h, bytes | bytearray) or len(h) != HASH_LEN:
        raise BlobError("a blob hash is 32 bytes (sha256)")
    return bytes(h).hex()


def _check_tag(tag: str) -> None:
    if not isinstance(tag, str) or not _TAG_RE.match(tag):
        raise BlobError("a blob tag is 1-128 chars of letters, digits, '.', '_' or '-'")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class BlobStore:
    """Blobs by sha256 in one directory, with a size cap and per-tag eviction.

    Methods do blocking file I/O: from trio, call them through
    ``trio.to_thread.run_sync`` for large blobs. They are thread-safe.
    """

    def __init__(self, root: Path, cap_bytes: int = 2 << 30) -> None:
        self.root = Path(root)
        self.cap_bytes = cap_bytes
        self._lock = threading.RLock()
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        (self.root / "tags").mkdir(exist_ok=True)
        for stale in (self.root / "tmp").iterdir():
            stale.unlink(missing_ok=True)
        # hex -> size, least recently used first: the cap's eviction order, kept across
        # restarts by the files' mtimes (`_touch`)
        self._sizes: OrderedDict[str, int] = OrderedDict()
        held = []
        for sub in self.root.iterdir():
            if len(sub.name) == 2 and sub.is_dir():
                for f in sub.iterdir():
                    if len(f.name) == 2 * HASH_LEN:
                        st = f.stat()
                        held.append((st.st_mtime, f.name, st.st_size))
        for _, hx, size in sorted(held):
            self._sizes[hx] = size
        self.evictions = 0
        self._verified: set[str] = set()  # stored bytes known to match their hash

    def _path(self, hx: str) -> Path:
        return self.root / hx[:2] / hx

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    def __len__(self) -> int:
        return len(self._sizes)

    def has(self, h: bytes) -> bool:
        return _hex(h) in self._sizes

    def size_of(self, h: bytes) -> int | None:
        return self._sizes.get(_hex(h))

    def put(self, data: bytes, *, tag: str | None = None) -> bytes:
        """Store ``data``; returns its sha256. Idempotent; ``tag`` groups blobs for `evict`."""
        h = blob_hash(data)
        self.put_verified([data], h, tag=tag)
        return h

    def put_verified(
        self, pieces: Sequence[bytes], h: bytes, *, tag: str | None = None, durable: bool = True
    ) -> None:
        """Store a blob whose bytes are the concatenation of ``pieces`` and whose sha256
        the caller has just checked to be ``h`` (it is not hashed again, nor joined into
        one object). Idempotent, like `put`. ``durable=False``: a copy fetched from a
        peer, not synced to disk (module docstring)."""
        if tag is not None:
            _check_tag(tag)
        if self._touch(_hex(h), tag):
            return
        self._check_fits(sum(len(p) for p in pieces))  # before writing any of it
        writer = self.writer(h, durable=durable)
        try:
            for piece in pieces:
                writer.write(piece)
            writer.commit(tag)
        finally:
            writer.discard()

    def writer(self, h: bytes, *, durable: bool = True) -> BlobWriter:
        """A `BlobWriter` for blob ``h``: to store it while it arrives (``durable``: as
        `put_verified`)."""
        return BlobWriter(self, h, durable)

    def _check_fits(self, size: int) -> None:
        if size > self.cap_bytes:
            raise BlobError(
                f"blob of {size} bytes is larger than the store's cap ({self.cap_bytes})"
            )

    def _touch(self, hx: str, tag: str | None) -> bool:
        """Mark a held blob as just used (for the cap's eviction order), with ``tag``;
        False if it is not held."""
        with self._lock:
            if hx not in self._sizes:
                return False
            self._used(hx)
            if tag is not None:
                self._mark(hx, tag)
        return True

    def _place(self, writer: BlobWriter, tag: str | None) -> None:
        """Put a written (and, if durable, synced) temp file in place under its hash, with
        ``tag`` (if a copy was stored first, that one is kept and the temp file left to
        `discard`). The directory is synced after the lock is released: other threads'
        reads and writes do not wait for the disk (but a new ``<hh>/`` is synced into the
        root at once, whatever the blob: the durable ones placed in it later rely on it)."""
        with self._lock:
            if self._touch(writer.hx, tag):
                return
            self._check_fits(writer.size)
            self._make_room(writer.size)
            path = self._path(writer.hx)
            if not path.parent.is_dir():
                path.parent.mkdir()
                _fsync_dir(self.root)
            os.replace(writer.tmp, path)
            self._sizes[writer.hx] = writer.size
            self._verified.add(writer.hx)
            if tag is not None:
                self._mark(writer.hx, tag)
        if writer.durable:
            _fsync_dir(path.parent)

    def tag(self, h: bytes, tag: str) -> bool:
        """Add ``tag`` to a blob already held (another job uses it too); False if absent."""
        _check_tag(tag)
        hx = _hex(h)
        with self._lock:
            if hx not in self._sizes:
                return False
            self._mark(hx, tag)
        return True

    def _mark(self, hx: str, tag: str) -> None:
        tdir = self.root / "tags" / tag
        tdir.mkdir(exist_ok=True)
        (tdir / hx).touch()

    def get(self, h: bytes) -> bytes | None:
        """The blob's bytes, or None if absent; a blob whose bytes fail the hash is deleted."""
        hx = _hex(h)
        path = self._path(hx)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            with self._lock:
                self._sizes.pop(hx, None)
            return None
        if blob_hash(data) != bytes(h):
            self._corrupt(hx)
            return None
        self._verified.add(hx)
        self._used(hx)
        return data

    def open_reader(self, h: bytes) -> BlobReader | None:
        """A reader of the blob in pieces (to serve it without holding all of it), or None.

        It hashes what it reads unless this process already knows the stored bytes are
        intact (module docstring)."""
        hx = _hex(h)
        path = self._path(hx)
        try:
            f = open(path, "rb")  # noqa: SIM115 - the reader owns and closes it
        except FileNotFoundError:
            with self._lock:
                self._sizes.pop(hx, None)
            return None
        self._used(hx)
        return BlobReader(self, bytes(h), f, verify=hx not in self._verified)

    def _corrupt(self, hx: str) -> None:
        logger.warning("blob %s is corrupt on disk; deleting it", hx[:16])
        self._remove(hx)

    def tags(self) -> list[str]:
        return sorted(p.name for p in (self.root / "tags").iterdir())

    def evict(self, tag: str, keep: Collection[bytes] = ()) -> int:
        """Drop tag ``tag`` (a finished job's) and delete its blobs, except those in ``keep``
        and those another tag still holds (they stay, under the cap); returns how many."""
        _check_tag(tag)
        tdir = self.root / "tags" / tag
        if not tdir.is_dir():
            return 0
        kept = {_hex(h) for h in keep}
        n = 0
        with self._lock:
            others = [t for t in (self.root / "tags").iterdir() if t.name != tag]
            for marker in tdir.iterdir():
                hx = marker.name
                marker.unlink(missing_ok=True)
                shared = any((t / hx).exists() for t in others)
                if hx in self._sizes and hx not in kept and not shared:
                    self._remove(hx)
                    n += 1
            tdir.rmdir()
            self.evictions += n
        return n

    def _remove(self, hx: str) -> None:
        with self._lock:
            self._path(hx).unlink(missing_ok=True)
            self._sizes.pop(hx, None)
            self._verified.discard(hx)

    def _used(self, hx: str) -> None:
        """Move a held blob to the end of the eviction order, on disk too (its mtime, set
        outside the lock when the caller does not hold it)."""
        with self._lock:
            if hx not in self._sizes:
                return
            self._sizes.move_to_end(hx)
        with contextlib.suppress(OSError):
            os.utime(self._path(hx))

    def _make_room(self, incoming: int) -> None:
        """Evict the least recently used blobs until ``incoming`` bytes fit under the cap
        (the order is kept in memory: a store of thousands of pieces is not stat'ed again
        for each blob placed)."""
        excess = self.total_bytes + incoming - self.cap_bytes
        while excess > 0 and self._sizes:
            hx = next(iter(self._sizes))
            excess -= self._sizes[hx]
            logger.info("evicting blob %s to stay under the store's cap", hx[:16])
            self._remove(hx)
            self.evictions += 1


class BlobReader:
    """One stored blob read in pieces; `intact` says whether the bytes read match its hash
    (hashed as they are read, unless ``verify`` is False: the store knows them intact).

    Blocking file I/O, like `BlobStore`: call it from a worker thread.
    """

    def __init__(self, store: BlobStore, h: bytes, f: BinaryIO, *, verify: bool = True) -> None:
        self._store, self._h, self._f = store, h, f
        self.size = os.fstat(f.fileno()).st_size
        self._hasher = hashlib.sha256() if verify else None

    def read(self, n: int) -> bytes:
        chunk = self._f.read(n)
        if self._hasher is not None:
            self._hasher.update(chunk)
        return chunk

    def intact(self) -> bool:
        """After the whole blob was read: True if it hashes right; deletes it if not."""
        if self._hasher is None:
            return True
        hx = self._h.hex()
        if self._hasher.digest() == self._h:
            self._store._verified.add(hx)
            return True
        self._store._corrupt(hx)
        return False

    def close(self) -> None:
        self._f.close()


class BlobWriter:
    """A blob written to the store as it arrives: `write` each piece, then `commit` once
    its sha256 was checked; `discard` at the end, whatever happened, removes the temp
    file if it is still there (not committed, or another copy was stored first).

    Blocking file I/O, like `BlobStore`: call it from a worker thread. A durable one's
    temp file is synced every `SYNC_EVERY` bytes, so the disk writes back while more bytes
    arrive and the fsync before the rename has little left to wait for (bench/RESULTS.md);
    a fetched copy's is not synced at all (`BlobStore.put_verified`). From an
    event loop, `feed` it pieces while a worker thread runs `drain`, then `end` it.
    """

    def __init__(self, store: BlobStore, h: bytes, durable: bool = True) -> None:
        self._store, self.hx, self.durable = store, _hex(h), durable
        self.tmp = store.root / "tmp" / f"{self.hx}.{next(_writer_ids)}"
        self.size = 0
        self.error: BlobError | None = None  # what stopped the writing, if anything did
        self._unsynced = 0
        self._fed: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._dropping = False
        self._f: BinaryIO | None = None
        try:
            self._f = open(self.tmp, "wb")  # noqa: SIM115 - commit and discard close it
        except OSError as exc:
            raise self._fail(exc.strerror) from None

    def _fail(self, why: str | None) -> BlobError:
        """Give up: no partial file left behind (disk full, read-only); the error kept."""
        self.discard()
        self.error = BlobError(f"cannot store blob {self.hx[:16]}… in {self._store.root}: {why}")
        return self.error

    def feed(self, piece: bytes) -> None:
        """Queue ``piece`` for `drain`; never blocks. Raises the error that stopped the
        writing, if one did (the caller can stop receiving)."""
        if self.error is not None:
            raise self.error
        self._fed.put(piece)

    def end(self, *, complete: bool = True) -> None:
        """No more pieces: `drain` returns once it wrote those queued, or, when the blob
        is not ``complete`` (the transfer failed or was cancelled), as soon as it can,
        dropping them: a fetch's timeout does not wait for a slow disk."""
        if not complete:
            self._dropping = True
        self._fed.put(None)

    def drain(self) -> None:
        """Write the pieces fed, until `end` (in a worker thread). An error is kept in
        `error` and the pieces after it are dropped; it does not raise."""
        while (piece := self._fed.get()) is not None:
            if self.error is not None or self._dropping:
                continue
            try:
                self.write(piece)
            except BlobError:
                pass  # kept in `error` by `write`
            except Exception as exc:  # not the disk's doing, but the blob is not stored
                self._fail(f"{type(exc).__name__}: {exc}")

    def write(self, piece: bytes) -> None:
        """Append ``piece`` (blocking); raises `BlobError` when the disk refuses it."""
        if self._f is None:
            raise BlobError("this blob writer was committed or discarded")
        try:
            self._f.write(piece)
            self.size += len(piece)
            self._unsynced += len(piece)
            if self.durable and self._unsynced >= SYNC_EVERY:
                self._f.flush()
                getattr(os, "fdatasync", os.fsync)(self._f.fileno())  # fdatasync: not on macOS
                self._unsynced = 0
        except OSError as exc:
            raise self._fail(exc.strerror) from None

    def commit(self, tag: str | None = None) -> None:
        """Sync the file (if durable) and put it in place under the blob's hash (the
        caller checked that the bytes written hash to it), with ``tag``."""
        if tag is not None:
            _check_tag(tag)
        if self._f is None:
            raise BlobError("this blob writer was committed or discarded")
        try:
            self._f.flush()
            if self.durable:
                os.fsync(self._f.fileno())
            self._f.close()
        except OSError as exc:
            raise self._fail(exc.strerror) from None
        self._f = None
        self._store._place(self, tag)

    def discard(self) -> None:
        if self._f is not None:
            with contextlib.suppress(OSError):
                self._f.close()
            self._f = None
        with contextlib.suppress(OSError):  # gone already, or a directory we cannot write
            self.tmp.unlink()
