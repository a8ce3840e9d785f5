"""The node's event bus: one ordered stream of what happens, for the API and the console.

Every layer reports through `EventBus.publish(type, data)`; the control API
streams the events to clients (server-sent events). Each event gets a
sequence number, so a client that lost its connection asks for the events
after the last one it saw and the bus replays them from a bounded ring
buffer. A client that fell further behind than the buffer learns it from a
``gap`` event instead of silently missing events.

The bus lives on the node's trio loop. `publish` is synchronous so that
callbacks (libp2p's, the chain poller's) can call it without awaiting;
worker threads use `publish_threadsafe`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import trio

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """One thing that happened: ``seq`` increases by one per event, from 1."""

    seq: int
    ts: float
    type: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts": self.ts, "type": self.type, "data": self.data}


class EventBus:
    """A bounded, replayable, multi-subscriber event stream."""

    def __init__(self, capacity: int = 1024) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._buffer: collections.deque[Event] = collections.deque(maxlen=capacity)
        self._seq = 0
        self._changed = trio.Event()
        self._closed = False
        self._token: trio.lowlevel.TrioToken | None = None

    @property
    def last_seq(self) -> int:
        """The sequence number of the newest event (0 before the first)."""
        return self._seq

    @property
    def closed(self) -> bool:
        return self._closed

    def publish(self, type: str, data: dict[str, Any] | None = None) -> Event:
        """Append an event and wake the subscribers. Call from the node's trio thread."""
        if self._token is None:
            with contextlib.suppress(RuntimeError):  # not on a trio thread (tests)
                self._token = trio.lowlevel.current_trio_token()
        self._seq += 1
        event = Event(self._seq, time.time(), type, dict(data or {}))
        self._buffer.append(event)
        log.debug("event %d %s %s", event.seq, type, event.data)
        self._wake()
        return event

    def publish_threadsafe(self, type: str, data: dict[str, Any] | None = None) -> None:
        """`publish` from a worker thread (torch, web3) of the node's trio loop."""
        trio.from_thread.run_sync(self.publish, type, data, trio_token=self._token)

    def on_event(self, type: str, data: dict[str, Any]) -> None:
        """A callback for layers that report as ``on_event(kind, data)``."""
        self.publish(type, data)

    def since(self, seq: int) -> list[Event]:
        """Buffered events with a sequence number above ``seq``."""
        return [e for e in self._buffer if e.seq > seq]

    def close(self) -> None:
        """End every subscription (the node is shutting down)."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def subscription(self, since: int | None = None) -> Subscription:
        """A cursor over events after ``since`` (default: only events published from now on).

        A ``since`` above the newest sequence number (a client that saw a
        previous run of the node) counts as "from now on".
        """
        cursor = self._seq if since is None else min(max(0, since), self._seq)
        return Subscription(self, cursor)

    async def subscribe(self, since: int | None = None) -> AsyncIterator[Event]:
        """Iterate over events (see `subscription`) until the bus closes."""
        sub = self.subscription(since)
        while (event := await sub.get()) is not None:
            yield event


class Subscription:
    """One reader's position in the bus. `get` is cancel-safe: a timeout loses nothing."""

    def __init__(self, bus: EventBus, cursor: int) -> None:
        self._bus = bus
        self.cursor = cursor

    async def get(self) -> Event | None:
        """The next event after the cursor, waiting for it; None once the bus is closed.

        When events after the cursor already fell out of the ring buffer, a
        synthetic ``gap`` event (seq 0, data {"missed": n, "after": cursor})
        comes first.
        """
        bus = self._bus
        while True:
            if self.cursor < bus.last_seq:
                oldest = bus._buffer[0].seq
                if oldest > self.cursor + 1:
                    missed, after = oldest - self.cursor - 1, self.cursor
                    self.cursor = oldest - 1
                    return Event(0, time.time(), "gap", {"missed": missed, "after": after})
                event = bus._buffer[self.cursor + 1 - oldest]
                self.cursor = event.seq
                return event
            if bus.closed:
                return None
            await bus._changed.wait()
