"""A sharded round on one node (docs/protocol.md, section 8): traffic per node O(model).

Once round r closes, the chain's seed draws ``replicas`` aggregators per shard among the
round's authors (`gfl.fl.shards.aggregators`). This node then:

1. fetches the manifest of every update of S_r (32 bytes per shard);
2. as aggregator of shard k: fetches shard k of every update until the availability
   deadline, checks it (manifest, frame meta, shapes, finite values), reduces the usable
   ones (`Strategy.reduce`) and publishes the reduced shard (a lossless frame of the pieces
   in each tensor's precision: float32 for a float32 model) with a signed statement
   (hash, mask of the positions it could not use);
3. collects the statements: shard k is **settled** when a majority of its aggregators agree
   on (hash, mask); a shard this node aggregated itself is settled as it computed it. The
   round's mask is the union of the settled masks; a shard that is not settled by the shard
   deadline (silent or disagreeing aggregators; or sooner, when no statement came for a
   while: gossip lost them) or whose mask is not the union is **recomputed** here from the
   updates' shards (the arithmetic is deterministic: every honest recomputation gives the
   same bytes);
4. assembles the float64 delta from the S shards, takes the server step with its own copy
   of the strategy's state and applies it: M_{r+1}, voted on as in an all-to-all round.

On chain: the seed, and the vote names the S reduced shards' hashes (their keccak, the
shards hash) beside the model, so that a statement the finalized shards contradict is
evidence (`ShardLie`, sent by `Duties`). What a shard's reduction is, and how the model
comes from the S reduced shards, is the round's `ShardArithmetic`: `PlainShards` here (the
strategy's reduction), the masked sum of a secure round in `gfl.scheduler.masked` (9.12).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import trio

from gfl.chain.proofs import recover_shard_signer
from gfl.content import content_hash
from gfl.errors import GflError
from gfl.fl.codec import CodecError, decode_frame
from gfl.fl.rounds import RoundRuleError, Update, excluded_positions, mask_bytes
from gfl.fl.shards import (
    Layout,
    Mode,
    aggregators,
    job_round_mode,
    layout_of,
    quorum,
    reduce_shard,
    shard_grace,
)
from gfl.fl.spec import JobSpec
from gfl.fl.strategies import ClientUpdate, make_strategy
from gfl.fl.strategies.base import apply_delta, f64, reduced_dtype
from gfl.scheduler import messages
from gfl.scheduler.aggregation import Context, RoundModel, UpdateShards, check_part, fetch_blob
from gfl.scheduler.joblog import RoundLog
from gfl.scheduler.ports import Exchange, JobState, Ledger, ShardLie

log = logging.getLogger(__name__)

Nap = Callable[[float | None], Awaitable[None]]
ASK_S, ASK_MAX_S = 2.0, 32.0  # silences after which a member asks for missing statements
ASKS_AT_ONCE, ASK_WAIT_S = 8, 5.0  # aggregators asked at a time; how long for their answers
STRAGGLER_S, STRAGGLER_TIMES = 5.0, 2  # patience for the last shards' statements (_settle)
QUIET_S = 15.0  # least wait for the next statement before recomputing instead (see quiet_s)


def quiet_s(availability_timeout: float) -> float:
    """How long a member waits for a new shard statement, when none comes, before it
    recomputes the shards still unsettled: a quarter of the availability window, at least
    `QUIET_S`. Gossip can lose a node's messages for minutes (a mesh being repaired); the
    shard deadline alone would then hold the whole round."""
    return max(QUIET_S, availability_timeout / 4)


def holders_of(
    shards: Iterable[int], holders: Mapping[int, Sequence[str]], me: str
) -> dict[int, str]:
    """A holder other than ``me`` to fetch each of ``shards`` from, among its aggregators
    that stated it (``holders``), so that few holders serve them all: the one of them
    holding the most of ``shards``, ties broken by a hash of the two addresses (the same
    order for all of one node's shards, another on each node: members spread over equal
    holders). A node fetches the shards it did not reduce in one batch per holder chosen."""
    shards = list(shards)
    count = Counter(h for k in shards for h in holders.get(k, ()) if h != me)

    def preference(h: str) -> tuple[int, bytes]:
        return count[h], hashlib.sha256(f"{me}|{h}".encode()).digest()

    out: dict[int, str] = {}
    for k in shards:
        theirs = [h for h in holders.get(k, ()) if h != me]
        if theirs:
            out[k] = max(theirs, key=preference)
    return out


@dataclass(frozen=True)
class Reduced:
    """Shard k reduced over the updates not in ``excluded`` (``pieces`` None: none usable)."""

    excluded: dict[int, str]
    pieces: dict[str, np.ndarray] | None
    frame: bytes = b""
    hash: bytes = b""


Pieces = dict[str, np.ndarray]


class ShardArithmetic(Protocol):
    """What one sharded round reduces, and how the model comes from the reduced shards."""

    #: an unusable piece is left out of its shard (the mask grows); False: the shard has no
    #: value then (a secure round's sum needs every member of S)
    excludes: bool

    def check(self, part: bytes, k: int, hashes: list[bytes], u: Update) -> Pieces | str:
        """Shard k of update ``u`` (its manifest's ``hashes``): its pieces, or why not."""
        ...

    async def reduce(self, k: int, template: Pieces, used: list[tuple[Update, Pieces]]) -> (
        tuple[Pieces, bytes] | None
    ):  # fmt: skip
        """Shard k over the ``used`` updates' pieces (chain order): the reduced pieces and
        their frame, or None when it has no value (a secure sum that cannot be unmasked)."""
        ...

    def fits(self, pieces: Pieces, template: Pieces) -> bool:
        """Whether a fetched reduced shard has the form this round's reduction gives."""
        ...

    def limit(self, template: Pieces) -> int:
        """The most bytes a reduced shard's frame may take."""
        ...

    def model(
        self, layout: Layout, params: Pieces, state: Pieces, shards: list[Pieces]
    ) -> tuple[Pieces, Pieces]:
        """M_{r+1} and the strategy's state from the S reduced shards (blocking)."""
        ...


class PlainShards:
    """The plain arithmetic (8.3): the strategy's per coordinate reduction of the pieces
    (a fetched shard in each tensor's `reduced_dtype`), then its server step over the joined
    delta in float64."""

    excludes = True

    def __init__(self, spec: JobSpec, ctx: Context, layout: Layout, params: Pieces) -> None:
        self.spec, self.ctx, self.layout, self.params = spec, ctx, layout, params

    def check(self, part: bytes, k: int, hashes: list[bytes], u: Update) -> Pieces | str:
        return check_part(part, k, hashes, u, self.ctx, self.layout, self.params)

    async def reduce(self, k: int, template: Pieces, used: list[tuple[Update, Pieces]]) -> (
        tuple[Pieces, bytes] | None
    ):  # fmt: skip
        equal = self.spec.weighting == "equal"
        usable = [ClientUpdate(u.author, 1 if equal else u.samples, p) for u, p in used]
        return await trio.to_thread.run_sync(reduce_shard, self.spec, template, usable)

    def fits(self, pieces: Pieces, template: Pieces) -> bool:
        return set(pieces) == set(template) and all(
            pieces[name].dtype == reduced_dtype(a.dtype) and pieces[name].shape == a.shape
            for name, a in template.items()
        )

    def limit(self, template: Pieces) -> int:
        return sum(a.size * reduced_dtype(a.dtype).itemsize for a in template.values()) + (1 << 16)

    def model(
        self, layout: Layout, params: Pieces, state: Pieces, shards: list[Pieces]
    ) -> tuple[Pieces, Pieces]:
        strategy = make_strategy(self.spec.strategy, self.spec.strategy_kwargs)
        if state:
            strategy.load_state_dict(state)
        # fetched shards are in their reduced dtype: the server step computes in float64
        delta = {name: f64(a) for name, a in layout.join(shards).items()}
        new = apply_delta(params, strategy.server_step(delta))
        return new, strategy.state_dict()


@dataclass(frozen=True)
class Claim:
    """A verified shard statement."""

    aggregator: str
    shard: int
    hash: bytes
    mask: bytes
    size: int
    sig: bytes


class ShardedRounds:
    """One job's sharded rounds on this node (the runner asks `mode` each round)."""

    def __init__(
        self,
        *,
        spec: JobSpec,
        me: str,
        exchange: Exchange,
        ledger: Ledger,
        nap: Nap,
        poll_s: float,
    ) -> None:
        self.spec = spec
        self.me = me.lower()
        self.exchange = exchange
        self.ledger = ledger
        self._nap = nap
        self._poll_s = poll_s
        self._layout: tuple[tuple[Any, ...], Layout] | None = None
        self._signers: dict[bytes, str | None] = {}  # statement signature -> its signer
        self.asked = self.answered = 0  # this round: aggregators asked, statements that came

    def layout(self, params: Mapping[str, np.ndarray]) -> Layout:
        """The job's layout (the same for every M_r: it depends on the shapes only)."""
        key = tuple((n, np.shape(a)) for n, a in sorted(params.items()))
        if self._layout is None or self._layout[0] != key:
            self._layout = (key, layout_of(params, self.spec.shards))
        return self._layout[1]

    def mode(self, params: Mapping[str, np.ndarray], rd: RoundLog) -> Mode:
        """How round ``rd`` is aggregated: the rule every node applies to chain data."""
        self.exchange.heard("shard", rd.number)  # statements of older rounds may go
        return job_round_mode(self.spec, self.layout(params).count, len(rd.updates))

    # -- the round ---------------------------------------------------------------------------

    async def aggregate(
        self,
        st: JobState,
        rd: RoundLog,
        ctx: Context,
        params: dict[str, np.ndarray],
        state: dict[str, np.ndarray],
        values: dict[str, Any],
        arith: ShardArithmetic | None = None,
        excluded: Mapping[int, str] | None = None,
    ) -> RoundModel:
        """M_{r+1} of a sharded round; what this node did goes into ``values``. Its shard
        statements are gossiped once; a member that misses them asks (`_settle`).
        ``arith``: the round's arithmetic (plain unless given); ``excluded``: positions out
        of every shard from the start (a secure round's authors outside its masking set)."""
        assert rd.closed_at is not None
        layout, n, spec = self.layout(params), len(rd.updates), self.spec
        arith = arith or PlainShards(spec, ctx, layout, params)
        base = dict(excluded or {})
        skew = trio.current_time() - st.now  # chain time -> trio time
        avail = rd.closed_at + spec.availability_timeout + skew
        grace = shard_grace(spec.vote_timeout, spec.availability_timeout)
        settle_by = avail + grace
        recompute_by = rd.closed_at + spec.vote_timeout - grace + skew
        authors = [u.author for u in rd.updates]
        assigned = [aggregators(rd.seed, k, authors, spec.replicas) for k in range(layout.count)]
        mine = [k for k in range(layout.count) if self.me in assigned[k]]
        recomputed: list[int] = []
        work = UpdateShards(self.exchange, rd.updates, ctx, layout)
        own: dict[int, Reduced] = {}
        self.asked = self.answered = 0

        async def aggregate_shard(k: int) -> None:
            own[k] = red = await self._reduce(work, arith, k, set(base), params, avail, "shards")
            for pos, why in sorted(red.excluded.items()):
                log.info("round %d shard %d: update %d excluded: %s", rd.number, k, pos, why)
            if red.pieces is not None:
                await self.publish(ctx, k, red, n)

        t0 = trio.current_time()
        others = [
            u.position for u in rd.updates if u.position not in base and u.author.lower() != self.me
        ]
        async with trio.open_nursery() as nursery:  # each shard stated as soon as it is reduced
            nursery.start_soon(work.fetch_manifests, avail)
            if mine:  # our pieces of each author's update in one batch (8.3)
                await nursery.start(work.prefetch, mine, others, avail, "shards")
            for k in mine:
                nursery.start_soon(aggregate_shard, k)
        t_reduced = trio.current_time()
        # (an aggregator may wait for a piece until the availability deadline: so may we)
        settled, claims = await self._settle(
            ctx, rd, assigned, own, set(base), t0, settle_by, floor=avail + STRAGGLER_S
        )
        t_settled = trio.current_time()
        holders = {
            k: [c.aggregator for c in claims if c.shard == k and (c.hash, c.mask) == s]
            for k, s in settled.items()
        }

        union: set[int] = set(base)
        for _h, mask in settled.values():
            if arith.excludes:  # else the round's exclusions are fixed: another mask is wrong
                union.update(excluded_positions(mask, n))
        if union != set(base):  # the shards settled without these exclusions, stated again
            for k in mine:  # (one that lacks pieces the others used cannot: it takes theirs)
                if own[k].pieces is not None and set(own[k].excluded) < union:
                    own[k] = red = await self._reduce(
                        work, arith, k, union, params, avail, "shards"
                    )  # (its pieces are here: no fetch)
                    if red.pieces is not None:
                        await self.publish(ctx, k, red, n)
            mask = mask_bytes(union, n)
            again, claims = await self._settle(
                ctx, rd, assigned, own, union, trio.current_time(), settle_by, mask=mask
            )
            settled.update(again)
            holders = {
                k: [c.aggregator for c in claims if c.shard == k and (c.hash, c.mask) == s]
                for k, s in settled.items()
            }
        results: dict[int, Reduced] = {
            k: red for k, red in own.items() if set(red.excluded) == union
        }
        for _attempt in range(n + 1):  # each retry excludes one more update at least
            grown = await self._complete(
                work, arith, settled, holders, union, results, params, recompute_by, recomputed
            )
            if not grown:
                break
            union |= grown
            results = {k: red for k, red in results.items() if set(red.excluded) == union}
        log.info(
            "round %d: sharded, reduced %s by %.1f s, %d/%d settled by %.1f s, complete by "
            "%.1f s, recomputed %s, asked %d aggregators for %d statements (avail %.1f s, "
            "shard deadline %.1f s)",
            rd.number, mine, t_reduced - t0, len(settled), layout.count, t_settled - t0,
            trio.current_time() - t0, recomputed, self.asked, self.answered, avail - t0,
            settle_by - t0,
        )  # fmt: skip
        values["asked"] = self.asked
        model = await trio.to_thread.run_sync(
            self._assemble, arith, params, state, results, union, work, mine, recomputed, values
        )
        # statements heard since settling count too: a lie is evidence whenever it came
        claims = await self._claims(ctx, rd, assigned)
        lies = tuple(self._lies(rd.number, model, claims))
        return replace(model, excluded={**model.excluded, **base}, lies=lies)

    @staticmethod
    def _lies(r: int, model: RoundModel, claims: list[Claim]) -> list[ShardLie]:
        """The statements over the round's mask that name another shard than the one this
        node assembled the model from: signed evidence the contract can check once the
        round finalizes this model (`Duties` sends it)."""
        if not model.shard_hashes:
            return []
        out = []
        for c in claims:
            if c.mask == model.mask and c.hash != model.shard_hashes[c.shard]:
                log.warning("round %d: %s stated a wrong shard %d", r, c.aggregator, c.shard)
                out.append(ShardLie(r, c.aggregator, c.shard, c.hash, c.sig))
        return out

    async def _reduce(
        self, work: UpdateShards, arith: ShardArithmetic, k: int, exclude: set[int],
        params: Mapping[str, np.ndarray], until: float, phase: str,
    ) -> Reduced:  # fmt: skip
        """Shard k over the updates not in ``exclude`` that this node can use by ``until``."""
        positions = [u.position for u in work.updates if u.position not in exclude]
        await work.fetch_shard(k, positions, arith.check, until, phase)
        excluded = {p: f"excluded by the shard's aggregators ({k})" for p in exclude}
        usable = []
        for u in work.updates:
            if u.position in exclude:
                continue
            got = work.pieces[(u.position, k)]
            if isinstance(got, str) and not arith.excludes:
                log.info("round %d shard %d: no value: %s", work.ctx.round, k, got)
                return Reduced(excluded, None)
            if isinstance(got, str):
                excluded[u.position] = got
            else:
                usable.append((u, got))
        if not usable:
            return Reduced(excluded, None)
        reduced = await arith.reduce(k, work.layout.split(params, k), usable)
        if reduced is None:
            return Reduced(excluded, None)
        pieces, frame = reduced
        return Reduced(excluded, pieces, frame, await trio.to_thread.run_sync(content_hash, frame))

    async def publish(self, ctx: Context, k: int, red: Reduced, n: int) -> None:
        """Serve the reduced shard and state it, signed, on the job's topic."""
        h = await self.exchange.hold(red.frame)
        mask = mask_bytes(red.excluded, n)
        sig = self.ledger.sign_shard(ctx.round, k, h, mask)
        body = messages.shard_statement(ctx.job_id, ctx.round, k, h, len(red.frame), mask, sig)
        await self.exchange.post(body)

    # -- statements ---------------------------------------------------------------------------

    async def _settle(
        self,
        ctx: Context,
        rd: RoundLog,
        assigned: list[list[str]],
        own: dict[int, Reduced],
        fixed: set[int],
        started: float,
        until: float,
        *,
        floor: float = 0.0,
        mask: bytes | None = None,
    ) -> tuple[dict[int, tuple[bytes, bytes]], list[Claim]]:
        """Shard -> the (hash, mask) settled for it, and the statements heard, waiting until
        every shard is settled or answered by all its aggregators, or ``until``. A shard we
        reduced is settled on our result, unless that left out updates beyond the ``fixed``
        exclusions and a majority of its aggregators stated a result that used one of them
        (we could not fetch a piece they could): then on theirs, as a member that is no
        aggregator of it would. Until half
        the shards we did not reduce are settled, `quiet_s` without a new statement ends the
        wait (gossip is not reaching us); from then on the rest, being slow or silent, get
        twice as long again as that half took since the round's aggregation ``started``
        (when the aggregators started too), and `STRAGGLER_S`, and at least until ``floor``
        (an aggregator on a loaded machine can take several times the others' time, or wait
        for a piece until the availability deadline; recomputing its shard costs a member
        as much). A shard recomputed early costs bytes, never the model. With
        ``mask``, only statements over that mask count (the round's grown exclusions).
        Meanwhile, after 2, 4, 8, 16, 32, 32, ... s without a new statement, it asks the
        aggregators it did not hear from (`_ask`)."""
        n = len(rd.updates)
        ours = {k: set(r.excluded) for k, r in own.items() if r.pieces}  # what each left out
        settled = {k: (own[k].hash, mask_bytes(out, n)) for k, out in ours.items()}
        mine = len(settled)
        doubtful = {k for k, out in ours.items() if out - fixed}
        patience = until
        quiet = quiet_s(self.spec.availability_timeout)
        heard, news = 0, trio.current_time()  # statements heard, and when the last one came
        asked, pause = news, ASK_S  # when we last asked for missing statements; then how long
        while True:
            heard_all = await self._claims(ctx, rd, assigned)
            claims = [c for c in heard_all if mask is None or c.mask == mask]
            answered: Counter[int] = Counter(
                k for k, _ in {(c.shard, c.aggregator) for c in claims}
            )
            for k in range(len(assigned)):
                votes = Counter((c.hash, c.mask) for c in claims if c.shard == k)
                if (k not in settled or k in doubtful) and votes:
                    best, count = votes.most_common(1)[0]
                    if count < quorum(len(assigned[k])):
                        continue
                    # (a majority that left out as much as we did leaves ours)
                    if k not in ours or ours[k] - set(excluded_positions(best[1], n)):
                        settled[k] = best
                    doubtful.discard(k)
            now = trio.current_time()
            if len(claims) > heard:
                heard, news = len(claims), now
            # half the others settled: gossip reaches us, the rest are slow (or silent)
            half = 2 * (len(settled) - mine) >= len(assigned) - mine
            if patience == until and half:
                slow = now + STRAGGLER_TIMES * (now - started) + STRAGGLER_S
                patience = min(until, max(slow, floor))
            waiting = [
                k
                for k, replicas in enumerate(assigned)
                if (k not in settled or k in doubtful) and answered[k] < len(replicas)
            ]
            # a statement from another node: gossip reaches us, silence until the floor is
            # aggregators waiting for pieces
            hush = news + quiet
            if any(c.aggregator != self.me for c in heard_all):
                hush = max(hush, floor)
            done = now >= patience or (not half and now >= hush)
            if waiting and done:
                heard_from = {
                    k: sorted(c.aggregator[:10] for c in claims if c.shard == k) for k in waiting
                }
                log.info(
                    "round %d: shards not settled in time (heard from %s)", rd.number, heard_from
                )
            if not waiting or done:
                return settled, heard_all
            if now >= max(news, asked) + pause:  # silence: gossip lost them, or they are slow
                await self._ask(rd.number, assigned, claims, waiting)
                asked, pause = trio.current_time(), min(2 * pause, ASK_MAX_S)
                continue
            wake = min(patience if half else min(patience, hush), max(news, asked) + pause)
            await self._nap(min(self._poll_s, wake - now))

    async def _ask(
        self, r: int, assigned: list[list[str]], claims: list[Claim], waiting: list[int]
    ) -> None:
        """Ask the aggregators of the ``waiting`` shards we heard nothing from for their
        statements (8.4), for at most `ASK_WAIT_S`: gossip loses messages (a mesh being
        repaired, a new topic's GRAFT backoff), and an aggregator states each shard once."""
        heard = {(c.shard, c.aggregator) for c in claims}
        wanted: dict[str, list[int]] = {}
        for k in waiting:
            for a in assigned[k]:
                if a != self.me and (k, a) not in heard:
                    wanted.setdefault(a, []).append(k)
        limit = trio.CapacityLimiter(ASKS_AT_ONCE)

        async def one(a: str, shards: list[int]) -> None:
            async with limit:
                self.answered += await self.exchange.ask(a, r, shards)

        self.asked += len(wanted)
        with trio.move_on_after(ASK_WAIT_S):  # (a silent aggregator may be dead)
            async with trio.open_nursery() as nursery:
                for a, shards in wanted.items():
                    nursery.start_soon(one, a, shards)

    async def _claims(self, ctx: Context, rd: RoundLog, assigned: list[list[str]]) -> list[Claim]:
        """The round's verified statements: signed by an aggregator of their shard, with a
        valid mask; an aggregator's first statement per shard and mask only (a second hash
        for the same exclusions is its equivocation; over more exclusions it is the shard
        reduced again once the round's mask grew)."""
        bodies = [
            b for b in self.exchange.heard("shard", ctx.round)
            if b["job_id"] == ctx.job_id and b["shard"] < len(assigned)
        ]  # fmt: skip
        registry = "0x" + ctx.registry.hex()
        new = [b for b in bodies if b["sig"] not in self._signers]
        if new:

            def recover() -> None:
                for b in new:
                    self._signers[b["sig"]] = recover_shard_signer(
                        b["sig"], ctx.chain_id, registry, ctx.job_id, ctx.round,
                        b["shard"], b["hash"], b["mask"],
                    )  # fmt: skip

            await trio.to_thread.run_sync(recover)
        out: dict[tuple[int, str, bytes], Claim] = {}
        for b in bodies:
            signer = (self._signers.get(b["sig"]) or "").lower()
            k, key = b["shard"], (b["shard"], signer, b["mask"])
            if signer not in assigned[k] or key in out:
                continue
            try:
                excluded_positions(b["mask"], len(rd.updates))
            except RoundRuleError:
                continue
            out[key] = Claim(signer, k, b["hash"], b["mask"], b["size"], b["sig"])
        return list(out.values())

    # -- completing the round ------------------------------------------------------------------

    async def _complete(
        self,
        work: UpdateShards,
        arith: ShardArithmetic,
        settled: dict[int, tuple[bytes, bytes]],
        holders: dict[int, list[str]],
        union: set[int],
        results: dict[int, Reduced],
        params: Mapping[str, np.ndarray],
        until: float,
        recomputed: list[int],
    ) -> set[int]:
        """Fill ``results`` with every shard reduced over all but ``union``: the settled
        blob where its mask is the union, else a recomputation. Returns the positions a
        recomputation could not use (then the union grows and this runs again)."""
        n = len(work.updates)
        ready = [
            k
            for k, (_h, mask) in settled.items()
            if k not in results and set(excluded_positions(mask, n)) == union
        ]

        chosen = holders_of(ready, holders, self.me)
        wanted = {k: settled[k][0] for k in ready}
        got = await self._batches(work, arith, wanted, chosen, params, until)

        async def fetch(k: int) -> None:
            h = settled[k][0]
            pieces = await self._fetch_reduced(
                work, arith, k, h, chosen.get(k), params, until, got.pop(h, None)
            )
            if pieces is not None:
                why = {p: f"excluded by the shard's aggregators ({k})" for p in union}
                results[k] = Reduced(why, pieces, hash=settled[k][0])

        async with trio.open_nursery() as nursery:
            for k in ready:
                nursery.start_soon(fetch, k)
        for k in range(work.layout.count):
            if k in results:
                continue
            why = "not settled"
            if k in ready:
                why = "its reduced blob did not come"
            elif k in settled:
                why = "settled without the round's exclusions"
            log.info("round %d: recomputing shard %d (%s)", work.ctx.round, k, why)
            red = await self._reduce(work, arith, k, union, params, until, "recomputed")
            grown = set(red.excluded) - union
            if grown:
                return grown
            results[k] = red
            if k not in recomputed:
                recomputed.append(k)
        return set()

    async def _batches(
        self,
        work: UpdateShards,
        arith: ShardArithmetic,
        wanted: dict[int, bytes],
        chosen: dict[int, str],
        params: Mapping[str, np.ndarray],
        until: float,
    ) -> dict[bytes, bytes]:
        """The settled blobs ``wanted`` (shard -> hash), asked of each ``chosen`` holder in
        one batch (5.3) where it holds more than one: a stream per holder, not one per shard.
        What a batch did not bring is fetched one by one after."""
        by_holder: dict[str, list[int]] = {}
        for k, holder in chosen.items():
            if k in wanted:
                by_holder.setdefault(holder, []).append(k)
        got: dict[bytes, bytes] = {}
        seconds = (until - trio.current_time()) / 2  # as for one (`_fetch_reduced`)

        async def batch(holder: str, shards: list[int]) -> None:
            hashes = [wanted[k] for k in shards]
            limit = max(arith.limit(work.layout.split(params, k)) for k in shards)
            try:
                async with work.limiter:
                    blobs = await self.exchange.fetch_many(hashes, holder, limit, seconds)
            except GflError as exc:
                log.debug("a batch of settled shards from %s failed: %s", holder[:10], exc)
                return
            for h in hashes:
                if h in blobs:
                    got[h] = blobs[h]
                    work.received["settled"] += len(blobs[h])

        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                for holder, shards in by_holder.items():
                    if len(shards) > 1:
                        nursery.start_soon(batch, holder, shards)
        return got

    async def _fetch_reduced(
        self, work: UpdateShards, arith: ShardArithmetic, k: int, h: bytes, holder: str | None,
        params: Mapping[str, np.ndarray], until: float, frame: bytes | None = None,
    ) -> dict[str, np.ndarray] | None:  # fmt: skip
        """A settled shard's pieces (``frame``: its blob, when a batch brought it), fetched
        and checked (None: recompute it). Its holders get half the time left: the other
        half is for recomputing it."""
        template = work.layout.split(params, k)
        limit = arith.limit(template)
        if frame is None:
            try:
                frame, got = await fetch_blob(
                    self.exchange, h, holder, (until - trio.current_time()) / 2, work.limiter, limit
                )
            except (GflError, trio.TooSlowError) as exc:
                log.info("shard %d: the settled blob did not come (%s): recomputing", k, exc)
                return None
            work.received["settled"] += got
        if content_hash(frame) != h:
            return None
        try:
            pieces = await trio.to_thread.run_sync(decode_frame, frame)
        except CodecError as exc:
            log.info("shard %d: the settled blob does not decode (%s): recomputing", k, exc)
            return None
        return pieces if arith.fits(pieces, template) else None

    def _assemble(
        self,
        arith: ShardArithmetic,
        params: dict[str, np.ndarray],
        state: dict[str, np.ndarray],
        results: dict[int, Reduced],
        union: set[int],
        work: UpdateShards,
        aggregated: list[int],
        recomputed: list[int],
        values: dict[str, Any],
    ) -> RoundModel:
        n, layout = len(work.updates), work.layout
        excluded: dict[int, str] = {}
        for red in results.values():
            for p, why in red.excluded.items():
                excluded.setdefault(p, why)
        mask = mask_bytes(union, n)
        mine = any(u.author.lower() == self.me for u in work.updates)
        values.update(
            mode=Mode.SHARDED.value,
            role="author" if mine else "member",
            shards=layout.count,
            aggregated=aggregated,
            recomputed=sorted(recomputed),
            **{f"bytes_{phase}": b for phase, b in sorted(work.received.items())},
            bytes_received=sum(work.received.values()),
            updates_verified=[
                [u.author, u.update_hash.hex(), u.samples]
                for u in work.updates
                if u.position not in union and isinstance(work.manifests.get(u.position), list)
            ],
        )
        used = n - len(union)
        missing = [
            k for k in range(layout.count) if results.get(k, Reduced({}, None)).pieces is None
        ]
        if used == 0 or missing:  # no model here: every position out, so no vote
            why = f"shards {missing} have no value on this node"
            nothing = {u.position: excluded.get(u.position, why) for u in work.updates}
            return RoundModel(dict(params), dict(state), mask, nothing, 0)
        shards = [results[k].pieces or {} for k in range(layout.count)]
        new, new_state = arith.model(layout, params, state, shards)
        hashes = tuple(results[k].hash for k in range(layout.count))
        return RoundModel(new, new_state, mask, excluded, used, hashes)
