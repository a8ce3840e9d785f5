"""McMahan et al. 2017, Table 2 (MNIST CNN, E=5, B=10, C=0.1, 100 clients): rounds to 99 %.

The paper reports 20 rounds (IID) and 229 rounds (pathological non-IID, shards:2) for
FedAvg. This runs the same setup through gfl's simulator (real trainer, codec, FedAvg and
round state machine) and stops at the target accuracy, after --rounds, or after
--max-minutes of wall time, printing per-round progress and a summary with a projection.

    .venv/bin/python bench/mcmahan.py --partition iid --rounds 3 --max-minutes 10
    .venv/bin/python bench/mcmahan.py --partition shards:2 --rounds 400 --device cuda   # full
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gfl.fl.spec import JobSpec
from gfl.simulate.engine import progress_line, simulate

# ../shared/data/mnist beside the checkout (see its README)
SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"

PAPER = {"iid": 20, "shards:2": 229}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--partition", default="iid", help="iid | shards:2 (McMahan non-IID)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--target", type=float, default=0.99)
    ap.add_argument("--compression", default="none")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=0, help="training worker processes")
    ap.add_argument("--data-root", default=str(SHARED_MNIST))
    ap.add_argument("--out", default="bench/out/mcmahan.csv")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    spec = JobSpec(
        name="mcmahan-cnn",
        model="cnn",
        dataset="mnist",
        rounds=args.rounds,
        local_epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        compression=args.compression,
        seed=0,
    )
    t0 = time.monotonic()
    rows = simulate(
        spec,
        num_clients=args.clients,
        fraction=args.fraction,
        partition=args.partition,
        data_root=args.data_root,
        device=args.device,
        max_minutes=args.max_minutes,
        target_accuracy=args.target,
        metrics_path=args.out,
        progress=progress_line,
        workers=args.workers,
    )
    wall = time.monotonic() - t0
    per_round = sum(r["seconds"] for r in rows) / len(rows)
    reached = next((r["round"] for r in rows if r["test_accuracy"] >= args.target), None)
    paper = PAPER.get(args.partition)
    print(
        f"{'partition':10} {'rounds run':>10} {'final acc':>9} {'reached 99%':>11} "
        f"{'paper':>5} {'s/round':>8} {'projected to paper rounds':>26}"
    )
    proj = f"{paper * per_round / 3600:.1f} h" if paper else "-"
    print(
        f"{args.partition:10} {len(rows):>10} {rows[-1]['test_accuracy']:9.4f} "
        f"{reached if reached else 'no':>11} {paper or '-':>5} {per_round:8.1f} {proj:>26}"
    )
    print(f"wall {wall:.0f}s; per-round metrics in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
