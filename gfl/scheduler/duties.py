"""What any member does for the job beyond its own rounds: settle deadlines that passed,
raise the alarm when a member votes another model than the one the round finalized, and put
the evidence the chain can check on chain (withholders, dissenters, lying shard aggregators,
idle members).

Anyone may do each of these; to keep every node from paying for the same transaction, each
decided round names one member to act — the lowest address among the voters of the
finalized candidate — and the others only follow. A refusal (someone was first) is normal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from gfl.errors import GflError
from gfl.fl.rounds import Decision, excluded_positions
from gfl.scheduler.ports import Ballot, JobState, Ledger

if TYPE_CHECKING:
    from gfl.scheduler.aggregation import RoundModel
    from gfl.scheduler.joblog import RoundLog

log = logging.getLogger(__name__)

SETTLE_EVERY_S = 2.0  # at most one settle transaction per job this often
LIE_GRACE_S = 5.0  # the designated member's time to report a shard lie before the others do
LIES_KEPT = 4  # rounds whose shard lies a member keeps as evidence


class Duties:
    """One job's housekeeping on this node."""

    def __init__(self, ledger: Ledger, me: str, event: Callable[..., None]) -> None:
        self._ledger = ledger
        self._me = me.lower()
        self._event = event
        self._last_settle = -1e18
        self._votes_seen: dict[int, int] = {}  # decided round -> its votes when last examined
        self._reported: set[tuple[int, str]] = set()  # (round, member) whose evidence was sent
        self._ejected: set[str] = set()
        self._lies: dict[int, RoundModel] = {}  # round -> the model whose shards they deny
        self._finalized_seen: dict[int, float] = {}  # round -> when this node saw it final
        self._alarmed: dict[int, set[str]] = {}  # decided round -> dissenters alarmed for
        self._looked = False  # rounds decided before the first look are history, not news

    def hold_lies(self, r: int, model: RoundModel) -> None:
        """Keep the shard statements that contradict this node's round-r model until the
        round is decided (they are evidence if it finalizes this model)."""
        for old in [k for k in self._lies if k <= r - LIES_KEPT]:
            del self._lies[old]
            self._finalized_seen.pop(old, None)
        if model.lies:
            self._lies[r] = model

    async def perform(self, st: JobState) -> None:
        await self._settle_if_due(st)
        for r, rd in sorted(st.log.rounds.items()):
            # votes still count after the decision, until the vote deadline: a late one may
            # dissent (and change which member is designated)
            if rd.decision is not None and self._votes_seen.get(r) != len(rd.votes):
                self._votes_seen[r] = len(rd.votes)
                self._alarm(r, rd)
                await self._evidence(st, r)
        self._looked = True
        await self._lies_unreported(st)
        await self._eject_idle(st)

    def _alarm(self, r: int, rd: RoundLog) -> None:
        """A ``divergence`` event for the voters of another model than round r's finalized
        one, each once, whenever its vote came (before the decision or after it, until the
        vote deadline). This node's own dissent is the runner's to tell (its model differs)."""
        if rd.final is None:
            return
        dissenters = rd.dissenters()
        raised = self._alarmed.setdefault(r, set())
        new = [d for d in dissenters if d not in raised and d.lower() != self._me]
        raised.update(new)
        if new and self._looked:
            self._event(
                "divergence",
                round=r,
                majority=rd.final.model_hash.hex(),
                dissenters=dissenters,
                self_diverged=False,
            )

    async def _try(self, what: str, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        try:
            await fn(*args)
        except GflError as exc:  # refused (someone was first) or unavailable: not ours to fix
            log.debug("%s: %s", what, exc)

    async def _settle_if_due(self, st: JobState) -> None:
        rec, now = st.record, st.now
        # the chain's views apply due transitions without logging them: a round closed by its
        # timeout has no RoundClosed event (nor a seed) until a transaction writes it, and its
        # vote deadline runs from the timeout, so write it at once
        last = st.log.rounds.get(rec.round - 1)
        unlogged = rec.voting and rec.round > 0 and (last is None or not last.closed)
        due = (
            unlogged
            or (rec.voting and rec.closed_at and now >= rec.closed_at + rec.params.vote_timeout)
            or (
                not rec.voting
                and rec.opens_at
                and rec.updates >= rec.params.min_updates
                and now >= rec.opens_at + rec.params.round_timeout
            )
        )
        if due and time.monotonic() - self._last_settle >= SETTLE_EVERY_S:
            self._last_settle = time.monotonic()
            await self._try("settle", self._ledger.settle)

    async def _evidence(self, st: JobState, r: int) -> None:
        """Round r was decided: if this node is its designated member, eject the withholders
        the finalized mask names and slash the voters of another model for the same mask."""
        rd = st.log.rounds[r]
        if rd.decision is not Decision.FINALIZED or rd.final is None:
            return
        final = Ballot(r, *rd.final.candidate)
        backers = sorted(a for a, v in rd.votes.items() if v.candidate == rd.final.candidate)
        if not backers or backers[0] != self._me:
            return
        for pos in excluded_positions(final.mask, len(rd.updates)):
            author = rd.updates[pos].author
            if (r, author) in self._reported:
                continue
            self._reported.add((r, author))
            self._event("withholder", round=r, member=author, position=pos)
            await self._try("eject withholder", self._ledger.eject_withholder, author, final)
        for _, v in sorted(rd.votes.items()):
            if v.mask == final.mask and v.candidate != rd.final.candidate:
                if (r, v.voter) in self._reported:
                    continue
                self._reported.add((r, v.voter))
                theirs = Ballot(r, *v.candidate)
                self._event("dissenter_reported", round=r, member=v.voter)
                await self._try(
                    "slash dissenter", self._ledger.slash_dissenter, v.voter, theirs, final
                )
        await self._report_lies(st, r, final)

    async def _lies_unreported(self, st: JobState, *, now: bool = False) -> None:
        """Shard lies of finalized rounds that are still unpunished `LIE_GRACE_S` after
        this node saw the decision (the designated member may not have heard them, or be
        the liar), or at once with ``now``: every member that holds them reports them. A
        refused report costs no gas: the call is estimated before it is sent."""
        for r in sorted(self._lies):
            rd = st.log.rounds.get(r)
            if rd is None or rd.decision is not Decision.FINALIZED or rd.final is None:
                continue
            seen = self._finalized_seen.setdefault(r, time.monotonic())
            if now or time.monotonic() >= seen + LIE_GRACE_S:
                await self._report_lies(st, r, Ballot(r, *rd.final.candidate))

    async def last_call(self, st: JobState) -> None:
        """The job ended: the shard lies still unpunished are reported now or never."""
        await self._lies_unreported(st, now=True)

    async def _report_lies(self, st: JobState, r: int, final: Ballot) -> None:
        """Send the shard lies this node holds against round r's finalized candidate."""
        model = self._lies.get(r)
        if model is None or model.shards_hash != final.shards_hash or model.mask != final.mask:
            return
        slashed = {a.lower() for a, _ in st.log.slashed}
        for lie in model.lies:
            liar = lie.aggregator.lower()
            if (r, liar) in self._reported or liar in slashed:
                continue
            self._reported.add((r, liar))
            self._event("shard_liar_reported", round=r, member=lie.aggregator, shard=lie.shard)
            await self._try(
                "slash shard liar", self._ledger.slash_shard_lie, lie, final, model.shard_hashes
            )

    async def _eject_idle(self, st: JobState) -> None:
        """While the collecting round waits on its clock, eject members that missed the
        job's ``max_missed`` rounds in a row (the contract checks; the designated member is
        the lowest address that committed to the round)."""
        rec = st.record
        c = rec.round
        rd = st.log.rounds.get(c)
        if rec.voting or not rec.opens_at or rd is None or not rd.updates:
            return
        if min(u.author.lower() for u in rd.updates) != self._me:
            return
        missed = rec.params.max_missed
        for key, m in st.log.members.items():
            if not m.active or key in self._ejected or rd.update_of(m.address) is not None:
                continue
            last = st.log.last_update_round(m.address)
            since = max(m.join_round, (last + 1) if last is not None else m.join_round)
            if c - since >= missed:
                self._ejected.add(key)
                self._event("idle_member", member=m.address, since=since)
                await self._try("eject", self._ledger.eject, m.address)
