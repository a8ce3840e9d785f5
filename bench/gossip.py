"""Announcement latency to all of N node processes over GFL gossip (p50/p99).

Node 0 is the bootstrap peer and the publisher; the others find each other
through it. Latency = receive time - publish time (one machine, one clock).

On a machine with fewer cores than nodes the latency is set by the CPU that all
processes together spend per message, so that is measured too: the CPU time of
all node processes during the publish phase, less what they spend idle (measured
over ``--idle`` seconds before it), divided by the messages published. Copies
received per delivered message show the mesh's duplicate traffic.

Usage: python bench/gossip.py [--nodes 16] [--msgs 50] [--settle 0] [--profile relay.txt]
(``--settle`` waits that long after set-up before measuring, so that the start-up's
discovery and mesh building are over; ``--profile`` records node 1, a relay, with
``py-spy record --gil -f raw``: the publish phase to relay.txt, the idle window before
it to relay.txt.idle.)
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

import psutil
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


async def node(index: int, boot: str | None, n_nodes: int) -> None:
    from gfl.identity import NodeIdentity
    from gfl.net import JOBS_TOPIC, open_network

    lat: list[float] = []
    with tempfile.TemporaryDirectory() as d:
        async with open_network(
            NodeIdentity.generate(), bootstrap=[boot] if boot else [], blob_dir=Path(d)
        ) as net:
            ch = await net.subscribe(JOBS_TOPIC)
            print(net.listen_addrs()[0], flush=True)
            copies = _count_copies(net, JOBS_TOPIC)

            async def collect() -> None:
                async for m in ch:
                    lat.append(time.time() - m.payload["t"])

            async with trio.open_nursery() as n:
                n.start_soon(collect)
                # wait for the DHT to connect us to (nearly) everyone and the mesh to form
                with trio.move_on_after(60):
                    mesh_goal = min(4, n_nodes - 1)
                    while (
                        len(net.peers()) < n_nodes - 1
                        or net.stats()["mesh"][JOBS_TOPIC] < mesh_goal
                    ):
                        await trio.sleep(0.2)
                print("ready", len(net.peers()), flush=True)
                while True:
                    cmd = (await trio.to_thread.run_sync(sys.stdin.readline)).split()
                    mesh = net.stats()["mesh"][JOBS_TOPIC]  # before any node leaves
                    if not cmd or cmd[0] == "quit":
                        want = int(cmd[1]) if len(cmd) > 1 and index else 0
                        with trio.move_on_after(20):
                            while len(lat) < want:
                                await trio.sleep(0.05)
                        break
                    if cmd[0] == "publish":
                        for k in range(int(cmd[1])):
                            msg = {"v": 1, "type": "bench", "t": time.time(), "k": k}
                            await net.publish(JOBS_TOPIC, msg)
                            await trio.sleep(0.1)
                        print("done", flush=True)
                await trio.sleep(0.5)
                n.cancel_scope.cancel()
            stats = net.stats()
            out = {
                "lat": lat,
                "drops": stats["drops"],
                "copies": copies[0],
                "mesh": mesh,
            }
            print(json.dumps(out), flush=True)


def _count_copies(net: object, topic: str) -> list[int]:
    """Count the copies of ``topic`` messages that peers send us (first and duplicates)."""
    pubsub = net._pubsub  # type: ignore[attr-defined]
    push = pubsub.push_msg
    count = [0]

    async def counting(forwarder: object, msg: object) -> None:
        if forwarder != pubsub.my_id and topic in msg.topicIDs:  # type: ignore[attr-defined]
            count[0] += 1
        await push(forwarder, msg)

    pubsub.push_msg = counting
    return count


def _spy(out: str | None, seconds: float, pid: int) -> subprocess.Popen | None:
    """py-spy recording ``pid`` for ``seconds`` into ``out`` (None: no profile)."""
    if not out:
        return None
    spy = Path(sys.executable).parent / "py-spy"
    args = ["record", "--gil", "-f", "raw", "-o", out, "-d", str(round(seconds) + 1)]
    p = subprocess.Popen(
        [str(spy), *args, "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(0.5)  # attached
    return p


def _p99(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _cpu(procs: list[subprocess.Popen]) -> float:
    """User + system CPU seconds used so far by all the node processes."""
    total = 0.0
    for p in procs:
        t = psutil.Process(p.pid).cpu_times()
        total += t.user + t.system
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--msgs", type=int, default=50)
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measured")
    ap.add_argument(
        "--settle", type=float, default=0.0, help="seconds to wait after set-up before measuring"
    )
    ap.add_argument("--profile", help="py-spy raw profile of node 1 during the publish phase")
    ap.add_argument("--role")
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--boot")
    a = ap.parse_args()
    if a.role == "node":
        trio.run(node, a.index, a.boot, a.nodes)
        return
    me = [sys.executable, __file__, "--role", "node", "--nodes", str(a.nodes)]

    def spawn(i: int, boot: str | None) -> subprocess.Popen:
        args = [*me, "--index", str(i)] + (["--boot", boot] if boot else [])
        return subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    t0 = time.time()
    procs = [spawn(0, None)]
    boot = procs[0].stdout.readline().strip()
    procs += [spawn(i, boot) for i in range(1, a.nodes)]
    for p in procs[1:]:
        p.stdout.readline()
    peers = [int(p.stdout.readline().split()[1]) for p in procs]
    setup = time.time() - t0
    time.sleep(a.settle)
    load = os.getloadavg()[0]
    spy = _spy(a.profile and f"{a.profile}.idle", a.idle, procs[1].pid)
    cpu0, w0 = _cpu(procs), time.monotonic()
    time.sleep(a.idle)
    cpu1, w1 = _cpu(procs), time.monotonic()
    idle_rate = (cpu1 - cpu0) / (w1 - w0)
    if spy is not None:
        spy.wait(timeout=60)
    spy = _spy(a.profile, a.msgs * 0.1 + 1, procs[1].pid)
    cpu2, w2 = _cpu(procs), time.monotonic()
    procs[0].stdin.write(f"publish {a.msgs}\n")
    procs[0].stdin.flush()
    procs[0].stdout.readline()
    time.sleep(1.0)  # the last message's relaying
    cpu3, w3 = _cpu(procs), time.monotonic()
    pub_cpu = cpu3 - cpu2
    per_msg = (pub_cpu - idle_rate * (w3 - w2)) / a.msgs
    if spy is not None:
        spy.wait(timeout=60)
    lat: list[float] = []
    drops: dict[str, int] = {}
    copies = 0
    mesh: list[int] = []
    per_node: list[tuple[float, int, int]] = []  # (p99 ms, index, mesh)
    for p in procs:
        p.stdin.write(f"quit {a.msgs}\n")
        p.stdin.flush()
    for p in procs:
        r = json.loads(p.stdout.readline())
        lat += r["lat"]
        copies += r["copies"]
        mesh.append(r["mesh"])
        if r["lat"]:
            per_node.append((_p99(sorted(r["lat"])) * 1000, len(mesh) - 1, r["mesh"]))
        for k, v in r["drops"].items():
            drops[k] = drops.get(k, 0) + v
        p.wait(timeout=30)
    expected = a.msgs * (a.nodes - 1)
    lat.sort()
    p50 = statistics.median(lat) * 1000
    p99 = _p99(lat) * 1000
    print(f"{a.nodes} processes, {a.msgs} announcements at 10/s, setup {setup:.1f}s")
    print(f"load average (1 min) at start: {load:.2f}")
    print(
        f"CPU, all nodes: idle {idle_rate * 1000:.0f} ms/s; publish phase {pub_cpu:.2f} s "
        f"over {w3 - w2:.1f} s; per message {per_msg * 1000:.1f} ms "
        f"(net of idle); copies received per delivery {copies / max(1, len(lat)):.2f}"
    )
    print(
        f"peers per node min/max: {min(peers)}/{max(peers)}; mesh min/max: {min(mesh)}/{max(mesh)}"
    )
    print(f"{'delivered':>10} {'expected':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  drops")
    print(f"{len(lat):>10} {expected:>9} {p50:>8.1f} {p99:>8.1f} {lat[-1] * 1000:>8.1f}  {drops}")
    worst = ", ".join(f"node {i} {ms:.0f} ms (mesh {m})" for ms, i, m in sorted(per_node)[-3:])
    print(f"slowest nodes by their own p99: {worst}")


if __name__ == "__main__":
    main()
