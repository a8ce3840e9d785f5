"""Gossip topics, the message handed to subscribers, and per-sender rate limiting.

py-libp2p's gossipsub drops silently (spam protection at 10 msgs/s per peer and
topic, 32-deep subscription queues). GFL turns the library's spam protection off
and applies its own limit here, so every drop is counted under a reason and
reported through ``Network.stats()`` and ``on_event``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

JOBS_TOPIC = "/gfl/jobs/1"

# A subscriber that falls this far behind loses messages (counted as "queue_full").
SUBSCRIBER_QUEUE = 1024


def round_topic(job_id: bytes) -> str:
    """The topic for one job's round messages (updates, models)."""
    if not isinstance(job_id, bytes | bytearray) or not 0 < len(job_id) <= 64:
        raise ValueError("a job id is 1-64 bytes")
    return f"/gfl/job/{bytes(job_id).hex()}/1"


@dataclass(frozen=True)
class GossipMessage:
    """A validated gossip message as delivered to a subscriber."""

    topic: str
    sender_peer_id: str
    sender_address: str
    payload: dict[str, Any]
    seqno: int
    received_at: float = field(default_factory=time.time)


class RateLimiter:
    """Token buckets per key (forwarding peer, topic); forgets the least recently seen keys."""

    def __init__(self, rate: float = 50.0, burst: float = 200.0, max_keys: int = 4096) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()

    def allow(self, key: tuple[str, str], now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        ok = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if ok else tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return ok
