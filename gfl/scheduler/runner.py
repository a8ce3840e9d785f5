"""One job on one node, round after round: the scheduler's unit of work.

`JobRunner` drives a job through DESIGN.md's round protocol against two narrow
interfaces, so this layer knows nothing of libp2p or web3:

- a `Ledger` (the chain, seen as this job): join, commit an update, commit a
  model, settle, and read the job and a round as the chain holds them now;
- an `Exchange` (the network): publish a blob (store it, announce it) and fetch
  a blob by hash from whoever has it.

The chain is the arbiter. Each pass of the loop reads the job and the round
from the ledger (the contract's views apply the closing rule of
`gfl.fl.rounds`); nothing here decides from the local clock which updates
count. The local clock only says
when it is worth asking the chain to settle a round whose timeout passed.

Everything a restart needs is on disk before the chain hears of it: the
update blob before its commitment, the checkpoint of M_{r+1} (with the
strategy's state) before the model commitment. A node killed at any point
resumes from its last checkpoint and the chain.

A chain that does not answer (an RPC outage, a network partition) pauses the
job: the runner asks again until it answers, then catches up; it never gives
the job up for that. Model commitments are compared with ours whenever they
arrive, so a participant that commits a wrong model hash late is still named.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import trio

from gfl.errors import GflError
from gfl.fl.codec import (
    ErrorFeedback,
    blob_hash,
    decode_frame,
    decode_params,
    encode_params,
    parse_compression,
)
from gfl.fl.data import ArrayDataset
from gfl.fl.rounds import consensus_of
from gfl.fl.spec import JobSpec
from gfl.fl.strategies import ClientUpdate, make_strategy
from gfl.scheduler.checkpoints import Checkpoints
from gfl.scheduler.divergence import ModelWatch
from gfl.scheduler.ports import (
    Exchange,
    JobStatus,
    Ledger,
    LedgerJob,
    LedgerRefused,
    LedgerRound,
    LedgerUnavailable,
    NodeData,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

POLL_S = 0.1  # between looks at the chain while waiting, for a runner that nothing wakes
WOKEN_POLL_S = 1.0  # the same for a runner that chain events wake (a node's): a fallback
SETTLE_EVERY_S = 2.0  # at most one settle transaction per job this often
FETCH_TIMEOUT_S = 60.0
CONSENSUS_GRACE_S = 10.0  # after the last round, how long to wait for the others' model hashes
CHAIN_RETRY_S = 1.0  # while the chain does not answer, ask again this often
MAX_UPDATE_BYTES = 1 << 30


class RunnerError(GflError):
    """A job cannot go on on this node (its data, model or state is unusable)."""


@dataclass
class RoundMetrics:
    """Figures of one round on this node (also written to the store)."""

    values: dict[str, Any] = field(default_factory=dict)

    def phase(self, name: str, started: float) -> None:
        self.values[f"t_{name}_s"] = round(time.monotonic() - started, 4)


# -- the runner -------------------------------------------------------------------------------


Emit = Callable[[str, dict[str, Any]], None]


class JobRunner:
    """Runs one job on this node until it finishes, is cancelled, or the node stops."""

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
        device: str = "cpu",
        participate: bool = True,
        wake: trio.Event | None = None,
        poll_s: float = POLL_S,
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
        self.device = device
        self.participate = participate
        self.me = ledger.address
        self.strategy = make_strategy(spec.strategy, spec.strategy_kwargs)
        self.round = 0
        self.params: dict[str, np.ndarray] = {}
        self.model_hash = b""
        self.status = JobStatus.ACTIVE
        self.models = ModelWatch(job_id, self.me, self._event)
        self._refused_round = -1  # the round whose update the chain refused (do not retrain)
        self._chain_down = False
        self._wake = wake or trio.Event()
        self.poll_s = poll_s
        self._last_look = -math.inf
        self._last_settle = -math.inf
        self._eval_limiter = trio.CapacityLimiter(1)
        # the sender's error feedback for lossy compression (top-k residuals carry over)
        self._feedback = ErrorFeedback() if parse_compression(spec.compression).lossy else None
        self._background: trio.Nursery

    # -- wiring -----------------------------------------------------------------------------

    def poke(self) -> None:
        """Something happened (chain event, gossip): look again now."""
        self._wake.set()

    def model_committed(self, r: int) -> None:
        """A model hash for round r reached the chain: once we hold our own M_{r+1}, compare
        again, so that a dissenter is named even when it commits after our check."""
        self.models.committed(r)
        self.poke()

    async def _nap(self, seconds: float | None = None) -> None:
        with trio.move_on_after(self.poll_s if seconds is None else seconds):
            await self._wake.wait()
        self._wake = trio.Event()

    def _event(self, kind: str, **data: Any) -> None:
        self.emit(f"job.{kind}", {"job_id": self.job_id, **data})

    # -- state ------------------------------------------------------------------------------

    def _restore(self) -> None:
        from gfl.fl.trainer import initial_params

        cp = self.checkpoints.latest()
        if cp is None:
            self.round = 0
            self.params = initial_params(self.spec)
            self.model_hash = self.checkpoints.save(0, self.params, self.strategy.state_dict())
            return
        self.round, self.params, state, self.model_hash = cp
        if self.round:
            self.models.took(self.round - 1, self.model_hash)
        if state:
            self.strategy.load_state_dict(state)
        log.info("job %s: resuming at round %d from checkpoint", self.job_id[:10], self.round)

    # -- main loop --------------------------------------------------------------------------

    async def run(self) -> JobStatus:
        """Run to the end; returns the final status (finished or cancelled).

        Evaluating each new global model on the node's test data is off the
        critical path: it runs beside the next round (one at a time) and its
        figures are recorded when ready; `run` returns once all are recorded.
        """
        async with trio.open_nursery() as background:
            self._background = background
            return await self._run()

    async def _run(self) -> JobStatus:
        await trio.to_thread.run_sync(self._restore)
        if self.round:
            self._event("resumed", round=self.round)
            # killed between checkpoint M_r and round r-1's record: write that record now
            self.record(self.round - 1, {"model_hash": self.model_hash.hex()})
        job = await self._until_answered(self.ledger.job)
        if self.participate and job.status == JobStatus.ACTIVE and self.me not in job.joined:
            try:
                await self._until_answered(self.ledger.join)
                self._event("joined")
            except LedgerRefused as exc:
                log.info("job %s: cannot join (%s); following it only", self.job_id[:10], exc)
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
        """One look at the chain and what it asks of us; the final status once there is one."""
        self._last_look = trio.current_time()
        job = await self.ledger.job()
        self._chain_answered()
        await self._recheck_rounds()
        if job.status == JobStatus.CANCELLED:
            self.status = JobStatus.CANCELLED
            self._event("cancelled", round=self.round)
            return self.status
        if self.round >= job.rounds:
            await self._finish(job)
            return self.status
        rec = await self.ledger.round(self.round)
        if rec.closed:
            await self._close_round(job, rec)
            return None
        if (
            self.participate
            and self.me in job.joined
            and job.current_round == self.round
            and self._refused_round != self.round
            and all(a != self.me for a, _, _ in rec.updates)
        ):
            await self._train_round(rec)
            return None
        await self._maybe_settle(job, rec)
        await self._nap(self._until_timeout(job, rec))
        await self._space_looks()
        return None

    async def _space_looks(self) -> None:
        """Commitments come in bursts (one chain event each, and every event wakes us), and
        each look at the chain costs several RPC reads: while waiting on others, look at
        most every poll_s / 5 (the first event after a quiet spell is seen at once)."""
        wait = self._last_look + self.poll_s / 5 - trio.current_time()
        if wait > 0:
            await trio.sleep(wait)

    def _until_timeout(self, job: LedgerJob, rec: LedgerRound) -> float:
        """How long to wait before looking again: a round also closes by time alone (its
        timeout passes, no event says so), so never sleep past that moment."""
        left = rec.opens_at + job.round_timeout - time.time()
        return self.poll_s if left <= 0 else min(self.poll_s, left + 0.05)

    # -- the chain going away and coming back -------------------------------------------------

    async def _until_answered(self, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()``, asked again for as long as the chain does not answer.

        Used for writes: the chain is the arbiter, so an outage, however long, pauses
        the job instead of ending it, and work already done (a trained update, an
        aggregated model) is committed once the chain is back, not redone.
        """
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

    async def _maybe_settle(self, job: LedgerJob, rec: LedgerRound) -> None:
        """Past the timeout with enough updates, ask the chain to close the round."""
        deadline = rec.opens_at + job.round_timeout
        now = time.time()
        if (
            len(rec.updates) >= job.min_updates
            and now >= deadline
            and now - self._last_settle >= SETTLE_EVERY_S
        ):
            self._last_settle = now
            try:
                await self.ledger.settle()
            except GflError as exc:
                log.debug("settle refused: %s", exc)

    # -- a round ----------------------------------------------------------------------------

    async def _train_round(self, rec: LedgerRound) -> None:
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
        metrics.phase("train", t0)
        t0 = time.monotonic()
        blob = await trio.to_thread.run_sync(
            lambda: encode_params(result.update, self.spec.compression, feedback=self._feedback)
        )
        metrics.phase("encode", t0)
        t0 = time.monotonic()
        update_hash = await self.exchange.publish("update", r, blob, result.num_samples)
        try:
            await self._until_answered(
                lambda: self.ledger.commit_update(r, update_hash, result.num_samples)
            )
        except LedgerRefused as exc:
            await self._update_refused(r, exc)
            self.record(r, {f"train_{k}": v for k, v in result.metrics.items()})
            return
        metrics.phase("commit", t0)
        metrics.values.update(
            {f"train_{k}": v for k, v in result.metrics.items()},
            samples=result.num_samples,
            bytes_sent_update=len(blob),
            update_hash=update_hash.hex(),
        )
        self.record(r, metrics.values)
        self._event(
            "update_committed",
            round=r,
            hash=update_hash.hex(),
            samples=result.num_samples,
            bytes=len(blob),
        )

    async def _update_refused(self, r: int, exc: LedgerRefused) -> None:
        """The chain would not take our update for round r: the round closed meanwhile
        (we were cut off, or the chain's next block passes the timeout that the last block
        did not), or we are not a participant. Training r again would be refused again, so
        we do not; a settle makes a pending closure visible to the views at once."""
        self._refused_round = r
        self._event("update_refused", round=r, reason=str(exc))
        log.info("job %s round %d: update refused: %s", self.job_id[:10], r, exc)
        try:
            await self.ledger.settle()
        except GflError as settle_exc:
            log.debug("settle refused: %s", settle_exc)

    async def _close_round(self, job: LedgerJob, rec: LedgerRound) -> None:
        """Round r is closed on chain: produce M_{r+1} and commit its hash."""
        r = self.round
        mine_committed = any(a == self.me for a, _ in rec.models)
        majority = self._majority(rec)
        is_participant = self.me in job.joined
        if majority is not None and (not is_participant or mine_committed or self._behind(job)):
            await self._adopt(r, majority, rec)
            return
        if not is_participant:
            await self._nap()  # an observer waits for the participants' verdict
            return
        metrics = RoundMetrics()
        t0 = time.monotonic()
        try:
            updates, received = await self._fetch_updates(rec)
        except RunnerError as exc:
            self._event("fetch_failed", round=r, reason=str(exc))
            log.warning("job %s round %d: %s", self.job_id[:10], r, exc)
            if majority is None:
                await self._nap(1.0)
                return
            await self._adopt(r, majority, rec)
            return
        metrics.phase("fetch", t0)
        t0 = time.monotonic()
        new_params = await trio.to_thread.run_sync(
            lambda: self.strategy.aggregate(self.params, updates)
        )
        metrics.phase("aggregate", t0)
        new_hash, blob = await trio.to_thread.run_sync(
            lambda: self.checkpoints.save_with_frame(r + 1, new_params, self.strategy.state_dict())
        )
        t0 = time.monotonic()
        await self.exchange.publish("model", r, blob)
        if not mine_committed:
            try:
                await self._until_answered(lambda: self.ledger.commit_model(r, new_hash))
            except LedgerRefused as exc:
                log.info("job %s round %d: model refused: %s", self.job_id[:10], r, exc)
        metrics.phase("model_commit", t0)
        metrics.values.update(
            bytes_received=received,
            model_hash=new_hash.hex(),
            updates=len(updates),
            # each of these blobs matched the hash the chain holds for it (chain order)
            updates_verified=[[a, h.hex(), n] for a, h, n in rec.updates],
        )
        self.params, self.model_hash = new_params, new_hash
        self.round = r + 1
        self.models.took(r, new_hash)
        self.record(r, metrics.values)
        self._evaluate_soon(r, new_params)
        self._event(
            "round_finished",
            round=r,
            model_hash=new_hash.hex(),
            updates=len(updates),
        )

    def _behind(self, job: LedgerJob) -> bool:
        """More than one round behind the chain: catch up by adopting, not recomputing."""
        return job.current_round > self.round + 1 or (
            job.status == JobStatus.FINISHED and (job.rounds > self.round + 1)
        )

    @staticmethod
    def _majority(rec: LedgerRound) -> bytes | None:
        return consensus_of(dict(rec.models)).majority

    async def _adopt(self, r: int, model_hash: bytes, rec: LedgerRound) -> None:
        """Take the majority's M_{r+1} by hash (late joiner, restart, divergence)."""
        owners = [a for a, h in rec.models if h == model_hash]
        t0 = time.monotonic()
        try:
            blob = await self.exchange.fetch(
                model_hash, owners[0] if owners else None, MAX_UPDATE_BYTES, FETCH_TIMEOUT_S
            )
            if blob_hash(blob) != model_hash:
                raise RunnerError("the model blob does not match its hash")
            params = await trio.to_thread.run_sync(decode_frame, blob)
        except (GflError, trio.TooSlowError) as exc:
            self._event("fetch_failed", round=r, reason=f"model: {exc}")
            await self._nap(1.0)
            return
        # server-optimizer state cannot be fetched; strategies with state keep theirs
        await trio.to_thread.run_sync(
            lambda: self.checkpoints.save(r + 1, params, self.strategy.state_dict())
        )
        self.params, self.model_hash, self.round = params, model_hash, r + 1
        self.models.took(r, model_hash)
        values = {
            "adopted": True,
            "model_hash": model_hash.hex(),
            "bytes_received": len(blob),
            "t_fetch_s": round(time.monotonic() - t0, 4),
        }
        self.record(r, values)
        self._evaluate_soon(r, params)
        self._event("round_adopted", round=r, model_hash=model_hash.hex())

    async def _fetch_updates(self, rec: LedgerRound) -> tuple[list[ClientUpdate], int]:
        received = 0
        results: dict[int, ClientUpdate] = {}
        errors: list[str] = []

        async def one(i: int, addr: str, h: bytes, n: int) -> None:
            nonlocal received
            try:
                blob = await self.exchange.load_local(h)
                if blob is None:
                    blob = await self.exchange.fetch(h, addr, MAX_UPDATE_BYTES, FETCH_TIMEOUT_S)
                if addr != self.me:  # fetched now or prefetched on its announcement
                    received += len(blob)
                if blob_hash(blob) != h:
                    raise RunnerError(f"update of {addr} does not match its hash")
                update = await trio.to_thread.run_sync(decode_params, blob)
                _check_shapes(update, self.params, addr)
                results[i] = ClientUpdate(addr, n, update)
            except (GflError, trio.TooSlowError) as exc:
                errors.append(f"{addr}: {exc}")

        async with trio.open_nursery() as nursery:
            for i, (addr, h, n) in enumerate(rec.updates):
                nursery.start_soon(one, i, addr, h, n)
        if errors:
            raise RunnerError("could not get every update: " + "; ".join(errors[:3]))
        return [results[i] for i in sorted(results)], received

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
        values = {**out, "t_eval_s": round(time.monotonic() - t0, 4)}
        self.record(r, values)
        self._event("round_evaluated", round=r, accuracy=out.get("accuracy"), loss=out.get("loss"))

    async def _recheck_rounds(self) -> None:
        """Compare the rounds with new model commitments (or none decided yet) with ours."""
        for r in self.models.due(self.round):
            try:
                decided = await self._check_round(r)
            except BaseException:
                self.models.again(r)
                raise
            if not decided and r == self.round - 1:
                self.models.again(r)  # no majority yet: look again on the next pass

    async def _check_round(self, r: int) -> bool:
        """Compare round r's model commitments with ours (False while no hash has a
        majority). If we are the odd one out and still at round r + 1, we adopt the
        majority's model; either way the job goes on from the majority model."""
        if r not in self.models.mine:  # a round this run neither computed nor adopted
            return True
        rec = await self.ledger.round(r)
        verdict = self.models.judge(r, rec.models)
        if verdict.majority is None:
            return False
        if verdict.self_diverged and r == self.round - 1:
            await self._adopt(r, verdict.majority, rec)
        return True

    async def _finish(self, job: LedgerJob) -> None:
        """Wait briefly for the last round's model commitments, then settle the verdict."""
        last = job.rounds - 1
        with trio.move_on_after(CONSENSUS_GRACE_S):
            while True:
                rec = await self.ledger.round(last)
                committers = {a for a, _, _ in rec.updates}
                if committers <= {a for a, _ in rec.models}:
                    break
                await self._nap(0.2)
        await self._check_round(last)
        self.status = JobStatus.FINISHED
        self._event(
            "finished",
            round=last,
            model_hash=self.model_hash.hex(),
            divergent_rounds=self.models.divergent_rounds,
        )


def _check_shapes(
    update: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray], who: str
) -> None:
    if set(update) != set(params):
        raise RunnerError(f"update of {who} has other parameters than the model")
    for k, v in update.items():
        if v.shape != params[k].shape:
            raise RunnerError(
                f"update of {who}: {k} has shape {v.shape}, expected {params[k].shape}"
            )


__all__: Sequence[str] = ("JobRunner", "RoundMetrics", "RunnerError")
