"""One job on one node, round after round: the Scheduler's unit of work.

`JobRunner` drives a job through the round protocol (docs/protocol.md) against the two
ports of `gfl.scheduler.ports`; it knows nothing of libp2p or web3. The chain is the
arbiter: each pass reads the job as the chain holds it (`Ledger.sync`) and does what that
asks of this node, in this order:

1. **reconcile** — once round r-1 is decided, make M_r what the chain decided (the model we
   computed, another one recomputed from the finalized mask, one fetched by hash, or M_{r-1}
   when the round was void);
2. **aggregate** — once round r closes, gather its updates under the availability rule,
   aggregate the usable ones into M_{r+1} and keep the ballot (model hash, mask) to vote;
3. **vote** — alone, or riding on the next round's update in one transaction;
4. **train** — on M_r while r collects (also before r-1 is decided), and commit the update;
5. **duties** — settle due deadlines, raise the dissent alarm (a vote may come after the
   decision), eject withholders, slash dissenters.

Everything a restart needs is on disk before the chain hears of it (the update blob before
its commitment, the checkpoint of M_{r+1} before the vote). A chain that does not answer
pauses the job; it is asked again until it answers.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar

import numpy as np
import trio

from gfl.content import MAX_BLOB_BYTES, content_hash
from gfl.errors import GflError
from gfl.fl.codec import ErrorFeedback, UpdateMeta, decode_frame, encode_frame, parse_compression
from gfl.fl.rounds import Decision, excluded_positions
from gfl.fl.shards import Mode
from gfl.fl.spec import JobSpec
from gfl.fl.strategies import make_strategy
from gfl.scheduler import aggregation
from gfl.scheduler.budget import PrivacyBudget, may_leave
from gfl.scheduler.checkpoints import Checkpoints
from gfl.scheduler.duties import Duties
from gfl.scheduler.evaluation import Evaluator
from gfl.scheduler.exchange import keeps_model
from gfl.scheduler.joblog import Ended, RoundLog
from gfl.scheduler.patience import CHAIN_RETRY_S, Patience, until_due
from gfl.scheduler.ports import (
    Ballot,
    Exchange,
    JobState,
    JobStatus,
    Ledger,
    LedgerRefused,
    LedgerUnavailable,
    NodeData,
)
from gfl.scheduler.secure import SecureRounds
from gfl.scheduler.sharding import ShardedRounds
from gfl.scheduler.update import RoundMetrics, Update, make_update

log = logging.getLogger(__name__)
T = TypeVar("T")

POLL_S = 0.1  # between looks at the chain, for a runner that nothing wakes
WOKEN_POLL_S = 1.0  # the same for a runner that chain events wake (a node's): a fallback
FETCH_TIMEOUT_S = 60.0
RIDE_MARGIN_S = 5.0  # a vote rides on the next update only with this much time to spare
LATE_VOTES_POLL_S = 2.0  # between looks at a finished job's last round for late votes

_ENDED = {
    Ended.FINISHED: JobStatus.FINISHED,
    Ended.CANCELLED: JobStatus.CANCELLED,
    Ended.EXPIRED: JobStatus.EXPIRED,
}


class RunnerError(GflError):
    """A job cannot go on on this node (its data, model or state is unusable)."""


Emit = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class ChainPlace:
    """Where the job lives: what every update's frame must name."""

    chain_id: int
    registry: bytes  # 20 bytes


class JobRunner:
    """Runs one job on this node until it ends, or the node stops."""

    def __init__(
        self,
        *,
        job_id: str,
        spec: JobSpec,
        ledger: Ledger,
        exchange: Exchange,
        data: NodeData,
        checkpoints: Checkpoints,
        train_limiter: trio.CapacityLimiter,
        emit: Emit,
        record: Callable[[int, dict[str, Any]], None],
        place: ChainPlace,
        device: str = "cpu",
        participate: bool = True,
        poll_s: float = POLL_S,
        aggregate: Callable[..., aggregation.RoundModel] = aggregation.aggregate,
    ) -> None:
        self.job_id = job_id
        self.spec = spec
        self.ledger = ledger
        self.exchange = exchange
        self.data = data
        self.checkpoints = checkpoints
        self.train_limiter = train_limiter
        self.emit = emit
        self.record = record
        self.place = place
        self.device = device
        self.participate = participate
        self.poll_s = poll_s
        self._aggregate_fn = aggregate  # M_{r+1} from M_r and the usable updates
        self.me = ledger.address
        self.round = 0  # we hold M_round (its hash: model_hash)
        self.params: dict[str, np.ndarray] = {}
        self.state: dict[str, np.ndarray] = {}  # the strategy's state after M_round
        self.model_hash = b""
        self.ballot: Ballot | None = None  # our vote on round - 1, not cast yet
        self.duties = Duties(ledger, self.me, self._event)
        self.patience = Patience(job_id, self._event, self._idle, lambda: self.round)
        self._settled: set[int] = set()  # rounds whose decision M_{r+1} follows
        self._stateful = make_strategy(spec.strategy, spec.strategy_kwargs).stateful
        self._state_lost: int | None = None  # a round taken without the state it leaves
        self._refused_round = -1  # the round whose update the chain refused (no retraining)
        self.budget: PrivacyBudget | None = None  # a job with [privacy]: what we spent
        self._spent = False  # the next round would overspend it: we only follow from here
        self._train_s = 0.0
        self._wake = trio.Event()  # set by any news: what a round's waits wake on
        self._news = trio.Event()  # set by chain news only: what the idle loop wakes on
        self.evaluator = Evaluator(spec, device, record, self._event)
        self.sharded = ShardedRounds(
            spec=spec, me=self.me, exchange=exchange, ledger=ledger, nap=self._nap, poll_s=poll_s
        )
        self.secure: SecureRounds | None = None
        if spec.secure_aggregation:
            self.secure = SecureRounds(
                spec=spec, me=self.me, ledger=ledger, exchange=exchange,
                root=checkpoints.root, nap=self._nap, poll_s=poll_s, sharded=self.sharded,
            )  # fmt: skip
        lossy = parse_compression(spec.compression).lossy
        self._feedback = ErrorFeedback() if lossy else None
        self._background: trio.Nursery

    # -- wiring -------------------------------------------------------------------------------

    def poke(self) -> None:
        """The chain has news for the job (events): look again now."""
        self._wake.set()
        self._news.set()

    def hint(self) -> None:
        """Gossip for the job came: wake a round's wait for it (statements, reveals), not
        the loop that reads the chain, which gossip changes nothing in (each of its looks
        is a contract call; a 32-node round brings ~5 N messages)."""
        self._wake.set()

    async def _nap(self, seconds: float | None = None) -> None:
        """Wait ``seconds`` (default ``poll_s``) or until any news."""
        with trio.move_on_after(self.poll_s if seconds is None else max(0.0, seconds)):
            await self._wake.wait()
        self._wake = trio.Event()

    async def _idle(self, seconds: float | None = None) -> None:
        """Wait ``seconds`` (default ``poll_s``) or until chain news."""
        with trio.move_on_after(self.poll_s if seconds is None else max(0.0, seconds)):
            await self._news.wait()
        self._news = trio.Event()

    def _event(self, kind: str, **data: Any) -> None:
        self.emit(f"job.{kind}", {"job_id": self.job_id, **data})

    # -- the loop -----------------------------------------------------------------------------

    async def run(self) -> JobStatus:
        """Run to the end; returns the final status. Evaluating each new model runs beside
        the next round (one at a time); `run` returns once all are recorded."""
        async with trio.open_nursery() as background:
            self._background = background
            return await self._run()

    async def _run(self) -> JobStatus:
        st = await self.patience.until_answered(self.ledger.sync)
        await self._restore(st)
        await self._open_budget()
        if self.participate and not st.log.is_member(self.me) and not self._spent:
            if st.record.status != 1:
                self.participate = False
            else:
                try:
                    join = self.ledger.join
                    if self.secure is not None:
                        join = partial(self.ledger.join, self.secure.public_key)
                    await self.patience.until_answered(join)
                    self._event("joined")
                except LedgerRefused as exc:
                    log.info("job %s: cannot join (%s); following it", self.job_id[:10], exc)
                    self._event("join_refused", reason=str(exc))
                    self.participate = False
        while True:
            try:
                status = await self._step()
            except LedgerUnavailable as exc:  # a read failed: look again from the top
                self.patience.lost(exc)
                await self._idle(CHAIN_RETRY_S)
                continue
            if status is not None:
                return status

    async def _step(self) -> JobStatus | None:
        st = await self.ledger.sync()
        self.patience.answered()
        await self.duties.perform(st)  # evidence first: a member's slot keeps its last vote only
        if await self._reconcile(st):
            return None
        ended = st.log.ended
        rd = st.log.rounds.get(self.round)
        if rd is not None and rd.closed and self.round < self.spec.rounds:
            await self._aggregate(st)
            return None
        if self.ballot is not None and not self._can_ride(st):
            await self._vote(st, self.ballot)
            return None
        if ended is not None:
            return await self._end(st, ended)
        if self._spent and self.participate and self.ballot is None and may_leave(st.log, self.me):
            await self._leave()
            return None
        if self._should_train(st):
            await self._train_keeping_the_vote(st)
            return None
        await self._idle(until_due(st, self.poll_s))
        return None

    # -- state ------------------------------------------------------------------------------

    async def _restore(self, st: JobState) -> None:
        cp = await trio.to_thread.run_sync(self.checkpoints.latest)
        if cp is None:
            params = await self._fetch_model(st.record.model0_hash, st.log.owner or None, "M_0")
            self.model_hash = await trio.to_thread.run_sync(
                lambda: self.checkpoints.save(0, params, {})
            )
            self.round, self.params, self.state = 0, params, {}
            return
        self.round, self.params, self.state, self.model_hash = cp
        self._state_lost = await trio.to_thread.run_sync(self.checkpoints.state_lost)
        prev, me = st.log.rounds.get(self.round - 1), self.me.lower()
        if prev and prev.decision is None and prev.update_of(me) and me not in prev.votes:
            # our ballot on round - 1 died with the process (its mask is on no disk):
            # aggregate that round again, from its checkpoint, to cast it
            with contextlib.suppress(OSError, GflError):  # damaged: we only miss that vote
                back = await trio.to_thread.run_sync(self.checkpoints.load, self.round - 1)
                self.round, (self.params, self.state, self.model_hash) = self.round - 1, back
        self._event("resumed", round=self.round)
        log.info("job %s: resuming at round %d from checkpoint", self.job_id[:10], self.round)

    async def _fetch_model(self, h: bytes, owner: str | None, what: str) -> dict[str, np.ndarray]:
        """A model blob by hash, checked and decoded; retried until it comes."""
        while True:
            try:
                blob = await self.exchange.load_local(h)
                if blob is None:
                    blob = await self.exchange.fetch(h, owner, MAX_BLOB_BYTES, FETCH_TIMEOUT_S)
                if content_hash(blob) != h:
                    raise RunnerError(f"{what} does not match its hash")
                return await trio.to_thread.run_sync(decode_frame, blob)
            except (GflError, trio.TooSlowError) as exc:
                self._event("fetch_failed", round=self.round, reason=f"{what}: {exc}")
                await self._nap(1.0)

    async def _set_model(
        self, r: int, params: dict[str, np.ndarray], state: dict[str, np.ndarray]
    ) -> bytes:
        """Make ``params`` this node's M_r (checkpointed first)."""
        h = await trio.to_thread.run_sync(lambda: self.checkpoints.save(r, params, state))
        self.round, self.params, self.state, self.model_hash = r, params, state, h
        return h

    # -- 1. reconcile with decisions ------------------------------------------------------------

    async def _reconcile(self, st: JobState) -> bool:
        """Make M_round what the chain decided for round - 1, and skip ahead when this node
        is behind or only follows; True when it changed anything."""
        r = self.round - 1
        prev = st.log.rounds.get(r)
        if r >= 0 and r not in self._settled and prev is not None and prev.decision is not None:
            self._settled.add(r)
            await self._follow(r, st)
            return True
        here = st.log.rounds.get(self.round)
        decided = [n for n, rd in st.log.rounds.items() if rd.decision is not None]
        behind = bool(decided) and max(decided) > self.round
        if here is not None and here.decision is not None and (behind or not self.participate):
            await self._adopt(self.round, st)  # skip: take round's outcome as decided
            return True
        return False

    async def _follow(self, r: int, st: JobState) -> None:
        """Round r is decided: our M_{r+1} becomes what the chain decided."""
        rd = st.log.rounds[r]
        decision = rd.decision
        assert decision is not None
        dissenters = rd.dissenters()
        if decision is Decision.VOID:
            cp = await trio.to_thread.run_sync(self.checkpoints.load, r)
            await self._set_model(r + 1, cp[0], cp[1])
            self.ballot = None
            self._event("round_void", round=r)
        elif rd.final is not None and rd.final.model_hash != self.model_hash:
            self._event(
                "divergence",
                round=r,
                mine=self.model_hash.hex(),
                majority=rd.final.model_hash.hex(),
                dissenters=dissenters,
                self_diverged=True,
            )
            await self._adopt(r, st)
            return
        self.record(r, {"model_hash": self.model_hash.hex(), "decided": decision.value})
        self._event("round_decided", round=r, decision=decision.value, dissenters=dissenters)

    async def _adopt(self, r: int, st: JobState) -> None:
        """Take round r's decided outcome as M_{r+1}. A strategy with server state (momentum,
        moments) needs the state round r leaves, which only the round's reduction gives: a
        member recomputes the round from the finalized mask's updates (`_recompute`). Else,
        or when that fails, the finalized model is fetched by hash; a member whose strategy
        keeps state then no longer knows it, and votes no more in this job (its models would
        be other ones: a slashable dissent)."""
        rd = st.log.rounds[r]
        self._settled.add(r)
        self.ballot = None
        t0 = time.monotonic()
        model = None
        if rd.decision is Decision.VOID or rd.final is None:
            params, state = (await trio.to_thread.run_sync(self.checkpoints.load, r))[:2]
            await self._set_model(r + 1, params, state)
        else:
            exact = self._stateful and self.participate and self._state_lost is None
            model = await self._recompute(r, rd) if exact and self.secure is None else None
            if model is not None:
                await self._set_model(r + 1, model.params, model.state)
            else:
                what = f"round {r + 1}'s model"
                params = await self._fetch_model(rd.final.model_hash, None, what)
                await self._set_model(r + 1, params, self.state)
                if exact:
                    await self._lose_state(r)
        self.record(
            r,
            {
                "adopted": True,
                "recomputed_round": model is not None,
                "model_hash": self.model_hash.hex(),
                "t_fetch_s": round(time.monotonic() - t0, 4),
            },
        )
        self.evaluator.soon(self._background, r, self.params, self.data.test)
        self._event("round_adopted", round=r, model_hash=self.model_hash.hex())

    async def _recompute(self, r: int, rd: RoundLog) -> aggregation.RoundModel | None:
        """Round r's finalized model and the strategy's state after it, computed here from
        M_r, the state before it and the updates the finalized mask uses (fetched within
        `FETCH_TIMEOUT_S`); None when one cannot be had or the result is another model."""
        final = rd.final
        assert final is not None
        try:
            params, state, base = await trio.to_thread.run_sync(self.checkpoints.load, r)
        except (OSError, GflError) as exc:
            log.info(
                "job %s round %d: no checkpoint to recompute from: %s", self.job_id[:10], r, exc
            )
            return None
        out = set(excluded_positions(final.mask, len(rd.updates)))
        decided = {p: "excluded by the round's decision" for p in out}
        used = replace(rd, updates=[u for u in rd.updates if u.position not in out])
        ctx = aggregation.Context(
            self.place.chain_id, self.place.registry, bytes.fromhex(self.job_id), r, base
        )
        model = await aggregation.all_to_all(
            self.exchange,
            used,
            ctx,
            self.me,
            params,
            self.sharded.layout(params),
            FETCH_TIMEOUT_S,
            lambda arrays, missing: self._aggregate_fn(
                self.spec, params, state, rd.updates, arrays, {**decided, **missing}
            ),
            RoundMetrics(),
        )
        if set(model.excluded) != out:
            log.info(
                "job %s round %d: cannot recompute it: %s", self.job_id[:10], r, model.excluded
            )
            return None
        h = await trio.to_thread.run_sync(lambda: content_hash(encode_frame(model.params)))
        if h != final.model_hash:
            log.info("job %s round %d: recomputed, it is another model", self.job_id[:10], r)
            return None
        return model

    async def _lose_state(self, r: int) -> None:
        self._state_lost = r
        await trio.to_thread.run_sync(self.checkpoints.lose_state, r)  # after a restart too
        why = f"the {self.spec.strategy} state after round {r} could not be recomputed here"
        log.warning("job %s: %s: this node votes no more in this job", self.job_id[:10], why)
        self._event("state_lost", round=r, reason=why)

    # -- 2. aggregate a closed round --------------------------------------------------------------

    async def _aggregate(self, st: JobState) -> None:
        r = self.round
        rd = st.log.rounds[r]
        assert rd.closed_at is not None
        if not self.participate:
            await self._idle()  # an observer waits for the decision
            return
        metrics = RoundMetrics()
        ctx = aggregation.Context(
            self.place.chain_id, self.place.registry, bytes.fromhex(self.job_id), r, self.model_hash
        )
        t0 = time.monotonic()
        if self.secure is not None:
            model = await self.secure.aggregate(st, r, ctx, self.params, self.state, metrics)
        elif self.sharded.mode(self.params, rd) is Mode.SHARDED:
            model = await self.sharded.aggregate(
                st, rd, ctx, self.params, self.state, metrics.values
            )
            metrics.phase("aggregate", t0)
        else:
            model = await aggregation.all_to_all(
                self.exchange,
                rd,
                ctx,
                self.me,
                self.params,
                self.sharded.layout(self.params),
                rd.closed_at + self.spec.availability_timeout - st.now,
                lambda arrays, excluded: self._aggregate_fn(
                    self.spec, self.params, self.state, rd.updates, arrays, excluded
                ),
                metrics,
            )
        excluded = model.excluded
        for pos, why in sorted(excluded.items()):
            log.info("job %s round %d: update %d excluded: %s", self.job_id[:10], r, pos, why)
        new_hash = await self._set_model(r + 1, model.params, model.state)
        frame = await trio.to_thread.run_sync(self.checkpoints.frame, r + 1)
        if keeps_model(new_hash, self.me, [u.author for u in rd.updates]):
            await self.exchange.publish("model", r, frame)
        else:
            await self.exchange.hold(frame)
        mine = rd.update_of(self.me)
        if mine is not None and mine.position not in excluded and self._state_lost is None:
            self.ballot = Ballot(r, new_hash, model.mask, model.shards_hash)
        self.duties.hold_lies(r, model)
        metrics.values.update(model_hash=new_hash.hex(), updates=model.used, excluded=len(excluded))
        self.record(r, metrics.values)
        self.evaluator.soon(self._background, r, model.params, self.data.test)
        self._event(
            "round_finished",
            round=r,
            model_hash=new_hash.hex(),
            updates=model.used,
            excluded=sorted(excluded),
        )

    # -- 3. vote ------------------------------------------------------------------------------

    def _can_ride(self, st: JobState) -> bool:
        """Our vote on round - 1 can go with our update for this round: we will train it
        now, and there is time to spare before the vote closes."""
        b = self.ballot
        rd = st.log.rounds.get(b.round) if b is not None else None
        if b is None or rd is None or rd.closed_at is None or not self._should_train(st):
            return False
        left = rd.closed_at + self.spec.vote_timeout - st.now
        return left > 2 * self._train_s + RIDE_MARGIN_S

    async def _train_keeping_the_vote(self, st: JobState) -> None:
        """Train; a vote meant to ride on the update goes alone instead when training runs
        so long (a loaded machine) that the vote would miss its deadline."""
        ballot = self.ballot
        rd = st.log.rounds.get(ballot.round) if ballot is not None else None
        if ballot is None or rd is None or rd.closed_at is None:
            await self._train(st)
            return
        voting, left = False, rd.closed_at + self.spec.vote_timeout - st.now - RIDE_MARGIN_S

        async def vote_alone_in_time() -> None:
            nonlocal voting
            await trio.sleep(max(0, left))
            if self.ballot is ballot:  # still unsent: the update has not left yet
                voting = True
                await self._vote(st, ballot)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(vote_alone_in_time)
            await self._train(st)
            if not voting:
                nursery.cancel_scope.cancel()

    async def _vote(self, st: JobState, ballot: Ballot) -> None:
        self.ballot = None
        try:
            await self.patience.until_answered(lambda: self.ledger.vote(ballot))
        except LedgerRefused as exc:
            log.info("job %s round %d: vote refused: %s", self.job_id[:10], ballot.round, exc)
            self._event("vote_refused", round=ballot.round, reason=str(exc))
            return
        self._event("voted", round=ballot.round, model_hash=ballot.model_hash.hex())

    # -- 4. train -----------------------------------------------------------------------------

    def _should_train(self, st: JobState) -> bool:
        r = self.round
        rd = st.log.rounds.get(r)
        return (
            self.participate
            and st.log.ended is None
            and st.record.round == r
            and r < self.spec.rounds
            and self._refused_round != r
            and not self._spent
            and st.log.is_member(self.me)  # a mid-round joiner may contribute too
            and (rd is None or rd.update_of(self.me) is None)
            and (self.secure is None or self.secure.may_train(st, r))
        )

    async def _train(self, st: JobState) -> None:
        r = self.round
        budget = self.budget
        if budget is not None and not await trio.to_thread.run_sync(budget.allows_next):
            await self._budget_spent(r, budget)
            return
        metrics = RoundMetrics()
        self._event("training", round=r)
        meta = UpdateMeta(
            chain=self.place.chain_id,
            registry=self.place.registry,
            job=bytes.fromhex(self.job_id),
            round=r,
            author=bytes.fromhex(self.me.removeprefix("0x").lower()),
            base=self.model_hash,
        )
        data = self.data.train
        if self.secure is not None:
            secure = await self.secure.update(
                r, self.params, data, meta,
                device=self.device, limiter=self.train_limiter, metrics=metrics,
                privacy=budget.plan if budget is not None else None,
            )  # fmt: skip
            if secure is None:  # not in the round's masking set: no update this round
                await self._update_refused(r, LedgerRefused("not in the round's masking set"))
                return
            update = secure
        else:
            async with self.train_limiter:
                update = await trio.to_thread.run_sync(
                    lambda: make_update(
                        self.spec,
                        self.params,
                        data,
                        meta,
                        device=self.device,
                        feedback=self._feedback,
                        metrics=metrics,
                    )
                )
            self._train_s = update.train_s
        if budget is not None and update.privacy is not None:  # spent before the update leaves
            spend = budget.spend
            metrics.values["epsilon"] = await trio.to_thread.run_sync(spend, r, update.privacy)
        await self._publish_and_commit(r, st, update, metrics)

    async def _publish_and_commit(
        self, r: int, st: JobState, update: Update, metrics: RoundMetrics
    ) -> None:
        t0 = time.monotonic()
        signature = self.ledger.sign_update(r, update.hash)
        for part in update.parts:  # a sharded update: its shards served, its manifest announced
            await self.exchange.hold(part)
        await self.exchange.publish("update", r, update.blob, update.samples, signature)
        ballot = self.ballot if self._can_ride(st) else None
        if not await self._commit(r, update, ballot):
            return
        metrics.phase("commit", t0)
        metrics.values["update_hash"] = update.hash.hex()
        self.record(r, metrics.values)
        self._event(
            "update_committed",
            round=r,
            hash=update.hash.hex(),
            samples=update.samples,
            bytes=len(update.blob),
            vote=ballot is not None,
        )

    async def _commit(self, r: int, update: Update, ballot: Ballot | None) -> bool:
        """Commit the update (with our vote riding on it); if the chain refuses the pair,
        the vote may be what it refused: keep the ballot and commit the update alone."""
        self.ballot = None if ballot is not None else self.ballot
        for vote in (ballot, None) if ballot is not None else (None,):
            try:
                await self.patience.until_answered(
                    partial(self.ledger.commit, r, update.hash, update.samples, vote)
                )
                return True
            except LedgerRefused as exc:
                refused = exc
                self.ballot = ballot
        await self._update_refused(r, refused)
        return False

    async def _update_refused(self, r: int, exc: LedgerRefused) -> None:
        """The chain would not take our update for round r (it closed meanwhile, we are not
        eligible, ...): training r again would be refused again, so we do not."""
        self._refused_round = r
        self._event("update_refused", round=r, reason=str(exc))
        log.info("job %s round %d: update refused: %s", self.job_id[:10], r, exc)

    # -- privacy budget ---------------------------------------------------------------------------

    async def _open_budget(self) -> None:
        """A job with [privacy]: what this node spent on it (before a restart too), and
        whether it may spend one more round."""
        if not self.spec.privacy or not self.participate:
            return
        n = len(self.data.train)
        root = self.checkpoints.root
        budget = await trio.to_thread.run_sync(PrivacyBudget.open, self.spec, n, root)
        self.budget = budget
        if budget is not None and not await trio.to_thread.run_sync(budget.allows_next):
            await self._budget_spent(self.round, budget)

    async def _budget_spent(self, r: int, budget: PrivacyBudget) -> None:
        """Round r would spend more ε than the job allows: no more updates from this node;
        it follows the job to its end (and leaves it, so that no round waits for it)."""
        self._spent = True
        spent = await trio.to_thread.run_sync(budget.spent)
        self.record(r, {"epsilon": spent})
        self._event("privacy_spent", round=r, epsilon=spent, budget=budget.budget)
        log.info(
            "job %s: privacy budget spent (ε %.3g of %g)", self.job_id[:10], spent, budget.budget
        )

    async def _leave(self) -> None:
        """Leave the job (its rounds stop waiting for us); we keep following it."""
        try:
            await self.patience.until_answered(self.ledger.leave)
        except LedgerRefused as exc:
            log.info("job %s: cannot leave (%s)", self.job_id[:10], exc)
            self.participate = False  # not a member any more, or the job ended: we follow
            return
        self._event("left", round=self.round, reason="privacy budget spent")

    # -- the end --------------------------------------------------------------------------------

    async def watch_last_round(self) -> None:
        """After `run` returned FINISHED: votes on the last round still count until its
        vote deadline, and a dissent among them is evidence (docs/protocol.md 3.5). Until
        the deadline passes or every author of the round voted, look at it every
        `LATE_VOTES_POLL_S` and do the duties it asks (the alarm, the designated member's
        report). A chain that does not answer ends the watch (`LedgerUnavailable`)."""
        last = self.spec.rounds - 1
        while True:
            st = await self.ledger.sync()
            rd = st.log.rounds.get(last)
            if rd is None or rd.closed_at is None:
                return
            await self.duties.perform(st)
            left = rd.closed_at + self.spec.vote_timeout - st.now
            if left <= 0 or {u.author.lower() for u in rd.updates} <= set(rd.votes):
                return
            await trio.sleep(min(LATE_VOTES_POLL_S, left))

    async def _end(self, st: JobState, ended: Ended) -> JobStatus:
        await self.duties.last_call(st)
        status = _ENDED.get(ended, JobStatus.CANCELLED)
        last = self.round - 1
        self._event(
            "finished" if status is JobStatus.FINISHED else "cancelled",
            round=last,
            model_hash=self.model_hash.hex(),
            ended=ended.value,
        )
        return status
