"""Waiting on the chain: when to look again, and what to do while it does not answer.

A chain that does not answer (an RPC outage, a network partition) pauses a job: writes are
asked again until it answers, then the job catches up; it is never given up for that.
Rounds close and votes end by time alone (no event says so), so a runner never sleeps past
the next deadline the chain's hot state names.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gfl.scheduler.ports import JobState, LedgerUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

CHAIN_RETRY_S = 1.0  # while the chain does not answer, ask again this often
DEADLINE_SLACK_S = 0.05  # look just after a deadline, when the next block can settle it


def until_due(st: JobState, poll_s: float) -> float:
    """How long to wait before looking again: at most ``poll_s``, and never past the vote
    deadline of the round being voted on or the timeout of the round collecting."""
    rec = st.record
    deadlines = []
    if rec.voting and rec.closed_at:
        deadlines.append(rec.closed_at + rec.params.vote_timeout)
    elif rec.opens_at:
        deadlines.append(rec.opens_at + rec.params.round_timeout)
    left = min(deadlines, default=math.inf) - st.now
    return poll_s if left <= 0 else min(poll_s, left + DEADLINE_SLACK_S)


class Patience:
    """One job's view of the chain's availability: says once when it is lost and back."""

    def __init__(
        self,
        job_id: str,
        event: Callable[..., None],
        nap: Callable[[float], Awaitable[None]],
        round_now: Callable[[], int],
    ) -> None:
        self._job_id = job_id
        self._event = event
        self._nap = nap
        self._round_now = round_now
        self._down = False

    async def until_answered(self, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()``, asked again for as long as the chain does not answer: work
        already done is committed once the chain is back, not redone."""
        while True:
            try:
                result = await call()
            except LedgerUnavailable as exc:
                self.lost(exc)
                await self._nap(CHAIN_RETRY_S)
                continue
            self.answered()
            return result

    def lost(self, exc: Exception) -> None:
        if not self._down:
            self._down = True
            self._event("chain_unavailable", round=self._round_now(), reason=str(exc))
            log.warning("job %s: waiting for the chain: %s", self._job_id[:10], exc)

    def answered(self, *_: Any) -> None:
        if self._down:
            self._down = False
            self._event("chain_back", round=self._round_now())
            log.info("job %s: the chain answers again", self._job_id[:10])
