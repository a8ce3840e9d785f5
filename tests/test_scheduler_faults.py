"""The job runner when the chain misbehaves under one participant: it goes away for longer
than any single call waits, or it refuses an update the runner thought it could send.

Real embedded chain, real training; the network is a shared in-memory blob table and one
participant's ledger is wrapped to fail the way the node's chain adapter does.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
import torch
import trio
from support import MemoryExchange, registered_job

from gfl.fl.data import load_partition
from gfl.fl.rounds import Decision, Update
from gfl.fl.spec import JobSpec
from gfl.identity import NodeIdentity
from gfl.scheduler import aggregation
from gfl.scheduler.checkpoints import Checkpoints
from gfl.scheduler.ledger import ChainLedger
from gfl.scheduler.ports import (
    Ballot,
    JobState,
    JobStatus,
    LedgerRefused,
    LedgerUnavailable,
    NodeData,
)
from gfl.scheduler.runner import ChainPlace, JobRunner

torch.set_num_threads(1)

N = 3
FAULTY = 2


class FaultyLedger:
    """A `ChainLedger` that fails on demand: every chain call raises `LedgerUnavailable`
    while `down` is set; with `refuse_from` set, the chain refuses every update for the
    first round >= refuse_from this participant commits to (noted in `refused`), as it
    does once that round closed; with `vote_when` set, a vote on round r waits until
    ``vote_when(r)`` is true; with `mute` set, its votes are not sent."""

    def __init__(self, inner: ChainLedger) -> None:
        self.inner = inner  # the real ledger (a test may call it directly)
        self.mute = False  # its votes are not sent (a vote riding on an update is dropped)
        self.address = inner.address
        self.down = False
        self.refuse_from: int | None = None
        self.refused: int | None = None
        self.vote_when: Callable[[int], bool] | None = None

    def _check(self) -> None:
        if self.down:
            raise LedgerUnavailable("the chain did not answer within 30s (test outage)")

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr  # local work: signing a statement, folding events

        async def call(*args: Any, **kwargs: Any) -> Any:
            self._check()
            return await attr(*args, **kwargs)

        return call

    async def commit(
        self, r: int, update_hash: bytes, samples: int, ballot: Ballot | None = None
    ) -> None:
        self._check()
        if self.refuse_from is not None and r >= self.refuse_from and self.refused in (None, r):
            self.refused = r
            raise LedgerRefused("WrongRound (test refusal)")
        await self._hold(ballot)
        await self.inner.commit(r, update_hash, samples, None if self.mute else ballot)

    async def vote(self, ballot: Ballot) -> None:
        self._check()
        await self._hold(ballot)
        if not self.mute:
            await self.inner.vote(ballot)

    async def _hold(self, ballot: Ballot | None) -> None:
        if self.vote_when is not None and ballot is not None:
            with trio.fail_after(60):
                while not self.vote_when(ballot.round):
                    await trio.sleep(0.05)


def _spec(members: list[NodeIdentity], rounds: int, timeout: int = 3) -> JobSpec:
    return (
        JobSpec.builder("faults")
        .model("mlp", in_features=64, hidden=32)
        .data("digits")
        .train(epochs=1, batch_size=16, lr=0.05)
        .strategy("fedavg")
        .rounds(rounds, min_updates=N - 1, timeout=timeout)
        .seed(3)
        .build()
        .replace(
            max_samples=10_000,
            vote_timeout=30,
            availability_timeout=5,
            admission={"allow": [m.eth_address for m in members]},
        )
    )


Hook = Callable[[FaultyLedger, int, str, dict], None]


async def _run(
    tmp_path,
    rounds: int,
    hook: Hook,
    timeout: int = 3,
    liar: Callable[[str], Callable[..., aggregation.RoundModel]] | None = None,
    watch_last: bool = False,
    beside: Callable[[FaultyLedger], Awaitable[None]] | None = None,
) -> tuple[list[JobRunner], FaultyLedger, list, JobState]:
    """Run a job on N participants to its end, each finishing it; `hook(faulty ledger,
    participant, kind, data)` sees every event as it is emitted; ``liar(address)`` makes
    the faulty participant's aggregation; ``watch_last``: each then watches the last round
    for late votes, as a node does; ``beside(faulty ledger)`` runs beside them. Returns
    the runners, the faulty ledger, the events and the job as the chain holds it at the
    end."""
    ids = [NodeIdentity.generate() for _ in range(N)]
    spec = _spec(ids, rounds, timeout)
    table: dict[bytes, bytes] = {}
    owner, job_id, call = registered_job(tmp_path, spec, b"\x02", table)
    place = ChainPlace(owner.chain_id, bytes.fromhex(owner.registry_address[2:]))
    events: list[tuple[int, str, dict]] = []
    ledgers = [
        ChainLedger(owner.for_identity(ids[i]), job_id, call, allow=spec.allow_list)
        for i in range(N)
    ]
    faulty = FaultyLedger(ledgers[FAULTY])
    lying = liar(ids[FAULTY].eth_address) if liar is not None else aggregation.aggregate
    runners = []
    for i in range(N):

        def emit(kind: str, data: dict, i: int = i) -> None:
            events.append((i, kind, data))
            hook(faulty, i, kind, data)

        runners.append(
            JobRunner(
                job_id=job_id.hex(),
                spec=spec,
                ledger=faulty if i == FAULTY else ledgers[i],
                exchange=MemoryExchange(table),
                data=NodeData(load_partition("digits", i, N, "iid", 0), None),
                checkpoints=Checkpoints(tmp_path / f"n{i}"),
                train_limiter=trio.CapacityLimiter(1),
                emit=emit,
                record=lambda r, values: None,
                place=place,
                aggregate=lying if i == FAULTY else aggregation.aggregate,
            )
        )
    ended: list[JobStatus] = []

    async def run(runner: JobRunner) -> None:
        ended.append(await runner.run())
        if watch_last:
            await runner.watch_last_round()

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for runner in runners:
                nursery.start_soon(run, runner)
            if beside is not None:
                nursery.start_soon(beside, faulty)
    assert ended == [JobStatus.FINISHED] * N, ended
    state = await ChainLedger(owner, job_id, call).sync()
    return runners, faulty, events, state


def _all_finalized_alike(runners: list[JobRunner], state: JobState, rounds: int) -> None:
    """Every round finalized by the chain, and every runner ended on the last one's model."""
    decided = [state.log.rounds[r].decision for r in range(rounds)]
    assert decided == [Decision.FINALIZED] * rounds, decided
    final = state.log.rounds[rounds - 1].final
    assert final is not None
    assert {r.model_hash for r in runners} == {final.model_hash}


@pytest.mark.trio
async def test_a_chain_outage_longer_than_a_call_pauses_the_job_instead_of_ending_it(tmp_path):
    """The faulty participant's chain goes away when it starts training a round after the
    first and comes back once the others decided a round without it (every call of its
    ledger fails meanwhile, as the node's does once a call's retry budget is spent). It must
    wait, commit what it can, catch up and finish with the others' model."""
    state: dict = {"cut": None, "back": False, "full": set()}  # cut: the round the outage began

    def hook(faulty: FaultyLedger, i: int, kind: str, data: dict) -> None:
        if i == FAULTY and kind == "job.round_finished" and data["updates"] == N:
            state["full"].add(data["round"])
        # cut while our vote on the round before waits to ride on this round's update: the
        # others' two votes must finalize that round, so it must hold all three updates
        training = i == FAULTY and kind == "job.training" and data["round"] - 1 in state["full"]
        if training and state["cut"] is None:
            state["cut"], faulty.down = data["round"], True
        cut = state["cut"]
        if i == FAULTY or cut is None or state["back"]:
            return
        # another node's news of an earlier round (late, on a loaded machine) does not count
        if kind == "job.finished" or (kind == "job.round_decided" and data["round"] >= cut):
            state["back"] = True
            faulty.down = False

    runners, _, events, chain = await _run(tmp_path, 3, hook, timeout=8)
    assert state["back"]
    _all_finalized_alike(runners, chain, 3)
    assert chain.log.rounds[state["cut"]].update_of(runners[FAULTY].me) is None
    mine = [(kind, d.get("round")) for i, kind, d in events if i == FAULTY]
    # the update it trained meanwhile is offered once the chain is back, not dropped (the
    # chain refuses it: the round closed without it)
    assert mine.count(("job.training", state["cut"])) == 1, mine
    assert ("job.update_refused", state["cut"]) in mine, mine
    kinds = [kind for kind, _ in mine]
    assert "job.chain_unavailable" in kinds and "job.chain_back" in kinds, kinds
    assert kinds.index("job.chain_unavailable") < kinds.index("job.chain_back")
    assert kinds.count("job.chain_unavailable") == 1  # one warning per outage, not per call


@pytest.mark.trio
async def test_a_refused_update_is_not_trained_again(tmp_path):
    """The chain refuses one of the faulty participant's updates (as when the chain's
    next block closes a round that its last block showed open). It must not train that
    round again and commit a second time; the round closes without it, all end alike."""

    def hook(faulty: FaultyLedger, i: int, kind: str, data: dict) -> None:
        if i == FAULTY and kind == "job.joined":
            faulty.refuse_from = 1

    # the refused round stays open for a while: time enough to train it again, were it to
    runners, faulty, events, chain = await _run(tmp_path, 3, hook, timeout=8)
    _all_finalized_alike(runners, chain, 3)
    r = faulty.refused
    assert r is not None, "the faulty participant never sent an update after round 0"
    mine = [(kind, d.get("round")) for i, kind, d in events if i == FAULTY]
    assert ("job.update_refused", r) in mine
    assert mine.count(("job.training", r)) == 1, mine
    assert ("job.update_committed", r) not in mine
    refused = chain.log.rounds[r]
    assert len(refused.updates) == N - 1 and refused.update_of(runners[FAULTY].me) is None


def _lying_once(me: str) -> Callable[..., aggregation.RoundModel]:
    """The aggregation of `me` that lies on the first round it aggregates whose updates are
    its own (so that it votes) and the others' (a majority of honest votes): every weight
    moved, a different model for the same mask."""
    lied: list[int] = []

    def aggregate(
        spec: JobSpec, params: Any, state: Any, updates: list[Update], *rest: Any
    ) -> aggregation.RoundModel:
        model = aggregation.aggregate(spec, params, state, updates, *rest)
        if lied or len(updates) < N or all(u.author.lower() != me.lower() for u in updates):
            return model
        lied.append(1)
        moved = {k: (v + np.float32(0.5)).astype(v.dtype) for k, v in model.params.items()}
        return aggregation.RoundModel(moved, model.state, model.mask, model.excluded, model.used)

    return aggregate


def _alarms(events: list) -> list[tuple[int, int, list[str]]]:
    """The honest participants' dissent alarms: (participant, round, dissenters)."""
    return sorted(
        (i, d["round"], d["dissenters"])
        for i, kind, d in events
        if kind == "job.divergence" and i != FAULTY
    )


@pytest.mark.trio
async def test_a_dissenting_vote_after_the_decision_is_still_slashed(tmp_path):
    """The faulty participant votes on a round for a model of its own once the two others
    finalized it and saw it decided (votes count until the deadline): it is named a
    dissenter, every honest node raises the alarm once, the designated member slashes it,
    and all end on the majority's model."""
    decided: set[tuple[int, int]] = set()  # (participant, round) seen decided
    honest = [j for j in range(N) if j != FAULTY]

    def hook(faulty: FaultyLedger, i: int, kind: str, data: dict) -> None:
        faulty.vote_when = lambda r: all((j, r) in decided for j in honest)
        if kind == "job.round_decided":
            decided.add((i, data["round"]))

    runners, _, events, chain = await _run(tmp_path, 3, hook, timeout=30, liar=_lying_once)
    liar = runners[FAULTY].me
    (lied,) = [r for r, rd in chain.log.rounds.items() if rd.dissenters()]
    seen = [d for i, kind, d in events if kind == "job.round_decided" and i in honest]
    assert [d["dissenters"] for d in seen if d["round"] == lied] == [[], []]  # it came late
    assert chain.log.rounds[lied].dissenters() == [liar]
    assert _alarms(events) == [(j, lied, [liar]) for j in honest]
    assert chain.log.slashed == [(liar, lied)]
    _all_finalized_alike(runners, chain, 3)


@pytest.mark.trio
async def test_a_dissenting_vote_on_the_last_round_after_the_job_finished_is_still_slashed(
    tmp_path,
):
    """The faulty participant votes another model on a job's last round once the others saw
    the job finish (the contract takes the vote until the deadline): they watch that round
    until then (`JobRunner.watch_last_round`), raise the alarm, and the designated member
    slashes it."""
    honest = {j for j in range(N) if j != FAULTY}
    finished: set[int] = set()

    def hook(faulty: FaultyLedger, i: int, kind: str, data: dict) -> None:
        faulty.mute = True  # its runner casts no vote: `vote_late` casts one for it
        if kind == "job.finished":
            finished.add(i)

    async def vote_late(faulty: FaultyLedger) -> None:
        with trio.fail_after(60):
            while not finished >= honest:
                await trio.sleep(0.05)
        final = (await faulty.sync()).log.rounds[0].final
        assert final is not None
        await faulty.inner.vote(Ballot(0, b"\x66" * 32, final.mask, final.shards_hash))

    runners, _, events, chain = await _run(
        tmp_path, 1, hook, timeout=30, watch_last=True, beside=vote_late
    )
    liar = runners[FAULTY].me
    assert chain.log.rounds[0].dissenters() == [liar]
    assert _alarms(events) == [(j, 0, [liar]) for j in sorted(honest)]
    assert chain.log.slashed == [(liar, 0)]
