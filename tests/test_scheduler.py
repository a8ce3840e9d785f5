"""The job runner against the real embedded chain: several participants in one process.

The network is replaced by a shared in-memory blob table (the libp2p exchange is covered
by tests/net and the end-to-end tests); the chain, the training, the codec and the
strategies are the real ones. This is where the round protocol's decisions are checked
quickly: agreement, votes and decisions, dissent, withheld and copied updates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import trio
from support import MemoryExchange, registered_job, round_0_has_an_update

from gfl.fl.data import load_dataset, load_partition
from gfl.fl.rounds import Decision
from gfl.fl.spec import JobSpec
from gfl.identity import NodeIdentity
from gfl.net.errors import BlobError
from gfl.scheduler import aggregation
from gfl.scheduler import runner as runner_module
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
    prepare=None,
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
    if prepare is not None:  # e.g. wrap a runner's exchange
        prepare(runners)
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


def _blind(for_good: bool) -> Callable[[list[JobRunner]], None]:
    """Node 2's link to node 0's round-0 update is down until round 0 is decided (or for
    good): its own M_1 leaves that update out (its vote names another mask: not punished),
    the others finalize M_1 with it."""

    def prepare(runners: list[JobRunner]) -> None:
        runner, author = runners[2], runners[0].me
        fetch, fetch_many = runner.exchange.fetch, runner.exchange.fetch_many

        def down(blob: bytes) -> bool:
            rd = runner.ledger.log.rounds.get(0)
            u = rd.update_of(author) if rd is not None else None
            return u is not None and blob == u.update_hash and (for_good or rd.decision is None)

        async def fetch_blind(blob: bytes, owner: Any, max_size: int, timeout: float) -> bytes:
            if down(blob):
                raise BlobError("the link to this author is down")
            return await fetch(blob, owner, max_size, timeout)

        async def fetch_many_blind(blobs: Any, owner: str, max_size: int, timeout: float) -> Any:
            return await fetch_many([h for h in blobs if not down(h)], owner, max_size, timeout)

        runner.exchange.fetch = fetch_blind
        runner.exchange.fetch_many = fetch_many_blind

    return prepare


@pytest.mark.trio
async def test_a_member_that_adopts_a_round_keeps_the_server_state_everyone_has(tmp_path):
    """A server optimizer's state (momentum, moments) follows each round's reduced delta. A
    member that takes a finalized model it did not compute (here node 2, which missed an
    update of round 0) recomputes that round from the finalized mask's updates, so that its
    state is everyone's: its next models and votes agree (before, its stale state made its
    later models other ones, and the honest member was slashed as a dissenter)."""
    *_, runners, events, state = await _run_job(
        tmp_path, 3, rounds=3, strategy="fedavgm", prepare=_blind(for_good=False)
    )
    log, node2 = state.log, runners[2].me.lower()
    assert log.rounds[0].final.mask == b""
    adopted = [d["round"] for i, e, d in events if i == 2 and e == "job.round_adopted"]
    assert adopted == [0]  # it took the others' M_1, and computed M_2 and M_3 as they did
    for r in (1, 2):
        rd = log.rounds[r]
        assert rd.decision is Decision.FINALIZED and not rd.dissenters(), r
        assert rd.votes[node2].candidate == rd.final.candidate, r  # it voted, with everyone
    assert not log.slashed
    assert {x.model_hash for x in runners} == {log.rounds[2].final.model_hash}


@pytest.mark.trio
async def test_a_member_that_cannot_recompute_an_adopted_round_votes_no_more(tmp_path, monkeypatch):
    """The same, the update gone for good: node 2 cannot recompute round 0, so it does not
    know the FedAdam moments the others have. It says so, keeps training and following the
    finalized models, and votes no more (a vote for its own models would be a dissent)."""
    monkeypatch.setattr(runner_module, "FETCH_TIMEOUT_S", 2.0)
    *_, runners, events, state = await _run_job(
        tmp_path, 3, rounds=3, strategy="fedadam", prepare=_blind(for_good=True)
    )
    log, node2 = state.log, runners[2].me.lower()
    lost = [d["round"] for i, e, d in events if i == 2 and e == "job.state_lost"]
    assert lost == [0]
    # noted on disk: a restarted node does not vote again either (`JobRunner._restore`)
    assert [x.checkpoints.state_lost() for x in runners] == [None, None, 0]
    for r in (1, 2):
        rd = log.rounds[r]
        assert rd.decision is Decision.FINALIZED and not rd.dissenters(), r
        assert rd.update_of(node2) is not None and node2 not in rd.votes, r
    assert not log.slashed
    assert {x.model_hash for x in runners} == {log.rounds[2].final.model_hash}


def test_the_note_of_a_lost_state_survives_and_a_damaged_one_counts(tmp_path):
    checkpoints = Checkpoints(tmp_path / "job")
    assert checkpoints.state_lost() is None
    checkpoints.lose_state(4)
    assert Checkpoints(tmp_path / "job").state_lost() == 4
    (tmp_path / "job" / "state-lost").write_bytes(b"\xff\x00")
    assert checkpoints.state_lost() == 0  # lost since the start, to be safe
