"""Differential privacy (#24): the 4-node MNIST CNN job at ε = 1, 3, 8 and without DP.

Four clients, all of them every round (C = 1), IID shards of a subset of MNIST, McMahan's
CNN, E = 1, the same batch size in every run; the DP runs share a learning rate of their own
(clipped gradients are short: DP-SGD takes longer steps), and only ``[privacy]`` tells them
apart. Each client runs record-level DP-SGD (Opacus's per-sample clipping, Gaussian
noise calibrated from its own sampling rate so that the job's rounds spend exactly ε at
δ = 1e-5, RDP accountant). Prints accuracy after the last round, ε each client spent, the
noise, and the round wall against the no-DP run, next to Opacus's published central DP-SGD
figures for MNIST (one trusted party, all 60,000 records: not the same setting, a ceiling).
Rounds after the first count (imports and calibration land in the first); CPU seconds are
shown beside wall seconds because a shared machine's load moves the wall clock.

    .venv/bin/python bench/privacy.py                       # 3 rounds, 4 x 2,000 images
    .venv/bin/python bench/privacy.py --rounds 5 --per-client 3000 --epsilons 1,3,8
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gfl.fl.privacy import PrivacyAccount, round_plan  # noqa: E402
from gfl.fl.spec import JobSpec  # noqa: E402
from gfl.simulate.engine import Progress, simulate  # noqa: E402

SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"
CLIENTS = 4
DELTA = 1e-5
# Opacus's README, MNIST, central DP-SGD, δ = 1e-5: ε -> test accuracy (None: without DP)
OPACUS_CENTRAL = {None: 0.9894, 7.1: 0.9709, 3.0: 0.9678, 1.2: 0.9463}
NEAREST = {None: None, 8.0: 7.1, 3.0: 3.0, 1.0: 1.2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-client", type=int, default=2000, help="training images per client")
    ap.add_argument("--test", type=int, default=2000, help="test images")
    ap.add_argument("--epsilons", default="8,3,1")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05, help="learning rate without DP")
    ap.add_argument("--dp-lr", type=float, default=0.25, help="learning rate with DP-SGD")
    ap.add_argument("--clip", type=float, default=1.0, help="per-sample clipping norm")
    ap.add_argument("--data-root", default=str(SHARED_MNIST))
    ap.add_argument("--out", default="bench/out/privacy.json")
    return ap.parse_args(argv)


def _idx(path: Path) -> tuple[bytes, np.ndarray]:
    if path.suffix == ".gz":
        with gzip.open(path) as f:
            raw = f.read()
    else:
        raw = path.read_bytes()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)
    return raw[:4], data


def mnist_subset(source: Path, train: int, test: int) -> Path:
    """The first ``train`` / ``test`` images of MNIST as IDX files of their own (once)."""
    out = ROOT / "bench" / "out" / f"mnist-{train}-{test}"
    for prefix, n in (("train", train), ("t10k", test)):
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            dst = out / f"{prefix}-{kind}.gz"
            if dst.exists():
                continue
            src = source / f"{prefix}-{kind}.gz"
            src = src if src.exists() else source / f"{prefix}-{kind}"
            magic, data = _idx(src)
            part = data[:n]
            header = magic + b"".join(d.to_bytes(4, "big") for d in part.shape)
            out.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_suffix(".tmp")
            tmp.write_bytes(gzip.compress(header + part.tobytes(), mtime=0))
            tmp.replace(dst)
    return out


def spec_for(args: argparse.Namespace, epsilon: float | None) -> JobSpec:
    privacy = {"epsilon": epsilon, "delta": DELTA, "max_grad_norm": args.clip} if epsilon else {}
    return JobSpec(
        name=f"dp-{epsilon or 'off'}",
        model="cnn",
        dataset="mnist",
        rounds=args.rounds,
        local_epochs=1,
        batch_size=args.batch_size,
        lr=args.dp_lr if epsilon else args.lr,
        seed=0,
        privacy=privacy,
    )


def run(args: argparse.Namespace, epsilon: float | None, root: Path) -> dict:
    spec = spec_for(args, epsilon)
    cpu = [time.process_time()]  # CPU seconds at each round's end: robust to a shared machine

    def progress(p: Progress) -> None:
        if p.row is not None:
            cpu.append(time.process_time())

    t0 = time.monotonic()
    rows = simulate(
        spec,
        num_clients=CLIENTS,
        partition="iid",
        data_root=root,
        backend="inprocess",
        progress=progress,
    )
    wall = time.monotonic() - t0
    later = [r["seconds"] for r in rows[1:]] or [rows[0]["seconds"]]
    cpu_rounds = [b - a for a, b in itertools.pairwise(cpu)]
    out = {
        "epsilon": epsilon,
        "accuracy": rows[-1]["test_accuracy"],
        "accuracy_by_round": [r["test_accuracy"] for r in rows],
        "round_s": statistics.median(later),
        "round_cpu_s": statistics.median(cpu_rounds[1:] or cpu_rounds),
        "first_round_s": rows[0]["seconds"],
        "wall_s": round(wall, 1),
    }
    settings = spec.privacy_settings
    if settings is not None:  # what each client spent (every client holds per_client records)
        plan = round_plan(settings, args.per_client, spec.batch_size, 1, spec.rounds)
        account = PrivacyAccount(settings.accountant, [(r, plan) for r in range(len(rows))])
        out.update(spent=account.epsilon(DELTA), noise=plan.noise_multiplier, steps=plan.steps)
    print(json.dumps(out), flush=True)
    return out


def table(results: list[dict], args: argparse.Namespace) -> str:
    base = next(r for r in results if r["epsilon"] is None)
    lines = [
        f"MNIST CNN, {CLIENTS} clients x {args.per_client} images (IID), C = 1, E = 1, "
        f"B = {args.batch_size}, lr {args.lr} (DP: {args.dp_lr}), clip {args.clip}, δ = {DELTA:g}, "
        f"{args.rounds} rounds, {args.test} test images",
        "",
        "| ε (job) | ε spent per client | σ | accuracy after the last round "
        "| round wall s (vs no DP) | round CPU s (vs no DP) | Opacus central DP-SGD |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ref = NEAREST.get(r["epsilon"])
        central = OPACUS_CENTRAL[ref]
        label = "no DP" if ref is None else f"{ref:g}"
        job = "no DP" if r["epsilon"] is None else f"{r['epsilon']:g}"
        spent = f"{r['spent']:.3g}" if "spent" in r else "∞"
        lines.append(
            f"| {job} "
            f"| {spent} | {r.get('noise', 0):.3g} "
            f"| {100 * r['accuracy']:.2f} % "
            f"| {r['round_s']:.1f} ({r['round_s'] / base['round_s']:.2f}x) "
            f"| {r['round_cpu_s']:.1f} ({r['round_cpu_s'] / base['round_cpu_s']:.2f}x) "
            f"| {label}: {100 * central:.2f} % |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = mnist_subset(Path(args.data_root), CLIENTS * args.per_client, args.test)
    epsilons: list[float | None] = [None, *(float(e) for e in args.epsilons.split(",") if e)]
    results = [run(args, eps, root) for eps in epsilons]
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    print(table(results, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
