"""What a network did: counters for ``Network.stats()`` and events for ``on_event``."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gfl.net.paths import PathBytes

logger = logging.getLogger(__name__)

EventCallback = Callable[[str, dict[str, Any]], None]


@dataclass
class Traffic:
    """Counters exposed by ``Network.stats()``."""

    msgs_in: int = 0
    msgs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    blobs_fetched: int = 0
    blobs_served: int = 0
    blob_bytes_in: int = 0
    blob_bytes_out: int = 0
    connections_refused: int = 0  # inbound connections closed by the max_peers limit
    mdns_peers_found: int = 0  # distinct peers announced on the local network
    reprovides: int = 0  # DHT provider records refreshed for blobs we hold
    drops: Counter[str] = field(default_factory=Counter)
    paths: PathBytes = field(default_factory=PathBytes)  # all bytes, direct vs relayed

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("drops", "paths")}
        d["drops"] = dict(self.drops)
        d["bytes"] = self.paths.as_dict()
        return d


class Reporter:
    """Counts into `traffic` and hands events to the network's ``on_event`` callback."""

    def __init__(self, on_event: EventCallback | None) -> None:
        self.traffic = Traffic()
        self._on_event = on_event

    def emit(self, kind: str, **data: Any) -> None:
        """Report an event; a failing callback is logged, never raised into the network."""
        if self._on_event is None:
            return
        try:
            self._on_event(kind, data)
        except Exception:
            logger.exception("on_event callback failed for %s", kind)

    def drop(self, reason: str, **data: Any) -> None:
        """Count a gossip message dropped for ``reason`` and report it."""
        self.traffic.drops[reason] += 1
        logger.debug("dropped gossip (%s) %s", reason, data)
        self.emit("gossip_dropped", reason=reason, **data)
