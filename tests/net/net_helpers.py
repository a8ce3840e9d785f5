"""Helpers to run several real GFL network nodes on 127.0.0.1 in one trio loop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import trio

from gfl.identity import NodeIdentity
from gfl.net import Network, open_network


@asynccontextmanager
async def nodes(
    n: int, tmp_path: Path, *, bootstrap_first: bool = True, events: list | None = None
) -> AsyncIterator[list[Network]]:
    """``n`` nodes; all but the first bootstrap from the first."""
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(
            open_network(
                NodeIdentity.generate(), blob_dir=tmp_path / "n0", on_event=_rec(events, 0)
            )
        )
        out = [first]
        boot = first.listen_addrs()[:1] if bootstrap_first else []
        for i in range(1, n):
            out.append(
                await stack.enter_async_context(
                    open_network(
                        NodeIdentity.generate(),
                        bootstrap=boot,
                        blob_dir=tmp_path / f"n{i}",
                        on_event=_rec(events, i),
                    )
                )
            )
        yield out


@asynccontextmanager
async def connected_pair(tmp_path: Path) -> AsyncIterator[list[Network]]:
    """Two `nodes`, once each sees the other."""
    async with nodes(2, tmp_path) as (a, b):
        await wait_for(lambda: bool(a.peers() and b.peers()))
        yield [a, b]


@asynccontextmanager
async def strangers(tmp_path: Path) -> AsyncIterator[list[Network]]:
    """A hub and two nodes connected only to it, without discovery: neither of the two
    holds an address of the other (as a node may not for a peer it knows only from the
    gossip it signed). Yields [hub, a, b] once both are connected to the hub."""
    async with AsyncExitStack() as stack:

        async def node(name: str, *boot: str) -> Network:
            return await stack.enter_async_context(
                open_network(
                    NodeIdentity.generate(), blob_dir=tmp_path / name, bootstrap=boot,
                    discover=False,
                )
            )  # fmt: skip

        hub = await node("hub")
        a = await node("a", hub.listen_addrs()[0])
        b = await node("b", hub.listen_addrs()[0])
        await wait_for(lambda: len(hub.peers()) == 2, 15, "both connected to the hub")
        assert a.peer_id not in {p["peer_id"] for p in b.peers()}
        yield [hub, a, b]


def _rec(events: list | None, i: int) -> Callable[[str, dict], None] | None:
    if events is None:
        return None
    return lambda kind, data: events.append((i, kind, data))


async def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.05)
