"""Polling the registry's events: the chain's news reaches the job service from here.

web3's subscriptions are asyncio-only and the node runs on trio, so events are read by
polling bounded block ranges (in a worker thread, through the node's chain executor):
every 100 ms while this node runs a job (each event wakes its runner), every second
otherwise (announcements come by gossip, not events).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from gfl.errors import GflError

if TYPE_CHECKING:
    from gfl.chain.records import ChainEvent
    from gfl.chain.registry import Registry

log = logging.getLogger(__name__)

BUSY_POLL_S = 0.1
IDLE_POLL_S = 1.0
RETRY_S = 1.0

ChainCall = Callable[..., Awaitable[Any]]


async def watch_chain(
    registry: Registry,
    chain_call: ChainCall,
    on_events: Callable[[Sequence[ChainEvent]], None],
    busy: Callable[[], bool],
) -> None:
    """Hand every registry event from the current block on to ``on_events``, in chain
    order, for ever; ``busy()`` says whether to poll at the fast rate."""
    cursor: int = await chain_call(registry.block_number)
    while True:
        await trio.sleep(BUSY_POLL_S if busy() else IDLE_POLL_S)
        try:
            events, cursor = await chain_call(registry.poll_events, cursor)
        except GflError as exc:
            log.warning("chain poll failed (retrying): %s", exc)
            await trio.sleep(RETRY_S)
            continue
        if events:
            on_events(events)
