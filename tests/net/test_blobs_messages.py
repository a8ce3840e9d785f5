"""Pure parts: the blob store on disk and the message envelope."""

import os
import time

import msgpack
import pytest

from gfl.net import BlobError, BlobStore, MessageError, blob_hash, decode_message, encode_message


def test_blob_store_roundtrip_tags_and_corruption(tmp_path):
    s = BlobStore(tmp_path, cap_bytes=1000)
    h = s.put(b"abc", tag="job1")
    assert h == blob_hash(b"abc") and s.has(h) and s.get(h) == b"abc"
    assert BlobStore(tmp_path).get(h) == b"abc"  # persisted, reopened
    other = s.put(b"def")
    assert s.evict("job1") == 1 and not s.has(h) and s.has(other)
    path = tmp_path / other.hex()[:2] / other.hex()
    path.write_bytes(b"xyz")  # bit rot
    assert s.get(other) is None and not path.exists()
    with pytest.raises(BlobError):
        s.get(b"short")


def test_evicting_a_jobs_tag_keeps_what_it_is_told_to_and_what_another_job_holds(tmp_path):
    s = BlobStore(tmp_path)
    final, update, shared = (s.put(b, tag="job1") for b in (b"final", b"update", b"init"))
    assert s.tag(shared, "job2") and not s.tag(blob_hash(b"absent"), "job2")
    assert s.evict("job1", keep=[final]) == 1
    assert s.has(final) and not s.has(update) and s.has(shared) and s.tags() == ["job2"]
    assert s.evict("job2") == 1 and not s.has(shared) and s.tags() == []
    assert s.has(final) and s.evict("job1") == 0  # kept, untagged: only the cap evicts it
    for bad in ("", "../x", "a" * 129):
        with pytest.raises(BlobError, match="tag"):
            s.tag(final, bad)


def test_blob_reader_reads_in_pieces_and_catches_bit_rot_once_per_process(tmp_path):
    data = bytes(range(256)) * 40
    h = BlobStore(tmp_path).put(data)
    path = tmp_path / h.hex()[:2] / h.hex()
    s = BlobStore(tmp_path)  # a restart: the copy on disk is not known intact yet
    r = s.open_reader(h)
    assert r.size == len(data)
    assert b"".join(r.read(1000) for _ in range(11)) == data and r.intact()
    r.close()
    path.write_bytes(b"x" * len(data))  # rots after this process read it back intact
    r = s.open_reader(h)  # served as it is: the receiver checks every byte (module doc)
    assert r.read(len(data)) == b"x" * len(data) and r.intact()
    r.close()
    assert s.get(h) is None and not s.has(h)  # a read for use still checks, and deletes it
    h = s.put(data)
    path.write_bytes(b"y" * len(data))
    s = BlobStore(tmp_path)  # the next restart's first serve checks again
    r = s.open_reader(h)
    assert r.read(len(data)) == b"y" * len(data)
    assert not r.intact() and not s.has(h)  # deleted: not served again
    r.close()
    assert s.open_reader(h) is None and s.open_reader(blob_hash(b"never stored")) is None


def _counted(monkeypatch, name: str, calls: list[int] | None = None) -> list[int]:
    """The file descriptors the blob store passes to ``os.<name>`` from now on (it still
    syncs them)."""
    from gfl.net import blobs as blobs_module

    calls = [] if calls is None else calls
    real = getattr(os, name)

    def counted(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(blobs_module.os, name, counted)
    return calls


def test_blob_writer_stores_pieces_fed_while_they_arrive_syncing_as_it_goes(tmp_path, monkeypatch):
    import threading

    syncs = _counted(monkeypatch, "fdatasync")
    s = BlobStore(tmp_path)
    data = os.urandom(20 << 20)
    h = blob_hash(data)
    w = s.writer(h)
    drain = threading.Thread(target=w.drain)
    drain.start()
    for off in range(0, len(data), 1 << 20):
        w.feed(data[off : off + (1 << 20)])
    w.end()
    drain.join()
    assert len(syncs) == 2  # at 8 and 16 MiB, while the rest arrived; the last 4 at commit
    assert not s.has(h)  # nothing in place before the commit
    w.commit("job")
    w.discard()  # after a commit: nothing left to remove
    assert s.get(h) == data and s.tags() == ["job"]
    unfinished = s.writer(blob_hash(b"never finished"))
    unfinished.write(b"partial")
    unfinished.discard()
    assert not list((tmp_path / "tmp").iterdir())


def test_blob_writer_syncs_with_fsync_where_there_is_no_fdatasync(tmp_path, monkeypatch):
    from gfl.net import blobs as blobs_module

    monkeypatch.delattr(blobs_module.os, "fdatasync")  # macOS has none
    s = BlobStore(tmp_path)
    data = os.urandom(10 << 20)
    s.put_verified([data[: 9 << 20], data[9 << 20 :]], blob_hash(data), tag="job")
    assert s.get(blob_hash(data)) == data


def test_a_blob_made_here_is_synced_and_a_fetched_copy_is_not(tmp_path, monkeypatch):
    """A sharded round stores ~120 fetched copies per node: two fsyncs each would cost the
    disk ~8,000 flushes a round at 32 nodes on one machine. A copy is not worth them: a
    power cut may leave one torn, and the next process's first read deletes it."""
    synced = _counted(monkeypatch, "fsync")
    s = BlobStore(tmp_path)
    own = s.put(b"our update", tag="job")
    assert len(synced) == 3  # the file, the new <hh>/ in the root, the rename in <hh>/
    synced.clear()
    copy = os.urandom(9 << 20)  # over SYNC_EVERY: no fdatasync along the way either
    for c in (copy, copy[:100]):  # (a new <hh>/ is synced into the root, whatever the blob)
        (tmp_path / blob_hash(c).hex()[:2]).mkdir(exist_ok=True)
    _counted(monkeypatch, "fdatasync", synced)
    s.put_verified([copy], blob_hash(copy), tag="job", durable=False)
    w = s.writer(blob_hash(copy[:100]), durable=False)
    w.write(copy[:100])
    w.commit("job")
    w.discard()
    assert synced == []
    assert s.get(blob_hash(copy)) == copy and s.get(own) == b"our update"

    torn = tmp_path / blob_hash(copy).hex()[:2] / blob_hash(copy).hex()
    torn.write_bytes(copy[: 1 << 20])  # what a power cut may leave of an unsynced copy
    after = BlobStore(tmp_path)  # the node starts again
    assert after.has(blob_hash(copy))
    r = after.open_reader(blob_hash(copy))  # its first serve: read, hashed, deleted
    assert r is not None
    r.read(r.size)
    r.close()
    assert not r.intact()
    assert not after.has(blob_hash(copy)) and not torn.exists()
    assert after.get(blob_hash(copy[:100])) == copy[:100]


def test_blob_store_evicts_least_recently_used_past_its_cap_across_restarts(tmp_path):
    s = BlobStore(tmp_path, cap_bytes=250)
    a, b = (s.put(bytes([i]) * 100) for i in range(2))
    assert s.get(a) is not None  # a used after b: b goes first
    c = s.put(b"z" * 100)
    assert not s.has(b) and s.has(a) and s.has(c) and s.total_bytes == 200
    with pytest.raises(BlobError, match="larger than"):
        s.put(b"q" * 300)
    # a restarted store takes the order from the files' mtimes: c used long ago, a since
    for h, age in ((c, 100), (a, 50)):
        then = time.time() - age
        os.utime(tmp_path / h.hex()[:2] / h.hex(), (then, then))
    again = BlobStore(tmp_path, cap_bytes=250)
    again.put(b"y" * 100)
    assert not again.has(c) and again.has(a)


def test_placing_a_blob_in_a_full_store_does_not_look_at_every_blob_held(tmp_path, monkeypatch):
    """Eviction takes the least recently used blob from memory: a node's store of
    thousands of shard pieces was stat'ed whole for each blob placed past the cap."""
    import pathlib

    s = BlobStore(tmp_path, cap_bytes=50 * 100)
    for i in range(50):
        s.put(i.to_bytes(2, "big") * 50)
    stats: list[pathlib.Path] = []
    real = pathlib.Path.stat
    monkeypatch.setattr(
        pathlib.Path, "stat", lambda self, **kw: stats.append(self) or real(self, **kw)
    )
    for i in range(50, 60):
        s.put(i.to_bytes(2, "big") * 50)
    assert s.evictions == 10 and len(s) == 50
    assert len(stats) <= 10  # (one per new blob: its <hh>/ directory), not 50 each


def test_envelope_roundtrip_and_refusals():
    msg = {"v": 1, "type": "test.update", "hash": b"\1" * 32, "n": [1, 2.5, None]}
    assert decode_message(encode_message(msg)) == msg
    nested: dict = {"v": 1, "type": "x"}
    cur = nested
    for _ in range(20):
        cur["a"] = {}
        cur = cur["a"]
    for bad in [
        msgpack.packb([1, 2]),
        msgpack.packb({"v": True, "type": "x"}),
        msgpack.packb({"v": 1, "type": ""}),
        msgpack.packb(nested),
        msgpack.packb({"v": 1, "type": "x", "l": list(range(5000))}),
        b"\xdd\xff\xff\xff\xff",  # array claiming 4 billion items
        b"\x92\x01",  # truncated
    ]:
        with pytest.raises(MessageError):
            decode_message(bad)
    with pytest.raises(MessageError):
        encode_message({"v": 1, "type": "x", "obj": object()})
