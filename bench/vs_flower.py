"""GFL vs Flower's deployment engine vs a no-framework loop, one run, same job.

Job (issue 8 anchor): McMahan MNIST CNN, FedAvg, 4 clients x 3,000 IID MNIST images,
E=1, B=10, SGD lr 0.05, seed 7, 1 torch thread per client. Every system trains with
gfl's own trainer (`gfl.fl.trainer.train_local`), on partitions read by gfl's
`DataSource` (iid, seed 0, first 3,000), from the same initial model, so the figures
differ only by what the framework adds.

  (a) gfl: `start_devnet(4, data="mnist", data_limit=3000)` — 4 node processes, anvil
      chain, job posted through node 0's API, min_updates = 4;
  (b) Flower 1.42 deployment engine: 1 `flower-superlink` + 4 `flower-supernode`
      processes on 127.0.0.1 (insecure), `flwr run bench/flower_app local --stream`;
      telemetry, update check and runtime dependency install off;
  (c) baseline: a coordinator and 4 persistent multiprocessing workers (pipes).

Per round: wall (between successive global-model evaluations), overhead (wall minus the
slowest client's training), start-up (end of round 1 minus launch minus the median
steady-state round), peak RSS summed over every process the system started (psutil,
sampled every 0.25 s), bytes per client (gfl: its own counters; Flower: the ArrayRecord
payload bytes of each message, i.e. np.save bytes, counted in the ClientApp; baseline:
pickled parameter bytes through the pipes), and test accuracy after the last round.

    .venv/bin/python bench/vs_flower.py                       # all three, 5 rounds
    .venv/bin/python bench/vs_flower.py --only gfl --compression int8
    .venv/bin/python bench/vs_flower.py --only flower --rounds 1 --limit 300   # smoke
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# ../shared/data/mnist beside the checkout (see its README)
SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PY = sys.executable
BIN = Path(PY).parent
DATA = os.environ.get("GFL_DATA_DIR", str(SHARED_MNIST))
ANCHOR = {  # issue 8: Flower 1.42 deployment engine, measured on this kind of machine
    "wall": 24.7,
    "overhead": 12.5,
    "startup": 11.6,
    "rss_mb": 6 * 1024,
    "bytes_client": 6.66e6,
    "accuracy": 0.977,
    "baseline_wall": 10.1,
}


class MemSampler:
    """Peaks of the summed RSS and PSS of this process's descendants (what a system started).

    RSS counts a shared library's pages once per process that maps them; PSS splits shared
    pages among the processes that share them, so its sum is the physical memory the system
    holds. The issue's goal is stated in RSS; both are reported.
    """

    def __init__(self, period: float = 0.25, include_self: bool = False) -> None:
        self.period, self.include_self = period, include_self
        self.peak = 0
        self.peak_pss = 0
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            procs = [me] if self.include_self else []
            total = pss = 0
            for p in [*procs, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
                    pss += _pss(p.pid)
            self.samples.append(total)
            self.peak = max(self.peak, total)
            self.peak_pss = max(self.peak_pss, pss)
            self._stop.wait(self.period)

    def __enter__(self) -> MemSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join(5)


def _pss(pid: int) -> int:
    """Proportional set size in bytes from /proc/<pid>/smaps_rollup (0 where unreadable)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def summarize(
    name: str,
    launch: float,
    ends: list[float],
    train_max: list[float],
    accuracy: float,
    rss: int,
    pss: int,
    bytes_up: float,
    bytes_down: float,
    **extra: Any,
) -> dict[str, Any]:
    """Per-round figures from round-end timestamps (ends[0] = end of round 1)."""
    walls = [b - a for a, b in itertools.pairwise(ends)]
    steady = statistics.median(walls) if walls else float("nan")
    over = [w - t for w, t in zip(walls, train_max[1:], strict=False)]
    return {
        "system": name,
        "rounds": len(ends),
        "wall": steady,
        "walls": [round(w, 2) for w in walls],
        "train_max": statistics.median(train_max[1:]) if len(train_max) > 1 else float("nan"),
        "overhead": statistics.median(over) if over else float("nan"),
        "startup": ends[0] - launch - steady,
        "rss_mb": rss / 2**20,
        "pss_mb": pss / 2**20,
        "bytes_up": bytes_up,
        "bytes_down": bytes_down,
        "accuracy": accuracy,
        **extra,
    }


# -- (a) gfl --------------------------------------------------------------------------------


def run_gfl(rounds: int, limit: int, compression: str, timeout: float) -> dict[str, Any]:
    from gfl.fl.spec import JobSpec
    from gfl.node.devnet import DEMO_BOND, start_devnet
    from gfl.scheduler.report import PHASES

    os.environ["GFL_DATA_DIR"] = DATA
    with MemSampler() as mem:
        launch = time.time()
        net = start_devnet(4, data="mnist", data_limit=limit, prefer_anvil=True)
        try:
            ready = time.time() - launch
            spec = (
                JobSpec.builder("vs-flower")
                .model("cnn")
                .data("mnist")
                .train(epochs=1, batch_size=10, lr=0.05)
                .strategy("fedavg")
                .rounds(rounds, min_updates=4, timeout=120)
                .compression(compression)
                .seed(7)
                .build()
                .replace(max_samples=limit, admission={"bond": DEMO_BOND})
            )
            job = net.client(0).request("POST", "/jobs", json={"spec": spec.to_dict()})
            jid = job["job_id"]
            ends: list[float] = []
            c0 = net.client(0)
            deadline = time.monotonic() + timeout
            while len(ends) < rounds:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"gfl: {len(ends)}/{rounds} rounds in {timeout:.0f}s")
                with contextlib.suppress(Exception):
                    r = c0.request("GET", f"/jobs/{jid}")["round"]
                    while len(ends) < r:
                        ends.append(time.time())
                time.sleep(0.1)
            # evaluation runs beside the next round: wait for the last round's figures
            while True:
                infos = [net.client(i).request("GET", f"/jobs/{jid}") for i in range(4)]
                if all(i["status"] != "active" for i in infos) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            # nodes test on `[train] eval_limit` examples; the final model is scored here on
            # the whole test set, as the baseline and Flower are
            from gfl.fl.data import load_dataset
            from gfl.fl.trainer import evaluate
            from gfl.scheduler.checkpoints import Checkpoints

            final = Checkpoints(net.nodes[0].home / "models" / jid).latest()
            full_acc = evaluate(spec, final[1], load_dataset("mnist", root=DATA, train=False))[
                "accuracy"
            ]
        finally:
            net.stop()
    details = [{rd["round"]: rd["metrics"] for rd in i["rounds_detail"]} for i in infos]
    train_max = [max(d[r].get("t_train_s", 0.0) for d in details) for r in range(rounds)]
    up = statistics.mean(d[r].get("bytes_sent_update", 0) for d in details for r in range(rounds))
    down = statistics.mean(d[r].get("bytes_received", 0) for d in details for r in range(rounds))
    acc = full_acc
    phases = {  # median over nodes and rounds: where a gfl round's time goes
        k: round(statistics.median(d[r].get(k, 0.0) for d in details for r in range(rounds)), 2)
        for k in PHASES
    }
    accs = [details[0][r].get("accuracy") for r in range(rounds)]
    return summarize(
        f"gfl ({compression})",
        launch,
        ends,
        train_max,
        acc,
        mem.peak,
        mem.peak_pss,
        up,
        down,
        ready=ready,
        accs=accs,
        chain=net.chain_kind,
        phases=phases,
    )


# -- (b) Flower deployment engine -----------------------------------------------------------


def _free_port() -> int:
    from gfl.chain.devchain import free_port

    return free_port()


def _wait_port(port: int, timeout: float) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")
        time.sleep(0.1)


def run_flower(rounds: int, limit: int, timeout: float) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="gfl-vsflower-"))
    logp = home / "rounds.jsonl"
    # 1.42 serves the Runtime, Control and Fleet APIs over HTTP on one --host/--port
    link = _free_port()
    fleet = control = link
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\n'
        f'address = "127.0.0.1:{control}"\ninsecure = true\n'
    )
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # it spawns flower-superexec
    }
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, cmd: list[str]) -> None:
        out = open(home / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        procs.append(
            subprocess.Popen(
                cmd,
                env=env,
                stdout=out,
                stderr=out,
                cwd=home,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        )

    cfg = f"num-server-rounds={rounds} limit={limit} data-root='{DATA}' log-path='{logp}'"
    try:
        with MemSampler() as mem:
            launch = time.time()
            spawn(
                "superlink",
                [
                    str(BIN / "flower-superlink"),
                    "--insecure",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(link),
                    "--disable-runtime-dependency-installation",
                ],
            )
            for i in range(4):
                spawn(
                    f"supernode{i}",
                    [
                        str(BIN / "flower-supernode"),
                        "--insecure",
                        "--superlink",
                        f"127.0.0.1:{fleet}",
                        "--port",
                        str(_free_port()),
                        "--node-config",
                        f"partition-id={i} num-partitions=4",
                    ],
                )
            _wait_port(link, 60)
            run = subprocess.run(
                [
                    str(BIN / "flwr"),
                    "run",
                    str(ROOT / "bench" / "flower_app"),
                    "local",
                    "--run-config",
                    cfg,
                    "--stream",
                ],
                env=env,
                cwd=home,
                capture_output=True,
                timeout=timeout,
            )
        if run.returncode != 0 or not logp.exists():
            tail = (run.stdout + run.stderr).decode(errors="replace")[-2000:]
            raise RuntimeError(f"flwr run failed (rc {run.returncode}):\n{tail}")
        rows = [json.loads(x) for x in logp.read_text().splitlines()]
    except BaseException:
        for f in sorted(home.glob("*.log")):
            tail = f.read_text(errors="replace")[-1500:]
            sys.stderr.write(f"--- {f.name} (tail):\n{tail}\n")
        raise
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, 15)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait(5)
        keep = os.environ.get("GFL_BENCH_KEEP")
        if not keep:
            shutil.rmtree(home, ignore_errors=True)
    ends = [r["t"] for r in rows if r["kind"] == "round_end" and r["round"] >= 1]
    clients = [r for r in rows if r["kind"] == "client"]
    train_max = [
        max(c["train_s"] for c in clients if c["round"] == k) for k in range(1, rounds + 1)
    ]
    acc = [r for r in rows if r["kind"] == "round_end"][-1]["accuracy"]
    start = next(r["t"] for r in rows if r["kind"] == "server_start")
    return summarize(
        "flower 1.42",
        launch,
        ends,
        train_max,
        acc,
        mem.peak,
        mem.peak_pss,
        statistics.mean(c["bytes_up"] for c in clients),
        statistics.mean(c["bytes_down"] for c in clients),
        ready=start - launch,
        accs=[r["accuracy"] for r in rows if r["kind"] == "round_end" and r["round"] >= 1],
    )


# -- (c) no framework -----------------------------------------------------------------------


def _worker(index: int, limit: int, conn: Any) -> None:
    import torch

    torch.set_num_threads(1)
    from gfl.fl.trainer import train_local
    from gfl.scheduler.sources import DataSource

    data = DataSource(
        "mnist", root=DATA, partition="iid", index=index, of=4, seed=0, limit=limit
    ).load()
    conn.send("ready")
    while True:
        msg = conn.recv_bytes()
        if not msg:
            return
        spec, glob, r = pickle.loads(msg)
        t0 = time.time()
        res = train_local(spec, glob, data.train, seed=spec.seed + r)
        t = time.time() - t0
        conn.send_bytes(
            pickle.dumps(
                ({k: glob[k] + res.update[k] for k in glob}, res.num_samples, t), protocol=5
            )
        )


def _coordinator(rounds: int, limit: int, out: Any) -> None:
    import multiprocessing as mp

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from gfl.fl.data import load_dataset
    from gfl.fl.spec import JobSpec
    from gfl.fl.trainer import evaluate, initial_params

    ctx = mp.get_context("spawn")
    spec = JobSpec(
        name="vs-flower",
        model="cnn",
        dataset="mnist",
        rounds=rounds,
        local_epochs=1,
        batch_size=10,
        lr=0.05,
        seed=7,
    )
    pipes, procs = [], []
    for i in range(4):
        a, b = ctx.Pipe()
        p = ctx.Process(target=_worker, args=(i, limit, b), daemon=True)
        p.start()
        pipes.append(a)
        procs.append(p)
    test = load_dataset("mnist", root=DATA, train=False)
    for a in pipes:
        a.recv()
    params = initial_params(spec)
    ends, train_max, accs, nbytes = [], [], [], []
    for r in range(rounds):
        msg = pickle.dumps((spec, params, r), protocol=5)
        for a in pipes:
            a.send_bytes(msg)
        replies = [pickle.loads(b) for b in (a.recv_bytes() for a in pipes)]
        nbytes.append(len(msg))
        total = sum(n for _, n, _ in replies)
        params = {
            k: sum(p[k].astype(np.float64) * n for p, n, _ in replies) / total for k in params
        }
        params = {k: v.astype(np.float32) for k, v in params.items()}
        accs.append(evaluate(spec, params, test)["accuracy"])
        ends.append(time.time())
        train_max.append(max(t for _, _, t in replies))
    for a in pipes:
        a.send_bytes(b"")
    for p in procs:
        p.join(10)
    out.put({"ends": ends, "train_max": train_max, "accs": accs, "bytes": nbytes})


def run_baseline(rounds: int, limit: int, timeout: float) -> dict[str, Any]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with MemSampler() as mem:
        launch = time.time()
        p = ctx.Process(target=_coordinator, args=(rounds, limit, q))
        p.start()
        try:
            res = q.get(timeout=timeout)
        finally:
            p.join(20)
            if p.is_alive():
                p.kill()
    b = statistics.mean(res["bytes"])
    return summarize(
        "no framework",
        launch,
        res["ends"],
        res["train_max"],
        res["accs"][-1],
        mem.peak,
        mem.peak_pss,
        b,
        b,
        accs=res["accs"],
    )


# -- table ----------------------------------------------------------------------------------


def print_table(
    rows: list[dict[str, Any]], base: dict[str, Any] | None, flower: dict[str, Any] | None
) -> None:
    print(
        f"\n{'system':16} {'round s':>8} {'xbase':>6} {'slowest train':>13} {'overhead':>8} "
        f"{'start-up':>8} {'peak RSS MB':>11} {'PSS MB':>7} {'up MB/cl':>8} {'down MB/cl':>10} "
        f"{'acc':>7}"
    )
    for r in rows:
        xb = r["wall"] / base["wall"] if base else float("nan")
        print(
            f"{r['system']:16} {r['wall']:8.2f} {xb:6.2f} {r['train_max']:13.2f} "
            f"{r['overhead']:8.2f} {r['startup']:8.1f} {r['rss_mb']:11.0f} "
            f"{r.get('pss_mb', float('nan')):7.0f} "
            f"{r['bytes_up'] / 1e6:8.3f} {r['bytes_down'] / 1e6:10.3f} {r['accuracy']:7.4f}"
        )
    ref = flower or {**ANCHOR, "system": "ANCHOR (issue 8)"}
    for r in rows:
        if r is flower or r is base:
            continue
        print(
            f"{r['system']} vs {ref['system']}: overhead {r['overhead'] / ref['overhead']:.3f}x, "
            f"start-up {r['startup'] / ref['startup']:.2f}x, "
            f"memory {r['rss_mb'] / ref['rss_mb']:.2f}x RSS"
            + (f" / {r['pss_mb'] / ref['pss_mb']:.2f}x PSS, " if "pss_mb" in ref else ", ")
            + f"bytes up/client {_ref_bytes(ref) / max(r['bytes_up'], 1):.1f}x fewer"
        )


def _ref_bytes(ref: dict[str, Any]) -> float:
    return float(ref.get("bytes_client", ref.get("bytes_up", 0)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--limit", type=int, default=3000)
    ap.add_argument("--only", default="gfl,flower,baseline")
    ap.add_argument("--compression", default="none", help="gfl codec(s), comma separated")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--json", default="bench/out/vs_flower.json")
    args = ap.parse_args()
    only = args.only.split(",")
    print(f"load average at start: {os.getloadavg()}", flush=True)
    rows: list[dict[str, Any]] = []
    base = flower = None
    if "baseline" in only:
        base = run_baseline(args.rounds, args.limit, args.timeout)
        rows.append(base)
        print(json.dumps(base), flush=True)
    if "gfl" in only:
        for c in args.compression.split(","):
            rows.append(run_gfl(args.rounds, args.limit, c, args.timeout))
            print(json.dumps(rows[-1]), flush=True)
    if "flower" in only:
        try:
            flower = run_flower(args.rounds, args.limit, args.timeout)
            rows.append(flower)
            print(json.dumps(flower), flush=True)
        except Exception as exc:  # recorded, the comparison falls back to the anchor
            print(f"FLOWER FAILED: {exc}", flush=True)
    print(f"load average at end: {os.getloadavg()}")
    print_table(rows, base, flower)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
