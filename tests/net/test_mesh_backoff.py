"""A peer our heartbeat pruned is not grafted again while it backs off from us."""

import logging
from contextlib import AsyncExitStack

import pytest
import trio
from libp2p.pubsub.gossipsub import GossipSub
from net_helpers import wait_for

from gfl.identity import NodeIdentity
from gfl.net import JOBS_TOPIC, open_network
from gfl.net.pubsub import GflGossipSub

SPOKES = 6


@pytest.mark.trio
@pytest.mark.parametrize("fixed", [True, False], ids=["gfl", "stock"])
async def test_a_pruned_peer_is_not_grafted_while_it_backs_off(tmp_path, monkeypatch, fixed):
    if not fixed:
        monkeypatch.setattr(GflGossipSub, "mesh_heartbeat", GossipSub.mesh_heartbeat)
    said = _Said()  # (the library's "libp2p" logger does not propagate: no caplog)
    logger = logging.getLogger("libp2p.pubsub.gossipsub")
    logger.addHandler(said)
    try:
        await _prune_then_empty(tmp_path)
    finally:
        logger.removeHandler(said)
    # a GRAFT from a peer that pruned us under 10 s ago is a "flood"; later, while we
    # back off from it, it is ignored: either way refused with a PRUNE
    refused = [m for m in said.lines if m.startswith(("GRAFT flood", "GRAFT: ignoring"))]
    if fixed:  # those it pruned back off, those that pruned it too: nobody to graft
        assert not refused
    else:  # py-libp2p 0.8.1 grafts the peers it just pruned, which refuse
        assert refused


class _Said(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def _prune_then_empty(tmp_path) -> None:
    """A hub of degree 2 that every spoke grafts prunes all but two; then those two
    prune the hub, whose next heartbeats find its mesh under degree_low."""
    async with AsyncExitStack() as stack:

        async def node(name: str):
            return await stack.enter_async_context(
                open_network(NodeIdentity.generate(), blob_dir=tmp_path / name, discover=False)
            )

        hub = await node("hub")
        router = hub._pubsub.router
        router.degree, router.degree_low, router.degree_high = 2, 1, 3
        await hub.subscribe(JOBS_TOPIC)
        spokes = [await node(f"s{i}") for i in range(SPOKES)]
        for s in spokes:
            await s.connect(hub.listen_addrs()[0])
            await s.subscribe(JOBS_TOPIC)
        me = hub._pubsub.my_id
        mesh = router.mesh[JOBS_TOPIC]

        def hub_pruned() -> bool:  # the spokes grafted the hub, its heartbeat pruned some
            pruned = [s for s in spokes if s._pubsub.router._check_back_off(me, JOBS_TOPIC)]
            return len(pruned) >= 2 and 0 < len(mesh) <= router.degree_high

        await wait_for(hub_pruned, what="the hub's heartbeat pruning its mesh")
        # the hub's mesh peers leave it: the next heartbeat finds it under degree_low
        kept = [s for s in spokes if s._pubsub.my_id in mesh]
        for s in kept:
            await s._pubsub.router.emit_prune(JOBS_TOPIC, me, False, False)
        await trio.sleep(2.5)  # two heartbeats of the hub
