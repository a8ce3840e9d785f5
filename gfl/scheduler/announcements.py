"""Job announcements: checking the ones we hear, repeating the ones we own.

A node trusts a gossiped job only if the chain holds a job with that id, its spec hash is
sha256 of the announced bytes, its owner signed the message, it is active, and its
registered parameters are the spec's (docs/protocol.md, 2.4). All of it is checked inside
the gossip validator, before the message is forwarded: a forgery is never relayed, so no
node amplifies a flood. Verdicts are cached (bounded), so replays and re-announcements
cost no chain call; a chain that does not answer in time means "not now" (not forwarded,
not cached).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from gfl.chain.errors import AnnouncementRejected, ChainError
from gfl.fl.spec import JobSpec, SpecError
from gfl.scheduler import messages
from gfl.scheduler.ports import JobStatus
from gfl.scheduler.registration import mismatch

if TYPE_CHECKING:
    from gfl.chain.records import JobRecord
    from gfl.chain.registry import Registry
    from gfl.net.gossip import GossipMessage
    from gfl.node.events import EventBus
    from gfl.node.store import Store

log = logging.getLogger(__name__)

REANNOUNCE_S = 5.0
VALIDATE_TIMEOUT_S = 5.0  # a chain lookup inside the gossip validator waits at most this
MAX_VERDICTS = 4096
REFUSED_TTL_S = 60.0

Key = tuple[bytes, bytes, str]  # job id, sha256 of the spec bytes, signer
ChainCall = Callable[..., Awaitable[Any]]
Publish = Callable[[str, dict[str, Any]], Awaitable[None]]


def announcement_key(msg: GossipMessage) -> Key:
    """What makes two job announcements the same claim: job, spec bytes, signer."""
    p = msg.payload
    return p["job_id"], hashlib.sha256(p["spec"]).digest(), msg.sender_address


class Announcements:
    """Verdicts on heard announcements, and the repetition of our own."""

    def __init__(
        self,
        registry: Registry,
        chain_call: ChainCall,
        store: Store,
        events: EventBus,
        publish: Publish,
        address: str,
    ) -> None:
        self._registry = registry
        self._call = chain_call
        self._store = store
        self._events = events
        self._publish = publish
        self._me = address.lower()
        self._verified: OrderedDict[Key, tuple[JobSpec, JobRecord]] = OrderedDict()
        self._refused: OrderedDict[Key, tuple[str, float]] = OrderedDict()
        self._due: dict[str, tuple[float, float]] = {}  # job -> (next time, gap)
        self._wake = trio.Event()

    # -- verdicts -----------------------------------------------------------------------------

    def reject(self, reason: str, **data: Any) -> None:
        """Count a refused announcement and say so on the event bus."""
        self._store.bump(f"rejected.{reason}")
        self._events.publish("job.rejected", {"reason": reason, **data})

    def _refuse(self, key: Key, reason: str) -> None:
        """Remember a refusal for a while; it expires because a chain endpoint that lags
        may not hold a new job yet."""
        self._refused[key] = (reason, time.monotonic() + REFUSED_TTL_S)
        while len(self._refused) > MAX_VERDICTS:
            self._refused.popitem(last=False)

    def _known_verdict(self, msg: GossipMessage) -> bool | None:
        """True (verified before), False (refused before, or the spec does not decode), or
        None (a new claim: ask the chain)."""
        key = announcement_key(msg)
        if key in self._verified:
            return True
        p = msg.payload
        refused = self._refused.get(key)
        if refused is not None and refused[1] > time.monotonic():
            self.reject(
                refused[0], job_id=p["job_id"].hex(), sender=msg.sender_address, replay=True
            )
            return False
        try:
            JobSpec.from_bytes(p["spec"])
        except SpecError as exc:
            self.reject(
                "bad_spec", job_id=p["job_id"].hex(), sender=msg.sender_address, detail=str(exc)
            )
            self._refuse(key, "bad_spec")
            return False
        return None

    async def validate(self, msg: GossipMessage) -> bool:
        """Gossip validator (runs before a message is forwarded): the whole check, the chain
        lookup included (cached)."""
        if msg.payload.get("type") != "job":
            return False
        verdict = self._known_verdict(msg)
        if verdict is not None:
            return verdict
        with trio.move_on_after(VALIDATE_TIMEOUT_S):
            return await self.verify(msg) is not None
        return False

    async def verify(self, msg: GossipMessage) -> tuple[JobSpec, JobRecord] | None:
        """(spec, chain record) of a valid announcement, or None (counted as rejected)."""
        verdict = self._known_verdict(msg)
        key = announcement_key(msg)
        if verdict is True:
            return self._verified[key]
        if verdict is False:
            return None
        job_id, spec_bytes = msg.payload["job_id"], msg.payload["spec"]
        try:
            rec = await self._call(
                self._registry.verify_announcement, job_id, spec_bytes, msg.sender_address
            )
        except AnnouncementRejected as exc:
            self.reject(
                "unverified", job_id=job_id.hex(), sender=msg.sender_address, detail=str(exc)
            )
            self._refuse(key, "unverified")
            return None
        except ChainError as exc:
            log.warning("cannot verify job %s now: %s", job_id.hex()[:10], exc)
            return None
        spec = JobSpec.from_bytes(spec_bytes)
        wrong = mismatch(spec, rec)
        if wrong is not None:
            self.reject("unverified", job_id=job_id.hex(), sender=msg.sender_address, detail=wrong)
            self._refuse(key, "unverified")
            return None
        self._verified[key] = (spec, rec)
        while len(self._verified) > MAX_VERDICTS:
            self._verified.popitem(last=False)
        return self._verified[key]

    # -- our own ------------------------------------------------------------------------------

    def announce_soon(self, job_id: str) -> None:
        """A job we just published: repeat it quickly at first (0.25 s, 0.5 s, 1 s, ... up to
        REANNOUNCE_S), since the gossip mesh of a young network may not carry the first copy."""
        self._due[job_id] = (trio.current_time() + 0.25, 0.5)
        self._wake.set()

    async def repeat_own(self) -> None:
        """Gossip is lossy: repeat our active jobs' announcements now and then. The loop
        sleeps until the next one is due (it reads node.db only then); peers ignore copies
        of jobs they already know."""
        while True:
            now = trio.current_time()
            soonest = min((due for due, _ in self._due.values()), default=now + REANNOUNCE_S)
            with trio.move_on_at(max(soonest, now)):
                await self._wake.wait()
            self._wake = trio.Event()
            now = trio.current_time()
            mine = {
                row.job_id: row.spec
                for row in self._store.jobs()
                if not JobStatus(row.status).ended and row.owner.lower() == self._me
            }
            for job_id in set(self._due) - set(mine):  # finished or cancelled
                del self._due[job_id]
            for job_id, spec in mine.items():
                due, gap = self._due.get(job_id, (now, REANNOUNCE_S))
                if now < due:
                    continue
                self._due[job_id] = (now + gap, min(gap * 2, REANNOUNCE_S))
                await self._publish(
                    messages.JOBS_TOPIC, messages.job_announcement(bytes.fromhex(job_id), spec)
                )
