"""One round's model from its update set: gather the blobs under the availability rule,
check each, aggregate the usable ones, and say which positions were excluded (the mask
this node votes with).

The rule every node applies (docs/protocol.md, "Availability and validity"): an update of
S_r is used iff its blob arrived before closedAt + availability_timeout, its sha256 is the
committed hash, it decodes, its frame names this chain, registry, job, round, its committer
as author and M_r's hash as base, and it fits the model (names, shapes, finite values). A
sharded update (a layout of S > 1 shards) counts iff its manifest and each of its S shard
frames does (section 8); fetched whole, it is the same values as the shards a sharded round
reduces one by one.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import trio

from gfl.chain.proofs import shards_hash
from gfl.content import MAX_BLOB_BYTES, content_hash
from gfl.errors import GflError
from gfl.fl.codec import CodecError, UpdateMeta, decode_update
from gfl.fl.rounds import NO_SHARDS, Update, mask_bytes
from gfl.fl.shards import MAX_MANIFEST, Layout, ShardError, decode_manifest
from gfl.fl.spec import JobSpec
from gfl.fl.strategies import ClientUpdate, make_strategy
from gfl.fl.strategies.base import reject_reason
from gfl.net.errors import BusyError
from gfl.scheduler.ports import Exchange, ShardLie

if TYPE_CHECKING:
    from gfl.scheduler.joblog import RoundLog
    from gfl.scheduler.update import RoundMetrics

log = logging.getLogger(__name__)

T = TypeVar("T")
FETCH_CONCURRENCY = 8
RETRY_S, RETRY_MAX_S = 0.2, 4.0  # pauses between tries of a failed fetch


@dataclass(frozen=True)
class Context:
    """What an update's frame must name to count for this round."""

    chain_id: int
    registry: bytes  # 20 bytes
    job_id: bytes
    round: int
    base: bytes  # hash of M_r


@dataclass
class Gathered:
    """The round's blobs as this node holds them by the availability deadline."""

    blobs: dict[int, bytes] = field(default_factory=dict)  # position -> blob (or manifest)
    parts: dict[int, list[bytes]] = field(default_factory=dict)  # position -> shard frames
    missing: dict[int, str] = field(default_factory=dict)  # position -> why not
    received: int = 0  # bytes fetched from peers (not our own, not prefetched)


async def fetch_blob(
    exchange: Exchange,
    h: bytes,
    author: str | None,
    seconds: float,
    limiter: trio.CapacityLimiter,
    max_size: int = MAX_BLOB_BYTES,
) -> tuple[bytes, int]:
    """A blob by hash, local copy first: (its bytes, the bytes fetched from peers). A fetch
    that fails (every holder busy serving others: a shard frame has one holder, its author)
    is tried again after a growing, jittered pause until ``seconds`` are spent."""
    blob = await exchange.load_local(h)
    if blob is not None:
        return blob, 0
    deadline = trio.current_time() + max(0.1, seconds)

    async def once() -> bytes:
        async with limiter:
            return await exchange.fetch(
                h, author, max_size, max(0.1, deadline - trio.current_time())
            )

    blob = await retried(once, deadline, GflError)
    return blob, len(blob)


async def retried(
    attempt: Callable[[], Awaitable[T]], deadline: float, failure: type[Exception]
) -> T:
    """``attempt()``, tried again after a growing, jittered pause while it raises
    ``failure`` and the pause still ends before ``deadline`` (a trio time)."""
    pause = RETRY_S
    while True:
        try:
            return await attempt()
        except failure:
            if deadline - trio.current_time() <= pause:
                raise
        await trio.sleep(pause * (0.5 + random.random()))
        pause = min(2 * pause, RETRY_MAX_S)


async def gather(
    exchange: Exchange,
    updates: Sequence[Update],
    me: str,
    seconds: float,
    layout: Layout | None = None,
) -> Gathered:
    """Every blob of the update set we can get within ``seconds`` (local copies first); with
    a sharded ``layout``, each update's manifest and then its shard frames."""
    out = Gathered()
    limiter = trio.CapacityLimiter(FETCH_CONCURRENCY)
    shards = layout.count if layout is not None else 1

    async def one(u: Update) -> None:
        try:
            blob, n = await fetch_blob(exchange, u.update_hash, u.author, seconds, limiter)
            out.received += n
            if shards > 1:
                try:
                    hashes = decode_manifest(blob, shards)
                except ShardError:
                    out.blobs[u.position] = blob  # check_update says why it does not count
                    return
                parts = []
                for h in hashes:
                    part, n = await fetch_blob(exchange, h, u.author, seconds, limiter)
                    out.received += n
                    parts.append(part)
                out.parts[u.position] = parts
            out.blobs[u.position] = blob
        except (GflError, trio.TooSlowError) as exc:
            out.missing[u.position] = f"unavailable: {exc}"

    with trio.move_on_after(max(0.1, seconds)):
        async with trio.open_nursery() as nursery:
            for u in updates:
                if u.author.lower() == me.lower():
                    nursery.start_soon(one, u)  # ours is local: never unavailable
                else:
                    nursery.start_soon(one, u)
    for u in updates:
        if u.position not in out.blobs and u.position not in out.missing:
            out.missing[u.position] = "unavailable: not received by the availability deadline"
    return out


def expected_meta(u: Update, ctx: Context) -> UpdateMeta:
    """What the frame of ``u`` must say about itself (for a shard: `UpdateMeta.for_shard`)."""
    return UpdateMeta(
        chain=ctx.chain_id,
        registry=ctx.registry,
        job=ctx.job_id,
        round=ctx.round,
        author=bytes.fromhex(u.author.removeprefix("0x").lower()),
        base=ctx.base,
    )


def framed(blob: bytes, expected: UpdateMeta) -> dict[str, np.ndarray] | str:
    """An update frame's arrays when it decodes and names ``expected``, or why not."""
    try:
        arrays, meta = decode_update(blob)
    except CodecError as exc:
        return f"does not decode: {exc}"
    if meta != expected:
        return "its frame names another author, job, round, base model or shard"
    return arrays


def check_frame(
    blob: bytes, expected: UpdateMeta, params: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray] | str:
    """An update frame's arrays (or a shard frame's pieces, ``params`` then being the
    model's pieces of that shard), or why it does not count."""
    arrays = framed(blob, expected)
    if isinstance(arrays, str):
        return arrays
    reason = reject_reason(params, arrays)
    return reason if reason is not None else arrays


def check_manifest(blob: bytes, u: Update, shards: int) -> list[bytes] | str:
    """The shard hashes a sharded update commits to, or why it does not count."""
    if content_hash(blob) != u.update_hash:
        return "the manifest does not match its committed hash"
    try:
        return decode_manifest(blob, shards)
    except ShardError as exc:
        return str(exc)


def check_part(
    part: bytes,
    k: int,
    hashes: Sequence[bytes],
    u: Update,
    ctx: Context,
    layout: Layout,
    params: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray] | str:
    """Shard k of a sharded update: its pieces, or why the update does not count."""
    if content_hash(part) != hashes[k]:
        return f"shard {k} does not match its manifest"
    checked = check_frame(
        part, expected_meta(u, ctx).for_shard(k, layout.count), layout.split(params, k)
    )
    return f"shard {k}: {checked}" if isinstance(checked, str) else checked


def check_update(
    blob: bytes,
    u: Update,
    ctx: Context,
    params: Mapping[str, np.ndarray],
    layout: Layout | None = None,
    parts: Sequence[bytes] | None = None,
) -> dict[str, np.ndarray] | str:
    """The update's arrays, or why it does not count (the same answer on every node); a
    sharded update is its manifest ``blob`` and its shard frames ``parts``."""
    if layout is None or layout.count == 1:
        if content_hash(blob) != u.update_hash:
            return "the blob does not match its committed hash"
        return check_frame(blob, expected_meta(u, ctx), params)
    pieces = check_parts(
        blob, u, layout.count, parts,
        lambda part, k, hashes: check_part(part, k, hashes, u, ctx, layout, params),
    )  # fmt: skip
    return pieces if isinstance(pieces, str) else layout.join(pieces)


def check_parts(
    blob: bytes,
    u: Update,
    shards: int,
    parts: Sequence[bytes] | None,
    check: Callable[[bytes, int, list[bytes]], T | str],
) -> list[T] | str:
    """A sharded update's manifest ``blob`` and its S shard frames ``parts``, each checked
    by ``check(part, k, hashes)``: what each gives, in shard order, or why the update does
    not count (the plain and the masked checks both walk a manifest this way)."""
    hashes = check_manifest(blob, u, shards)
    if isinstance(hashes, str):
        return hashes
    if parts is None or len(parts) != shards:
        return "its shards are missing"
    out = []
    for k, part in enumerate(parts):
        checked = check(part, k, hashes)
        if isinstance(checked, str):
            return checked
        out.append(checked)
    return out


@dataclass(frozen=True)
class RoundModel:
    """M_{r+1} as this node computed it."""

    params: dict[str, np.ndarray]
    state: dict[str, np.ndarray]
    mask: bytes
    excluded: dict[int, str]  # position -> why
    used: int
    shard_hashes: tuple[bytes, ...] = ()  # a sharded round's reduced shards, in shard order
    lies: tuple[ShardLie, ...] = ()  # shard statements that contradict them

    @property
    def shards_hash(self) -> bytes:
        """What the vote names (docs/protocol.md, section 8): NO_SHARDS all-to-all."""
        return shards_hash(self.shard_hashes) if self.shard_hashes else NO_SHARDS


def aggregate(
    spec: JobSpec,
    params: Mapping[str, np.ndarray],
    state: Mapping[str, np.ndarray],
    updates: Sequence[Update],
    arrays: Mapping[int, dict[str, np.ndarray]],
    excluded: Mapping[int, str],
) -> RoundModel:
    """M_{r+1} from M_r, the strategy's state after round r-1 and the usable updates.

    With no usable update the model stays M_r (the vote then names an all-but-own mask,
    which the contract refuses: such a round ends void, which leaves M_r too)."""
    strategy = make_strategy(spec.strategy, spec.strategy_kwargs)
    if state:
        strategy.load_state_dict(state)
    usable = [
        ClientUpdate(u.author, 1 if spec.weighting == "equal" else u.samples, arrays[u.position])
        for u in updates
        if u.position in arrays and u.position not in excluded
    ]
    mask = mask_bytes(excluded, len(updates))
    if not usable:
        return RoundModel(dict(params), dict(state), mask, dict(excluded), 0)
    new = strategy.aggregate(params, usable)
    return RoundModel(new, strategy.state_dict(), mask, dict(excluded), len(usable))


async def all_to_all(
    exchange: Exchange,
    rd: RoundLog,
    ctx: Context,
    me: str,
    params: Mapping[str, np.ndarray],
    layout: Layout,
    window: float,
    aggregate_fn: Callable[[dict[int, dict[str, np.ndarray]], dict[int, str]], RoundModel],
    metrics: RoundMetrics,
) -> RoundModel:
    """An all-to-all round: every update fetched whole within ``window`` seconds, checked,
    and the usable ones aggregated by ``aggregate_fn(arrays, excluded)``."""
    t0 = time.monotonic()
    got = await gather(exchange, rd.updates, me, window, layout)
    metrics.phase("fetch", t0)
    t0 = time.monotonic()
    excluded = dict(got.missing)
    arrays: dict[int, dict[str, np.ndarray]] = {}
    for u in rd.updates:
        blob = got.blobs.pop(u.position, None)  # each blob let go once decoded: N of them
        if blob is None:
            continue
        checked = await trio.to_thread.run_sync(
            check_update, blob, u, ctx, params, layout, got.parts.pop(u.position, None)
        )
        if isinstance(checked, str):
            excluded[u.position] = checked
        else:
            arrays[u.position] = checked
    model = await trio.to_thread.run_sync(aggregate_fn, arrays, excluded)
    metrics.phase("aggregate", t0)
    metrics.values.update(
        mode="all",
        bytes_received=got.received,
        updates_verified=[
            [u.author, u.update_hash.hex(), u.samples] for u in rd.updates if u.position in arrays
        ],
    )
    return model


CheckPart = Callable[[bytes, int, list[bytes], Update], "dict[str, np.ndarray] | str"]


class UpdateShards:
    """A sharded round's updates as this node fetches them: each manifest, then the shard
    pieces it needs (each fetched and checked once, whichever step asks first), counting
    the bytes fetched per phase in ``received``. Deadlines are trio times; an update whose
    manifest is late holds up no other update."""

    def __init__(
        self, exchange: Exchange, updates: Sequence[Update], ctx: Context, layout: Layout
    ) -> None:
        self.exchange = exchange
        self.updates = updates
        self.ctx = ctx
        self.layout = layout
        self.limiter = trio.CapacityLimiter(FETCH_CONCURRENCY)
        self.manifests: dict[int, list[bytes] | str] = {}  # position -> hashes, or why not
        self._fetching: dict[int, trio.Event] = {}
        self._batches: dict[int, trio.Event] = {}  # position -> its batch (`prefetch`) done
        self._raw: dict[tuple[int, int], bytes] = {}  # (position, shard) -> a batch's piece
        self.pieces: dict[tuple[int, int], dict[str, np.ndarray] | str] = {}
        self.received: Counter[str] = Counter()  # phase -> bytes fetched from peers

    async def manifest(self, u: Update, deadline: float) -> list[bytes] | str:
        """The shard hashes ``u`` commits to, or why it does not count."""
        pos = u.position
        if pos in self._fetching:
            await self._fetching[pos].wait()
            return self.manifests[pos]
        done = self._fetching[pos] = trio.Event()
        try:
            with trio.move_on_at(deadline):
                blob, n = await fetch_blob(
                    self.exchange, u.update_hash, u.author, deadline - trio.current_time(),
                    self.limiter, MAX_MANIFEST,
                )  # fmt: skip
                self.received["manifests"] += n
                self.manifests[pos] = check_manifest(blob, u, self.layout.count)
        except (GflError, trio.TooSlowError) as exc:
            self.manifests[pos] = f"unavailable: {exc}"
        finally:
            self.manifests.setdefault(pos, "unavailable: no manifest by the deadline")
            done.set()
        return self.manifests[pos]

    async def fetch_manifests(self, deadline: float) -> None:
        async with trio.open_nursery() as nursery:
            for u in self.updates:
                nursery.start_soon(self.manifest, u, deadline)

    async def prefetch(
        self,
        shards: Sequence[int],
        positions: Sequence[int],
        deadline: float,
        phase: str,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Shards ``shards`` of the updates at ``positions``, each update's asked of its
        author in one batch (an aggregator's pieces: a stream per author, not one per
        piece); `fetch_shard` takes them from here and fetches what a batch did not bring
        piece by piece. Started with ``nursery.start``: once started, `fetch_shard` waits
        for the batches."""
        todo = [u for u in self.updates if u.position in positions]
        for u in todo:
            self._batches.setdefault(u.position, trio.Event())
        task_status.started()

        async def one(u: Update) -> None:
            try:
                hashes = await self.manifest(u, deadline)
                want = {} if isinstance(hashes, str) else {hashes[k]: k for k in shards}
                if want:
                    got = await self._batch(list(want), u.author, deadline)
                    for h, blob in got.items():
                        if h in want:
                            self._raw[(u.position, want[h])] = blob
                            self.received[phase] += len(blob)
            except GflError as exc:
                log.debug("a batch of update %d's pieces failed: %s", u.position, exc)
            finally:
                self._batches[u.position].set()

        with trio.move_on_at(deadline):  # (a cancelled `one` still sets its event)
            async with trio.open_nursery() as nursery:
                for u in todo:
                    nursery.start_soon(one, u)

    async def _batch(self, hashes: list[bytes], author: str, deadline: float) -> dict[bytes, bytes]:
        """One batch from ``author``, asked again while the author is busy serving others
        (as `fetch_blob` does for one blob, whatever the failure)."""

        async def once() -> dict[bytes, bytes]:
            async with self.limiter:
                return await self.exchange.fetch_many(
                    hashes, author, MAX_BLOB_BYTES, deadline - trio.current_time()
                )

        return await retried(once, deadline, BusyError)

    async def fetch_shard(
        self, k: int, positions: Sequence[int], check: CheckPart, deadline: float, phase: str
    ) -> None:
        """Shard k of the updates at ``positions``, checked by ``check(part, k, hashes, u)``
        (in a worker thread), until ``deadline``."""

        async def one(u: Update) -> None:
            hashes = await self.manifest(u, deadline)
            if isinstance(hashes, str):
                self.pieces[(u.position, k)] = hashes
                return
            if (batch := self._batches.get(u.position)) is not None:
                await batch.wait()
            part = self._raw.pop((u.position, k), None)
            if part is None:
                try:
                    part, n = await fetch_blob(
                        self.exchange, hashes[k], u.author, deadline - trio.current_time(),
                        self.limiter,
                    )  # fmt: skip
                except (GflError, trio.TooSlowError) as exc:
                    self.pieces[(u.position, k)] = f"shard {k} unavailable: {exc}"
                    return
                self.received[phase] += n
            self.pieces[(u.position, k)] = await trio.to_thread.run_sync(check, part, k, hashes, u)

        todo = [u for u in self.updates if u.position in positions]
        with trio.move_on_at(deadline):
            async with trio.open_nursery() as nursery:
                for u in todo:
                    if (u.position, k) not in self.pieces:
                        nursery.start_soon(one, u)
        for u in todo:
            self.pieces.setdefault((u.position, k), f"shard {k} not received in time")
