"""Chain layer benchmark: latency, throughput and gas of registry calls per backend.

    .venv/bin/python bench/chain.py [--calls 20] [--nodes 4]

Backends: embedded (eth-tester in process, the baseline), served (the embedded
chain over HTTP JSON-RPC, as `gfl devnet` runs it) and anvil (when installed).
Prints a table; latency ratios are against embedded measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from gfl.chain import Registry, Tx, deploy_registry, open_chain
from gfl.chain.devchain import (
    ANVIL_DEV_KEY,
    EMBEDDED_DEV_KEY,
    find_anvil,
    fund,
    serve_embedded,
    start_anvil,
)
from gfl.identity import NodeIdentity


def timed(fn: Callable[[], Tx]) -> tuple[float, Tx]:
    t = time.perf_counter()
    tx = fn()
    return time.perf_counter() - t, tx


def run_backend(owner: Registry, members: list[Registry], calls: int) -> dict[str, object]:
    lat: dict[str, list[float]] = {
        k: [] for k in ("register", "join", "commitUpdate", "commitModel", "getRound")
    }
    gas: dict[str, int] = {}
    spec_hash = b"\x01" * 32
    jobs = []
    for i in range(calls):
        job_id = os.urandom(32)
        dt, tx = timed(lambda j=job_id: owner.register_job(j, spec_hash, 1, len(members), 600))
        lat["register"].append(dt)
        gas["register"] = tx.gas_used
        jobs.append(job_id)
        for m in members:
            dt, tx = timed(lambda j=job_id, m=m: m.join_job(j))
            lat["join"].append(dt)
            gas["join"] = tx.gas_used
        for k, m in enumerate(members):
            dt, tx = timed(
                lambda j=job_id, m=m, k=k, i=i: m.commit_update(j, 0, bytes([k + 1]) * 32, 100 + i)
            )
            lat["commitUpdate"].append(dt)
            key = "commitUpdate (closing)" if k == len(members) - 1 else "commitUpdate"
            gas[key] = max(gas.get(key, 0), tx.gas_used)
        dt, tx = timed(lambda j=job_id: members[0].commit_model(j, 0, b"\x09" * 32))
        lat["commitModel"].append(dt)
        gas["commitModel"] = tx.gas_used
        t = time.perf_counter()
        owner.get_round(job_id, 0)
        lat["getRound"].append(time.perf_counter() - t)
    # throughput: every member commits to its own fresh single-member jobs, in parallel
    tjobs = []
    for m in members:
        job_id = os.urandom(32)
        owner.register_job(job_id, spec_hash, calls, 1, 600)
        m.join_job(job_id)
        tjobs.append((m, job_id))

    def commit_all(pair: tuple[Registry, bytes]) -> None:
        m, job_id = pair
        for r in range(calls):
            m.commit_update(job_id, r, b"\x07" * 32, 1)

    t = time.perf_counter()
    with ThreadPoolExecutor(len(members)) as pool:
        list(pool.map(commit_all, tjobs))
    throughput = len(members) * calls / (time.perf_counter() - t)
    return {
        "lat": {k: statistics.median(v) for k, v in lat.items()},
        "gas": gas,
        "tput": throughput,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=4)
    args = parser.parse_args()
    results: dict[str, dict[str, object]] = {}

    owner = open_chain("embedded", NodeIdentity.generate())
    members = [owner.for_identity(NodeIdentity.generate()) for _ in range(args.nodes)]
    results["embedded"] = run_backend(owner, members, args.calls)
    owner.close()

    def remote(url: str, key: bytes) -> dict[str, object]:
        ids = [NodeIdentity.generate() for _ in range(args.nodes + 1)]
        fund(url, key, [i.eth_address for i in ids], 10**21)
        address = deploy_registry(url, ids[0])
        regs = [open_chain(url, i, registry_address=address) for i in ids]
        try:
            return run_backend(regs[0], regs[1:], args.calls)
        finally:
            for r in regs:
                r.close()

    with serve_embedded() as server:
        results["served"] = remote(server.url, EMBEDDED_DEV_KEY)
    if find_anvil():
        with start_anvil() as anvil:
            results["anvil"] = remote(anvil.url, ANVIL_DEV_KEY)
    else:
        print("anvil not installed: skipped", file=sys.stderr)

    base = results["embedded"]
    names = list(base["lat"])
    print(
        f"chain bench: {args.calls} jobs x {args.nodes} members; median latency per call (ms), "
        "ratio vs embedded"
    )
    print(f"{'backend':10}" + "".join(f"{n:>20}" for n in names) + f"{'commits/s':>16}")
    for backend, res in results.items():
        row = f"{backend:10}"
        for n in names:
            ms = res["lat"][n] * 1000
            row += f"{ms:>10.1f} ({ms / (base['lat'][n] * 1000):4.2f}x)"
        row += f"{res['tput']:>9.0f} ({res['tput'] / base['tput']:4.2f}x)"
        print(row)
    print("\ngas per call (same on every backend):")
    for backend, res in results.items():
        print(f"  {backend:10} " + ", ".join(f"{k} {v}" for k, v in res["gas"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
