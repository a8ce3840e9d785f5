"""Placing fetched copies in a `BlobStore` at its cap, against placing them in an empty one.

A sharded node stores thousands of small pieces (a shard of each update, reduced shards):
past the store's cap, each blob placed evicts the least recently used ones. This measures
``--copies`` copies of ``--kib`` KiB each (``put_verified(..., durable=False)``, what a
fetched piece takes) into an empty store (the baseline) and into a store already at its cap
with ``--held`` blobs of that size; ratio = full / empty seconds, in the same process, the
median of ``--runs``. With ``--before-root DIR`` the same is measured for another checkout
(e.g. a git worktree of an older commit) in a subprocess, for before/after figures in one
run.

    .venv/bin/python bench/blobstore.py --held 5000 --before-root /tmp/old
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def place(held: int, copies: int, size: int) -> float:
    """Seconds to place ``copies`` new blobs of ``size`` bytes in a store holding ``held``
    (at its cap when ``held`` > 0: each one placed evicts one)."""
    from gfl.net.blobs import BlobStore, blob_hash

    with tempfile.TemporaryDirectory() as d:
        store = BlobStore(Path(d), cap_bytes=max(held, copies) * size)
        for i in range(held):
            store.put(i.to_bytes(8, "big") * (size // 8))
        fresh = [(held + i).to_bytes(8, "big") * (size // 8) for i in range(copies)]
        hashes = [blob_hash(b) for b in fresh]
        t = time.perf_counter()
        for data, h in zip(fresh, hashes, strict=True):
            store.put_verified([data], h, durable=False)
        return time.perf_counter() - t


def measure(a: argparse.Namespace) -> dict[str, Any]:
    size = a.kib << 10
    empty = [place(0, a.copies, size) for _ in range(a.runs)]
    full = [place(a.held, a.copies, size) for _ in range(a.runs)]
    return {
        "copies": a.copies,
        "held": a.held,
        "kib": a.kib,
        "empty_s": statistics.median(empty),
        "full_s": statistics.median(full),
        "ratio": statistics.median(full) / statistics.median(empty),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--held", type=int, default=5000, help="blobs in the full store")
    ap.add_argument("--copies", type=int, default=200, help="blobs placed, per measurement")
    ap.add_argument("--kib", type=int, default=64, help="each blob's size")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--before-root", type=Path, help="another checkout to measure beside this")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.json:  # a --before-root child: the checkout its PYTHONPATH names, figures only
        print(json.dumps(measure(a)))
        return 0
    sys.path.insert(0, str(ROOT))
    rows = {"this checkout": measure(a)}
    if a.before_root is not None:
        argv = [sys.executable, str(Path(__file__).resolve()), "--json"]
        argv += ["--held", str(a.held), "--copies", str(a.copies), "--kib", str(a.kib)]
        argv += ["--runs", str(a.runs)]
        env = {**os.environ, "PYTHONPATH": str(a.before_root.resolve())}
        out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
        rows[str(a.before_root)] = json.loads(out.stdout)
    print(f"{'checkout':>24} {'empty s':>8} {'full s':>8} {'full/empty':>10}")
    for name, r in rows.items():
        print(f"{name[-24:]:>24} {r['empty_s']:8.3f} {r['full_s']:8.3f} {r['ratio']:10.2f}")
    print(f"({a.copies} copies of {a.kib} KiB; the full store holds {a.held}; median of {a.runs})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
