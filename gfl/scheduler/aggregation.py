"""One round's model from its update set: gather the blobs under the availability rule,
check each, aggregate the usable ones, and say which positions were excluded (the mask
this node votes with).

The rule every node applies (docs/protocol.md, "Availability and validity"): an update of
S_r is used iff its blob arrived before closedAt + availability_timeout, its sha256 is the
committed hash, it decodes, its frame names this chain, registry, job, round, its committer
as author and M_r's hash as base, and it fits the model (names, shapes, finite values).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import trio

from gfl.content import MAX_BLOB_BYTES, content_hash
from gfl.errors import GflError
from gfl.fl.codec import CodecError, UpdateMeta, decode_update
from gfl.fl.rounds import Update, mask_bytes
from gfl.fl.spec import JobSpec
from gfl.fl.strategies import ClientUpdate, make_strategy
from gfl.fl.strategies.base import reject_reason
from gfl.scheduler.ports import Exchange

log = logging.getLogger(__name__)

FETCH_CONCURRENCY = 8


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

    blobs: dict[int, bytes] = field(default_factory=dict)  # position -> blob
    missing: dict[int, str] = field(default_factory=dict)  # position -> why not
    received: int = 0  # bytes fetched from peers (not our own, not prefetched)


async def gather(
    exchange: Exchange, updates: Sequence[Update], me: str, seconds: float
) -> Gathered:
    """Every blob of the update set we can get within ``seconds`` (local copies first)."""
    out = Gathered()
    limiter = trio.CapacityLimiter(FETCH_CONCURRENCY)

    async def one(u: Update) -> None:
        try:
            blob = await exchange.load_local(u.update_hash)
            if blob is None:
                async with limiter:
                    blob = await exchange.fetch(
                        u.update_hash, u.author, MAX_BLOB_BYTES, max(0.1, seconds)
                    )
                out.received += len(blob)
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


def check_update(
    blob: bytes, u: Update, ctx: Context, params: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray] | str:
    """The update's arrays, or why it does not count (the same answer on every node)."""
    if content_hash(blob) != u.update_hash:
        return "the blob does not match its committed hash"
    try:
        arrays, meta = decode_update(blob)
    except CodecError as exc:
        return f"does not decode: {exc}"
    expected = UpdateMeta(
        chain=ctx.chain_id,
        registry=ctx.registry,
        job=ctx.job_id,
        round=ctx.round,
        author=bytes.fromhex(u.author.removeprefix("0x").lower()),
        base=ctx.base,
    )
    if meta != expected:
        return "its frame names another author, job, round or base model"
    reason = reject_reason(params, arrays)
    return reason if reason is not None else arrays


@dataclass(frozen=True)
class RoundModel:
    """M_{r+1} as this node computed it."""

    params: dict[str, np.ndarray]
    state: dict[str, np.ndarray]
    mask: bytes
    excluded: dict[int, str]  # position -> why
    used: int


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
