"""Secure-aggregation micro-benchmarks (gfl/fl/secagg): time to deal and mask one update,
to unmask a round with no dropout and with the most the threshold allows, and the bytes
of the shares blob and of a reveal set.

One process plays every member (seeded randomness); times are the best of --repeat runs
on this machine's CPU, single-threaded.

    .venv/bin/python bench/secagg.py [--coords 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gfl.fl.secagg import (
    FixedPoint,
    MaskingKey,
    NeighbourGraph,
    Recovery,
    RevealGuard,
    RoundContext,
    deal,
    encode,
    mask,
    recover,
    reveal,
    wrapping_sum,
)

# (members, job's k, job's t): complete graphs at 4, 8, 16 and a SecAgg+ graph at 16
CASES = [(4, 4, 3), (8, 8, 5), (16, 16, 9), (16, 8, 5)]


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def bench_case(n: int, k: int, t: int, coords: int, repeat: int) -> dict:
    rng = np.random.default_rng(n * 100 + k)
    rand = rng.bytes
    ctx = RoundContext(b"\x01" * 32, 0)
    members = sorted(rand(20) for _ in range(n))
    keys = {a: MaskingKey(rand(32)) for a in members}
    public = {a: key.public for a, key in keys.items()}
    graph = NeighbourGraph.build(rand(32), members, k, t)
    fp = FixedPoint.choose(1.0, 64, 1)
    x = rng.normal(0.0, 0.01, coords)

    me = members[0]
    t_deal, (blob, secrets) = best(lambda: deal(ctx, graph, me, keys[me], public, rand), repeat)
    dealt = {a: deal(ctx, graph, a, keys[a], public, rand) for a in members}
    blobs = {a: b for a, (b, _) in dealt.items()}
    t_mask, _ = best(lambda: mask(secrets, encode(fp.quantize(x), 1)), repeat)
    masked = {a: mask(s, encode(fp.quantize(x), 1)) for a, (_, s) in dealt.items()}

    def unmask_round(survivors: list[bytes]) -> tuple[float, int]:
        rs = [reveal(ctx, graph, h, keys[h], public, survivors, RevealGuard()) for h in survivors]

        def run() -> np.ndarray:
            rec = recover(ctx, graph, survivors, blobs, rs)
            assert isinstance(rec, Recovery), rec.reason
            return rec.unmask(wrapping_sum(masked[a] for a in survivors))

        seconds, total = best(run, repeat)
        want = wrapping_sum(encode(fp.quantize(x), 1) for _ in survivors)
        assert np.array_equal(total, want)
        return seconds, max(len(r.to_bytes()) for r in rs)

    t_full, reveal_bytes = unmask_round(members)
    # the most dropouts the round survives: members that never committed (their pairwise
    # masks must come off every surviving neighbour's), keeping t_r holders per dealer
    drop = (graph.degree + 1) - graph.threshold
    t_drop, _ = unmask_round(members[drop:])
    return {
        "n": n,
        "k_r": graph.degree,
        "t_r": graph.threshold,
        "drop": drop,
        "deal_ms": t_deal * 1e3,
        "mask_ms": t_mask * 1e3,
        "unmask0_ms": t_full * 1e3,
        "unmask_drop_ms": t_drop * 1e3,
        "blob_bytes": len(blob.to_bytes()),
        "reveal_bytes": reveal_bytes,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--coords", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, {args.coords:,} coordinates, "
        f"best of {args.repeat}"
    )
    print(
        "| n | k_r | t_r | dropouts | deal ms | mask ms | unmask ms (0) | unmask ms (dropouts) "
        "| shares blob B | reveal set B |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, k, t in CASES:
        r = bench_case(n, k, t, args.coords, args.repeat)
        print(
            f"| {r['n']} | {r['k_r']} | {r['t_r']} | {r['drop']} | {r['deal_ms']:.1f} "
            f"| {r['mask_ms']:.0f} | {r['unmask0_ms']:.0f} | {r['unmask_drop_ms']:.0f} "
            f"| {r['blob_bytes']:,} | {r['reveal_bytes']:,} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
