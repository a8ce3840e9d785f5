"""Chain layer benchmark: gas per participant per round, and latency/throughput per backend.

    .venv/bin/python bench/chain.py [--sizes 2,4,8,16] [--rounds 4] [--calls 10] [--nodes 4]

Gas: a job of n participants runs `--rounds` rounds the way nodes run them: round 0's
update alone, then one commitAndVote per participant per round (the vote on r - 1 rides on
the update for r), then the last round's vote alone; once all-to-all (the votes name no
shards) and once sharded (the votes name the round's reduced shards, and the deciding vote
keeps the key as evidence). Gas is the EVM's and the same on every backend; it is measured
on the embedded chain.

Latency: median milliseconds per call (estimate, sign, send, wait for the receipt) on the
embedded chain (eth-tester in process, the baseline), served (the embedded chain over HTTP
JSON-RPC, as `gfl devnet` runs it) and anvil (when installed); throughput is commits per
second with `--nodes` threads, each on its own single-member job.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gfl.chain import JobParams, Registry, deploy_registry, open_chain
from gfl.chain.devchain import (
    ANVIL_DEV_KEY,
    EMBEDDED_DEV_KEY,
    find_anvil,
    fund,
    serve_embedded,
    start_anvil,
)
from gfl.identity import NodeIdentity

BOND = 10**15


def params(owner: Registry, n: int, rounds: int) -> JobParams:
    return JobParams(
        rounds=rounds,
        min_updates=n,
        max_participants=n,
        round_timeout=600,
        vote_timeout=600,
        deadline=owner.chain_time() + 86_400,
        bond=BOND,
    )


def digest(i: int, r: int) -> bytes:
    return (i * 1_000 + r + 1).to_bytes(32, "big")


def gas_of_a_job(owner: Registry, n: int, rounds: int, sharded: bool) -> dict[str, float]:
    """Run one job of n participants; gas per kind of call, per participant per round."""

    def shards(r: int) -> bytes:
        return digest(77, r) if sharded else bytes(32)

    members = [owner] + [owner.for_identity(NodeIdentity.generate()) for _ in range(n - 1)]
    job_id, _ = owner.register_job(
        os.urandom(32), os.urandom(32), digest(0, 0), params(owner, n, rounds)
    )
    joins = [m.join_job(job_id).gas_used for m in members]
    first = [m.commit_update(job_id, 0, digest(i, 0), 100).gas_used for i, m in enumerate(members)]
    cav: list[int] = []
    for r in range(1, rounds):
        cav += [
            m.commit_and_vote(
                job_id, r, digest(i, r), 100, digest(99, r - 1), b"", shards(r - 1)
            ).gas_used
            for i, m in enumerate(members)
        ]
    last = [
        m.vote(job_id, rounds - 1, digest(99, rounds - 1), b"", shards(rounds - 1)).gas_used
        for m in members
    ]
    return {
        "commitAndVote mean": statistics.mean(cav),
        "commitAndVote max": max(cav),
        "round 0 update mean": statistics.mean(first),
        "last vote mean": statistics.mean(last),
        "whole job / (n x rounds)": (sum(first) + sum(cav) + sum(last)) / (n * rounds),
        "join mean": statistics.mean(joins),
    }


def timed(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - t, result


def latency(owner: Registry, members: list[Registry], calls: int) -> dict[str, object]:
    """Median latency of the calls a round makes, and parallel commit throughput."""
    lat: dict[str, list[float]] = {k: [] for k in ("register", "join", "commitAndVote", "getJob")}
    n = len(members)
    for _ in range(calls):
        salt, spec = os.urandom(32), os.urandom(32)
        dt, (job_id, _tx) = timed(owner.register_job, salt, spec, digest(0, 0), params(owner, n, 2))
        lat["register"].append(dt)
        for m in members:
            lat["join"].append(timed(m.join_job, job_id, (), BOND)[0])
        for i, m in enumerate(members):
            m.commit_update(job_id, 0, digest(i, 0), 1)
        for i, m in enumerate(members):
            dt, _ = timed(m.commit_and_vote, job_id, 1, digest(i, 1), 1, digest(9, 0))
            lat["commitAndVote"].append(dt)
        lat["getJob"].append(timed(owner.get_job, job_id)[0])

    solo = []
    for m in members:
        p = JobParams(
            rounds=calls,
            min_updates=1,
            max_participants=1,
            round_timeout=600,
            vote_timeout=600,
            deadline=owner.chain_time() + 86_400,
            bond=BOND,
        )
        job_id, _ = m.register_job(os.urandom(32), os.urandom(32), digest(0, 0), p)
        m.join_job(job_id, value=BOND)
        solo.append((m, job_id))

    def commit_all(pair: tuple[Registry, bytes]) -> None:
        m, job_id = pair
        m.commit_update(job_id, 0, digest(0, 0), 1)
        for r in range(1, calls):
            m.commit_and_vote(job_id, r, digest(0, r), 1, digest(9, r - 1))

    t = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(commit_all, solo))
    return {
        "lat": {k: statistics.median(v) for k, v in lat.items()},
        "tput": n * calls / (time.perf_counter() - t),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2,4,8,16", help="participants per job, comma-separated")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--calls", type=int, default=10, help="jobs per backend for latency")
    parser.add_argument("--nodes", type=int, default=4, help="members per latency job")
    parser.add_argument("--no-latency", action="store_true", help="gas table only")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    owner = open_chain("embedded", NodeIdentity.generate())
    tables = {
        mode: {n: gas_of_a_job(owner, n, args.rounds, mode == "sharded") for n in sizes}
        for mode in ("all-to-all", "sharded")
    }
    for mode, table in tables.items():
        print(f"{mode}: gas per participant per round, {args.rounds}-round jobs (any backend)")
        rows = list(next(iter(table.values())))
        print(f"{'':28}" + "".join(f"{f'n = {n}':>10}" for n in sizes))
        for row in rows:
            print(f"{row:28}" + "".join(f"{table[n][row]:>10,.0f}" for n in sizes))
    ratio = "whole job / (n x rounds)"
    print(
        f"{'sharded / all-to-all':28}"
        + "".join(
            f"{tables['sharded'][n][ratio] / tables['all-to-all'][n][ratio]:>9.3f}x" for n in sizes
        )
    )
    if args.no_latency:
        owner.close()
        return 0

    results: dict[str, dict[str, object]] = {}
    members = [owner.for_identity(NodeIdentity.generate()) for _ in range(args.nodes)]
    results["embedded"] = latency(owner, members, args.calls)
    owner.close()

    def remote(url: str, key: bytes) -> dict[str, object]:
        ids = [NodeIdentity.generate() for _ in range(args.nodes + 1)]
        fund(url, key, [i.eth_address for i in ids], 10**20)
        address = deploy_registry(url, ids[0])
        regs = [open_chain(url, i, registry_address=address) for i in ids]
        try:
            return latency(regs[0], regs[1:], args.calls)
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
        f"\nlatency: {args.calls} jobs x {args.nodes} members; "
        "median ms per call, ratio vs embedded"
    )
    print(f"{'backend':10}" + "".join(f"{n:>20}" for n in names) + f"{'commits/s':>16}")
    for backend, res in results.items():
        row = f"{backend:10}"
        for n in names:
            ms = res["lat"][n] * 1000
            row += f"{ms:>10.1f} ({ms / (base['lat'][n] * 1000):4.2f}x)"
        row += f"{res['tput']:>9.0f} ({res['tput'] / base['tput']:4.2f}x)"
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
