"""A full or read-only datadir: clear errors, nothing corrupt once there is room again.

Uses a small tmpfs so that ENOSPC is real, not simulated: root only, skipped elsewhere
except under CI, which runs as root (tests/skip_policy.py).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import register_small_job

from gfl.errors import GflError
from gfl.net.blobs import BlobStore
from gfl.node.store import Store
from gfl.scheduler.checkpoints import Checkpoints


def _mount(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        timeout=10,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")


@pytest.fixture
def small_fs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "fs"
    _mount(mnt, "2m")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], timeout=10, check=False)


def _fill(fs: Path) -> Path:
    """Take every free byte of the file system; returns the filler to delete later."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (65536, 512, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * chunk):
                    pass
    finally:
        os.close(fd)
    return filler


def _params(seed: int) -> dict[str, np.ndarray]:
    return {"w": np.random.default_rng(seed).normal(size=(64, 64)).astype(np.float32)}


def test_disk_full_gives_clear_errors_and_leaves_nothing_corrupt(small_fs):
    store = Store(small_fs / "node.db")
    store.bump("good", 3)
    blobs = BlobStore(small_fs / "blobs")
    good_blob = blobs.put(os.urandom(20_000), tag="job")
    cps = Checkpoints(small_fs / "models" / "job")
    h1 = cps.save(1, _params(1), {})

    filler = _fill(small_fs)
    # every writer fails with a typed, readable error - never a half-written file in place
    with pytest.raises(GflError, match=r"(?i)space|full|write"):
        for i in range(2000):
            store.bump(f"counter.{i}." + "x" * 2000, 1)
    with pytest.raises(GflError, match=r"(?i)space|full"):
        blobs.put(os.urandom(300_000), tag="job")
    with pytest.raises(GflError, match=r"(?i)space|full"):
        cps.save(2, _params(2), {})
    os.truncate(filler, filler.stat().st_size - 8192)  # 8 KiB free: a 16 KiB file half fits
    with pytest.raises(GflError, match=r"(?i)space|full"):
        cps.save(1, _params(2), {})  # over the good round-1 checkpoint
    with pytest.raises(GflError, match=r"(?i)space|full"):
        blobs.put(os.urandom(100_000), tag="job")
    assert not list((small_fs / "blobs" / "tmp").iterdir()), "a partial blob was left behind"
    assert not cps.path(2).exists(), "a truncated checkpoint was put in place"
    store.close()

    filler.unlink()  # room again: "restart" every component on the same files
    store = Store(small_fs / "node.db")
    assert store.integrity_ok()
    assert store.counters("good") == {"good": 3}
    blobs = BlobStore(small_fs / "blobs")
    for sub in (small_fs / "blobs").iterdir():
        if len(sub.name) == 2:
            for f in sub.iterdir():
                assert blobs.get(bytes.fromhex(f.name)) is not None, f"corrupt blob {f.name}"
    assert blobs.get(good_blob) is not None
    r, params, _, h = cps.latest()
    assert (r, h) == (1, h1)
    assert np.array_equal(params["w"], _params(1)["w"])
    store.close()


SPEC_HASH = b"\x01" * 32


def test_a_full_disk_stops_the_embedded_chain_and_it_loses_nothing_acknowledged(small_fs):
    """A transaction whose journal record cannot be written is refused, and so is every
    request after it (the chain's memory holds a transaction a restart would not have);
    once there is room again the restarted chain holds every acknowledged transaction."""
    from gfl.chain import open_chain
    from gfl.identity import NodeIdentity

    identity, state = NodeIdentity.generate(), small_fs / "chain"
    chain = open_chain("embedded", identity, state_dir=state)
    kept = [register_small_job(chain, spec_hash=SPEC_HASH) for _ in range(2)]
    filler = _fill(small_fs)
    with pytest.raises(GflError, match=r"(?i)no space"):  # once the journal's page is full
        for _ in range(50):
            salt = os.urandom(32)
            refused = chain.job_id_for(chain.account, salt, SPEC_HASH)
            register_small_job(chain, salt, SPEC_HASH)
            kept.append(refused)
    with pytest.raises(GflError, match="the embedded chain stopped"):
        chain.get_job(kept[0])
    chain.close()

    filler.unlink()
    chain = open_chain("embedded", identity, state_dir=state)
    assert all(chain.get_job(j) is not None for j in kept)
    assert chain.get_job(refused) is None
    after = register_small_job(chain, spec_hash=SPEC_HASH)
    chain.close()
    chain = open_chain("embedded", identity, state_dir=state)
    assert all(chain.get_job(j) is not None for j in [*kept, after])
    chain.close()


@pytest.mark.trio
async def test_a_fetch_onto_a_full_disk_fails_here_and_asks_no_other_provider(small_fs, tmp_path):
    from gfl.identity import NodeIdentity
    from gfl.net import BlobError, blob_hash, open_network

    data = os.urandom(3 << 20)  # more than the 2 MiB file system holds
    h = blob_hash(data)

    def node(where: Path):
        return open_network(NodeIdentity.generate(), blob_dir=where, discover=False)

    async with node(tmp_path / "a") as a, node(tmp_path / "c") as c, node(small_fs / "b") as b:
        a.blobs.put(data)
        c.blobs.put(data)
        await b.connect(a.listen_addrs()[0])
        await b.connect(c.listen_addrs()[0])
        with pytest.raises(BlobError, match="No space left"):
            await b.fetch_blob(h, [a.peer_id, c.peer_id], max_size=4 << 20, timeout=30)
        assert not b.blobs.has(h) and not list((small_fs / "b" / "tmp").iterdir())
        assert c.stats()["blobs_served"] == 0  # our disk failed, not a's copy


def test_up_on_a_read_only_datadir_exits_with_a_clear_message(small_fs, tmp_path):
    home = small_fs / "home"
    from gfl.node.config import Config
    from gfl.node.datadir import DataDir

    DataDir(home).init(Config().replace("chain", url="embedded"), force=True)
    res = subprocess.run(
        ["mount", "-o", "remount,ro", str(small_fs)], capture_output=True, timeout=10
    )
    if res.returncode != 0:
        pytest.skip(f"cannot remount read-only: {res.stderr.decode().strip()}")
    proc = subprocess.run(
        [sys.executable, "-m", "gfl", "up", "--home", str(home)],
        capture_output=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode != 0
    assert "Traceback" not in err, err[-2000:]
    assert "read-only" in err.lower() or "readonly" in err.lower(), err[-2000:]
