"""Watching the registry's events: the chain's news reaches the job service from here.

web3's subscriptions are asyncio-only and the node runs on trio, so events are read over
HTTP in bounded block ranges (in a worker thread, through the node's chain executor) when
there may be news: when the chain node announces a new block (`gfl.chain.heads`, where its
endpoint takes a WebSocket subscription; and every few seconds anyway), else by polling,
every 100 ms while this node runs a job (each event wakes its runner) and every second
otherwise (announcements come by gossip, not events).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from gfl.chain.heads import follow_heads
from gfl.errors import GflError

if TYPE_CHECKING:
    from gfl.chain.records import ChainEvent
    from gfl.chain.registry import Registry

log = logging.getLogger(__name__)

BUSY_POLL_S = 0.1  # the shortest wait between two reads, heads or not
IDLE_POLL_S = 1.0
RETRY_S = 1.0
HEADS_LOOK_S = 5.0  # with heads: read anyway after this long without one
HEADS_RETRY_S = 60.0  # a subscription that failed or broke: poll, and try again after this

ChainCall = Callable[..., Awaitable[Any]]


class Heads:
    """Whether new heads come (``live``), and the event the next one sets."""

    def __init__(self) -> None:
        self.live = False
        self.came = trio.Event()

    def head(self) -> None:
        self.came.set()

    async def wait(self, seconds: float) -> None:
        """Until the next head or ``seconds``."""
        with trio.move_on_after(seconds):
            await self.came.wait()
        self.came = trio.Event()

    async def follow(self, url: str) -> None:
        """Keep a subscription to ``url``'s new heads, for ever (`follow_heads` in a worker
        thread); ``live`` while it holds, another try `HEADS_RETRY_S` after it fails."""
        token = trio.lowlevel.current_trio_token()

        def live() -> None:
            trio.from_thread.run_sync(setattr, self, "live", True, trio_token=token)

        def head() -> None:
            trio.from_thread.run_sync(self.head, trio_token=token)

        while True:
            stop = threading.Event()
            try:
                await trio.to_thread.run_sync(
                    follow_heads, url, live, head, stop, abandon_on_cancel=True
                )
            except GflError as exc:
                log.info("%s; polling for blocks instead", exc)
            except Exception as exc:  # (heads only save polls: nothing that ends them stops us)
                log.warning("new heads from %s failed (%r); polling for blocks instead", url, exc)
            finally:
                stop.set()  # (a cancelled thread ends within heads.TICK_S)
                self.live = False
            await trio.sleep(HEADS_RETRY_S)


async def watch_chain(
    registry: Registry,
    chain_call: ChainCall,
    on_events: Callable[[Sequence[ChainEvent]], None],
    busy: Callable[[], bool],
    heads_url: str | None = None,
) -> None:
    """Hand every registry event from the current block on to ``on_events``, in chain
    order, for ever; ``busy()`` says whether to poll at the fast rate, ``heads_url`` where
    the chain node announces new blocks (None: poll only)."""
    heads = Heads()
    async with trio.open_nursery() as nursery:
        if heads_url is not None:
            nursery.start_soon(heads.follow, heads_url)
        cursor: int = await chain_call(registry.block_number)
        while True:
            if heads.live:
                await heads.wait(HEADS_LOOK_S)
                await trio.sleep(BUSY_POLL_S)  # (the heads of a burst of blocks: one read)
            else:
                await trio.sleep(BUSY_POLL_S if busy() else IDLE_POLL_S)
            try:
                events, cursor = await chain_call(registry.poll_events, cursor)
            except GflError as exc:
                log.warning("chain poll failed (retrying): %s", exc)
                await trio.sleep(RETRY_S)
                continue
            if events:
                on_events(events)
