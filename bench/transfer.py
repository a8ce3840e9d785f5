"""50 MiB over the GFL blob protocol (libp2p TCP+Noise+Yamux) vs plain trio TCP.

Each transfer runs between two separate processes on 127.0.0.1; the baseline is
measured in the same run. Usage: python bench/transfer.py [--mib 50] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MiB = 1 << 20


async def tcp_server(size: int) -> None:
    data = os.urandom(size)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)

    async def handle(stream: trio.SocketStream) -> None:
        await stream.receive_some(1)
        view = memoryview(data)
        for off in range(0, size, MiB):
            await stream.send_all(view[off : off + MiB])
        await stream.aclose()

    async with trio.open_nursery() as n:
        n.start_soon(trio.serve_listeners, handle, listeners)
        await trio.to_thread.run_sync(sys.stdin.readline)
        n.cancel_scope.cancel()


async def tcp_client(port: int, size: int) -> float:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    t = time.perf_counter()
    await stream.send_all(b"g")
    got = 0
    buf = bytearray()
    while got < size:
        chunk = await stream.receive_some(MiB)
        if not chunk:
            break
        buf += chunk
        got += len(chunk)
    dt = time.perf_counter() - t
    assert got == size
    return dt


async def p2p_server(size: int) -> None:
    from gfl.identity import NodeIdentity
    from gfl.net import open_network

    with tempfile.TemporaryDirectory() as d:
        async with open_network(NodeIdentity.generate(), blob_dir=Path(d)) as net:
            h = net.blobs.put(os.urandom(size))
            print(net.listen_addrs()[0], h.hex(), flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)


async def p2p_client(addr: str, hx: str, size: int) -> float:
    from gfl.identity import NodeIdentity
    from gfl.net import open_network

    with tempfile.TemporaryDirectory() as d:
        async with open_network(NodeIdentity.generate(), blob_dir=Path(d)) as net:
            pid = await net.connect(addr)
            t = time.perf_counter()
            data = await net.fetch_blob(bytes.fromhex(hx), [pid], max_size=size, timeout=120)
            dt = time.perf_counter() - t
            assert len(data) == size
            return dt


def run_pair(kind: str, size: int) -> float:
    me = [sys.executable, __file__]
    srv = subprocess.Popen(
        [*me, "--role", f"{kind}-server", "--bytes", str(size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = srv.stdout.readline().split()
        out = subprocess.run(
            [*me, "--role", f"{kind}-client", "--bytes", str(size), *line],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return float(out.stdout.strip().splitlines()[-1])
    finally:
        srv.stdin.write("\n")
        srv.stdin.flush()
        srv.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--role")
    ap.add_argument("--bytes", type=int)
    ap.add_argument("args", nargs="*")
    a = ap.parse_args()
    if a.role == "tcp-server":
        return trio.run(tcp_server, a.bytes)
    if a.role == "p2p-server":
        return trio.run(p2p_server, a.bytes)
    if a.role == "tcp-client":
        print(trio.run(tcp_client, int(a.args[0]), a.bytes))
        return None
    if a.role == "p2p-client":
        print(trio.run(p2p_client, a.args[0], a.args[1], a.bytes))
        return None
    size = a.mib * MiB
    rows = {"plain trio TCP": [], "blob protocol": []}
    for _ in range(a.runs):
        rows["plain trio TCP"].append(run_pair("tcp", size))
        rows["blob protocol"].append(run_pair("p2p", size))
    base = size / statistics.median(rows["plain trio TCP"]) / 1e6
    print(f"{a.mib} MiB, {a.runs} runs each, median")
    print(f"{'transport':<16} {'seconds':>8} {'MB/s':>8} {'ratio':>6}")
    for name, ts in rows.items():
        mbps = size / statistics.median(ts) / 1e6
        print(f"{name:<16} {statistics.median(ts):>8.3f} {mbps:>8.1f} {mbps / base:>6.2f}")


if __name__ == "__main__":
    main()
