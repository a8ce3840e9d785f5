"""CPU that N GFL nodes together spend per gossip announcement, measured in one process.

bench/gossip.py measures latency with one process per node; on a machine with fewer
cores than nodes that latency follows the CPU all nodes spend per message, and the
machine's other load makes the multi-process figure noisy. Here all N nodes run in
one trio loop, so one process's CPU time (``time.process_time``) covers all of them:
the publish phase's CPU less the idle CPU of an equally long window before it,
divided by the messages published. The work per message is the same as across
processes (each node has its own host, connections and pubsub); what is missing is
the processes' scheduling overhead.

Usage: python bench/gossip_cpu.py [--nodes 16] [--msgs 100] [--profile out.txt]
(``--profile`` runs py-spy on this process for the publish phase, raw format.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


async def run(n_nodes: int, n_msgs: int, profile: str | None) -> None:
    from gfl.identity import NodeIdentity
    from gfl.net import JOBS_TOPIC, open_network

    received = [0] * n_nodes
    async with AsyncExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        nets = []
        for i in range(n_nodes):
            boot = nets[0].listen_addrs()[:1] if nets else []
            net = await stack.enter_async_context(
                open_network(NodeIdentity.generate(), bootstrap=boot, blob_dir=tmp / str(i))
            )
            nets.append(net)
        nursery = await stack.enter_async_context(trio.open_nursery())
        for i, net in enumerate(nets):
            ch = await net.subscribe(JOBS_TOPIC)

            async def count(i: int = i, ch: trio.MemoryReceiveChannel = ch) -> None:
                async for _ in ch:
                    received[i] += 1

            nursery.start_soon(count)
        mesh_goal = min(4, n_nodes - 1)
        with trio.move_on_after(120):
            while any(
                len(n.peers()) < n_nodes - 1 or n.stats()["mesh"][JOBS_TOPIC] < mesh_goal
                for n in nets
            ):
                await trio.sleep(0.5)
        await trio.sleep(3)  # discovery and grafting settle
        span = n_msgs * 0.1 + 1.0
        c0 = time.process_time()
        await trio.sleep(span)
        idle = time.process_time() - c0
        spy = None
        if profile:
            spy_args = ["record", "--gil", "-f", "raw", "-o", profile, "-d", str(round(span) + 1)]
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), *spy_args, "-p", str(os.getpid())],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await trio.sleep(0.5)
        c1, w1 = time.process_time(), time.monotonic()
        for k in range(n_msgs):
            await nets[0].publish(JOBS_TOPIC, {"v": 1, "type": "bench", "t": time.time(), "k": k})
            await trio.sleep(0.1)
        await trio.sleep(1.0)
        busy, wall = time.process_time() - c1, time.monotonic() - w1
        delivered = sum(received)
        mesh = [n.stats()["mesh"][JOBS_TOPIC] for n in nets]
        print(f"{n_nodes} nodes in one process, {n_msgs} announcements at 10/s")
        print(f"load average (1 min): {os.getloadavg()[0]:.2f}")
        print(
            f"delivered {delivered}/{n_msgs * (n_nodes - 1)}; mesh min/max {min(mesh)}/{max(mesh)}"
        )
        print(
            f"CPU: idle {idle / span * 1000:.0f} ms/s; publish {busy:.2f} s over {wall:.1f} s; "
            f"per message {(busy - idle * wall / span) / n_msgs * 1000:.1f} ms (net of idle)"
        )
        if spy is not None:
            spy.wait(timeout=60)
        nursery.cancel_scope.cancel()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--msgs", type=int, default=100)
    ap.add_argument("--profile")
    a = ap.parse_args()
    trio.run(run, a.nodes, a.msgs, a.profile)


if __name__ == "__main__":
    main()
