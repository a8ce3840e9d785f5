"""Crashes during checkpoint saves and blob stores, at many offsets of the last write.

Both are written to a temp file, synced, then renamed into place. A process killed before
the rename leaves the temp file with a prefix of the bytes (what it had written); after
the rename, the whole file. A file damaged in place (a disk that lies, a copy cut short)
is not a crash but must not be used either. At every point the newest whole, intact
checkpoint or blob is what comes back, and the next write succeeds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gfl.net.blobs import BlobStore, blob_hash
from gfl.scheduler.checkpoints import Checkpoints

POINTS = 40  # kill points per kind of damage


def _offsets(size: int, n: int = POINTS) -> list[int]:
    """``n`` offsets spread over [0, size), the first and last bytes included."""
    return sorted({0, 1, size - 1, *np.linspace(0, size - 1, n - 3).astype(int).tolist()})


def _params(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "fc.weight": rng.standard_normal((16, 24)).astype(np.float32),
        "fc.bias": rng.standard_normal(16).astype(np.float32),
    }


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_checkpoint_save_cut_or_damaged_anywhere_resumes_from_the_last_intact_round(tmp_path):
    root = tmp_path / "models"
    cps = Checkpoints(root)
    state = {"momentum": np.arange(16, dtype=np.float32)}
    h0 = cps.save(0, _params(0), state)
    h1 = cps.save(1, _params(1), state)
    whole = cps.path(1).read_bytes()
    cps.path(1).unlink()

    def resumes_from(r: int, h: bytes, params: dict[str, np.ndarray]) -> None:
        got = cps.latest()
        assert got is not None and got[0] == r and got[3] == h and _same(got[1], params)
        assert _same(got[2], state)

    points = 0
    for k in _offsets(len(whole)):  # killed while writing the temp file of round 1
        cps.path(1).with_name(cps.path(1).name + ".tmp").write_bytes(whole[:k])
        resumes_from(0, h0, _params(0))
        assert sorted(p.name for p in root.iterdir()) == ["round-000000.gflm"]
        points += 1
    cps.path(1).write_bytes(whole)  # killed after the rename: round 1 is there, whole
    resumes_from(1, h1, _params(1))
    points += 1
    for k in _offsets(len(whole)):  # a file cut short in place
        cps.path(1).write_bytes(whole[:k])
        resumes_from(0, h0, _params(0))
        points += 1
    for k in _offsets(len(whole)):  # one flipped bit anywhere: header, model or state
        damaged = bytearray(whole)
        damaged[k] ^= 0x10
        cps.path(1).write_bytes(bytes(damaged))
        resumes_from(0, h0, _params(0))
        points += 1
    assert cps.save(1, _params(1), state) == h1  # and the next save goes through
    resumes_from(1, h1, _params(1))
    print(f"crash: checkpoints, {points} kill or damage points, resumed from round 0 or 1")


def _reopened(root: Path) -> BlobStore:
    store = BlobStore(root)
    assert list((root / "tmp").iterdir()) == [], "a crashed write's temp file was left"
    return store


def test_blob_store_cut_or_damaged_anywhere_holds_whole_blobs_only(tmp_path):
    root = tmp_path / "blobs"
    store = BlobStore(root)
    old = os.urandom(3000)
    h_old = store.put(old, tag="job-a")
    data = os.urandom(200_000)
    h = blob_hash(data)
    points = 0
    for k in _offsets(len(data)):  # killed while writing the temp file (a fetch, a put)
        (root / "tmp" / f"{h.hex()}.0").write_bytes(data[:k])
        store = _reopened(root)
        assert not store.has(h) and store.get(h) is None
        assert store.get(h_old) == old
        points += 1

    # killed after the rename, before the tag was marked: held, untagged, intact
    store.put(data)
    store = _reopened(root)
    assert store.get(h) == data and store.get(h_old) == old
    points += 1
    path = root / h.hex()[:2] / h.hex()
    for k in _offsets(len(data)):  # damaged in place: cut short, or one flipped bit
        for damaged in (data[:k], data[:k] + bytes([data[k] ^ 1]) + data[k + 1 :]):
            path.write_bytes(damaged)
            store = _reopened(root)
            reader = store.open_reader(h)
            assert reader is not None
            reader.read(len(data))
            reader.close()
            assert not reader.intact()  # a serve after a restart checks, deletes the copy
            assert not path.exists() and not store.has(h)
            store.put(data)  # fetched again: whole
            path.write_bytes(damaged)
            store = _reopened(root)
            assert store.get(h) is None and not path.exists()  # a read for use checks too
            store.put(data)
            points += 1
    assert store.get(h) == data and store.get(h_old) == old
    print(f"crash: blob store, {points} kill or damage points, whole blobs only")
