"""McMahan et al. 2017, Table 2 (MNIST CNN, E=5, B=10, C=0.1, 100 clients): rounds to 99 %.

The paper reports 20 rounds (IID) and 229 rounds (pathological non-IID, shards:2) for
FedAvg. This runs the same setup through gfl's simulator (real trainer, codec, FedAvg and
round state machine) and stops at the target accuracy, after --rounds, or after
--max-minutes of wall time, printing per-round progress and a summary with a projection.

--compare runs the setting with each backend in turn, --repeat times (processes, then Ray,
each in a fresh process, the same number of clients training at once, 1 torch thread each)
and prints seconds per round and the peak memory of everything each run started (RSS and
PSS summed over the process tree, sampled every 0.25 s). On one machine Ray can only add
overhead.

    .venv/bin/python bench/mcmahan.py --partition iid --rounds 3 --max-minutes 10
    .venv/bin/python bench/mcmahan.py --compare --rounds 3            # processes vs Ray
    .venv/bin/python bench/mcmahan.py --partition shards:2 --rounds 400 --device cuda   # full

On a Ray cluster (`ray start --head` on one machine, `ray start --address HEAD:6379` on the
others, gfl installed on each; the MNIST files only where this runs):

    .venv/bin/python bench/mcmahan.py --backend ray --address auto --rounds 400
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from vs_flower import MemSampler  # noqa: E402

from gfl.cli.simulate import ProgressPrinter  # noqa: E402
from gfl.fl.spec import JobSpec  # noqa: E402
from gfl.simulate.engine import simulate  # noqa: E402
from gfl.simulate.ray_backend import RayOptions  # noqa: E402

# ../shared/data/mnist beside the checkout (see its README)
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"

PAPER = {"iid": 20, "shards:2": 229}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
    ap.add_argument("--threads", type=int, default=1, help="torch threads per client")
    ap.add_argument("--backend", choices=["inprocess", "processes", "ray"], default=None)
    ap.add_argument("--workers", type=int, default=0, help="processes / most Ray actors")
    ap.add_argument("--address", default=None, help="Ray: auto, HOST:PORT or ray://HOST:PORT")
    ap.add_argument("--client-gpus", type=float, default=0.0, help="Ray: GPU share per client")
    ap.add_argument("--data-root", default=str(SHARED_MNIST))
    ap.add_argument("--out", default="bench/out/mcmahan.csv")
    ap.add_argument("--compare", action="store_true", help="processes vs Ray, time and memory")
    ap.add_argument("--repeat", type=int, default=2, help="--compare: runs of each backend")
    ap.add_argument("--json", help=argparse.SUPPRESS)  # --compare's child writes its rows here
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> list[dict]:
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
    ray = args.backend == "ray" or args.address is not None
    return simulate(
        spec,
        num_clients=args.clients,
        fraction=args.fraction,
        partition=args.partition,
        data_root=args.data_root,
        device=args.device,
        max_minutes=args.max_minutes,
        target_accuracy=args.target,
        metrics_path=args.out,
        progress=ProgressPrinter(),
        backend=args.backend,
        workers=args.workers,
        threads=args.threads,
        ray_options=RayOptions(args.address, client_gpus=args.client_gpus) if ray else None,
    )


def summary(args: argparse.Namespace, rows: list[dict], wall: float) -> None:
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


def compare(argv: list[str], args: argparse.Namespace) -> int:
    """Each backend in child processes of its own, alternating, its process tree's memory
    sampled; later rounds' median and best (the machine is shared: the best is the steadier)."""
    base = [a for a in argv if a != "--compare"]
    base += ["--workers", str(args.workers or 2), "--target", "1.01"]  # every round runs
    runs: dict[str, list[dict]] = {"processes": [], "ray": []}
    for rep in range(args.repeat):
        for backend in runs:
            out = ROOT / "bench" / "out" / f"mcmahan-{backend}-{rep}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, __file__, *base, "--backend", backend, "--json", str(out)]
            with MemSampler() as mem:
                t0 = time.monotonic()
                subprocess.run(cmd, check=True, cwd=ROOT)
                wall = time.monotonic() - t0
            rows = json.loads(out.read_text())
            runs[backend].append({"rows": rows, "wall": wall, "rss": mem.peak, "pss": mem.peak_pss})
    print(
        f"\n{'backend':10} {'round 1 s':>9} {'later median':>12} {'later best':>10} "
        f"{'wall s':>7} {'peak RSS MB':>11} {'peak PSS MB':>11} {'acc':>7}  model"
    )
    summary: dict[str, dict] = {}
    for name, reps in runs.items():
        later = [r["seconds"] for rep in reps for r in rep["rows"][1:]]
        last = reps[-1]["rows"][-1]
        summary[name] = {
            "round1_s": statistics.median(rep["rows"][0]["seconds"] for rep in reps),
            "later_median_s": statistics.median(later) if later else None,
            "later_best_s": min(later) if later else None,
            "wall_s": round(statistics.median(rep["wall"] for rep in reps), 1),
            "peak_rss_mb": round(max(rep["rss"] for rep in reps) / 2**20),
            "peak_pss_mb": round(max(rep["pss"] for rep in reps) / 2**20),
            "hashes": sorted({rep["rows"][-1]["model_hash"][:16] for rep in reps}),
            "accuracy": last["test_accuracy"],
        }
        s = summary[name]
        med = f"{s['later_median_s']:.1f}" if later else "-"
        best = f"{s['later_best_s']:.1f}" if later else "-"
        print(
            f"{name:10} {s['round1_s']:9.1f} {med:>12} {best:>10} {s['wall_s']:7.1f} "
            f"{s['peak_rss_mb']:11} {s['peak_pss_mb']:11} {s['accuracy']:7.4f}  "
            f"{','.join(s['hashes'])}"
        )
    p, y = summary["processes"], summary["ray"]
    if p["later_median_s"] and y["later_median_s"]:
        median = y["later_median_s"] / p["later_median_s"]
        best = y["later_best_s"] / p["later_best_s"]
        pss = y["peak_pss_mb"] / p["peak_pss_mb"]
        print(
            f"ray / processes, later rounds: median {median:.2f}x, best {best:.2f}x; "
            f"peak PSS {pss:.2f}x"
        )
    print(json.dumps(summary))
    return 0 if p["hashes"] == y["hashes"] and len(p["hashes"]) == 1 else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.compare:
        return compare(argv, args)
    t0 = time.monotonic()
    rows = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows))
    summary(args, rows, time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
