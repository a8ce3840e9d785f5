"""Circuit relay v2 and hole punching between real hosts on 127.0.0.1.

A node told it is private (``reachability="private"``) reserves a slot on the relay and
advertises a relayed address; another node reaches it through that address. A node that
listens nowhere (``listen=[]``) can only ever be reached through the relay, which keeps a
connection relayed here (on loopback any listening node is directly reachable, so a hole
punch would upgrade it at once). Namespaces with real NATs: tests/nat/.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from gfl_console.format import bytes_by_path, reachability
from gfl_console.overview import overview_table
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from net_helpers import wait_for
from rich.console import Console

from gfl.identity import NodeIdentity
from gfl.net import BlobError, Network, open_network
from gfl.net.relay import RelaySettings


def relayed(net: Network) -> list[str]:
    return [a for a in net.listen_addrs() if "/p2p-circuit" in a]


def path_to(net: Network, other: Network) -> str | None:
    return next((p["path"] for p in net.peers() if p["peer_id"] == other.peer_id), None)


@asynccontextmanager
async def relay_and(
    tmp_path: Path, *private: dict[str, Any], relay: RelaySettings | None = None
) -> AsyncIterator[list[Network]]:
    """A public relay, then one private node per ``private`` (its open_network settings)
    bootstrapping from it, each once it holds a slot on the relay."""
    events: list[tuple[int, str, dict]] = []
    async with AsyncExitStack() as stack:
        r = await stack.enter_async_context(
            open_network(
                NodeIdentity.generate(),
                blob_dir=tmp_path / "relay",
                reachability="public",
                relay=relay or RelaySettings(serve=True),
                discover=False,
            )
        )
        nets = [r]
        for i, kw in enumerate(private, start=1):
            nets.append(
                await stack.enter_async_context(
                    open_network(
                        NodeIdentity.generate(),
                        blob_dir=tmp_path / f"n{i}",
                        bootstrap=r.listen_addrs()[:1],
                        reachability="private",
                        discover=False,
                        on_event=lambda k, d, i=i: events.append((i, k, d)),
                        **kw,
                    )
                )
            )
        for n in nets[1:]:
            await wait_for(lambda n=n: bool(relayed(n)), timeout=15)
        yield nets


@pytest.mark.trio
async def test_a_private_node_is_reached_through_its_relay_then_directly(tmp_path):
    async with relay_and(tmp_path, {}, {}) as (r, a, b):
        (addr,) = relayed(b)
        assert addr == f"{r.listen_addrs()[0]}/p2p-circuit/p2p/{b.peer_id}"
        assert r.stats()["nat"]["relay_service"]["reservations"] == 2
        assert r.peer_id in a.stats()["nat"]["reservations"]

        assert await a.connect(addr) == b.peer_id
        blob = os.urandom(1 << 20)
        h = b.blobs.put(blob)
        assert await a.fetch_blob(h, [b.peer_id], max_size=2 << 20, timeout=20) == blob
        # b accepted the relayed connection, so b starts the hole punch; on loopback a's
        # addresses answer at once
        await wait_for(lambda: path_to(a, b) == "direct" == path_to(b, a), timeout=20)
        await wait_for(lambda: b.stats()["nat"]["hole_punches"] == {"direct": 1}, timeout=10)
        moved = a.stats()["bytes"]
        assert moved["relayed"]["in"] > 0 and moved["relayed"]["out"] > 0
        assert r.stats()["bytes"]["relay_service"]["in"] >= moved["relayed"]["out"]
        assert a.stats()["connections"]["direct"] == 2


@pytest.mark.trio
async def test_a_relayed_fetch_stays_within_the_relay_limit_and_direct_holders_go_first(
    tmp_path,
):
    unreachable = {"listen": []}  # reachable only through the relay: stays relayed
    limit = RelaySettings(serve=True, circuit_bytes=1 << 20)
    async with relay_and(tmp_path, unreachable, unreachable, relay=limit) as (r, a, b):
        await a.connect(relayed(b)[0])
        assert path_to(a, b) == "relayed"
        small, big = os.urandom(100_000), os.urandom(2 << 20)
        hs, hb = b.blobs.put(small), b.blobs.put(big)
        assert await a.fetch_blob(hs, [b.peer_id], max_size=4 << 20, timeout=20) == small

        with pytest.raises(BlobError, match="over what the relay still carries"):
            await a.fetch_blob(hb, [b.peer_id], max_size=4 << 20, timeout=20)
        # refused before the relay's limit: the circuit is still up and carries small blobs
        assert path_to(a, b) == "relayed"
        hs2 = b.blobs.put(os.urandom(50_000))
        await a.fetch_blob(hs2, [b.peer_id], max_size=4 << 20, timeout=20)

        r.blobs.put(big)  # another holder, directly reachable
        relayed_before = a.stats()["bytes"]["relayed"]["in"]
        assert await a.fetch_blob(hb, [b.peer_id, r.peer_id], max_size=4 << 20, timeout=20) == big
        assert a.stats()["bytes"]["relayed"]["in"] - relayed_before < 100_000
        # b accepted the relayed connection and tried a hole punch: nothing to dial
        await wait_for(lambda: b.stats()["nat"]["hole_punches"] == {"relayed": 1}, timeout=10)

        # what `gfl status` and the console's Overview show
        assert reachability(a.stats()) == "private · relays 1 · 1 relayed peer"
        assert reachability(r.stats()) == "public · relaying for 2"
        shown = bytes_by_path(a.stats())
        assert shown.startswith("direct ") and " · relayed " in shown, shown
        console = Console(width=200, record=True)
        status = {"peer_id": a.peer_id, "listen_addrs": a.listen_addrs(), "net": a.stats()}
        console.print(overview_table(status, None))  # type: ignore[arg-type]
        text = console.export_text()
        assert "Reachable  private · relays 1" in text and "Traffic    direct" in text, text


@pytest.mark.trio
@pytest.mark.parametrize("forwarding", ["ours", "stock"])
async def test_one_circuit_ending_leaves_another_to_the_same_peer_alone(tmp_path, forwarding):
    """Two peers reach one node through the same relay; it drops one of them. py-libp2p
    0.8.1's forwarding loop looks circuits up by peer and resets the other one too."""
    unreachable = {"listen": []}
    async with relay_and(tmp_path, unreachable, unreachable, unreachable) as (r, a, b, c):
        if forwarding == "stock":
            proto = r._parts.relay
            proto._relay_data = CircuitV2Protocol._relay_data.__get__(proto)
        await a.connect(relayed(c)[0])
        await b.connect(relayed(c)[0])
        await wait_for(lambda: path_to(c, a) == path_to(c, b) == "relayed", timeout=10)
        await c._host.disconnect(ID.from_base58(a.peer_id))
        await wait_for(lambda: path_to(a, c) is None, timeout=10)
        with trio.move_on_after(3):  # give a reset of the other circuit time to arrive
            while path_to(b, c) is not None:
                await trio.sleep(0.05)
        if forwarding == "stock":
            assert path_to(b, c) is None, "the library's relay kept the other circuit"
            return
        assert path_to(b, c) == "relayed"
        h = c.blobs.put(os.urandom(200_000))
        await b.fetch_blob(h, [c.peer_id], max_size=1 << 20, timeout=20)
