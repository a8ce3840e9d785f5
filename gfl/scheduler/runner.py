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
5. **duties** — settle due deadlines, eject withholders, slash dissenters.

Everything a restart needs is on disk before the chain hears of it (the update blob before
its commitment, the checkpoint of M_{r+1} before the vote). A chain that does not answer
pauses the job; it is asked again until it answers.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import trio

from gfl.content import MAX_BLOB_BYTES, content_hash
from gfl.errors import GflError
from gfl.fl.codec import ErrorFeedback, UpdateMeta, decode_frame, encode_params, parse_compression
from gfl.fl.data import ArrayDataset
from gfl.fl.rounds import Decision
from gfl.fl.spec import JobSpec
from gfl.scheduler import aggregation
from gfl.scheduler.checkpoints import Checkpoints
from gfl.scheduler.duties import Duties
from gfl.scheduler.joblog import Ended
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

log = logging.getLogger(__name__)
T = TypeVar("T")

POLL_S = 0.1  # between looks at the chain, for a runner that nothing wakes
WOKEN_POLL_S = 1.0  # the same for a runner that chain events wake (a node's): a fallback
CHAIN_RETRY_S = 1.0  # while the chain does not answer, ask again this often
FETCH_TIMEOUT_S = 60.0
RIDE_MARGIN_S = 5.0  # a vote rides on the next update only with this much time to spare

_ENDED = {
    Ended.FINISHED: JobStatus.FINISHED,
    Ended.CANCELLED: JobStatus.CANCELLED,
    Ended.EXPIRED: JobStatus.EXPIRED,
}


class RunnerError(GflError):
    """A job cannot go on on this node (its data, model or state is unusable)."""


@dataclass
class RoundMetrics:
    """Figures of one round on this node (also written to the store)."""

    values: dict[str, Any] = field(default_factory=dict)

    def phase(self, name: str, started: float) -> None:
        self.values[f"t_{name}_s"] = round(time.monotonic() - started, 4)


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
        self._settled: set[int] = set()  # rounds whose decision M_{r+1} follows
        self._refused_round = -1  # the round whose update the chain refused (no retraining)
        self._train_s = 0.0
        self._chain_down = False
        self._wake = trio.Event()
        self._eval_limiter = trio.CapacityLimiter(1)
        lossy = parse_compression(spec.compression).lossy
        self._feedback = ErrorFeedback() if lossy else None
        self._background: trio.Nursery

    # -- wiring -------------------------------------------------------------------------------

    def poke(self) -> None:
        """Something happened (chain event, gossip): look again now."""
        self._wake.set()

    async def _nap(self, seconds: float | None = None) -> None:
        with trio.move_on_after(self.poll_s if seconds is None else max(0.0, seconds)):
            await self._wake.wait()
        self._wake = trio.Event()

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
        st = await self._until_answered(self.ledger.sync)
        await self._restore(st)
        if self.participate and not st.log.is_member(self.me):
            if st.record.status != 1:
                self.participate = False
            else:
                try:
                    await self._until_answered(self.ledger.join)
                    self._event("joined")
                except LedgerRefused as exc:
                    log.info("job %s: cannot join (%s); following it", self.job_id[:10], exc)
                    self._event("join_refused", reason=str(exc))
                    self.participate = False
        while True:
            try:
                status = await self._step()
            except LedgerUnavailable as exc:  # a read failed: look again from the top
                self._chain_lost(exc)
                await self._nap(CHAIN_RETRY_S)
                continue
            if status is not None:
                return status

    async def _step(self) -> JobStatus | None:
        st = await self.ledger.sync()
        self._chain_answered()
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
        if self._should_train(st):
            await self._train(st)
            return None
        await self._nap(self._until_due(st))
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
        elif dissenters:
            self._event(
                "divergence",
                round=r,
                mine=self.model_hash.hex(),
                majority=self.model_hash.hex(),
                dissenters=dissenters,
                self_diverged=False,
            )
        self.record(r, {"model_hash": self.model_hash.hex(), "decided": decision.value})
        self._event("round_decided", round=r, decision=decision.value, dissenters=dissenters)

    async def _adopt(self, r: int, st: JobState) -> None:
        """Take round r's decided outcome as M_{r+1}: recompute it from the finalized mask
        when this node holds the updates (the strategy's state stays exact), else fetch the
        finalized model by hash."""
        rd = st.log.rounds[r]
        self._settled.add(r)
        self.ballot = None
        t0 = time.monotonic()
        if rd.decision is Decision.VOID or rd.final is None:
            params, state = (await trio.to_thread.run_sync(self.checkpoints.load, r))[:2]
            await self._set_model(r + 1, params, state)
        else:
            params = await self._fetch_model(rd.final.model_hash, None, f"round {r + 1}'s model")
            await self._set_model(r + 1, params, self.state)
        self.record(
            r,
            {
                "adopted": True,
                "model_hash": self.model_hash.hex(),
                "t_fetch_s": round(time.monotonic() - t0, 4),
            },
        )
        self._evaluate_soon(r, self.params)
        self._event("round_adopted", round=r, model_hash=self.model_hash.hex())

    # -- 2. aggregate a closed round --------------------------------------------------------------

    async def _aggregate(self, st: JobState) -> None:
        r = self.round
        rd = st.log.rounds[r]
        assert rd.closed_at is not None
        if not self.participate:
            await self._nap()  # an observer waits for the decision
            return
        metrics = RoundMetrics()
        t0 = time.monotonic()
        window = rd.closed_at + self.spec.availability_timeout - st.now
        got = await aggregation.gather(self.exchange, rd.updates, self.me, window)
        metrics.phase("fetch", t0)
        ctx = aggregation.Context(
            self.place.chain_id, self.place.registry, bytes.fromhex(self.job_id), r, self.model_hash
        )
        t0 = time.monotonic()
        excluded = dict(got.missing)
        arrays: dict[int, dict[str, np.ndarray]] = {}
        for u in rd.updates:
            blob = got.blobs.get(u.position)
            if blob is None:
                continue
            checked = await trio.to_thread.run_sync(
                aggregation.check_update, blob, u, ctx, self.params
            )
            if isinstance(checked, str):
                excluded[u.position] = checked
            else:
                arrays[u.position] = checked
        for pos, why in sorted(excluded.items()):
            log.info("job %s round %d: update %d excluded: %s", self.job_id[:10], r, pos, why)
        model = await trio.to_thread.run_sync(
            lambda: self._aggregate_fn(
                self.spec, self.params, self.state, rd.updates, arrays, excluded
            )
        )
        metrics.phase("aggregate", t0)
        new_hash = await self._set_model(r + 1, model.params, model.state)
        frame = await trio.to_thread.run_sync(self.checkpoints.frame, r + 1)
        await self.exchange.publish("model", r, frame)
        mine = rd.update_of(self.me)
        if mine is not None and mine.position not in excluded:
            self.ballot = Ballot(r, new_hash, model.mask)
        metrics.values.update(
            bytes_received=got.received,
            model_hash=new_hash.hex(),
            updates=model.used,
            excluded=len(excluded),
            updates_verified=[
                [u.author, u.update_hash.hex(), u.samples]
                for u in rd.updates
                if u.position in arrays
            ],
        )
        self.record(r, metrics.values)
        self._evaluate_soon(r, model.params)
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

    async def _vote(self, st: JobState, ballot: Ballot) -> None:
        self.ballot = None
        try:
            await self._until_answered(lambda: self.ledger.vote(ballot))
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
            and st.log.is_member(self.me)  # a mid-round joiner may contribute too
            and (rd is None or rd.update_of(self.me) is None)
        )

    async def _train(self, st: JobState) -> None:
        from gfl.fl.trainer import train_local

        r = self.round
        metrics = RoundMetrics()
        self._event("training", round=r)
        t0 = time.monotonic()
        async with self.train_limiter:
            result = await trio.to_thread.run_sync(
                lambda: train_local(
                    self.spec,
                    self.params,
                    self.data.train,
                    device=self.device,
                    seed=self.spec.seed + r,
                )
            )
        self._train_s = time.monotonic() - t0
        metrics.phase("train", t0)
        meta = UpdateMeta(
            chain=self.place.chain_id,
            registry=self.place.registry,
            job=bytes.fromhex(self.job_id),
            round=r,
            author=bytes.fromhex(self.me.removeprefix("0x").lower()),
            base=self.model_hash,
        )
        t0 = time.monotonic()
        blob = await trio.to_thread.run_sync(
            lambda: encode_params(
                result.update, self.spec.compression, feedback=self._feedback, meta=meta
            )
        )
        metrics.phase("encode", t0)
        samples = min(result.num_samples, self.spec.sample_cap) if self.spec.sample_cap else 1
        t0 = time.monotonic()
        update_hash = content_hash(blob)
        signature = self.ledger.sign_update(r, update_hash)
        await self.exchange.publish("update", r, blob, samples, signature)
        ballot = self.ballot if self._can_ride(st) else None
        self.ballot = None if ballot is not None else self.ballot
        try:
            await self._until_answered(lambda: self.ledger.commit(r, update_hash, samples, ballot))
        except LedgerRefused as exc:
            if ballot is not None:  # the vote may be what the chain refused: keep the update
                self.ballot = ballot
                try:
                    await self._until_answered(lambda: self.ledger.commit(r, update_hash, samples))
                except LedgerRefused as exc2:
                    await self._update_refused(r, exc2)
                    return
            else:
                await self._update_refused(r, exc)
                return
        metrics.phase("commit", t0)
        metrics.values.update(
            {f"train_{k}": v for k, v in result.metrics.items()},
            samples=samples,
            bytes_sent_update=len(blob),
            update_hash=update_hash.hex(),
        )
        self.record(r, metrics.values)
        self._event(
            "update_committed",
            round=r,
            hash=update_hash.hex(),
            samples=samples,
            bytes=len(blob),
            vote=ballot is not None,
        )

    async def _update_refused(self, r: int, exc: LedgerRefused) -> None:
        """The chain would not take our update for round r (it closed meanwhile, we are not
        eligible, ...): training r again would be refused again, so we do not."""
        self._refused_round = r
        self._event("update_refused", round=r, reason=str(exc))
        log.info("job %s round %d: update refused: %s", self.job_id[:10], r, exc)

    # -- the end --------------------------------------------------------------------------------

    async def _end(self, st: JobState, ended: Ended) -> JobStatus:
        status = _ENDED.get(ended, JobStatus.CANCELLED)
        last = self.round - 1
        self._event(
            "finished" if status is JobStatus.FINISHED else "cancelled",
            round=last,
            model_hash=self.model_hash.hex(),
            ended=ended.value,
        )
        return status

    # -- timing ---------------------------------------------------------------------------------

    def _until_due(self, st: JobState) -> float:
        """How long to wait before looking again: rounds also close and votes also end by
        time alone (no event says so), so never sleep past the next deadline."""
        rec = st.record
        deadlines = []
        if rec.voting and rec.closed_at:
            deadlines.append(rec.closed_at + rec.params.vote_timeout)
        elif rec.opens_at:
            deadlines.append(rec.opens_at + rec.params.round_timeout)
        left = min(deadlines, default=math.inf) - st.now
        return self.poll_s if left <= 0 else min(self.poll_s, left + 0.05)

    async def _until_answered(self, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()``, asked again for as long as the chain does not answer: an
        outage pauses the job instead of ending it, and work already done is committed
        once the chain is back, not redone."""
        while True:
            try:
                result = await call()
            except LedgerUnavailable as exc:
                self._chain_lost(exc)
                await self._nap(CHAIN_RETRY_S)
                continue
            self._chain_answered()
            return result

    def _chain_lost(self, exc: Exception) -> None:
        if not self._chain_down:
            self._chain_down = True
            self._event("chain_unavailable", round=self.round, reason=str(exc))
            log.warning("job %s: waiting for the chain: %s", self.job_id[:10], exc)

    def _chain_answered(self) -> None:
        if self._chain_down:
            self._chain_down = False
            self._event("chain_back", round=self.round)
            log.info("job %s: the chain answers again", self.job_id[:10])

    # -- evaluation -----------------------------------------------------------------------------

    def _evaluate_soon(self, r: int, params: Mapping[str, np.ndarray]) -> None:
        if self.data.test is not None:
            self._background.start_soon(self._evaluate, r, params, self.data.test)

    async def _evaluate(self, r: int, params: Mapping[str, np.ndarray], test: ArrayDataset) -> None:
        """Test loss and accuracy of M_{r+1}, recorded as round r's figures."""
        from gfl.fl.trainer import evaluate

        async with self._eval_limiter:
            t0 = time.monotonic()
            out = await trio.to_thread.run_sync(
                lambda: evaluate(self.spec, params, test, device=self.device)
            )
        self.record(r, {**out, "t_eval_s": round(time.monotonic() - t0, 4)})
        self._event("round_evaluated", round=r, accuracy=out.get("accuracy"), loss=out.get("loss"))
