"""The console's connection to a node: the live event stream, kept alive across restarts.

The link follows ``GET /events`` and reconnects with a doubling backoff when
the node goes away. Before each (re)connection it asks ``/status`` for the
node's pid: the same process means "resume after the last event seen" (the
node replays from its ring buffer), a new one means the node restarted and its
sequence numbers began again, so the link replays the new process's buffer
from the start. A refused token stops the link: retrying cannot fix it.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from gfl_console.client import AsyncNodeClient
from gfl_console.errors import NodeClientError, Unauthorized
from gfl_console.format import backoff
from gfl_console.types import Event

log = logging.getLogger(__name__)


class LinkState(enum.Enum):
    """Whether the console reaches the node (the value names the link bar's CSS class)."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DOWN = "down"
    UNAUTHORIZED = "unauthorized"


@dataclass(frozen=True)
class LinkStatus:
    """Where the link stands, with a sentence for the user."""

    state: LinkState
    message: str
    retry_in: float | None = None
    restarted: bool = False


A = TypeVar("A")
#: Called with each event / each change of the link; may be async. Its result is ignored.
EventHandler = Callable[[Event], object]
StatusHandler = Callable[[LinkStatus], object]


async def _call(handler: Callable[[A], object], arg: A) -> None:
    result = handler(arg)
    if inspect.isawaitable(result):
        await result


class NodeLink:
    """Follow one node's events forever (until cancelled or the token is refused)."""

    def __init__(self, client: AsyncNodeClient, where: str, *, dead_after: float = 30.0) -> None:
        self.client = client
        self.where = where
        self.dead_after = dead_after
        self.last_seq = 0
        self.pid: int | None = None

    async def run(self, on_event: EventHandler, on_status: StatusHandler) -> None:
        """Follow the node, reporting every event and every change of the link."""
        attempt = 0
        while True:
            await _call(on_status, LinkStatus(LinkState.CONNECTING, f"connecting to {self.where}…"))
            try:
                status = await self.client.status()
                restarted = self.pid is not None and status.get("pid") != self.pid
                if restarted:
                    self.last_seq = 0
                self.pid = status.get("pid")
                name = status.get("name") or status.get("address") or "node"
                await _call(
                    on_status,
                    LinkStatus(
                        LinkState.CONNECTED, f"connected to {name} at {self.where}", None, restarted
                    ),
                )
                attempt = 0
                async for event in self.client.events(
                    since=self.last_seq, dead_after=self.dead_after
                ):
                    if event.get("seq"):
                        self.last_seq = int(event["seq"])
                    await _call(on_event, event)
                message = f"the node at {self.where} stopped"
            except Unauthorized:
                await _call(
                    on_status,
                    LinkStatus(
                        LinkState.UNAUTHORIZED,
                        f"the node at {self.where} refused the API token: check the token "
                        "(DATADIR/api.token) and press r to retry",
                    ),
                )
                return
            except NodeClientError as exc:
                log.debug("link lost: %s", exc)
                message = f"no node is running at {self.where}"
            delay = backoff(attempt)
            attempt += 1
            await _call(
                on_status,
                LinkStatus(LinkState.DOWN, f"{message} — retrying in {delay:g} s", delay),
            )
            await asyncio.sleep(delay)
