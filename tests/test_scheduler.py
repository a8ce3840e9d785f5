"""The job runner against the real embedded chain: several participants in one process.

The network is replaced by a shared in-memory blob table (the libp2p exchange is covered
by tests/net and the end-to-end tests); the chain, the training, the codec and the
strategies are the real ones. This is where the round protocol's decisions are checked
quickly: agreement, votes and decisions, dissent, withheld and copied updates.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trio
from support import MemoryExchange, registered_job, round_0_has_an_update

from gfl.fl.data import load_dataset, load_partition
from gfl.fl.rounds import Decision
from gfl.fl.spec import JobSpec
from gfl.identity import NodeIdentity
from gfl.scheduler import aggregation
from gfl.scheduler.checkpoints import Checkpoints
from gfl.scheduler.exchange import keeps_model
from gfl.scheduler.ledger import ChainLedger
from gfl.scheduler.ports import NodeData
from gfl.scheduler.runner import ChainPlace, JobRunner

torch.set_num_threads(1)

BOND = 10**15


def _spec(members, rounds: int = 3, **kw) -> JobSpec:
    return (
        JobSpec.builder("sched")
        .model("mlp", in_features=64, hidden=32)
        .data("digits")
        .train(epochs=1, batch_size=16, lr=0.05)
        .strategy(kw.pop("strategy", "fedavg"))
        .rounds(rounds, min_updates=kw.pop("min_updates", len(members)), timeout=60)
        .seed(3)
        .build()
        .replace(
            max_samples=10_000,
            vote_timeout=kw.pop("vote_timeout", 40),
            availability_timeout=kw.pop("availability_timeout", 5),
            admission={"allow": [m.eth_address for m in members], "bond": str(BOND)},
            **kw,
        )
    )


def _lying(*args, **kw) -> aggregation.RoundModel:
    """The honest aggregation, then every weight moved: a different model, the same mask."""
    model = aggregation.aggregate(*args, **kw)
    params = {k: (v + np.float32(0.5)).astype(v.dtype) for k, v in model.params.items()}
    return aggregation.RoundModel(params, model.state, model.mask, model.excluded, model.used)


async def _run_job(
    tmp_path,
    n: int,
    *,
    tamper: int | None = None,
    extra=None,
    limiters=None,
    beside=None,
    **spec_kw,
):
    ids = [NodeIdentity.generate() for _ in range(n + (1 if extra else 0))]
    spec = _spec(ids, **spec_kw)
    table: dict[bytes, bytes] = {}
    owner, job_id, call = registered_job(tmp_path, spec, b"\x01", table)
    place = ChainPlace(owner.chain_id, bytes.fromhex(owner.registry_address[2:]))
    test = load_dataset("digits", train=False)
    events: list[tuple[int, str, dict]] = []
    runners = []
    for i in range(n):
        reg = owner.for_identity(ids[i])
        aggregate = _lying if i == tamper else aggregation.aggregate
        runner = JobRunner(
            job_id=job_id.hex(),
            spec=spec,
            ledger=ChainLedger(reg, job_id, call, allow=spec.allow_list),
            exchange=MemoryExchange(table),
            data=NodeData(load_partition("digits", i, n, "iid", 0), test),
            checkpoints=Checkpoints(tmp_path / f"n{i}"),
            train_limiter=(limiters or {}).get(i) or trio.CapacityLimiter(1),
            emit=lambda kind, data, i=i: events.append((i, kind, data)),
            record=lambda r, values: None,
            place=place,
            aggregate=aggregate,
        )
        runners.append(runner)
    with trio.fail_after(240):
        async with trio.open_nursery() as nursery:
            for runner in runners:
                nursery.start_soon(runner.run)
            if extra is not None:
                nursery.start_soon(extra, owner.for_identity(ids[-1]), job_id, spec, call)
            if beside is not None:  # a task beside the runners that sees them (ends with them)
                await nursery.start(beside, runners)
    state = await ChainLedger(owner, job_id, call).sync()
    return owner, job_id, runners, events, state


@pytest.mark.trio
async def test_participants_agree_and_every_round_is_finalized_by_their_votes(tmp_path):
    chain, job_id, runners, events, state = await _run_job(tmp_path, 3)
    assert {r_.spec.rounds for r_ in runners} == {3}
    assert len({r.model_hash for r in runners}) == 1
    for r in range(3):
        rd = state.log.rounds[r]
        assert rd.decision is Decision.FINALIZED and len(rd.updates) == 3
        assert rd.final is not None and rd.final.mask == b""
        assert len(rd.votes) >= 2 and not rd.dissenters()
    assert runners[0].model_hash == state.log.rounds[2].final.model_hash
    assert not [e for e in events if e[1] == "job.divergence"]
    # most votes rode on the next round's update: one transaction per participant per round
    assert sum(1 for _, kind, d in events if kind == "job.update_committed" and d["vote"]) >= 4
    seq, head = chain.log_head(job_id)
    assert (seq, head) == (state.log.seq, state.log.head)


@pytest.mark.trio
async def test_only_three_keepers_announce_a_rounds_model_and_every_member_computes_it(tmp_path):
    _, _, runners, _, state = await _run_job(tmp_path, 5, rounds=2)
    for r in range(2):
        rd = state.log.rounds[r]
        model = rd.final.model_hash
        authors = [u.author for u in rd.updates]
        keepers = [run.me for run in runners if keeps_model(model, run.me, authors)]
        announced = [
            run.me for run in runners for kind, rr, h in run.exchange.published
            if (kind, rr, h) == ("model", r, model)
        ]  # fmt: skip
        assert len(keepers) == 3 and sorted(announced) == sorted(keepers)
        # the same three on every node: the rule reads only the model and the round's authors
        again = [a for a in authors if keeps_model(model, a.upper(), list(reversed(authors)))]
        assert sorted(k.lower() for k in keepers) == sorted(a.lower() for a in again)
    assert {run.model_hash for run in runners} == {state.log.rounds[1].final.model_hash}


@pytest.mark.trio
async def test_gossip_wakes_no_chain_read_of_the_runner(tmp_path, monkeypatch):
    """Each look at the chain is a contract call (~4 ms of web3 per node); a round brings ~5 N
    gossip messages, each of which woke the runner into one."""
    reads = 0
    sync = ChainLedger.sync

    async def counted(self):
        nonlocal reads
        reads += 1
        return await sync(self)

    monkeypatch.setattr(ChainLedger, "sync", counted)
    hints = 0

    async def gossip(runners, task_status=trio.TASK_STATUS_IGNORED):
        nonlocal hints
        with trio.CancelScope() as scope:
            task_status.started()
            while not all(r.round == r.spec.rounds for r in runners):
                for r in runners:
                    r.hint()  # what a round message does (slots.py)
                hints += len(runners)
                await trio.sleep(0.002)
            scope.cancel()

    # a member that never commits: each round waits out its 3-s timeout, gossip flowing
    await _run_job(
        tmp_path, 2, extra=_idler, rounds=2, min_updates=2, round_timeout=3, beside=gossip
    )
    assert hints > 500 and reads < hints / 12, (hints, reads)


@pytest.mark.trio
async def test_a_lying_aggregator_is_outvoted_slashed_and_follows_the_majority(tmp_path):
    chain, job_id, runners, events, state = await _run_job(tmp_path, 3, tamper=2, rounds=2)
    liar = runners[2].me
    assert all(runner.model_hash == state.log.rounds[1].final.model_hash for runner in runners)
    dissent = [d for i, kind, d in events if kind == "job.divergence" and i != 2]
    assert dissent and all(d["dissenters"] == [liar] for d in dissent)
    # the designated honest member reported it: the liar lost its bond and its seat
    member = chain.member(job_id, liar)
    assert member.status.name == "SLASHED"


async def _withholder(reg, job_id, spec, call):
    """A member that commits an update hash with no blob behind it, and never votes."""
    await call(reg.join_job, job_id, _proof(spec, reg.account))
    if await round_0_has_an_update(reg, job_id, call):  # after an honest one, for a change
        await call(reg.commit_update, job_id, 0, b"\x77" * 32, 10)


def _proof(spec: JobSpec, address: str) -> list[bytes]:
    from gfl.chain.proofs import merkle_proof

    return merkle_proof(spec.allow_list, address)


@pytest.mark.trio
async def test_a_withheld_update_costs_at_most_the_availability_timeout(tmp_path):
    *_, runners, _events, state = await _run_job(
        tmp_path, 3, extra=_withholder, rounds=2, min_updates=3
    )
    rd = state.log.rounds[0]
    withheld = next(u for u in rd.updates if u.update_hash == b"\x77" * 32)
    assert rd.decision is Decision.FINALIZED and rd.final is not None
    assert (
        rd.final.mask != b""
        and rd.final.mask[withheld.position // 8] >> (withheld.position % 8) & 1
    )
    assert rd.decided_at - rd.closed_at <= 5 + 10  # the availability timeout, and some slack
    # the withholder was ejected and round 1 went on without it
    assert state.log.rounds[1].decision is Decision.FINALIZED
    assert not state.log.is_member(withheld.author)
    assert {r.model_hash for r in runners} == {state.log.rounds[1].final.model_hash}


class SlowSecondTraining:
    """A training limiter whose second use (round 1) waits ``delay`` seconds first: a loaded
    machine on which training runs past the open vote's deadline (by 8 s: the embedded
    chain's clock may run a few seconds ahead of the wall clock)."""

    def __init__(self, delay: float) -> None:
        self.delay, self.uses, self._inner = delay, 0, trio.CapacityLimiter(1)

    async def __aenter__(self) -> None:
        self.uses += 1
        if self.uses == 2:
            await trio.sleep(self.delay)
        await self._inner.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._inner.release()


@pytest.mark.trio
async def test_a_vote_meant_to_ride_goes_alone_when_training_runs_past_its_deadline(tmp_path):
    *_, runners, events, state = await _run_job(
        tmp_path, 2, limiters={0: SlowSecondTraining(12 + 8)}, rounds=2, vote_timeout=12
    )
    me = runners[0].me.lower()
    rd = state.log.rounds[0]
    assert rd.decision is Decision.FINALIZED and me in rd.votes, "node 0's vote was lost"
    voted = [d for i, kind, d in events if i == 0 and kind == "job.voted" and d["round"] == 0]
    assert voted, "node 0 did not vote on round 0 alone"
    assert state.log.rounds[1].decision is Decision.FINALIZED


async def _idler(reg, job_id, spec, call):
    """A member that joins and never sends an update, so every round closes by its timeout;
    meanwhile blocks are mined every half second, as on a live chain (the embedded chain
    mines only on transactions, and its views see the time of the last block)."""
    from gfl.chain import JobStatus

    await call(reg.join_job, job_id, _proof(spec, reg.account))
    for _ in range(600):
        if (await call(reg.get_job, job_id)).status is not JobStatus.ACTIVE:
            return
        await call(reg._embedded.advance_time, 0.0)
        await trio.sleep(0.5)


@pytest.mark.trio
async def test_a_round_closed_by_its_timeout_is_written_at_once_and_finalized(tmp_path):
    *_, runners, _events, state = await _run_job(
        tmp_path, 2, extra=_idler, rounds=2, min_updates=2, round_timeout=4
    )
    assert len(state.log.rounds[1].updates) == 2  # the idler's is missing: closed by timeout
    for r in (0, 1):
        rd = state.log.rounds[r]
        # the chain's views closed it at the timeout; a node wrote that before the vote closed
        assert rd.decision is Decision.FINALIZED, f"round {r} ended {rd.decision}"
    assert {x.model_hash for x in runners} == {state.log.rounds[1].final.model_hash}
