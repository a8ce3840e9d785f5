"""A 50 MiB blob over libp2p (TCP + Noise + Yamux) vs plain trio TCP, in separate processes.

Every run measures, one after the other on 127.0.0.1, each a fresh server and
client process pair:

- plain trio TCP: the bytes into memory (the baseline every ratio is against);
- TCP + sha256 + store: the same, then `BlobStore.put` (sha256, fsync'd file),
  i.e. what a blob fetch does besides the transfer;
- Noise framing alone: the TCP row's socket, the bytes sealed as Noise transport messages
  (ChaCha20-Poly1305, 65,519-byte plaintexts, four per send) by a minimal Python loop and
  opened on the other side, no libp2p: the floor for any Python Noise data path;
- stream: the same bytes over a bare libp2p stream (the transport alone), with
  py-libp2p's own Noise/Yamux code ("stock", ``open_network(tuned=False)``) and
  with GFL's tuning (`gfl.net.yamux`, `gfl.net.noise`: what a node runs);
- blob: `Network.fetch_blob` (request, sha256 check, fsync'd store, the bytes
  returned in one object), stock and tuned;
- blob into the store: `Network.store_blob`, what a node does with each update it
  prefetches (the same, without joining the pieces into one object);
- blob through a relay: the blob protocol between two nodes that can only reach each
  other through a third process relaying for them (circuit relay v2, no limits), i.e.
  what a node behind a NAT that defeats hole punching gets;
- with ``--before-root DIR``: the blob protocol of another checkout (e.g. a git
  worktree of an older commit), for before/after figures in the same run;
- with ``--parts``: instead, the floor of any verified, stored blob fetch over Noise
  on this machine, from the parts no implementation can avoid, each timed alone
  (read, encrypt; decrypt, sha256, write, fsync; the sockets' CPU from a plain TCP
  pair), and the best ratio to plain TCP it allows (`parts`).

Ratio = plain TCP seconds / row seconds within the same run; the table gives the
median and the range over the runs, and the median CPU seconds (`time.process_time`,
all threads) of the receiving client around the transfer and of the sending server
inside its stream handler. Usage:
python bench/transfer.py [--mib 50] [--runs 3] [--transfers N] [--before-root DIR] [--parts]
[--relayed]
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
from typing import Any

import trio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
RAW_PROTOCOL = "/gfl/bench-raw/1"
NOISE_PLAIN = 65_519  # Noise's largest transport-message plaintext
TLS_RECORD = 16_384  # TLS's largest record plaintext
ENCRYPT, DECRYPT = "sender: encrypt (Noise messages)", "receiver: decrypt (Noise messages)"
NOISE_KEY = bytes(32)  # a benchmark's fixed key: this row measures the cost, not secrecy


STOCK = False  # this process's hosts use the library's stock transport (--stock)
RELAY = ""  # the relay's address: this process's host is reachable only through it (--relay)


def _transport() -> dict[str, Any]:
    """`open_network`'s transport argument: only ``--stock`` passes one, so that a
    ``--before-root`` checkout without the argument still runs; with ``--relay``, a host
    that listens nowhere and takes a slot on the relay."""
    if RELAY:
        return {"listen": [], "bootstrap": [RELAY], "reachability": "private"}
    return {"tuned": False} if STOCK else {}


async def relay_server(_: int) -> None:
    """A public node relaying for the other two, without limits."""
    from gfl.identity import NodeIdentity
    from gfl.net import open_network
    from gfl.net.relay import RelaySettings

    unlimited = RelaySettings(serve=True, circuit_bytes=0, circuit_s=0)
    with tempfile.TemporaryDirectory() as d:
        async with open_network(
            NodeIdentity.generate(),
            blob_dir=Path(d),
            discover=False,
            reachability="public",
            relay=unlimited,
        ) as net:
            print(net.listen_addrs()[0], flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)


def _nonce(n: int) -> bytes:
    return b"\0\0\0\0" + n.to_bytes(8, "little")  # Noise's ChaCha20-Poly1305 nonce


async def tcp_server(size: int) -> None:
    data = os.urandom(size)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], "-", flush=True)
    spent: list[float] = []

    async def handle(stream: trio.SocketStream) -> None:
        how = await stream.receive_some(1)
        view = memoryview(data)
        if how == b"n":
            await send_sealed(stream, view)
        else:
            for off in range(0, size, MiB):
                await stream.send_all(view[off : off + MiB])
        await stream.aclose()

    async with trio.open_nursery() as n:
        n.start_soon(trio.serve_listeners, cpu_timed(handle, spent), listeners)
        await trio.to_thread.run_sync(sys.stdin.readline)
        n.cancel_scope.cancel()
    print(per_transfer(spent), flush=True)


def cpu_timed(handler: Any, spent: list[float]) -> Any:
    """``handler`` that adds the process's CPU seconds while it ran to ``spent``."""

    async def timed(stream: Any) -> None:
        start = time.process_time()
        try:
            await handler(stream)
        finally:
            spent.append(time.process_time() - start)

    return timed


async def send_sealed(stream: trio.SocketStream, view: memoryview) -> None:
    """``view`` as length-prefixed Noise transport messages, four per send."""
    aead, batch = ChaCha20Poly1305(NOISE_KEY), []
    for n, off in enumerate(range(0, len(view), NOISE_PLAIN)):
        sealed = aead.encrypt(_nonce(n), view[off : off + NOISE_PLAIN], None)
        batch += [len(sealed).to_bytes(2, "big"), sealed]
        if len(batch) == 8:
            await stream.send_all(b"".join(batch))
            batch = []
    if batch:
        await stream.send_all(b"".join(batch))


async def receive_sealed(stream: trio.SocketStream, size: int) -> bytearray:
    """``size`` bytes of plaintext from `send_sealed`'s messages."""
    aead, got, buf, n = ChaCha20Poly1305(NOISE_KEY), bytearray(), bytearray(), 0
    while len(got) < size:
        chunk = await stream.receive_some(MiB)
        if not chunk:
            break
        buf += chunk
        pos = 0
        with memoryview(buf) as view:
            while len(buf) - pos >= 2:
                end = pos + 2 + int.from_bytes(view[pos : pos + 2], "big")
                if end > len(buf):
                    break
                got += aead.decrypt(_nonce(n), view[pos + 2 : end], None)
                n, pos = n + 1, end
        del buf[:pos]
    return got


async def tcp_client(port: str, _: str, size: int, *, how: str, transfers: int) -> Timing:
    """``how``: "tcp" (the bytes), "tcpstore" (then `BlobStore.put`), "tcpnoise" (sealed)."""
    from gfl.net.blobs import BlobStore

    with tempfile.TemporaryDirectory() as d:
        blobs = BlobStore(Path(d))

        async def connect() -> trio.SocketStream:
            _forget_all(blobs)  # the last transfer's blob: stored again, untimed removal
            return await trio.open_tcp_stream("127.0.0.1", int(port))

        async def one(stream: trio.SocketStream) -> None:
            await stream.send_all(b"n" if how == "tcpnoise" else b"g")
            if how == "tcpnoise":
                buf = await receive_sealed(stream, size)
            else:
                buf = bytearray()
                while len(buf) < size:
                    chunk = await stream.receive_some(MiB)
                    if not chunk:
                        break
                    buf += chunk
            assert len(buf) == size
            if how == "tcpstore":  # what fetch_blob does besides the transfer
                await trio.to_thread.run_sync(lambda: blobs.put(bytes(buf)))

        return await timed_transfers(one, transfers, prepare=connect)


def _forget_all(blobs: Any) -> None:
    """Delete every stored blob, so that the next transfer fetches and stores it again."""
    for hx in list(blobs._sizes):
        blobs._remove(hx)


Timing = tuple[float, float]  # seconds, CPU seconds


async def timed_transfers(one: Any, transfers: int, prepare: Any = None) -> Timing:
    """Wall and CPU seconds of ``one(await prepare())`` (``prepare`` untimed): of the only
    transfer, or the median of the transfers after the first (a warm process)."""
    walls, cpus = [], []
    for _ in range(transfers):
        ready = await prepare() if prepare is not None else None
        t, cpu = time.perf_counter(), time.process_time()
        await one(ready)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - cpu)
    if transfers > 1:
        walls, cpus = walls[1:], cpus[1:]
    return statistics.median(walls), statistics.median(cpus)


def per_transfer(spent: list[float]) -> float:
    """The server's side of `timed_transfers`."""
    return statistics.median(spent[1:] if len(spent) > 1 else spent)


async def p2p_server(size: int) -> None:
    from libp2p.custom_types import TProtocol

    from gfl.identity import NodeIdentity
    from gfl.net import blob_protocol, open_network

    spent: list[float] = []
    with tempfile.TemporaryDirectory() as d:
        async with open_network(
            NodeIdentity.generate(), blob_dir=Path(d), discover=False, **_transport()
        ) as net:
            data = os.urandom(size)
            h = net.blobs.put(data)

            async def raw(stream: object) -> None:
                await stream.read(1)  # type: ignore[attr-defined]
                view = memoryview(data)
                for off in range(0, size, MiB):
                    await stream.write(view[off : off + MiB])  # type: ignore[attr-defined]
                await stream.close()  # type: ignore[attr-defined]

            net._host.set_stream_handler(TProtocol(RAW_PROTOCOL), cpu_timed(raw, spent))
            net._host.set_stream_handler(
                TProtocol(blob_protocol.PROTOCOL), cpu_timed(net._serve_blob, spent)
            )
            addrs = net.listen_addrs()
            while RELAY and not (addrs := [a for a in net.listen_addrs() if "p2p-circuit" in a]):
                await trio.sleep(0.05)  # until it holds a slot on the relay
            print(addrs[0], h.hex(), flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)
    print(per_transfer(spent), flush=True)


async def p2p_client(addr: str, hx: str, size: int, *, how: str, transfers: int) -> Timing:
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID

    from gfl.identity import NodeIdentity
    from gfl.net import open_network

    h = bytes.fromhex(hx)
    with tempfile.TemporaryDirectory() as d:
        async with open_network(
            NodeIdentity.generate(), blob_dir=Path(d), discover=False, **_transport()
        ) as net:
            pid = await net.connect(addr)

            async def one(_: None) -> None:
                if how == "raw":
                    stream = await net._host.new_stream(
                        ID.from_base58(pid), [TProtocol(RAW_PROTOCOL)]
                    )
                    await stream.write(b"g")
                    got = 0
                    while got < size:
                        got += len(await stream.read(MiB))
                elif how == "store":
                    got = await net.store_blob(h, [pid], max_size=size, timeout=120)
                else:
                    got = len(await net.fetch_blob(h, [pid], max_size=size, timeout=120))
                assert got == size

            async def forget() -> None:
                _forget_all(net.blobs)  # untimed

            return await timed_transfers(one, transfers, prepare=forget)


def run_pair(
    kind: str, size: int, root: Path, stock: bool = False, transfers: int = 1
) -> tuple[float, float, float]:
    """Transfers in a fresh server/client pair: (seconds, client CPU s, server CPU s)."""
    me = [sys.executable, __file__, "--root", str(root), *(["--stock"] if stock else [])]
    me += ["--transfers", str(transfers)]
    relay = None
    if kind == "relayed":
        relay = subprocess.Popen(
            [*me, "--role", "relay-server", "--bytes", "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        me += ["--relay", relay.stdout.readline().strip()]  # type: ignore[union-attr]
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
        dt, cpu = map(float, out.stdout.strip().splitlines()[-1].split())
    finally:
        for proc in (srv, relay):
            if proc is not None:
                proc.stdin.write("\n")  # type: ignore[union-attr]
                proc.stdin.flush()  # type: ignore[union-attr]
                proc.wait(timeout=30)
    return dt, cpu, float(srv.stdout.read().split()[-1])  # type: ignore[union-attr]


def role(a: argparse.Namespace) -> None:
    sys.path.insert(0, str(a.root))
    global STOCK, RELAY
    STOCK, RELAY = a.stock, a.relay
    servers = {"tcp-server": tcp_server, "p2p-server": p2p_server, "relay-server": relay_server}
    if a.role in servers:
        trio.run(servers[a.role], a.bytes)
        return
    how = a.role.removesuffix("-client")
    client = tcp_client if how.startswith("tcp") else p2p_client
    print(*trio.run(lambda: client(*a.args, a.bytes, how=how, transfers=a.transfers)))


def parts(size: int, transfers: int) -> None:
    """The floor of a verified, stored blob fetch over Noise (and TLS), from its parts timed alone.

    Each part a blob fetch cannot avoid is timed on one core (best of 5): the sender
    reads the stored file (page cache) and encrypts it in Noise messages; the receiver
    decrypts, hashes (sha256) and writes the bytes to a file (page cache), then fsyncs
    it. The sockets' own CPU is the plain TCP row's (a pair of processes in this run).
    With no interpreter overhead at all, every part overlapped on the machine's cores
    and the fsync hidden too (data synced while it arrives), a fetch still needs
    max(all CPU / cores, the longest part): the floor. Plain TCP's time over that
    floor bounds the ratio any implementation can reach here.
    """
    import hashlib

    data = os.urandom(size)
    encrypt, decrypt = _cipher_seconds(ChaCha20Poly1305(os.urandom(32)), NOISE_PLAIN, data)

    with tempfile.TemporaryDirectory(dir=tempfile.gettempdir()) as d:
        path = Path(d) / "blob"
        path.write_bytes(data)

        def read() -> None:
            with open(path, "rb") as f:
                while f.read(2 * MiB):
                    pass

        def write() -> None:
            with open(Path(d) / "w", "wb") as f:
                f.write(data)
            os.unlink(Path(d) / "w")

        def fsync() -> float:
            with open(Path(d) / "s", "wb") as f:
                f.write(data)
                f.flush()
                t0 = time.perf_counter()
                os.fsync(f.fileno())
                return time.perf_counter() - t0

        cpu = {
            "sender: read the stored file": _best(read),
            ENCRYPT: encrypt,
            DECRYPT: decrypt,
            "receiver: sha256": _best(lambda: hashlib.sha256(data).digest()),
            "receiver: write the file (page cache)": _best(write),
        }
        sync = min(fsync() for _ in range(5))
    tcp, recv_cpu, send_cpu = run_pair("tcp", size, ROOT, transfers=max(transfers, 11))
    cpu["receiver: socket (plain TCP's CPU)"] = recv_cpu
    cpu["sender: socket (plain TCP's CPU)"] = send_cpu
    cores = len(os.sched_getaffinity(0))
    print(f"{size / MiB:.0f} MiB; each part on one core, best of 5; sockets: plain TCP's CPU")
    for name, s in cpu.items():
        print(f"  {name:<40} {s:.3f} s")
    print(f"  {'receiver: fsync (waits on the disk)':<40} {sync:.3f} s (not counted)")
    print(f"plain trio TCP: {tcp:.3f} s; a 0.6x fetch must take at most {tcp / 0.6:.3f} s")
    for n in (cores, 10**6):
        floor = _floor(cpu, n)
        label = f"{n} cores" if n == cores else "unlimited cores"
        print(f"floor on {label}: {floor:.3f} s, so at best {tcp / floor:.2f}x plain TCP")
    # libp2p's other secure channel, TLS 1.3, would seal 16 KiB records with AES-128-GCM
    tls_enc, tls_dec = _cipher_seconds(AESGCM(os.urandom(16)), TLS_RECORD, data)
    floor = _floor(cpu | {ENCRYPT: tls_enc, DECRYPT: tls_dec}, cores)
    print(
        f"with TLS 1.3's AES-128-GCM instead (encrypt {tls_enc:.3f} s, decrypt {tls_dec:.3f} s):"
        f" floor on {cores} cores {floor:.3f} s, at best {tcp / floor:.2f}x"
    )


def _floor(cpu: dict[str, float], cores: int) -> float:
    """Seconds for parts taking ``cpu`` seconds each, perfectly spread over ``cores``."""
    return max(sum(cpu.values()) / cores, max(cpu.values()))


def _best(fn: Any) -> float:
    """The shortest of 5 timed calls of ``fn``."""
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _cipher_seconds(aead: Any, record: int, data: bytes) -> tuple[float, float]:
    """Seconds (`_best`) to seal ``data`` as messages of ``record`` plaintext bytes, and
    to open them."""
    offsets = range(0, len(data), record)
    sealed = [aead.encrypt(_nonce(i), data[o : o + record], None) for i, o in enumerate(offsets)]

    def seal() -> None:
        for i, o in enumerate(offsets):
            aead.encrypt(_nonce(i), data[o : o + record], None)

    def open_all() -> None:
        for i, c in enumerate(sealed):
            aead.decrypt(_nonce(i), c, None)

    return _best(seal), _best(open_all)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--before-root", type=Path, help="another checkout to measure beside this one")
    ap.add_argument(
        "--transfers",
        type=int,
        default=1,
        help="transfers per process pair; above 1 the first is untimed (warm processes)",
    )
    ap.add_argument(
        "--parts", action="store_true", help="a verified, stored blob's floor, from its parts"
    )
    ap.add_argument(
        "--relayed",
        action="store_true",
        help="only plain TCP, the blob protocol direct, and through a relay",
    )
    ap.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    ap.add_argument("--stock", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--relay", default="", help=argparse.SUPPRESS)
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.role:
        return role(a)
    size = a.mib * MiB
    if a.parts:
        return parts(size, a.transfers)
    rows: dict[str, tuple[str, Path, bool]] = {
        "plain trio TCP": ("tcp", ROOT, False),
        "TCP + sha256 + store": ("tcpstore", ROOT, False),
        "Noise framing alone": ("tcpnoise", ROOT, False),
        "stream, stock libp2p": ("raw", ROOT, True),
        "stream, tuned": ("raw", ROOT, False),
        "blob, stock libp2p": ("blob", ROOT, True),
        "blob protocol": ("blob", ROOT, False),
        "blob into the store": ("store", ROOT, False),
        "blob through a relay": ("relayed", ROOT, False),
    }
    if a.relayed:
        rows = {k: v for k, v in rows.items() if v[0] in ("tcp", "blob", "relayed") and not v[2]}
    if a.before_root:
        rows["blob, --before-root"] = ("blob", a.before_root.resolve(), False)
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in rows}
    for _ in range(a.runs):
        for name, (kind, root, stock) in rows.items():
            results[name].append(run_pair(kind, size, root, stock, a.transfers))
    tcp = [r[0] for r in results["plain trio TCP"]]
    warm = f", warm: median of {a.transfers - 1} transfers after one" if a.transfers > 1 else ""
    print(f"{a.mib} MiB, {a.runs} runs{warm}; ratio = plain TCP time / row time in the same run")
    print(
        f"{'transport':<24} {'median s':>9} {'MB/s':>7} {'ratio':>6} {'range':>12}"
        f" {'CPU s recv':>10} {'CPU s send':>10}"
    )
    for name, rs in results.items():
        ts, recv_cpu, send_cpu = zip(*rs, strict=True)
        ratios = [t0 / t for t0, t in zip(tcp, ts, strict=True)]
        med = statistics.median(ts)
        span = f"{min(ratios):.2f}-{max(ratios):.2f}"
        print(
            f"{name:<24} {med:>9.3f} {size / med / 1e6:>7.1f} "
            f"{statistics.median(ratios):>6.2f} {span:>12}"
            f" {statistics.median(recv_cpu):>10.3f} {statistics.median(send_cpu):>10.3f}"
        )


if __name__ == "__main__":
    main()
