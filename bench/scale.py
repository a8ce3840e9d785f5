"""How far GFL scales on this machine: devnets of N node processes, and `gfl simulate`.

Devnet (digits, the demo job: MLP 64-64-10, FedAvg, E=3, B=16, min_updates = N-1):
round wall (median of rounds 2..R), RSS per node process (peak, psutil), and job
announcement latency (POST /jobs on node 0 -> the job is known on each node's API,
polled every 0.1 s; p50/p99 over nodes). `gfl simulate` (same MLP on digits, E=1,
fraction 1.0): rounds per minute and peak RSS of the simulator process.
Every run is bounded (--timeout per size) and stops all its processes.

    .venv/bin/python bench/scale.py --nodes 8,16,32 --clients 100,1000

`--sharding` compares the two ways to aggregate (docs/protocol.md, section 8) instead: per
size, the MNIST CNN (6.6 MB updates, lossless; a few hundred images per node, one local
epoch, 200 test images: the rounds measure aggregation, not training) runs once all-to-all
and once sharded, each job on a devnet of its own started alike, after the disk has written
what the one before left and (as root) the page cache is dropped and memory compacted
(`memory_reset`; `--one-devnet`: both jobs on one devnet). Per mode: round wall
(median of rounds 2..R), blob bytes each node downloaded per round (libp2p counters,
prefetches included; M_0 left out) as a multiple of M (one update), mean and max over
nodes, node CPU per round, the median over nodes and rounds of each phase's wall time as
the nodes record it (`phases_s`: t_train_s, t_fetch_s, ...), the page cache's unwritten MB
when the job started (`dirty_mb`), and the machine's speed before its devnet started
(`train_cpu_s`: one node's training step alone, single-threaded CPU seconds); then an
extrapolation to N = 100 and 1000 from the measured per-node bytes and CPU
(`sharding_table`).

    .venv/bin/python bench/scale.py --sharding --nodes 4,8,16,32 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from vs_flower import MemSampler  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")


def top_frames(collapsed: Path, k: int = 12) -> list[tuple[str, float]]:
    """Share of the samples in a py-spy "raw" profile charged to each gfl function.

    A sample is charged to the deepest gfl frame on its stack (the gfl code that asked for
    the work, library calls included), or to the library at its bottom when no gfl frame is
    on it; the k largest shares.
    """
    share: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        ours = [f for f in frames if "(gfl/" in f]
        key = re.sub(r":\d+\)$", ")", ours[-1]) if ours else "(not gfl) " + frames[0]
        share[key] = share.get(key, 0) + int(count)
        total += int(count)
    best = sorted(share.items(), key=lambda kv: -kv[1])[:k]
    return [(name, round(c / max(total, 1), 3)) for name, c in best]


def start_profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy on one node process, sampling only the thread holding the GIL (Python CPU time)."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        print("py-spy is not installed (pip install py-spy): no profile", flush=True)
        return None
    cmd = [str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "50"]
    cmd += ["--gil", "--format", "raw", "--output", str(out), "--nonblocking"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_devnet(n: int, rounds: int, timeout: float, profile: Path | None = None) -> dict[str, Any]:
    import psutil

    from gfl.node.devnet import demo_spec, start_devnet

    out: dict[str, Any] = {"nodes": n}
    t0 = time.time()
    per_node: dict[int, int] = {}
    with MemSampler() as mem:
        try:
            net = start_devnet(n, data="digits", prefer_anvil=True)
        except Exception as exc:
            return {
                **out,
                "error": f"start: {type(exc).__name__}: {str(exc)[:200]}",
                "t": time.time() - t0,
                "rss_total_mb": mem.peak / 2**20,
            }
        try:
            out["startup"] = time.time() - t0
            spec = demo_spec(n, data="digits", rounds=rounds)
            t_post = time.time()
            jid = net.client(0).request("POST", "/jobs", json={"spec": spec.to_dict()})["job_id"]
            spy = None
            if profile is not None:
                profile.mkdir(parents=True, exist_ok=True)
                raw = profile / f"node{n - 1}-of-{n}.txt"
                spy = start_profile(net.nodes[-1].process.pid, min(timeout, 60), raw)
            seen: dict[int, float] = {}
            ends: list[float] = []
            deadline = time.monotonic() + timeout
            while len(ends) < rounds and time.monotonic() < deadline:
                for i in range(n):
                    if i not in seen:
                        with contextlib.suppress(Exception):
                            net.client(i).request("GET", f"/jobs/{jid}")
                            seen[i] = time.time() - t_post
                with contextlib.suppress(Exception):
                    r = net.client(0).request("GET", f"/jobs/{jid}")["round"]
                    while len(ends) < r:
                        ends.append(time.time())
                for node in net.nodes:
                    with contextlib.suppress(psutil.Error):
                        rss = psutil.Process(node.process.pid).memory_info().rss
                        per_node[node.index] = max(per_node.get(node.index, 0), rss)
                time.sleep(0.1)
            if spy is not None:
                spy.wait(max(5, timeout))
                out["profile"] = top_frames(raw) if raw.exists() else []
            walls = [b - a for a, b in itertools.pairwise(ends)]
            ann = list(seen.values())
            out.update(
                rounds_done=len(ends),
                round_wall=statistics.median(walls) if walls else float("nan"),
                ann_p50=pct(ann, 0.5),
                ann_p99=pct(ann, 0.99),
                ann_seen=len(ann),
                rss_node_mb=statistics.mean(per_node.values()) / 2**20 if per_node else 0,
                load=os.getloadavg()[0],
            )
        finally:
            net.stop()
    out["rss_total_mb"] = mem.peak / 2**20
    out["pss_total_mb"] = mem.peak_pss / 2**20
    return out


def run_simulate(clients: int, rounds: int, minutes: float) -> dict[str, Any]:
    csv_path = Path(tempfile.mkstemp(suffix=".csv")[1])
    cmd = [
        sys.executable,
        "-m",
        "gfl",
        "simulate",
        "--dataset",
        "digits",
        "--model",
        "mlp",
        "--model-kwargs",
        '{"in_features": 64, "hidden": 64}',
        "--rounds",
        str(rounds),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--lr",
        "0.1",
        "--clients",
        str(clients),
        "--fraction",
        "1.0",
        "--threads",
        "1",
        "--max-minutes",
        str(minutes),
        "--out",
        str(csv_path),
    ]
    with MemSampler(period=0.1) as mem:
        t0 = time.time()
        try:
            p = subprocess.run(cmd, capture_output=True, timeout=minutes * 60 + 120, cwd=ROOT)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = -9
        wall = time.time() - t0
    rows = list(csv.DictReader(csv_path.open())) if csv_path.stat().st_size else []
    csv_path.unlink()
    secs = [float(r["seconds"]) for r in rows if r.get("seconds")]
    return {
        "clients": clients,
        "rc": rc,
        "rounds_done": len(rows),
        "wall": wall,
        "rounds_per_min": 60 / statistics.mean(secs) if secs else 0.0,
        "s_per_round": statistics.mean(secs) if secs else float("nan"),
        "rss_mb": mem.peak / 2**20,
        "load": os.getloadavg()[0],
        "acc": float(rows[-1]["test_accuracy"]) if rows else float("nan"),
    }


# -- sharded against all-to-all ------------------------------------------------------------------

SHARD_MODES = ("all", "sharded")


def _node_counters(net: Any) -> dict[int, tuple[int, float]]:
    """Per node: (blob bytes received so far, CPU seconds so far)."""
    import psutil

    out = {}
    for node in net.nodes:
        for attempt in range(10):  # a node's API may drop a request while 32 nodes aggregate
            try:
                st = net.client(node.index).status()
                break
            except Exception:
                if attempt == 9:
                    raise
                time.sleep(1)
        cpu = 0.0
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(node.process.pid).cpu_times()
            cpu = t.user + t.system
        out[node.index] = (int((st.get("net") or {}).get("blob_bytes_in", 0)), cpu)
    return out


def run_mode(
    net: Any,
    n: int,
    mode: str,
    rounds: int,
    timeout: float,
    windows: tuple[int, int, int],
    shards: int = 0,
    model0_held: bool = False,
) -> dict[str, Any]:
    """One job on a running devnet, aggregated ``mode``; its figures. ``windows``: the job's
    round, availability and vote timeouts (long: a slow 2-core machine must not void rounds);
    ``shards``: a sharded job's shard count (0: derived from the model, docs/protocol.md 8.1);
    an all-to-all job sends whole updates (one shard), as it would without this option.
    ``model0_held``: the nodes hold the job's initial model already (an earlier job on this
    devnet had the same one), so they do not fetch it and it is not subtracted."""
    from gfl.node.devnet import demo_spec

    round_timeout, availability, vote = windows
    spec = demo_spec(n, data="mnist", rounds=rounds, model="cnn").replace(
        name=f"scale-{mode}",
        aggregation=mode,
        min_updates=n,
        round_timeout=round_timeout,
        availability_timeout=availability,
        vote_timeout=vote,
        shards=shards if mode == "sharded" else 1,
    )
    before = _node_counters(net)
    dirty = _dirty_mb()
    t_post = time.time()
    jid = net.client(0).publish(spec.to_dict())["job_id"]
    ends: list[float] = []
    deadline = time.monotonic() + timeout
    infos: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            r = net.client(0).job(jid)["round"]
            while len(ends) < r:
                ends.append(time.time())
        with contextlib.suppress(Exception):
            infos = [net.client(node.index).job(jid) for node in net.nodes]
            if all(i["status"] == "finished" for i in infos):
                break
        time.sleep(0.2)
    else:
        return {"nodes": n, "mode": mode, "error": f"not finished in {timeout:.0f} s"}
    after = _node_counters(net)
    details = infos
    update = [
        m["metrics"].get("bytes_sent_update", 0)
        for d in details
        for m in d.get("rounds_detail", [])
        if m["metrics"].get("bytes_sent_update")
    ]
    size_m = statistics.mean(update) if update else float("nan")
    model0, shards = _model0(spec)
    fetched0 = 0 if model0_held else model0  # what each node but the publisher fetched once
    down = [(after[i][0] - before[i][0] - (fetched0 if i else 0)) / rounds for i in sorted(after)]
    cpu = [(after[i][1] - before[i][1]) / rounds for i in sorted(after)]
    all_walls = [b - a for a, b in itertools.pairwise([t_post, *ends])]
    walls = all_walls[1:]  # the first includes the job's announcement and M_0's fetch
    phases: dict[str, float] = {}
    times: dict[str, list[float]] = {}  # each node's own wall time per phase and round
    for d in details:
        for rd in d.get("rounds_detail", []):
            for k, v in rd["metrics"].items():
                if k.startswith("bytes_") and k not in ("bytes_sent_update", "bytes_received"):
                    phases[k] = phases.get(k, 0) + v / (n * rounds)
                elif k.startswith("t_") and isinstance(v, int | float):
                    times.setdefault(k, []).append(v)
    return {
        "nodes": n,
        "mode": mode,
        "rounds": rounds,
        "update_bytes": size_m,
        "round_wall": statistics.median(walls) if walls else float("nan"),
        "walls": walls,
        "first_wall": all_walls[0] if all_walls else float("nan"),
        "down_mean_m": statistics.mean(down) / size_m,
        "down_max_m": max(down) / size_m,
        "cpu_node_s": statistics.mean(cpu),
        "phases_m": {k: v / size_m for k, v in sorted(phases.items())},
        "phases_s": {k: statistics.median(v) for k, v in sorted(times.items())},
        "shards": shards,
        "load": os.getloadavg()[0],
        "dirty_mb": dirty,
    }


def _dirty_mb() -> float:
    """The page cache's unwritten megabytes now (Dirty + Writeback): what the disk still
    owes an earlier job, paid during this one."""
    with contextlib.suppress(OSError):
        lines = Path("/proc/meminfo").read_text().splitlines()
        return (
            sum(int(x.split()[1]) for x in lines if x.startswith(("Dirty:", "Writeback:"))) / 1024
        )
    return float("nan")


def _model0(spec: Any) -> tuple[int, int]:
    """(M_0's size in bytes: what every node but the owner fetches once, the job's shards)."""
    from gfl.fl.codec import encode_frame
    from gfl.fl.shards import layout_of
    from gfl.fl.trainer import initial_params

    params = initial_params(spec)
    return len(encode_frame(params)), layout_of(params, spec.shards).count


def train_cpu_s(n: int, images: int, repeat: int = 3) -> float:
    """This machine's speed now, for comparing runs made at other times (a shared VM
    drifts): the least CPU time of ``repeat`` single-threaded `train_local` runs of the
    sharding job's model on ``images`` random images, what each node does once a round."""
    import numpy as np
    import torch

    from gfl.fl.data import ArrayDataset
    from gfl.fl.trainer import initial_params, train_local
    from gfl.node.devnet import demo_spec

    spec = demo_spec(n, data="mnist", rounds=1, model="cnn")
    params = initial_params(spec)
    rng = np.random.default_rng(0)
    x = rng.random((images, 1, 28, 28), dtype=np.float32)
    data = ArrayDataset(x, rng.integers(0, 10, images).astype(np.int64))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = math.inf
        for _ in range(repeat):
            t = time.thread_time()
            train_local(spec, params, data, seed=0)
            best = min(best, time.thread_time() - t)
    finally:
        torch.set_num_threads(threads)
    return best


def run_sharding(
    n: int,
    rounds: int,
    timeout: float,
    per_node: int,
    modes: tuple[str, ...] = SHARD_MODES,
    windows: tuple[int, int, int] = (600, 300, 900),
    shards: int = 0,
    one_devnet: bool = False,
) -> list[dict[str, Any]]:
    """Each mode's job on a devnet of its own, started alike (``one_devnet``: one after the
    other on one devnet, as the bench did before 2026-12-06: the second job then starts
    with the first one's gigabytes of blobs still being written back to the disk)."""
    out = []
    for group in [modes] if one_devnet else [(m,) for m in modes]:
        reset = _settle_memory()
        calibration = train_cpu_s(n, per_node)  # before the devnet: an idle machine
        for res in _on_devnet(n, rounds, timeout, per_node, group, windows, shards):
            res["train_cpu_s"] = calibration
            res["one_devnet"] = one_devnet
            res["memory_reset"] = reset
            out.append(res)
            print(json.dumps(res), flush=True)
    return out


def _settle_memory() -> bool:
    """Start a devnet on a machine whose memory an earlier one does not still burden: its
    writes flushed (os.sync) and, where this process may (root), the page cache dropped and
    free memory compacted, so that no job pays the previous one's reclaim and compaction
    (hours of runs fragment a 24 GiB VM's memory: the kernel's direct compaction stalls grew
    by ~1,100 during one all-to-all job). True if the caches were dropped."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        Path("/proc/sys/vm/compact_memory").write_text("1\n")
    except OSError:
        return False
    return True


def _on_devnet(
    n: int,
    rounds: int,
    timeout: float,
    per_node: int,
    modes: tuple[str, ...],
    windows: tuple[int, int, int],
    shards: int,
) -> list[dict[str, Any]]:
    """The jobs of ``modes``, one after the other, on one new devnet of ``n`` nodes."""
    from gfl.node.devnet import start_devnet

    out = []
    t0 = time.time()
    net = start_devnet(
        n,
        data="mnist",
        data_limit=per_node,
        prefer_anvil=True,
        train={"eval_limit": 200},
    )
    try:
        startup = time.time() - t0
        # (every 2 s: reading 32 processes' smaps_rollup 4 times a second took ~2.6 % of the
        # machine's CPU during the measured rounds, perf record -a)
        with MemSampler(period=2.0) as mem:
            for k, mode in enumerate(modes):
                res = run_mode(net, n, mode, rounds, timeout, windows, shards, model0_held=k > 0)
                res["startup"] = startup
                out.append(res)
        for res in out:
            res["pss_total_mb"] = mem.peak_pss / 2**20
    finally:
        logs = ROOT / "bench" / "out" / "scale-logs" / f"n{n}-{'-'.join(modes)}"
        logs.mkdir(parents=True, exist_ok=True)
        for node in net.nodes:  # the nodes' own logs, for a round that went wrong
            with contextlib.suppress(OSError):
                shutil.copy(node.home / "logs" / "node.log", logs / f"node{node.index}.log")
        net.stop()
    return out


def sharding_table(rows: list[dict[str, Any]], replicas: int = 3) -> str:
    """The measured rows, then N = 100 and 1000 extrapolated: bytes from the per-node
    formulas calibrated on the largest measured N, CPU by a least-squares line in N."""
    lines = [
        f"{'N':>5} {'mode':>8} {'round s':>8} {'down mean':>9} {'down max':>8} "
        f"{'N-1':>5} {'CPU/node s':>10} {'shards':>6}"
    ]
    by_mode: dict[str, list[dict[str, Any]]] = {m: [] for m in SHARD_MODES}
    for r in rows:
        if "error" in r:
            lines.append(f"{r['nodes']:>5} {r['mode']:>8} FAILED: {r['error']}")
            continue
        by_mode[r["mode"]].append(r)
        lines.append(
            f"{r['nodes']:>5} {r['mode']:>8} {r['round_wall']:8.1f} {r['down_mean_m']:8.2f}M "
            f"{r['down_max_m']:7.2f}M {r['nodes'] - 1:>5} {r['cpu_node_s']:10.1f} {r['shards']:>6}"
        )
    for mode, rs in by_mode.items():
        if len(rs) < 2:
            continue
        xs = [float(r["nodes"]) for r in rs]
        ys = [r["cpu_node_s"] for r in rs]
        slope, icpt = statistics.linear_regression(xs, ys)
        for big in (100, 1000):
            # a job that large sets shards to about N (docs/protocol.md, 8.6), else one
            # aggregator of a shard fetches N pieces of M / S
            s = rs[-1]["shards"] if mode == "all" else min(256, big)
            if mode == "all":
                mean = mx = big - 1
            else:  # aggregators: replicas per shard; settled: the S - own reduced shards
                pieces, settled = _per_m(rs[-1], replicas)
                mean = replicas * (big - 1) / big * pieces + (1 - replicas / big) * settled
                mx = math.ceil(replicas * s / big) * (big - 1) / s * pieces + settled  # balanced
            lines.append(
                f"{big:>5} {mode:>8} {'(extrap.)':>8} {mean:8.2f}M {mx:7.2f}M {big - 1:>5} "
                f"{icpt + slope * big:10.1f} {s:>6}"
            )
    return "\n".join(lines)


def _per_m(row: dict[str, Any], replicas: int) -> tuple[float, float]:
    """(pieces, settled) in M, from a measured sharded row: what all S shards' pieces of one
    update weigh (~1 M) and all S reduced shards of one round (~1.2 M: the uncompressed
    float32 frames, against an update's lossless zstd frame; ~2.4 M while they were float64,
    spec version 2), the weights the download formulas multiply."""
    n, phases = row["nodes"], row["phases_m"]
    pieces = phases.get("bytes_shards", 0.0) / (replicas * (n - 1) / n)
    settled = phases.get("bytes_settled", 0.0) / (1 - replicas / n)
    return pieces, settled


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", default="8,16,32")
    ap.add_argument("--clients", default="100,1000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=240, help="seconds per devnet size")
    ap.add_argument("--sim-minutes", type=float, default=3)
    ap.add_argument("--json", default="bench/out/scale.json")
    ap.add_argument("--profile", type=Path, help="py-spy the last node of each devnet into DIR")
    ap.add_argument("--sharding", action="store_true", help="all-to-all vs sharded, MNIST CNN")
    ap.add_argument("--per-node", type=int, default=300, help="--sharding: images per node")
    ap.add_argument("--modes", default=",".join(SHARD_MODES), help="--sharding: all,sharded")
    ap.add_argument(
        "--one-devnet",
        action="store_true",
        help="--sharding: the modes' jobs one after the other on one devnet (default: one each)",
    )
    ap.add_argument(
        "--windows",
        default="600,300,900",
        help="--sharding: the job's round, availability and vote timeouts (s)",
    )
    ap.add_argument(
        "--shards", default="0", help="--sharding: the jobs' shards (0: derived; n: one per node)"
    )
    ap.add_argument(
        "--table", nargs="+", type=Path, help="--sharding's table from saved JSON files, no run"
    )
    args = ap.parse_args()
    if args.table:
        saved = {  # a later file's row replaces an earlier one's of the same N and mode
            (r["nodes"], r["mode"]): r
            for p in args.table
            for r in json.loads(p.read_text())["sharding"]
        }
        print(sharding_table([saved[k] for k in sorted(saved)]))
        return 0
    print(f"load average at start: {os.getloadavg()}", flush=True)
    if args.sharding:
        signal.signal(signal.SIGTERM, _interrupt)  # a stopped run still stops its devnet
        rows: list[dict[str, Any]] = []
        for n in [int(x) for x in args.nodes.split(",") if x]:
            modes = tuple(m for m in args.modes.split(",") if m)
            windows = tuple(int(x) for x in args.windows.split(","))
            assert len(windows) == 3, "--windows: three numbers"
            shards = n if args.shards == "n" else int(args.shards)
            rows += run_sharding(
                n, args.rounds, args.timeout, args.per_node, modes, windows, shards,
                args.one_devnet,
            )  # fmt: skip
        print("\n" + sharding_table(rows))
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"sharding": rows}, indent=1))
        return 0
    res: dict[str, list[dict[str, Any]]] = {"devnet": [], "simulate": []}
    for c in [int(x) for x in args.clients.split(",") if x]:
        res["simulate"].append(run_simulate(c, args.rounds, args.sim_minutes))
        print(json.dumps(res["simulate"][-1]), flush=True)
    for n in [int(x) for x in args.nodes.split(",") if x]:
        res["devnet"].append(run_devnet(n, args.rounds, args.timeout, args.profile))
        print(json.dumps(res["devnet"][-1]), flush=True)
    print(
        f"\n{'nodes':>5} {'start-up s':>10} {'round s':>8} {'RSS/node MB':>11} "
        f"{'RSS total MB':>12} {'PSS total MB':>12} {'ann p50 s':>9} {'ann p99 s':>9} {'load':>5}"
    )
    for d in res["devnet"]:
        if "error" in d:
            print(f"{d['nodes']:>5} FAILED: {d['error']}")
            continue
        print(
            f"{d['nodes']:>5} {d['startup']:10.1f} {d['round_wall']:8.2f} "
            f"{d['rss_node_mb']:11.0f} {d['rss_total_mb']:12.0f} {d['pss_total_mb']:12.0f} "
            f"{d['ann_p50']:9.2f} "
            f"{d['ann_p99']:9.2f} {d['load']:5.1f}"
        )
    print(
        f"\n{'clients':>7} {'rounds':>6} {'s/round':>8} {'rounds/min':>10} {'RSS MB':>7} {'acc':>6}"
    )
    for s in res["simulate"]:
        print(
            f"{s['clients']:>7} {s['rounds_done']:>6} {s['s_per_round']:8.2f} "
            f"{s['rounds_per_min']:10.2f} {s['rss_mb']:7.0f} {s['acc']:6.3f}"
        )
    for d in res["devnet"]:
        for name, share in d.get("profile", []):
            print(f"  {d['nodes']:>3} nodes, last node: {share:6.1%} of its Python CPU in {name}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
