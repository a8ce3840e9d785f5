"""Secure-aggregation benchmarks.

Library (gfl/fl/secagg): time to deal and mask one update, to unmask a round with no
dropout and with the most the threshold allows, and the bytes of the shares blob and of a
reveal set. One process plays every member (seeded randomness); times are the best of
--repeat runs on this machine's CPU, single-threaded.

    .venv/bin/python bench/secagg.py [--coords 1000000] [--repeat 3]

Rounds (--jobs 4,8,16): the same job (digits, an MLP, FedAvg, --rounds rounds) run plain,
secure with 32- and 24-bit words, and quantised only (``masks = false``, 24-bit words) by
in-process runners on the embedded chain,
blobs in a shared table (no network: the bytes are counted, not timed). Per participant
per round: bytes = its update blob sent + the others' fetched, plus for a secure job its
shares blob sent and the others' read from the chain's events, its reveal set sent and the
others' heard; round wall = the job's wall time / rounds; accuracy = the final model's on
the dataset's test split.

    .venv/bin/python bench/secagg.py --jobs 4,8,16 [--rounds 5] [--hidden 32] [--weight-levels 256]
        [--data digits|mnist] [--sharded]

--sharded runs, instead, the plain and the 24-bit secure job each all-to-all and sharded
(docs/protocol.md 8, 9.12; one shard per member, 3 replicas). Bytes are measured: each
node's update sent once and what it fetched (its records), the mean over nodes and the
most any node moved in a round ("most").

Accuracy moves in steps of one test example: 0.28 pp on digits' 360, 0.01 pp on MNIST's
10,000 (../shared/data).

The shares and reveals cost the same whatever the model's size; the masked words cost the
model's length times word_bits / 8. --hidden sets how the two weigh against each other.
"""

from __future__ import annotations

import argparse
import os
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

FEATURES = {"digits": 64, "mnist": 784}  # the MLP's inputs
TEST_SIZE = {"digits": 360, "mnist": 10_000}  # accuracy moves in steps of 1 / this

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


def _job_spec(
    n: int, rounds: int, ids: list, secure: dict | None, hidden: int, data: str, sharded: bool
):
    from gfl.fl.spec import JobSpec

    spec = (
        JobSpec.builder("bench-secagg")
        .model("mlp", in_features=FEATURES[data], hidden=hidden)
        .data(data)
        .train(epochs=1, batch_size=16, lr=0.1)
        .strategy("fedavg")
        .rounds(rounds, min_updates=n, timeout=120)
        .seed(11)
        .build()
        .replace(
            aggregation="sharded" if sharded else "all",
            shards=n if sharded else 0,  # one shard per member: 8.6's spread of the load
            max_samples=60_000,
            max_participants=max(n, 16),
            vote_timeout=60,
            availability_timeout=20,
            admission={"allow": [m.eth_address for m in ids], "bond": str(10**15)},
        )
    )
    return spec.replace(secure_aggregation=secure) if secure else spec


async def _run_job(
    n: int, rounds: int, secure: dict | None, root: Path, hidden: int, data: str, sharded: bool
) -> dict:
    """One job of n in-process runners; bytes per participant per round (mean and most),
    wall, accuracy."""
    import hashlib

    import trio

    from gfl.chain import open_chain
    from gfl.fl.codec import encode_frame
    from gfl.fl.data import load_dataset, load_partition
    from gfl.fl.trainer import initial_params
    from gfl.identity import NodeIdentity
    from gfl.scheduler.checkpoints import Checkpoints
    from gfl.scheduler.ledger import ChainLedger
    from gfl.scheduler.ports import NodeData
    from gfl.scheduler.registration import job_params
    from gfl.scheduler.runner import ChainPlace, JobRunner

    ids = [NodeIdentity.generate() for _ in range(n)]
    spec = _job_spec(n, rounds, ids, secure, hidden, data, sharded)
    owner = open_chain("embedded", NodeIdentity.generate(), state_dir=root / "chain")
    limiter = trio.CapacityLimiter(1)

    async def call(fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=limiter)

    frame = encode_frame(initial_params(spec))
    table = {hashlib.sha256(frame).digest(): frame}
    board: list[dict] = []
    params = job_params(spec, spec.deadline_after(int(time.time())))
    job_id, _ = owner.register_job(b"\x05" * 32, spec.spec_hash, hashlib.sha256(frame).digest(),
                                   params)  # fmt: skip
    place = ChainPlace(owner.chain_id, bytes.fromhex(owner.registry_address[2:]))

    class Exchange:  # the blob table and the round messages' board, shared by all runners
        def __init__(self):
            self.own: set[bytes] = set()  # what this runner holds: local, never fetched

        async def publish(self, kind, r, data, samples=0, signature=b""):
            return await self.hold(data)

        async def hold(self, data):
            h = hashlib.sha256(data).digest()
            table[h] = bytes(data)
            self.own.add(h)
            return h

        async def fetch(self, blob, owner, max_size, timeout):
            with trio.fail_after(timeout):
                while blob not in table:
                    await trio.sleep(0.01)
            return table[blob]

        async def fetch_many(self, blobs, owner, max_size, timeout):
            return {h: table[h] for h in blobs if h in table}

        async def load_local(self, blob):
            return table[blob] if blob in self.own else None

        async def post(self, body):
            board.append(body)

        def heard(self, kind, r):
            return [m for m in board if m["type"] == kind and m["round"] == r]

        async def ask(self, owner, r, shards):
            return 0  # every runner hears the whole board: nothing is missed

    test = load_dataset(data, train=False)
    accuracy: dict[int, float] = {}
    records: list[dict[int, dict]] = [{} for _ in range(n)]

    def emit(kind: str, data: dict) -> None:
        if kind == "job.round_evaluated":
            accuracy[data["round"]] = data["accuracy"]

    runners = [
        JobRunner(
            job_id=job_id.hex(),
            spec=spec,
            ledger=ChainLedger(owner.for_identity(ids[i]), job_id, call, allow=spec.allow_list),
            exchange=Exchange(),
            data=NodeData(load_partition(data, i, n, "iid", 0), test),
            checkpoints=Checkpoints(root / f"n{i}"),
            train_limiter=trio.CapacityLimiter(1),
            emit=lambda kind, data: emit(kind, data),
            record=lambda r, values, i=i: records[i].setdefault(r, {}).update(values),
            place=place,
        )
        for i in range(n)
    ]
    t0 = time.monotonic()
    async with trio.open_nursery() as nursery:
        for runner in runners:
            nursery.start_soon(runner.run)
    wall = time.monotonic() - t0
    st = await ChainLedger(owner, job_id, call).sync()
    parts = {"updates": 0, "deals": 0, "reveals": 0}
    most = 0.0
    for r in range(rounds):  # updates: each node's own sent, and what it fetched (records)
        rd = st.log.rounds[r]
        moved = [
            rec[r].get("bytes_sent_update", 0) + rec[r].get("bytes_received", 0) for rec in records
        ]
        parts["updates"] += sum(moved) / n
        most = max(most, *moved)
        # its shares blob sent and the others' read from the chain; reveals likewise
        parts["deals"] += sum(len(d.blob) for d in rd.deals)
        parts["reveals"] += sum(
            len(m["data"]) for m in board if m["round"] == r and m["type"] == "reveal"
        )
    return {
        "bytes": sum(parts.values()) / rounds,
        "most": (most + (parts["deals"] + parts["reveals"]) / rounds),
        "parts": {k: v / rounds for k, v in parts.items()},
        "wall": wall / rounds,
        "accuracy": accuracy.get(rounds - 1, float("nan")),
        "decided": sum(st.log.rounds[r].decision is not None for r in range(rounds)),
    }


def bench_rounds(
    sizes: list[int], rounds: int, hidden: int, levels: int, data: str, sharded: bool
) -> None:
    import tempfile

    import torch
    import trio

    torch.set_num_threads(1)
    table = {"threshold": 0, "neighbours": 0, "clip": 1.0, "weight_levels": levels}
    print(
        f"# {platform.processor() or platform.machine()}, {rounds} rounds, "
        f"{data} MLP (hidden {hidden}, test split {TEST_SIZE[data]:,}), weight_levels {levels}"
    )
    print(
        "| n | job | bytes / participant / round | × plain | most B | round wall s | × plain "
        "| accuracy | decided | updates / deals / reveals B |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        k = min(8, n - (n % 2)) if n > 2 else 2
        secure = {**table, "neighbours": k, "threshold": k // 2 + 2 if k + 1 > k // 2 + 2 else k}
        jobs: dict[str, tuple[dict | None, bool]] = {
            "plain": (None, False),
            "secure w=32": (secure, False),
            "secure w=24": ({**secure, "word_bits": 24}, False),
            "fixed w=24": ({**secure, "word_bits": 24, "masks": False}, False),
        }
        if sharded:  # beside the plain job: sharded, plain and secure (9.12), S = n
            jobs = {
                "plain": (None, False),
                f"plain sharded S={n}": (None, True),
                "secure w=24": ({**secure, "word_bits": 24}, False),
                f"secure w=24 sharded S={n}": ({**secure, "word_bits": 24}, True),
            }
        base: dict | None = None
        for name, (sa, shard) in jobs.items():
            with tempfile.TemporaryDirectory() as tmp:
                r = trio.run(_run_job, n, rounds, sa, Path(tmp), hidden, data, shard)
            base = base or r
            print(
                f"| {n} | {name} (k={sa['neighbours'] if sa else '-'}) | {r['bytes']:,.0f} "
                f"| {r['bytes'] / base['bytes']:.2f} | {r['most']:,.0f} | {r['wall']:.2f} "
                f"| {r['wall'] / base['wall']:.2f} | {r['accuracy']:.4f} | {r['decided']} "
                f"| {' / '.join(f'{v:,.0f}' for v in r['parts'].values())} |",
                flush=True,
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--coords", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--jobs", default="", help="member counts for the round benchmark, e.g. 4,8,16")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--hidden", type=int, default=32, help="the MLP's hidden width (rounds)")
    p.add_argument("--weight-levels", type=int, default=256, help="secure jobs' weight_levels")
    p.add_argument("--data", choices=sorted(FEATURES), default="digits", help="(rounds)")
    p.add_argument(
        "--sharded", action="store_true", help="(rounds) plain and secure, all-to-all and sharded"
    )
    args = p.parse_args()
    if args.data == "mnist":  # ../shared/data/mnist beside the checkout (see its README)
        shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
        os.environ.setdefault("GFL_DATA_DIR", str(shared))
    if args.jobs:
        sizes = [int(x) for x in args.jobs.split(",")]
        bench_rounds(sizes, args.rounds, args.hidden, args.weight_levels, args.data, args.sharded)
        return
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
