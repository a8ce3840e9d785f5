"""py-libp2p's QUIC transport against its TCP + Noise + Yamux, on bare hosts (#26).

Two hosts in one process on 127.0.0.1, the library's own code on both sides (GFL's tuning
applies to TCP only, so TCP here is the stock stack, the fairer comparison):

- transfer: a blob's bytes on one stream, as the blob protocol sends them (1 MiB writes),
  wall seconds per transfer, the first untimed;
- round trips: 300-byte messages echoed on one stream, one at a time (what a gossip message
  costs on a connection), median and 95th percentile.

GFL offers a QUIC listener only if it holds up here (README, [net]). Usage:
python bench/quic.py [--mib 5] [--transfers 4] [--messages 300]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr

from gfl.identity import NodeIdentity

MiB = 1 << 20
BLOB, ECHO = TProtocol("/gfl/bench-blob/1"), TProtocol("/gfl/bench-echo/1")
LISTEN = {"quic": "/ip4/127.0.0.1/udp/0/quic-v1", "tcp": "/ip4/127.0.0.1/tcp/0"}


def host(kind: str) -> Any:
    key = NodeIdentity.generate().libp2p_keypair()
    addrs = [multiaddr.Multiaddr(LISTEN[kind])]
    if kind == "quic":
        return new_host(key_pair=key, listen_addrs=addrs, enable_quic=True), addrs
    return new_host(key_pair=key, listen_addrs=addrs, muxer_preference="YAMUX"), addrs


async def measure(kind: str, size: int, transfers: int, messages: int) -> dict[str, float]:
    data = os.urandom(size)
    (a, la), (b, lb) = host(kind), host(kind)
    async with a.run(la), b.run(lb):

        async def send_blob(stream: Any) -> None:
            await stream.read(1)
            view = memoryview(data)
            for off in range(0, size, MiB):
                await stream.write(view[off : off + MiB])
            await stream.close()

        async def echo(stream: Any) -> None:
            for _ in range(messages):
                msg = await stream.read(4096)
                if not msg:
                    return
                await stream.write(msg)

        a.set_stream_handler(BLOB, send_blob)
        a.set_stream_handler(ECHO, echo)
        await b.connect(info_from_p2p_addr(a.get_addrs()[0]))
        walls = []
        for _ in range(transfers):
            t = time.perf_counter()
            stream = await b.new_stream(a.get_id(), [BLOB])
            await stream.write(b"g")
            got = 0
            with trio.fail_after(300):
                while got < size:
                    got += len(await stream.read(MiB))
            walls.append(time.perf_counter() - t)
        stream = await b.new_stream(a.get_id(), [ECHO])
        msg, rtts = os.urandom(300), []
        for _ in range(messages):
            t = time.perf_counter()
            await stream.write(msg)
            back = b""
            while len(back) < len(msg):
                back += await stream.read(4096)
            rtts.append(time.perf_counter() - t)
    rtts.sort()
    return {
        "transfer_s": statistics.median(walls[1:] or walls),
        "rtt_ms": 1000 * statistics.median(rtts),
        "rtt_p95_ms": 1000 * rtts[int(0.95 * (len(rtts) - 1))],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=5)
    ap.add_argument("--transfers", type=int, default=4)
    ap.add_argument("--messages", type=int, default=300)
    a = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    print(f"{a.mib} MiB on one stream ({a.transfers} transfers, the first untimed); ", end="")
    print(f"{a.messages} echoes of 300 B")
    print(f"{'transport':<26} {'transfer s':>10} {'MB/s':>7} {'rtt ms':>7} {'p95 ms':>7}")
    for kind, label in (("tcp", "TCP + Noise + Yamux"), ("quic", "QUIC (quic-v1)")):
        r = trio.run(measure, kind, a.mib * MiB, a.transfers, a.messages)
        rate = a.mib * MiB / r["transfer_s"] / 1e6
        print(
            f"{label:<26} {r['transfer_s']:>10.3f} {rate:>7.1f} {r['rtt_ms']:>7.2f}"
            f" {r['rtt_p95_ms']:>7.2f}"
        )


if __name__ == "__main__":
    main()
