"""Real SIGKILLs of a process writing the node database (sqlite, WAL), at many points.

The writer prints the number of each write once the call returned (committed); after the
kill the database must open, pass sqlite's integrity check and hold every write printed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from gfl.node.store import Store

WRITER = """
import sys
from pathlib import Path
from gfl.node.store import Store

store = Store(Path(sys.argv[1]))
store.add_job("job", b"spec", "00", "0xowner", "crash", 1000000, "running", "owner")
start = store.job("job").current_round + 1 if store.rounds("job") else 0
print("open", flush=True)
for i in range(start, start + 100000):  # a write: its four calls, each one transaction
    store.add_commitment("job", i, "update", i, "0xpeer", f"{i:064x}", i)
    store.merge_round_metrics("job", i, {"accuracy": i / 1e6})
    store.bump("writes")
    store.update_job("job", current_round=i)
    print(i, flush=True)
"""
# kill each run after this many more acknowledged writes, or (a float) this many seconds
# after it started: while Python starts or the database is opened
KILLS: list[int | float] = [0.05, 0, 1, 2, 5, 11, 23, 40, 77, 150, 0.25, 3]


def _run_and_kill(db: Path, after: int | float) -> int:
    """Start a writer, SIGKILL it at `after` (`KILLS`); returns the last write acknowledged."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    acked = -1
    try:
        if isinstance(after, float):
            time.sleep(after)
        else:
            deadline = time.monotonic() + 60
            for line in proc.stdout:  # bounded: the writer stops after 100000 writes
                if line.strip() != "open":
                    acked = int(line)
                    if acked >= after:
                        break
                assert time.monotonic() < deadline, "the writer is too slow"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        rest = proc.communicate(timeout=30)[0]  # acknowledged just before the kill
    for line in rest.split():
        if line != "open":
            acked = max(acked, int(line))
    return acked


def test_sigkill_while_writing_the_node_database_loses_no_committed_write(tmp_path):
    db = tmp_path / "node.db"
    acknowledged = -1
    for after in KILLS:
        last = _run_and_kill(db, after if isinstance(after, float) else acknowledged + 1 + after)
        acknowledged = max(acknowledged, last)
        store = Store(db)
        try:
            assert store.integrity_ok()
            job = store.job("job")
            commitments = store.commitments("job")
            rounds = store.rounds("job")
            if acknowledged >= 0:  # else: killed before its first write was committed
                assert job is not None and job.current_round >= acknowledged, after
            assert len(commitments) >= acknowledged + 1
            assert len(rounds) >= acknowledged + 1
            assert store.counters().get("writes", 0) >= acknowledged + 1
            assert [c["round"] for c in commitments] == list(range(len(commitments)))
            assert all(r["metrics"]["accuracy"] == r["round"] / 1e6 for r in rounds)
        finally:
            store.close()
    assert acknowledged >= sum(a for a in KILLS if isinstance(a, int))
    print(f"crash: node database, {len(KILLS)} SIGKILLs, {acknowledged + 1} writes kept")
