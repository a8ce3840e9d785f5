"""A 50 MiB blob over libp2p (TCP + Noise + Yamux) vs plain trio TCP, in separate processes.

Every run measures, one after the other on 127.0.0.1, each a fresh server and
client process pair:

- plain trio TCP: the bytes into memory (the baseline every ratio is against);
- TCP + sha256 + store: the same, then `BlobStore.put` (sha256, fsync'd file),
  i.e. what a blob fetch does besides the transfer;
- stream: the same bytes over a bare libp2p stream (the transport alone), with
  py-libp2p's own Noise/Yamux code ("stock", `patches.untune_transport`) and
  with GFL's tuning (`patches.tune_transport`, what a node runs);
- blob: `Network.fetch_blob` (request, sha256 check, fsync'd store), stock
  and tuned;
- with ``--before-root DIR``: the blob protocol of another checkout (e.g. a git
  worktree of an older commit), for before/after figures in the same run.

Ratio = plain TCP seconds / row seconds within the same run; the table gives the
median and the range over the runs. Usage:
python bench/transfer.py [--mib 50] [--runs 3] [--before-root DIR]
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
MiB = 1 << 20
RAW_PROTOCOL = "/gfl/bench-raw/1"


async def tcp_server(size: int) -> None:
    data = os.urandom(size)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], "-", flush=True)

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


async def tcp_client(port: str, _: str, size: int, *, store: bool) -> float:
    from gfl.net.blobs import BlobStore

    stream = await trio.open_tcp_stream("127.0.0.1", int(port))
    with tempfile.TemporaryDirectory() as d:
        blobs = BlobStore(Path(d))
        t = time.perf_counter()
        await stream.send_all(b"g")
        buf = bytearray()
        while len(buf) < size:
            chunk = await stream.receive_some(MiB)
            if not chunk:
                break
            buf += chunk
        if store:  # what fetch_blob does besides the transfer
            await trio.to_thread.run_sync(lambda: blobs.put(bytes(buf)))
        dt = time.perf_counter() - t
    assert len(buf) == size
    return dt


async def p2p_server(size: int) -> None:
    from libp2p.custom_types import TProtocol

    from gfl.identity import NodeIdentity
    from gfl.net import open_network

    with tempfile.TemporaryDirectory() as d:
        async with open_network(NodeIdentity.generate(), blob_dir=Path(d), discover=False) as net:
            data = os.urandom(size)
            h = net.blobs.put(data)

            async def raw(stream: object) -> None:
                await stream.read(1)  # type: ignore[attr-defined]
                view = memoryview(data)
                for off in range(0, size, MiB):
                    await stream.write(view[off : off + MiB])  # type: ignore[attr-defined]
                await stream.close()  # type: ignore[attr-defined]

            net._host.set_stream_handler(TProtocol(RAW_PROTOCOL), raw)
            print(net.listen_addrs()[0], h.hex(), flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)


async def p2p_client(addr: str, hx: str, size: int, *, raw: bool) -> float:
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID

    from gfl.identity import NodeIdentity
    from gfl.net import open_network

    with tempfile.TemporaryDirectory() as d:
        async with open_network(NodeIdentity.generate(), blob_dir=Path(d), discover=False) as net:
            pid = await net.connect(addr)
            t = time.perf_counter()
            if raw:
                stream = await net._host.new_stream(ID.from_base58(pid), [TProtocol(RAW_PROTOCOL)])
                await stream.write(b"g")
                got = 0
                while got < size:
                    got += len(await stream.read(MiB))
            else:
                got = len(
                    await net.fetch_blob(bytes.fromhex(hx), [pid], max_size=size, timeout=120)
                )
            dt = time.perf_counter() - t
            assert got == size
            return dt


def run_pair(kind: str, size: int, root: Path, stock: bool = False) -> float:
    me = [sys.executable, __file__, "--root", str(root), *(["--stock"] if stock else [])]
    server = "tcp-server" if kind.startswith("tcp") else "p2p-server"
    srv = subprocess.Popen(
        [*me, "--role", server, "--bytes", str(size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = srv.stdout.readline().split()  # type: ignore[union-attr]
        out = subprocess.run(
            [*me, "--role", f"{kind}-client", "--bytes", str(size), *line],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return float(out.stdout.strip().splitlines()[-1])
    finally:
        srv.stdin.write("\n")  # type: ignore[union-attr]
        srv.stdin.flush()  # type: ignore[union-attr]
        srv.wait(timeout=30)


def role(a: argparse.Namespace) -> None:
    sys.path.insert(0, str(a.root))
    if a.stock:
        from gfl.net import patches

        untune = getattr(patches, "untune_transport", None)
        if untune is not None:
            untune()
    servers = {"tcp-server": tcp_server, "p2p-server": p2p_server}
    if a.role in servers:
        trio.run(servers[a.role], a.bytes)
        return
    if a.role in ("tcp-client", "tcpstore-client"):
        store = a.role == "tcpstore-client"
        print(trio.run(lambda: tcp_client(*a.args, a.bytes, store=store)))
    else:
        raw = a.role == "raw-client"
        print(trio.run(lambda: p2p_client(*a.args, a.bytes, raw=raw)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--before-root", type=Path, help="another checkout to measure beside this one")
    ap.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    ap.add_argument("--stock", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.role:
        return role(a)
    size = a.mib * MiB
    rows: dict[str, tuple[str, Path, bool]] = {
        "plain trio TCP": ("tcp", ROOT, False),
        "TCP + sha256 + store": ("tcpstore", ROOT, False),
        "stream, stock libp2p": ("raw", ROOT, True),
        "stream, tuned": ("raw", ROOT, False),
        "blob, stock libp2p": ("blob", ROOT, True),
        "blob protocol": ("blob", ROOT, False),
    }
    if a.before_root:
        rows["blob, --before-root"] = ("blob", a.before_root.resolve(), False)
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(a.runs):
        for name, (kind, root, stock) in rows.items():
            times[name].append(run_pair(kind, size, root, stock))
    tcp = times["plain trio TCP"]
    print(f"{a.mib} MiB, {a.runs} runs; ratio = plain TCP time / row time in the same run")
    print(f"{'transport':<22} {'median s':>9} {'MB/s':>7} {'ratio':>6} {'range':>12}")
    for name, ts in times.items():
        ratios = [t0 / t for t0, t in zip(tcp, ts, strict=True)]
        med = statistics.median(ts)
        span = f"{min(ratios):.2f}-{max(ratios):.2f}"
        print(
            f"{name:<22} {med:>9.3f} {size / med / 1e6:>7.1f} "
            f"{statistics.median(ratios):>6.2f} {span:>12}"
        )


if __name__ == "__main__":
    main()
