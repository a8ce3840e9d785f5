"""Sharded rounds (docs/protocol.md, section 8) with in-process runners on the embedded chain.

Blobs go through a shared in-memory table and shard statements through a shared board (the
libp2p exchange and gossip are covered elsewhere); the chain, the training, the codec, the
strategies and the signatures are the real ones. The digits MLP has 3,466 parameters, one
shard by the derived rule, so every job here forces ``shards = 4``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import trio
from support import MemoryExchange, registered_job

from gfl.content import content_hash
from gfl.fl.codec import CodecError, decode_frame, decode_update, encode_frame
from gfl.fl.data import load_dataset, load_partition
from gfl.fl.rounds import Decision, mask_bytes
from gfl.fl.shards import Mode, layout_of, manifest_hashes, reduce_shard
from gfl.fl.spec import JobSpec
from gfl.fl.strategies import ClientUpdate
from gfl.fl.trainer import initial_params
from gfl.identity import NodeIdentity
from gfl.net.errors import BlobError
from gfl.scheduler import audit, duties, messages, sharding
from gfl.scheduler.aggregation import Context
from gfl.scheduler.checkpoints import Checkpoints
from gfl.scheduler.ledger import ChainLedger
from gfl.scheduler.ports import NodeData
from gfl.scheduler.runner import ChainPlace, JobRunner
from gfl.scheduler.sharding import Reduced

torch.set_num_threads(1)

BOND = 10**15
N = 4


def _spec(members, rounds: int, **kw: Any) -> JobSpec:
    return (
        JobSpec.builder("sharded")
        .model("mlp", in_features=64, hidden=32)
        .data("digits")
        .train(epochs=1, batch_size=16, lr=0.05)
        .strategy(kw.pop("strategy", "fedavg"))
        .rounds(rounds, min_updates=len(members), timeout=60)
        .seed(3)
        .build()
        .replace(
            max_samples=10_000,
            vote_timeout=40,
            availability_timeout=5,
            admission={"allow": [m.eth_address for m in members], "bond": str(BOND)},
            shards=kw.pop("shards", 4),
            **kw,
        )
    )


class Saboteur:
    """Makes the first node to state shard 0 a faulty aggregator (so that it surely is one):
    ``silent`` never states a shard, ``killed`` stops dead there, ``liar`` states a reduced
    shard with other bytes, signed with its own key."""

    def __init__(self, fault: str, deaf: frozenset[int] = frozenset()) -> None:
        self.fault = fault
        self.victim: int | None = None
        self.scopes: dict[int, trio.CancelScope] = {}
        self.deaf = deaf  # these nodes, and a liar, keep no evidence of shard lies

    def install(self, i: int, runner: JobRunner) -> None:
        honest = runner.sharded.publish
        hold_lies = runner.duties.hold_lies

        def hold_no_lies(r: int, model: Any) -> None:
            if i not in self.deaf and i != self.victim:
                hold_lies(r, model)

        runner.duties.hold_lies = hold_no_lies  # type: ignore[method-assign]

        async def publish(ctx, k: int, red: Reduced, n: int) -> None:
            if self.victim is None and k == 0:
                self.victim = i
            if self.victim != i:
                return await honest(ctx, k, red, n)
            if self.fault == "killed":
                self.scopes[i].cancel()
                await trio.lowlevel.checkpoint()
            if self.fault == "liar":
                assert red.pieces is not None
                wrong = {name: a + 0.5 for name, a in red.pieces.items()}
                frame = encode_frame(wrong)
                await honest(ctx, k, Reduced(red.excluded, wrong, frame, content_hash(frame)), n)

        runner.sharded.publish = publish  # type: ignore[method-assign]


async def _run_job(
    tmp_path: Path,
    ids: list[NodeIdentity],
    spec: JobSpec,
    saboteur: Saboteur | Leaver | Deaf | Unheard | Withholder | Blind | None = None,
    *,
    void_ok: bool = False,
) -> dict[str, Any]:
    table: dict[bytes, bytes] = {}
    board: list[dict[str, Any]] = []
    members: dict[str, MemoryExchange] = {}
    owner, job_id, call = registered_job(tmp_path, spec, b"\x01", table)
    place = ChainPlace(owner.chain_id, bytes.fromhex(owner.registry_address[2:]))
    test = load_dataset("digits", train=False)
    records: list[dict[int, dict[str, Any]]] = [{} for _ in ids]
    runners = []
    for i, ident in enumerate(ids):
        runner = JobRunner(
            job_id=job_id.hex(),
            spec=spec,
            ledger=ChainLedger(owner.for_identity(ident), job_id, call, allow=spec.allow_list),
            exchange=MemoryExchange(table, board, ident.eth_address, members),
            data=NodeData(load_partition("digits", i, len(ids), "iid", 0), test),
            checkpoints=Checkpoints(tmp_path / f"n{i}"),
            train_limiter=trio.CapacityLimiter(1),
            emit=lambda kind, data: None,
            record=lambda r, values, i=i: records[i].setdefault(r, {}).update(values),
            place=place,
        )
        if saboteur is not None:
            saboteur.install(i, runner)
        runners.append(runner)

    async def run(i: int) -> None:
        scope = trio.CancelScope()
        if saboteur is not None:
            saboteur.scopes[i] = scope
        with scope:
            await runners[i].run()

    with trio.fail_after(240):
        async with trio.open_nursery() as nursery:
            for i in range(len(ids)):
                nursery.start_soon(run, i)
    state = await ChainLedger(owner, job_id, call).sync()
    for r, rd in state.log.rounds.items():
        if not (void_ok and rd.decision is Decision.VOID):
            assert rd.decision is Decision.FINALIZED and rd.final is not None, r
    assert owner.log_head(job_id) == (state.log.seq, state.log.head)
    return {
        "chain": owner,
        "job_id": job_id,
        "state": state,
        "runners": runners,
        "records": records,
        "table": table,
        "board": board,
        "finals": [
            (rd.final.model_hash if rd.final is not None else None)
            for _r, rd in sorted(state.log.rounds.items())
        ],
    }


def _verify_bundle(tmp_path: Path, job: dict[str, Any], spec: JobSpec) -> audit.Verdict:
    """What `gfl job export` then `gfl job verify --bundle` do, in process (node 0's export:
    a secure job's reveal sets are the ones it unmasked with)."""
    table = job["table"]
    reveals = [
        bytes.fromhex(h) for rec in job["records"][0].values() for h in rec.get("reveals", [])
    ]

    class Held:
        def size_of(self, h: bytes) -> int | None:
            return len(table[h]) if h in table else None

        def get(self, h: bytes) -> bytes | None:
            return table.get(h)

    chain, job_id, log = job["chain"], job["job_id"], job["state"].log
    folder = tmp_path / "bundle"
    (folder / audit.BLOBS_DIR).mkdir(parents=True)
    manifest = audit.bundle_manifest(
        chain_id=chain.chain_id,
        registry=chain.registry_address,
        job_id=job_id,
        spec=spec,
        joblog=log,
    )
    (folder / audit.BUNDLE_FILE).write_text(json.dumps(manifest))
    (folder / audit.SPEC_FILE).write_bytes(spec.to_bytes())
    needed = audit.blobs_needed(log, Held(), reveals)
    for h in needed:
        (folder / audit.BLOBS_DIR / h.hex()).write_bytes(table[h])
    used = [u.update_hash for rd in log.rounds.values() for u in rd.updates]
    assert all(manifest_hashes(table[h]) for h in used), "every update is a manifest"
    assert len(needed) > len(used) * 4 + len(reveals), "the shard frames are in the bundle"
    return audit.verify(folder, chain.verify_log(job_id), job_id)


@pytest.mark.trio
@pytest.mark.parametrize(
    ("strategy", "compression"), [("fedavg", "none"), ("median", "int8"), ("fedavgm", "int8")]
)
async def test_sharded_and_all_to_all_jobs_end_with_the_same_bits(tmp_path, strategy, compression):
    ids = [NodeIdentity.generate() for _ in range(N)]
    kw = {"strategy": strategy, "compression": compression}
    sharded = _spec(ids, 2, aggregation="sharded", **kw)
    a = await _run_job(tmp_path / "sharded", ids, sharded)
    b = await _run_job(tmp_path / "all", ids, _spec(ids, 2, aggregation="all", **kw))
    assert a["finals"] == b["finals"]
    assert {r.model_hash for r in a["runners"] + b["runners"]} == {a["finals"][-1]}
    for rec in a["records"]:
        assert rec[0]["mode"] == Mode.SHARDED and rec[0]["shards"] == 4
        assert rec[0]["role"] == "author" and not rec[0]["recomputed"]
    assert {rec[0]["mode"] for rec in b["records"]} == {"all"}
    # every shard has 3 aggregators among the 4 authors, and each states it once
    assert sum(len(rec[0]["aggregated"]) for rec in a["records"]) == 4 * 3
    statements = [m for m in a["board"] if m["round"] == 0]
    assert len(statements) == 12 and all(messages.check_shard(m) for m in statements)
    # a reduced shard travels in the model's precision: float32, 4 bytes a coordinate
    coordinates = sum(a.size for a in initial_params(sharded).values())
    frames = sum({m["shard"]: m["size"] for m in statements}.values())
    assert 4 * coordinates < frames < 4 * coordinates + 4 * 1024
    # an aggregator asks each other author once a round, for its pieces of all its shards
    for i, (rec, runner) in enumerate(zip(a["records"], a["runners"], strict=True)):
        others = [m.eth_address.lower() for j, m in enumerate(ids) if j != i]
        asked = [(o, len(rec[r]["aggregated"])) for r in (0, 1) for o in others]
        assert sorted((o.lower(), n) for o, n in runner.exchange.batches) == sorted(asked)
    # bytes by phase: manifests, shards as aggregator, settled shards it did not aggregate
    for rec in a["records"]:
        r0 = rec[0]
        assert r0["bytes_manifests"] > 0 and r0["bytes_shards"] > 0
        assert (r0.get("bytes_settled", 0) > 0) == (len(r0["aggregated"]) < 4)
        phases = ("manifests", "shards", "settled", "recomputed")
        assert r0["bytes_received"] == sum(r0.get(f"bytes_{p}", 0) for p in phases)
    verdict = _verify_bundle(tmp_path, a, sharded)
    assert verdict.ok, verdict
    assert [r.derived_model for r in verdict.rounds] == [h.hex() for h in a["finals"]]
    # a member that adopts a sharded round recomputes it whole from the pieces (and so has
    # the strategy's state after it): the finalized model, and the state the others have
    runner, log = a["runners"][1], a["state"].log
    for r in (0, 1):
        model = await runner._recompute(r, log.rounds[r])
        assert model is not None and model.mask == log.rounds[r].final.mask, r
    assert set(model.state) == set(runner.state)
    assert all(np.array_equal(model.state[k], runner.state[k]) for k in model.state)


@pytest.mark.trio
async def test_a_member_fetches_the_shards_it_did_not_reduce_in_one_batch_per_holder(tmp_path):
    ids = [NodeIdentity.generate() for _ in range(N)]
    job = await _run_job(tmp_path, ids, _spec(ids, 1, aggregation="sharded", shards=8))
    statements = [m for m in job["board"] if m["type"] == "shard" and m["round"] == 0]
    settled = {m["shard"]: m["hash"] for m in statements}
    assert len(settled) == 8
    lacking_some = 0
    for rec, runner in zip(job["records"], job["runners"], strict=True):
        lacks = {settled[k] for k in range(8) if k not in rec[0]["aggregated"]}
        # each shard it lacks has the other three nodes as aggregators: one holder, one batch
        batches = [b for b in runner.exchange.batched if b & set(settled.values())]
        if len(lacks) > 1:
            assert batches == [lacks] and not lacks & set(runner.exchange.fetched)
            lacking_some += 1
        else:  # (one shard: fetched alone)
            assert batches == []
    assert lacking_some  # (each of the 8 shards leaves out one of 4 nodes: some lack two)


@pytest.mark.trio
async def test_a_killed_aggregator_leaves_the_round_finishing_with_the_honest_model(tmp_path):
    ids = [NodeIdentity.generate() for _ in range(N)]
    saboteur = Saboteur("killed")
    spec = _spec(ids, 1, aggregation="sharded")
    job = await _run_job(tmp_path / "killed", ids, spec, saboteur)
    honest = await _run_job(tmp_path / "all", ids, _spec(ids, 1, aggregation="all"))
    assert saboteur.victim is not None
    assert job["finals"] == honest["finals"]
    rd = job["state"].log.rounds[0]
    assert ids[saboteur.victim].eth_address.lower() not in rd.votes  # it died before voting
    alive = [rec for i, rec in enumerate(job["records"]) if i != saboteur.victim]
    assert all(rec[0]["model_hash"] == job["finals"][0].hex() for rec in alive)
    assert not any(rec[0]["recomputed"] for rec in alive), "2 of 3 replicas settle each shard"
    assert _verify_bundle(tmp_path, job, spec).ok


@pytest.mark.trio
async def test_a_lying_aggregator_is_outvoted_slashed_and_the_round_ends_with_the_honest_model(
    tmp_path,
):
    ids = [NodeIdentity.generate() for _ in range(N)]
    saboteur = Saboteur("liar")
    # (slashed after round 0, the liar may miss round 1: it must not wait for it)
    spec = _spec(ids, 2, aggregation="sharded", min_updates=N - 1)
    job = await _run_job(tmp_path / "liar", ids, spec, saboteur)
    honest = await _run_job(tmp_path / "all", ids, _spec(ids, 1, aggregation="all"))
    assert saboteur.victim is not None
    # (round 1 may go on without the liar's update: it is slashed once round 0 finalizes)
    assert job["finals"][0] == honest["finals"][0]
    lies = {m["sig"]: m for m in job["board"] if m["round"] == 0 and m["shard"] == 0}
    assert len(lies) == 3 and len({m["hash"] for m in lies.values()}) == 2, "a lie was heard"
    log = job["state"].log
    for rd in log.rounds.values():  # every member used the honest majority's shards
        assert len(rd.votes) >= N - 1 and not rd.dissenters()
        assert rd.final.shards_hash != bytes(32), "the votes name the round's reduced shards"
    # the liar's signed statement against the finalized shards took its bond (once round 0
    # finalized: it may have voted and committed to round 1 before)
    liar = ids[saboteur.victim].eth_address
    assert log.slashed == [(liar, 0)]
    assert not log.is_member(liar)
    assert {r.model_hash for i, r in enumerate(job["runners"]) if i != saboteur.victim} == {
        job["finals"][-1]
    }
    assert _verify_bundle(tmp_path, job, spec).ok


@pytest.mark.trio
async def test_a_lie_the_designated_member_missed_is_reported_by_the_others(tmp_path, monkeypatch):
    """The round's designated member (the lowest voter) keeps no evidence, nor does the
    liar: once the grace passed, the members that hold the lie report it."""
    monkeypatch.setattr(duties, "LIE_GRACE_S", 1.0)
    ids = [NodeIdentity.generate() for _ in range(N)]
    designated = min(range(N), key=lambda i: ids[i].eth_address.lower())
    saboteur = Saboteur("liar", deaf=frozenset({designated}))
    spec = _spec(ids, 3, aggregation="sharded", min_updates=N - 1)
    job = await _run_job(tmp_path / "liar", ids, spec, saboteur)
    assert saboteur.victim is not None
    liar = ids[saboteur.victim].eth_address
    slashed = [e for e in job["chain"].verify_log(job["job_id"]) if e.name == "Slashed"]
    assert [e.args["member"] for e in slashed] == [liar]
    reporter = slashed[0].args["reporter"]
    assert reporter not in (liar, ids[designated].eth_address), "another member reported it"
    assert reporter in [m.eth_address for m in ids]


@pytest.mark.trio
async def test_a_shard_without_a_majority_is_recomputed_by_every_member(tmp_path):
    """Two replicas, one silent: shard 0 never settles, each member that did not aggregate
    it recomputes it after the shard deadline, and all agree with all-to-all."""
    ids = [NodeIdentity.generate() for _ in range(N)]
    saboteur = Saboteur("silent")
    spec = _spec(ids, 1, aggregation="sharded", replicas=2)
    job = await _run_job(tmp_path / "silent", ids, spec, saboteur)
    honest = await _run_job(tmp_path / "all", ids, _spec(ids, 1, aggregation="all", replicas=2))
    assert job["finals"] == honest["finals"]
    recomputing = [rec[0] for rec in job["records"] if 0 in rec[0]["recomputed"]]
    assert len(recomputing) == 2  # the two members that are not shard 0's replicas
    assert all(r["bytes_recomputed"] > 0 for r in recomputing)
    rd = job["state"].log.rounds[0]
    assert len(rd.votes) == N and not rd.dissenters()
    assert all(rec[0]["model_hash"] == job["finals"][0].hex() for rec in job["records"])


@pytest.mark.trio
async def test_an_update_one_shard_cannot_use_is_left_out_of_every_shard_without_recomputing(
    tmp_path,
):
    """One author serves no shard 1: shard 1's aggregators leave its update out, so the
    round's mask grows. The other shards' aggregators reduce theirs again over that mask
    from the pieces they hold and state them again; members fetch those instead of
    recomputing every shard, and end with the all-to-all job's model."""
    ids = [NodeIdentity.generate() for _ in range(N)]
    spec = _spec(ids, 1, aggregation="sharded")
    job = await _run_job(tmp_path / "sharded", ids, spec, Withholder(ids[2].eth_address, 1))
    plain = _spec(ids, 1, aggregation="all")
    honest = await _run_job(tmp_path / "all", ids, plain, Withholder(ids[2].eth_address, 1))
    assert job["finals"] == honest["finals"]
    rd = job["state"].log.rounds[0]
    position = next(u.position for u in rd.updates if u.author == ids[2].eth_address)
    assert rd.final.mask == mask_bytes({position: "withheld"}, N)
    for i, rec in enumerate(job["records"]):
        assert rec[0]["recomputed"] == [], (i, rec[0])
        assert rec[0]["model_hash"] == job["finals"][0].hex()
    # each shard's aggregators stated it twice: without the exclusion, then over it
    statements = [m for m in job["board"] if m["type"] == "shard" and m["round"] == 0]
    assert {m["mask"] for m in statements if m["shard"] != 1} == {b"", rd.final.mask}


@pytest.mark.trio
async def test_an_aggregator_that_missed_pieces_its_replicas_used_takes_their_shard(tmp_path):
    """One aggregator cannot fetch any piece of one author's update (its link to that
    author is down): it reduces its shards without that update and states so, but the other
    two replicas of each used it. It takes their shards instead of its own, so the round's
    mask stays empty; it recomputes nothing and votes with everyone on the all-to-all
    model."""
    ids = [NodeIdentity.generate() for _ in range(N)]
    spec = _spec(ids, 1, aggregation="sharded")
    blind = Blind(ids[3].eth_address)
    job = await _run_job(tmp_path / "blind", ids, spec, blind)
    honest = await _run_job(tmp_path / "all", ids, _spec(ids, 1, aggregation="all"))
    assert blind.victim is not None and blind.refused > 0
    assert job["finals"] == honest["finals"]
    rd = job["state"].log.rounds[0]
    assert rd.final.mask == b"" and len(rd.votes) == N and not rd.dissenters()
    victim = ids[blind.victim].eth_address.lower()
    position = next(u.position for u in rd.updates if u.author == ids[3].eth_address)
    stated = [m for m in job["board"] if m["type"] == "shard" and m["round"] == 0]
    assert {m["mask"] for m in stated} == {b"", mask_bytes({position: "missing"}, N)}
    shards = job["records"][blind.victim][0]["aggregated"]
    assert shards, "the blind node aggregated the shards it asked for"
    for i, rec in enumerate(job["records"]):
        assert rec[0]["recomputed"] == [], (i, rec[0])
        assert rec[0]["model_hash"] == job["finals"][0].hex()
    assert victim in {v.lower() for v in rd.votes}


class Blind:
    """Makes the first node to ask ``author`` for pieces unable to fetch any piece of that
    author's update (it is then an aggregator of those pieces' shards)."""

    def __init__(self, author: str) -> None:
        self.author = author.lower()
        self.victim: int | None = None
        self.refused = 0
        self.scopes: dict[int, trio.CancelScope] = {}

    def install(self, i: int, runner: JobRunner) -> None:
        exchange = runner.exchange
        fetch, fetch_many = exchange.fetch, exchange.fetch_many

        def blind(owner: Any) -> bool:
            return self.victim == i and str(owner).lower() == self.author

        async def fetch_blind(blob: bytes, owner: Any, max_size: int, timeout: float) -> bytes:
            data = await fetch(blob, owner, max_size, timeout)
            try:
                _arrays, meta = decode_update(data)
            except CodecError:
                meta = None  # a manifest or a reduced shard
            if blind(owner) and meta is not None and meta.shard is not None:
                self.refused += 1
                raise BlobError("the link to this author is down")
            return data

        async def fetch_many_blind(blobs: Any, owner: str, max_size: int, timeout: float) -> Any:
            if self.victim is None and owner.lower() == self.author:
                self.victim = i
            if blind(owner):
                self.refused += len(blobs)
                return {}
            return await fetch_many(blobs, owner, max_size, timeout)

        exchange.fetch = fetch_blind  # type: ignore[method-assign]
        exchange.fetch_many = fetch_many_blind  # type: ignore[method-assign]


@pytest.mark.trio
async def test_members_that_hear_no_statement_ask_the_aggregators(tmp_path):
    """Gossip brings no node any statement but its own (a new topic's meshes in GRAFT
    backoff, a mesh being repaired), and each aggregator states a shard once: a member asks
    the aggregators it heard nothing from, settles every shard on their answers within
    seconds, recomputes none, and the round ends with one model. Without asking, the
    members recompute after the quiet spell (the test below)."""
    ids = [NodeIdentity.generate() for _ in range(N)]
    spec = _spec(ids, 1, aggregation="sharded").replace(availability_timeout=60, vote_timeout=240)
    job = await _run_job(tmp_path / "unheard", ids, spec, Unheard())
    rounds = [rec[0] for rec in job["records"]]
    for rec, runner in zip(rounds, job["runners"], strict=True):
        assert rec["recomputed"] == [] and rec["asked"] > 0, rec
        assert rec["t_aggregate_s"] < sharding.quiet_s(spec.availability_timeout), rec
        assert rec["model_hash"] == job["finals"][0].hex()
        me = runner.me.lower()
        assert all(owner != me for owner, _r, _shards in runner.exchange.asks)
    assert not job["state"].log.rounds[0].dissenters()
    assert len([m for m in job["board"] if m["round"] == 0]) == 12  # each stated once


class Unheard:
    """Makes every node hear, over gossip, no shard statement but its own."""

    def __init__(self) -> None:
        self.scopes: dict[int, trio.CancelScope] = {}

    def install(self, i: int, runner: JobRunner) -> None:
        runner.exchange.gossip = False


class Deaf:
    """Makes every node hear no shard statement but its own, neither over gossip nor when
    it asks (the aggregators unreachable but by a gossip that lost their statements)."""

    def __init__(self) -> None:
        self.scopes: dict[int, trio.CancelScope] = {}

    def install(self, i: int, runner: JobRunner) -> None:
        exchange = runner.exchange
        honest = exchange.heard
        exchange.heard = lambda kind, r: [] if kind == "shard" else honest(kind, r)  # type: ignore[method-assign]


class Withholder:
    """Makes one author serve every frame of its update but shard ``shard``."""

    def __init__(self, author: str, shard: int) -> None:
        self.author, self.shard = author.lower(), shard
        self.scopes: dict[int, trio.CancelScope] = {}

    def install(self, i: int, runner: JobRunner) -> None:
        if runner.me.lower() != self.author:
            return
        exchange = runner.exchange
        honest = exchange.hold

        async def hold(data: bytes) -> bytes:
            try:
                _arrays, meta = decode_update(data)
            except CodecError:
                meta = None
            if meta is not None and meta.shard == self.shard:
                return hashlib.sha256(data).digest()  # announced by its manifest, never served
            return await honest(data)

        exchange.hold = hold  # type: ignore[method-assign]


class Leaver:
    """Makes one node leave the job instead of committing its round-1 update (its vote on
    round 0, which would ride on that update, is not cast: the others' are a majority)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.scopes: dict[int, trio.CancelScope] = {}

    def install(self, i: int, runner: JobRunner) -> None:
        if i != self.index:
            return
        ledger = runner.ledger
        honest = ledger.commit

        async def commit(r: int, h: bytes, samples: int, ballot: Any = None) -> None:
            if r == 0:
                return await honest(r, h, samples, ballot)
            await ledger.leave()
            self.scopes[i].cancel()
            await trio.lowlevel.checkpoint()

        ledger.commit = commit  # type: ignore[method-assign]


@pytest.mark.trio
async def test_an_auto_job_flips_to_all_to_all_when_its_update_set_shrinks(tmp_path):
    """``aggregation = "auto"``, one replica: round 0 has 3 updates (> 2 x replicas:
    sharded), round 1 only 2 once a member left (all-to-all); the chain finalizes both and
    the bundle re-derives both all-to-all (docs/protocol.md, 8.2 and 8.5)."""
    ids = [NodeIdentity.generate() for _ in range(3)]
    spec = _spec(ids, 2, aggregation="auto", replicas=1).replace(min_updates=2)
    leaver = Leaver(2)
    job = await _run_job(tmp_path / "auto", ids, spec, leaver)
    rounds = job["state"].log.rounds
    assert [len(rounds[r].updates) for r in (0, 1)] == [3, 2]
    for rec in job["records"][:2]:
        assert rec[0]["mode"] == Mode.SHARDED and rec[1]["mode"] == Mode.ALL
        assert rec[0]["model_hash"] == job["finals"][0].hex()
        assert rec[1]["model_hash"] == job["finals"][1].hex()
    assert job["records"][2][0]["mode"] == Mode.SHARDED  # it aggregated round 0, then left
    verdict = _verify_bundle(tmp_path, job, spec)
    assert verdict.ok, verdict
    assert [r.derived_model for r in verdict.rounds] == [h.hex() for h in job["finals"]]


@pytest.mark.trio
async def test_members_that_hear_no_statement_recompute_after_a_quiet_spell(tmp_path):
    """Without statements a member cannot settle a shard it did not reduce; it must not wait
    for the shard deadline (here 120 s after the round closed) but recompute once no
    statement came for `quiet_s` (15 s), and end with the others' model."""
    ids = [NodeIdentity.generate() for _ in range(N)]
    spec = _spec(ids, 1, aggregation="sharded").replace(availability_timeout=60, vote_timeout=240)
    assert sharding.quiet_s(spec.availability_timeout) == 15
    job = await _run_job(tmp_path / "deaf", ids, spec, Deaf())
    rounds = [rec[0] for rec in job["records"]]
    assert any(rec["recomputed"] for rec in rounds)  # 12 shard replicas among 4 x 4 shards
    for rec in rounds:
        assert sorted(rec["aggregated"] + rec["recomputed"]) == [0, 1, 2, 3], rec
        assert rec["t_aggregate_s"] < 60, rec["t_aggregate_s"]
        assert rec["model_hash"] == job["finals"][0].hex()
    assert not job["state"].log.rounds[0].dissenters()


@pytest.mark.trio
async def test_a_bundle_whose_round_finalized_other_shards_does_not_verify(tmp_path, monkeypatch):
    """Every member names the same wrong shards hash (the right model): the chain
    finalizes it, and the verifier, which reduces the shards itself, refuses the round."""
    from gfl.scheduler.aggregation import RoundModel

    monkeypatch.setattr(RoundModel, "shards_hash", property(lambda self: b"\x07" * 32))
    ids = [NodeIdentity.generate() for _ in range(N)]
    spec = _spec(ids, 1, aggregation="sharded")
    job = await _run_job(tmp_path / "job", ids, spec)
    assert job["state"].log.rounds[0].final.shards_hash == b"\x07" * 32
    verdict = _verify_bundle(tmp_path, job, spec)
    assert not verdict.ok
    assert verdict.rounds[0].problem == (
        "the finalized shards hash is not the one the round's updates give"
    )


def _secure(members, rounds: int, **kw: Any) -> JobSpec:
    table = {"threshold": 3, "neighbours": 2, "clip": 1.0, "deal_timeout": 20}
    return _spec(members, rounds, max_participants=8, secure_aggregation=table, **kw)


@pytest.mark.trio
async def test_sharded_and_all_to_all_secure_jobs_end_with_the_same_bits(tmp_path):
    """Secure aggregation composed with sharding (docs/protocol.md 9.11): each update is a
    manifest over 4 shard frames of masked words; shard k's aggregators sum and unmask its
    words; the model is the all-to-all secure job's, bit for bit, and the bundle verifies
    (the verifier derives the shards hash from the sum)."""
    from gfl.scheduler.masked import MASKED, SUM, sum_words

    ids = [NodeIdentity.generate() for _ in range(N)]
    sharded = _secure(ids, 2, aggregation="sharded")
    a = await _run_job(tmp_path / "sharded", ids, sharded)
    b = await _run_job(tmp_path / "all", ids, _secure(ids, 2, aggregation="all"))
    assert a["finals"] == b["finals"]
    assert {r.model_hash for r in a["runners"] + b["runners"]} == {a["finals"][-1]}
    for rec in a["records"]:
        assert rec[0]["mode"] == Mode.SHARDED and rec[0]["secure"] == "masked"
        assert not rec[0]["recomputed"] and rec[0]["reveals"]
    assert {rec[0]["mode"] for rec in b["records"]} == {"all"}
    log = a["state"].log
    for rd in log.rounds.values():
        assert rd.final.shards_hash != bytes(32) and not rd.dissenters()
        # what a peer can fetch of an update: its manifest and 4 frames of masked words
        for u in rd.updates:
            hashes = manifest_hashes(a["table"][u.update_hash])
            assert hashes is not None and len(hashes) == 4
            for h in hashes:
                arrays, meta = decode_update(a["table"][h])
                assert set(arrays) == {MASKED} and meta is not None
    # a reduced shard is the sum of its words, unmasked: 4 bytes per word (32-bit words)
    stated = {m["hash"] for m in a["board"] if m["type"] == "shard" and m["round"] == 0}
    assert len(stated) == 4, "every shard's replicas agree"
    words = 0
    for h in stated:
        pieces = decode_frame(a["table"][h])
        assert set(pieces) == {SUM}
        words += len(pieces[SUM])
        assert sum_words(pieces, len(pieces[SUM]), 32) is not None
    m0 = decode_frame(a["table"][log.model0_hash])
    assert words == sum(v.size for v in m0.values()), "the 4 sums cover the model once"
    verdict = _verify_bundle(tmp_path, a, sharded)
    assert verdict.ok, verdict
    assert [r.derived_model for r in verdict.rounds] == [h.hex() for h in a["finals"]]


@pytest.mark.trio
async def test_a_lying_secure_aggregator_is_outvoted_and_slashed(tmp_path):
    """A secure sharded round's aggregator states a wrong sum: the shard's majority settles
    the honest one, every member ends with the all-to-all secure model, and the lie costs
    the liar its bond on chain."""
    ids = [NodeIdentity.generate() for _ in range(N)]
    saboteur = Saboteur("liar")
    spec = _secure(ids, 1, aggregation="sharded", min_updates=N - 1)
    job = await _run_job(tmp_path / "liar", ids, spec, saboteur)
    honest = await _run_job(tmp_path / "all", ids, _secure(ids, 1, aggregation="all"))
    assert saboteur.victim is not None
    assert job["finals"] == honest["finals"]
    rd = job["state"].log.rounds[0]
    assert len(rd.votes) >= N - 1 and not rd.dissenters()
    liar = ids[saboteur.victim].eth_address
    assert job["state"].log.slashed == [(liar, 0)]
    assert _verify_bundle(tmp_path, job, spec).ok


@pytest.mark.trio
async def test_a_secure_shard_whose_piece_is_missing_gives_no_model_on_any_node(tmp_path):
    """S is the chain's: a shard's sum needs every member's piece. One author serves no
    shard 1 (its manifest names it): no aggregator can state it, every member's
    recomputation fails the same way, no one votes, and the round ends void."""
    ids = [NodeIdentity.generate() for _ in range(N)]
    spec = _secure(ids, 1, aggregation="sharded").replace(vote_timeout=15)  # void at it
    withheld = Withholder(ids[1].eth_address, shard=1)
    job = await _run_job(tmp_path / "withheld", ids, spec, withheld, void_ok=True)
    rd = job["state"].log.rounds[0]
    assert rd.decision is Decision.VOID and not rd.votes
    for rec in job["records"]:
        assert rec[0]["updates"] == 0 and rec[0]["excluded"] == N


def test_a_settled_shard_of_another_form_is_refused_and_the_honest_one_fits():
    """What a member takes from the aggregators that stated a shard (docs/protocol.md 8.4):
    a frame of the shard's names and shapes in each tensor's reduced dtype (float32 for a
    float32 model; float64 for an integer tensor). The same values in float64, as a node of
    spec version 2 would serve them, or another shape, are refused (the member recomputes)."""
    spec = _spec([NodeIdentity.generate()], 1, aggregation="sharded")
    params = {
        "w": np.arange(12, dtype=np.float32).reshape(4, 3),
        "steps": np.array(3, dtype=np.int64),
    }
    layout = layout_of(params, 2)
    ctx = Context(chain_id=1, registry=b"\x01" * 20, job_id=b"\x02" * 32, round=0, base=b"")
    plain = sharding.PlainShards(spec, ctx, layout, params)
    ups = [
        ClientUpdate("0xa", 1, {n: (a * 0 + 1).astype(a.dtype) for n, a in params.items()}),
        ClientUpdate("0xb", 2, {n: (a * 0 + 2).astype(a.dtype) for n, a in params.items()}),
    ]
    for k in range(layout.count):
        template = layout.split(params, k)
        usable = [ClientUpdate(u.address, u.num_samples, layout.split(u.update, k)) for u in ups]
        _, frame = reduce_shard(spec, template, usable)
        fetched = decode_frame(frame)
        assert {n: a.dtype for n, a in fetched.items()} == {
            n: np.dtype(np.float32 if t.dtype.kind == "f" else np.float64)
            for n, t in template.items()
        }
        assert any(t.dtype.kind == "f" for t in template.values())
        assert plain.fits(fetched, template) and len(frame) <= plain.limit(template)
        wide = decode_frame(encode_frame({n: a.astype(np.float64) for n, a in fetched.items()}))
        flat = {n: a.reshape(-1) for n, a in fetched.items()}
        assert not plain.fits(wide, template) and not plain.fits(flat, template)
