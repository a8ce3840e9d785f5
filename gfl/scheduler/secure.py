"""Secure aggregation in the round (docs/protocol.md 9.10): deal, mask, reveal, unmask.

A round r of a job with ``secure_aggregation`` runs, on every member, as follows:

1. **deal** — the round's candidates C (the members eligible for r, with their masking
   keys, when the chain logged r's first deal) and the graph seed (from round r − 1's
   ``RoundClosed``) give the masking graph; each candidate deals its shares to its holders
   with the contract's ``deal`` call: the blob is in the event, so its availability is a
   chain fact. M, the round's masking set, is the candidates whose first blob that fits
   the graph was logged by the deal deadline (first deal's time + ``deal_timeout``); M is
   final once every candidate dealt or the deadline passed.
2. **mask** — a member of M trains, quantises its update to the job's fixed point and adds
   its self mask and the pairwise masks with its neighbours in M; the masked vector is the
   update blob, committed as usual (S_r by the chain). A member not in M does not commit.
3. **reveal** — once S_r is fixed, every member of M publishes its reveal set (gossip, and
   held as a blob) for S = the authors of S_r that are in M; the others' positions are
   excluded, the same on every node (that is the round's mask).
4. **unmask** — every member sums S's masked words mod 2^w, rebuilds the secrets from
   the reveals and takes the masks off; the weighted mean goes through the strategy's
   server step. In a round 8.2 shards, shard k's aggregators sum and unmask its words
   only and the members assemble the S sums (9.12; `gfl.scheduler.masked.SecureSum` in
   `gfl.scheduler.sharding`). A recovery that is still incomplete at the reveal deadline
   (closedAt + availability_timeout) gives no vote: the round ends void (9.9).

With ``masks = false`` only the fixed point and the integer sum remain (no dealing): the
plain job that a secure job must match bit for bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import trio

from gfl.content import content_hash
from gfl.fl.codec import UpdateMeta
from gfl.fl.data import ArrayDataset
from gfl.fl.privacy import StepPlan, noise_share
from gfl.fl.rounds import Update as Committed
from gfl.fl.rounds import mask_bytes
from gfl.fl.secagg import (
    FixedPoint,
    Incomplete,
    MaskingKey,
    MaskSecrets,
    NeighbourGraph,
    Recovery,
    RevealGuard,
    RevealSet,
    RoundContext,
    SecAggError,
    SecAggParams,
    SharesBlob,
    address,
    deal,
    encode,
    flatten,
    mask,
    recover,
    recover_secrets,
    reveal,
)
from gfl.fl.shards import Mode, job_round_mode, word_ranges
from gfl.fl.spec import JobSpec
from gfl.scheduler import aggregation, messages
from gfl.scheduler.joblog import JobLog
from gfl.scheduler.masked import SecureSum, decode_masked, masked_blobs, secure_step, unmasked_sum
from gfl.scheduler.ports import Exchange, JobState, Ledger, LedgerRefused
from gfl.scheduler.sharding import ShardedRounds
from gfl.scheduler.update import RoundMetrics, Update

log = logging.getLogger(__name__)

KEY_FILE = "masking.key"
REVEALS_FILE = "reveals.log"
CHAIN_CLOCK_MARGIN_S = 1.0  # block times vs this node's clock, before M counts as final
NO_DEAL_S = 10.0  # beyond twice the deal timeout: how long to wait for any deal to land


def graph_seed(job: bytes, r: int, previous: bytes) -> bytes:
    """The round's graph seed: round r − 1's RoundClosed seed (32 zero bytes for r = 0)."""
    prev = previous if len(previous) == 32 else bytes(32)
    return hashlib.sha256(b"GFL graph seed" + job + r.to_bytes(4, "big") + prev).digest()


@dataclass(frozen=True)
class RoundMembers:
    """A round's masking graph (over its candidates) and M, as the chain's deals fix them."""

    ctx: RoundContext
    graph: NeighbourGraph
    keys: Mapping[bytes, bytes]  # candidate -> masking public key
    blobs: Mapping[bytes, SharesBlob]  # member of M -> its counted shares blob
    deadline: int  # chain time after which no deal counts
    complete: bool  # every candidate dealt: M cannot change

    @property
    def members(self) -> frozenset[bytes]:
        return frozenset(self.blobs)

    def final(self, now: float) -> bool:
        return self.complete or now > self.deadline + CHAIN_CLOCK_MARGIN_S


def candidates_now(log_: JobLog, r: int) -> tuple[tuple[str, bytes], ...]:
    """The members eligible for r with a masking key, as the log stands (before r's first
    deal: what that deal's fold will snapshot, unless a join comes in between)."""
    return tuple(
        (m.address, m.mask_key)
        for m in log_.members.values()
        if m.active and m.join_round <= r and any(m.mask_key)
    )


def build_graph(
    log_: JobLog, r: int, params: SecAggParams, cands: Sequence[tuple[str, bytes]]
) -> tuple[RoundContext, NeighbourGraph, dict[bytes, bytes]] | None:
    keys = {address(a): k for a, k in cands}
    if not keys:
        return None
    prev = log_.rounds.get(r - 1)
    seed = graph_seed(log_.job_id, r, prev.seed if prev is not None else b"")
    graph = NeighbourGraph.build(seed, keys, params.neighbours, params.threshold)
    return RoundContext(log_.job_id, r), graph, keys


def round_members(
    log_: JobLog, r: int, params: SecAggParams, deal_timeout: int
) -> RoundMembers | None:
    """Round r's graph and M from the chain's deals, or None before its first deal."""
    rd = log_.rounds.get(r)
    if rd is None or not rd.deals:
        return None
    built = build_graph(log_, r, params, rd.candidates)
    if built is None:
        return None
    ctx, graph, keys = built
    deadline = rd.deals[0].at + deal_timeout
    blobs: dict[bytes, SharesBlob] = {}
    for d in rd.deals:
        who = address(d.dealer)
        if d.at > deadline or who in blobs or who not in keys:
            continue
        try:
            blob = SharesBlob.from_bytes(d.blob)
        except SecAggError:
            continue
        if blob.dealer == who and blob.mismatch(ctx, graph) is None:
            blobs[who] = blob
    return RoundMembers(ctx, graph, keys, blobs, deadline, len(blobs) == len(keys))


class SecureRounds:
    """This node's side of secure aggregation for one job (see the module docstring)."""

    def __init__(
        self,
        *,
        spec: JobSpec,
        me: str,
        ledger: Ledger,
        exchange: Exchange,
        root: Path,
        nap: Callable[[float | None], Awaitable[None]],
        poll_s: float,
        sharded: ShardedRounds,
    ) -> None:
        params = spec.secure
        assert params is not None
        self.spec = spec
        self.params: SecAggParams = params
        self.masks: bool = bool(spec.secure_aggregation["masks"])
        self.deal_timeout: int = int(spec.secure_aggregation["deal_timeout"])
        self.fp: FixedPoint = params.fixed_point(spec.max_participants, spec.sample_cap)
        self.me = me
        self.addr = address(me)
        self.ledger = ledger
        self.exchange = exchange
        self.root = root
        self._nap = nap
        self.poll_s = poll_s
        self.sharded = sharded  # the job's layout, and its sharded rounds (summed, 9.12)
        self.key = self._load_key() if self.masks else None
        self.guard = RevealGuard(self._load_reveals())
        self._secrets: dict[int, MaskSecrets] = {}
        self._revealed: set[int] = set()

    # -- keys and what a restart needs ------------------------------------------------------

    def _load_key(self) -> MaskingKey:
        """This job's masking key, made once and kept beside the checkpoints (0600)."""
        path = self.root / KEY_FILE
        if path.exists():
            return MaskingKey(path.read_bytes())
        key = MaskingKey.generate()
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        return key

    def _load_reveals(self) -> list[tuple[bytes, int, bytes, int]]:
        path = self.root / REVEALS_FILE
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            job, rnd, dealer, kind = line.split()
            out.append((bytes.fromhex(job), int(rnd), bytes.fromhex(dealer), int(kind)))
        return out

    def _save_reveals(self) -> None:
        lines = [f"{j.hex()} {r} {d.hex()} {k}" for j, r, d, k in self.guard.entries()]
        path = self.root / REVEALS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in lines))
        tmp.replace(path)

    @property
    def public_key(self) -> bytes:
        """What this member publishes when it joins (zeros for a job without masks)."""
        return self.key.public if self.key is not None else bytes(32)

    # -- before training ---------------------------------------------------------------------

    def may_train(self, st: JobState, r: int) -> bool:
        """Whether this node takes part in round r: it is one of r's candidates (once r's
        first deal fixed them), or, before that, enough members have keys to deal."""
        if not self.masks:
            return True
        rd = st.log.rounds.get(r)
        if rd is not None and rd.deals:
            return any(a.lower() == self.me.lower() for a, _ in rd.candidates)
        return len(candidates_now(st.log, r)) >= self.spec.min_updates

    async def _deal(self, st: JobState, r: int) -> None:
        """Deal round r's shares over the graph the chain will fix (the candidates now)."""
        rd = st.log.rounds.get(r)
        cands = rd.candidates if rd is not None and rd.deals else candidates_now(st.log, r)
        built = build_graph(st.log, r, self.params, cands)
        if built is None or self.addr not in built[2] or self.key is None:
            return
        ctx, graph, keys = built
        key = self.key
        blob, secrets = await trio.to_thread.run_sync(
            lambda: deal(ctx, graph, self.addr, key, keys)
        )
        self._secrets[r] = secrets
        await self.ledger.deal(r, blob.to_bytes())

    async def _masking_set(self, r: int) -> tuple[RoundMembers | None, JobState]:
        """Deal, then wait until round r's M is final: bounded by the deal deadline once a
        deal is on chain (however long the chain took to take the deals), and by
        NO_DEAL_S without one."""
        st = await self.ledger.sync()
        dealt_again = False
        give_up = time.monotonic() + 2 * self.deal_timeout + NO_DEAL_S
        if self._counted(st, r) is None:
            await self._deal(st, r)
        while True:
            st = await self.ledger.sync()
            rm = round_members(st.log, r, self.params, self.deal_timeout)
            if rm is None:
                if time.monotonic() >= give_up:
                    return None, st  # no deal reached the chain: no M this round
            elif self.addr not in rm.keys:
                return None, st  # not a candidate (joined after the first deal)
            elif rm.final(st.now):
                return rm, st
            elif self.addr not in rm.blobs and not dealt_again:
                dealt_again = True  # a join landed before our deal: deal over the chain's graph
                await self._deal(st, r)
            await self._nap(self.poll_s)

    def _counted(self, st: JobState, r: int) -> SharesBlob | None:
        rm = round_members(st.log, r, self.params, self.deal_timeout)
        return rm.blobs.get(self.addr) if rm is not None else None

    # -- the update --------------------------------------------------------------------------

    async def update(
        self,
        r: int,
        params: Mapping[str, np.ndarray],
        data: ArrayDataset,
        meta: UpdateMeta,
        *,
        device: str,
        limiter: trio.CapacityLimiter,
        metrics: RoundMetrics,
        privacy: StepPlan | None = None,
    ) -> Update | None:
        """Deal, train, and (once M is final) encode the masked update; None when this node
        is not in round r's M (it then does not commit). ``privacy``: what a round of the
        job's distributed DP costs (the node's budget's plan), for a job with it."""
        from gfl.fl.trainer import train_local

        rm: RoundMembers | None = None
        if self.masks:
            t0 = time.monotonic()
            try:
                rm, _ = await self._masking_set(r)
            except LedgerRefused as exc:
                log.info("round %d: deal refused: %s", r, exc)
                return None
            metrics.phase("deal", t0)
            if rm is None or self.addr not in rm.members:
                return None
        t0 = time.monotonic()
        spec = self.spec
        async with limiter:
            result = await trio.to_thread.run_sync(
                lambda: train_local(spec, params, data, device=device, seed=spec.seed + r)
            )
        train_s = time.monotonic() - t0
        metrics.phase("train", t0)
        samples = min(result.num_samples, spec.sample_cap) if spec.sample_cap else 1
        secrets = await self._secrets_for(r, rm) if rm is not None else None
        t0 = time.monotonic()

        dp = self.spec.privacy_settings if privacy is not None else None

        def encode_masked() -> tuple[bytes, tuple[bytes, ...]]:
            update = result.update
            if dp is not None and privacy is not None:  # distributed DP: clip, add our share
                update = noise_share(update, dp, privacy, self.spec.min_updates)
            v = encode(self.fp.quantize(flatten(update)), self.weight(samples))
            if secrets is not None and rm is not None:  # pairs only with M: the others dealt none
                pairs = tuple((j, s) for j, s in secrets.pair_seeds if j in rm.blobs)
                v = mask(dataclasses.replace(secrets, pair_seeds=pairs), v)
            return masked_blobs(v, self.fp.word_bits, meta, ranges)

        ranges = self._ranges(params)
        blob, parts = await trio.to_thread.run_sync(encode_masked)
        metrics.phase("encode", t0)
        metrics.values.update(
            {f"train_{k}": v for k, v in result.metrics.items()},
            samples=samples,
            bytes_sent_update=len(blob) + sum(map(len, parts)),
        )
        return Update(blob, content_hash(blob), samples, train_s, privacy, parts)

    def _ranges(self, params: Mapping[str, np.ndarray]) -> list[tuple[int, int]]:
        """The job's shards as word ranges of the model's vector (one range: unsharded)."""
        return word_ranges(self.sharded.layout(params), params)

    async def _secrets_for(self, r: int, rm: RoundMembers) -> MaskSecrets:
        """Our secrets for round r: from memory, or opened again from our counted blob."""
        ours = rm.blobs[self.addr]
        held = self._secrets.get(r)
        if held is not None and held.self_seed and _matches(ours, held):
            return held
        assert self.key is not None
        key = self.key
        return await trio.to_thread.run_sync(lambda: recover_secrets(ours, key, rm.keys))

    def weight(self, samples: int) -> int:
        return self.params.weight(samples, self.spec.sample_cap)

    # -- after the round closed --------------------------------------------------------------

    async def aggregate(
        self,
        st: JobState,
        r: int,
        ctx: aggregation.Context,
        params: dict[str, np.ndarray],
        state: dict[str, np.ndarray],
        metrics: RoundMetrics,
    ) -> aggregation.RoundModel:
        """M_{r+1} from the unmasked sum of S, or M_r with every position excluded (no
        vote) when the sum cannot be had by the reveal deadline. A sharded round (8.2)
        sums and unmasks shard by shard (9.12)."""
        rd = st.log.rounds[r]
        assert rd.closed_at is not None
        window = rd.closed_at + self.spec.availability_timeout - st.now
        deadline = trio.current_time() + max(0.5, window)
        rm = round_members(st.log, r, self.params, self.deal_timeout) if self.masks else None
        members = rm.members if rm is not None else None
        excluded: dict[int, str] = {}
        for u in rd.updates:
            if members is not None and address(u.author) not in members:
                excluded[u.position] = "its author is not in the round's masking set"
        used = [u for u in rd.updates if u.position not in excluded]
        survivors = [address(u.author) for u in used]
        if rm is not None and self.addr in rm.members and r not in self._revealed:
            await self._reveal(rm, survivors)
        why = noise_shortfall(self.spec, len(used)) if used else "the round has no update to sum"
        if why is not None:
            return _no_model(params, state, rd.updates, why)
        total_weight = sum(self.weight(u.samples) for u in used)
        ranges = self._ranges(params)
        outcome: list[Recovery | Incomplete | None] = []
        recovered = trio.Event()

        async def recover_once() -> None:
            """The round's recovery (None without masks), its reveal sets held for export."""
            got: Recovery | Incomplete | None = None
            if rm is not None:
                got, used_reveals = await self._recover(rm, survivors, r, deadline)
                if isinstance(got, Incomplete):
                    log.info("round %d: %s", r, got.reason)
                    metrics.values["secure_incomplete"] = got.reason
                else:
                    held = [await self.exchange.hold(rs.to_bytes()) for rs in used_reveals]
                    metrics.values["reveals"] = [h.hex() for h in held]  # for `gfl job export`
            outcome.append(got)
            recovered.set()

        async def recovery() -> Recovery | Incomplete | None:
            await recovered.wait()
            return outcome[0]

        metrics.values["secure"] = "masked" if self.masks else "fixed"
        t0 = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(recover_once)
            if job_round_mode(self.spec, len(ranges), len(rd.updates)) is Mode.SHARDED:
                arith = SecureSum(self.spec, ctx, self.fp, ranges, total_weight, recovery)
                model = await self.sharded.aggregate(
                    st, rd, ctx, params, state, metrics.values, arith, excluded
                )
                metrics.phase("aggregate", t0)
                return model
            fetched = await self._fetch_whole(used, ctx, params, ranges, window)
            metrics.phase("fetch", t0)
            if isinstance(fetched, str):
                nursery.cancel_scope.cancel()
                return _no_model(params, state, rd.updates, fetched)
            vectors, received = fetched
            t0 = time.monotonic()
            recovery_ = await recovery()
        if isinstance(recovery_, Incomplete):
            return _no_model(params, state, rd.updates, recovery_.reason)

        def step() -> aggregation.RoundModel:
            total = unmasked_sum(vectors, recovery_)
            new, new_state = secure_step(self.spec, params, state, total, total_weight)
            mask_ = mask_bytes(excluded, len(rd.updates))
            return aggregation.RoundModel(new, new_state, mask_, excluded, len(vectors))

        model = await trio.to_thread.run_sync(step)
        metrics.phase("aggregate", t0)
        metrics.values.update(
            mode="all",
            bytes_received=received,
            updates_verified=[[u.author, u.update_hash.hex(), u.samples] for u in used],
        )
        return model

    async def _fetch_whole(
        self,
        used: Sequence[Committed],
        ctx: aggregation.Context,
        params: dict[str, np.ndarray],
        ranges: Sequence[tuple[int, int]],
        window: float,
    ) -> tuple[list[np.ndarray], int] | str:
        """S's masked updates fetched whole (an all-to-all round) and decoded, with the
        bytes fetched; or why this node has no sum (any one missing or invalid)."""
        got = await aggregation.gather(
            self.exchange, used, self.me, max(0.5, window), self.sharded.layout(params)
        )
        vectors = []
        for u in used:
            blob = got.blobs.get(u.position)
            if blob is None:
                return f"update {u.position} {got.missing.get(u.position, 'unavailable')}"
            checked = await trio.to_thread.run_sync(
                decode_masked, blob, u, ctx, ranges, self.fp.word_bits, got.parts.get(u.position)
            )
            if isinstance(checked, str):
                return f"update {u.position} {checked}"
            vectors.append(checked)
        return vectors, got.received

    async def _reveal(self, rm: RoundMembers, survivors: Sequence[bytes]) -> None:
        """Publish our reveal set for S (once per round; the guard is on disk first)."""
        assert self.key is not None
        r = rm.ctx.round
        self._revealed.add(r)
        try:
            rs = reveal(
                rm.ctx, rm.graph, self.addr, self.key, rm.keys, survivors, self.guard, rm.members
            )
        except SecAggError as exc:
            log.info("round %d: no reveal: %s", r, exc)
            return
        await trio.to_thread.run_sync(self._save_reveals)
        data = rs.to_bytes()
        h = await self.exchange.hold(data)
        await self.exchange.post(messages.reveal_message(rm.ctx.job, r, h, data))

    def reveals(self, rm: RoundMembers) -> list[RevealSet]:
        """The reveal sets heard for the round (malformed or foreign ones dropped)."""
        out: dict[bytes, RevealSet] = {}
        for body in self.exchange.heard("reveal", rm.ctx.round):
            data = body.get("data")
            if body.get("job_id") != rm.ctx.job or not isinstance(data, bytes):
                continue
            try:
                rs = RevealSet.from_bytes(data)
            except SecAggError:
                continue
            if rs.ctx == rm.ctx:
                out.setdefault(rs.to_bytes(), rs)
        return list(out.values())

    async def _recover(
        self, rm: RoundMembers, survivors: Sequence[bytes], r: int, deadline: float
    ) -> tuple[Recovery | Incomplete, list[RevealSet]]:
        """Try the recovery as reveals come in, until it completes or the deadline; the
        outcome and the reveal sets it used."""
        while True:
            heard = self.reveals(rm)
            outcome = await trio.to_thread.run_sync(
                partial(recover, rm.ctx, rm.graph, survivors, rm.blobs, heard, rm.members)
            )
            if isinstance(outcome, Recovery) or outcome.problem is not None:
                return outcome, heard
            if trio.current_time() >= deadline:
                return outcome, heard
            await self._nap(min(self.poll_s, max(0.0, deadline - trio.current_time())))


def noise_shortfall(spec: JobSpec, summands: int) -> str | None:
    """Why a round of ``summands`` updates may not be summed under distributed DP (None when
    it may): each carries 1/min_updates of the noise's variance, so fewer fall short of σ."""
    dp = spec.privacy_settings
    if dp is None or dp.mode != "distributed" or summands >= spec.min_updates:
        return None
    return (
        f"{summands} updates to sum, fewer than min_updates = {spec.min_updates}: their "
        "noise shares fall short of the job's σ"
    )


def _matches(blob: SharesBlob, secrets: MaskSecrets) -> bool:
    from gfl.fl.secagg.shares import commitment

    return blob.commitments[0] == commitment(secrets.self_seed)


def _no_model(
    params: Mapping[str, np.ndarray],
    state: Mapping[str, np.ndarray],
    updates: Sequence[Committed],
    why: str,
) -> aggregation.RoundModel:
    """No model from this round on this node: every position excluded, so no vote."""
    excluded = {u.position: why for u in updates}
    return aggregation.RoundModel(dict(params), dict(state), b"", excluded, 0)
