"""Verifying a job after the fact, by anyone: from its exported bundle and the chain alone.

A bundle (``gfl job export``) is a folder: ``bundle.json`` (the job's chain coordinates and,
round by round, the update set and the decision), ``spec.msgpack`` (the canonical spec
bytes) and ``blobs/<sha256 hex>`` (M_0, every update the finalized rounds used — for a
sharded job its manifest and shard frames —, every finalized model). The verifier trusts
none of it: it reads the job's events from a chain endpoint, checks them against the
contract's running hash, and re-derives every round — the updates each finalized vote used,
checked like a node checks them, aggregated with the job's strategy — comparing each model
hash with the one the chain finalized. Sharded rounds are re-derived all-to-all from the
shard frames: the arithmetic is per coordinate, so the model is the same bits. A secure
round (docs/protocol.md 9.10) is re-derived from its masked updates, the shares blobs in
the job's ``Dealt`` events and the reveal sets among the bundle's blobs: the masking set M
from the chain, the finalized mask checked against it, the masks taken off the sum (and a
sharded secure round's shards hash from that sum's shards, 9.12).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from gfl.chain.proofs import shards_hash
from gfl.content import content_hash
from gfl.errors import GflError
from gfl.fl.codec import decode_frame, encode_frame
from gfl.fl.rounds import NO_SHARDS, Decision, Update, excluded_positions, mask_bytes
from gfl.fl.shards import (
    MAX_MANIFEST,
    Layout,
    Mode,
    job_round_mode,
    layout_of,
    manifest_hashes,
    reduce_shard,
    word_ranges,
)
from gfl.fl.spec import JobSpec
from gfl.fl.strategies import ClientUpdate
from gfl.scheduler import aggregation
from gfl.scheduler.joblog import JobLog

if TYPE_CHECKING:
    from gfl.chain.records import ChainEvent

BUNDLE_VERSION = 1
BUNDLE_FILE = "bundle.json"
SPEC_FILE = "spec.msgpack"
BLOBS_DIR = "blobs"


class BundleError(GflError):
    """A bundle is missing, malformed or incomplete."""


@dataclass
class RoundVerdict:
    round: int
    decision: str | None
    chain_model: str | None
    derived_model: str | None = None
    ok: bool = False
    problem: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "decision": self.decision,
            "chain_model": self.chain_model,
            "derived_model": self.derived_model,
            "verified": self.ok,
            "problem": self.problem,
        }


@dataclass
class Verdict:
    """The whole job: every round re-derived, or the first reason it could not be."""

    job_id: str
    rounds: list[RoundVerdict] = field(default_factory=list)
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem and all(r.ok for r in self.rounds)


# -- writing ---------------------------------------------------------------------------------


def bundle_manifest(
    *,
    chain_id: int,
    registry: str,
    job_id: bytes,
    spec: JobSpec,
    joblog: JobLog,
) -> dict[str, Any]:
    """``bundle.json``'s content: the job's chain coordinates and its rounds."""
    rounds = []
    for r in sorted(joblog.rounds):
        rd = joblog.rounds[r]
        rounds.append(
            {
                "round": r,
                "updates": [
                    {
                        "author": u.author,
                        "hash": u.update_hash.hex(),
                        "samples": u.samples,
                        "position": u.position,
                    }
                    for u in rd.updates
                ],
                "decision": rd.decision.value if rd.decision else None,
                "model": rd.final.model_hash.hex() if rd.final else None,
                "mask": rd.final.mask.hex() if rd.final else None,
            }
        )
    return {
        "version": BUNDLE_VERSION,
        "chain_id": chain_id,
        "registry": registry,
        "job_id": job_id.hex(),
        "owner": joblog.owner,
        "spec_hash": spec.spec_hash.hex(),
        "model0": joblog.model0_hash.hex(),
        "log_seq": joblog.seq,
        "log_head": joblog.head.hex(),
        "rounds": rounds,
    }


class HeldBlobs(Protocol):
    """The blobs a node holds (its `gfl.net.blobs.BlobStore`)."""

    def size_of(self, h: bytes) -> int | None: ...

    def get(self, h: bytes) -> bytes | None: ...


def blobs_needed(
    joblog: JobLog, held: HeldBlobs | None = None, reveals: Sequence[bytes] = ()
) -> list[bytes]:
    """Every blob a verifier needs: M_0, the updates finalized rounds used (with the node's
    ``held`` blobs, a sharded update's shard frames too), finalized models, and the
    ``reveals`` of secure rounds (the reveal sets this node unmasked with). Blocking."""
    out = [joblog.model0_hash, *reveals]
    for r in sorted(joblog.rounds):
        rd = joblog.rounds[r]
        if rd.decision is not Decision.FINALIZED or rd.final is None:
            continue
        excluded = set(excluded_positions(rd.final.mask, len(rd.updates)))
        for u in rd.updates:
            if u.position in excluded:
                continue
            out.append(u.update_hash)
            size = held.size_of(u.update_hash) if held is not None else None
            blob = held.get(u.update_hash) if held and size and size <= MAX_MANIFEST else None
            out += (manifest_hashes(blob) or []) if blob is not None else []
        out.append(rd.final.model_hash)
    return list(dict.fromkeys(out))


# -- reading ---------------------------------------------------------------------------------


def read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((folder / BUNDLE_FILE).read_text())
    except OSError as exc:
        raise BundleError(f"no bundle in {folder}: {exc.strerror}") from None
    except ValueError:
        raise BundleError(f"{folder / BUNDLE_FILE} is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("version") != BUNDLE_VERSION:
        raise BundleError(f"{folder / BUNDLE_FILE} is not a bundle of version {BUNDLE_VERSION}")
    for key in ("chain_id", "registry", "job_id"):
        if key not in manifest:
            raise BundleError(f"{folder / BUNDLE_FILE} lacks {key!r}")
    return manifest


def _blob(folder: Path, h: bytes) -> bytes | None:
    path = folder / BLOBS_DIR / h.hex()
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if content_hash(data) == h else None


def verify(folder: Path, events: list[ChainEvent], job_id: bytes) -> Verdict:
    """Re-derive every round of the job from the bundle in ``folder`` and ``events`` (the
    job's events as the chain holds them, already checked against its running hash)."""
    verdict = Verdict(job_id.hex())
    joblog = JobLog(job_id)
    joblog.apply(events)
    try:
        spec = JobSpec.from_bytes((folder / SPEC_FILE).read_bytes())
    except OSError as exc:
        verdict.problem = f"the bundle has no spec: {exc.strerror}"
        return verdict
    except GflError as exc:
        verdict.problem = f"the bundle's spec is unusable: {exc}"
        return verdict
    if spec.spec_hash != joblog.spec_hash:
        verdict.problem = "the bundle's spec is not the one the chain registered"
        return verdict
    frame = _blob(folder, joblog.model0_hash)
    if frame is None:
        verdict.problem = "the bundle lacks M_0 (or it does not match the registered hash)"
        return verdict
    manifest = read_manifest(folder)
    ctx_base = (int(manifest["chain_id"]), bytes.fromhex(str(manifest["registry"])[2:]))
    params: dict[str, np.ndarray] = decode_frame(frame)
    layout = layout_of(params, spec.shards)
    state: dict[str, np.ndarray] = {}
    model_hash = joblog.model0_hash
    for r in sorted(joblog.rounds):
        rd = joblog.rounds[r]
        if rd.decision is None:
            break
        rv = RoundVerdict(
            r, rd.decision.value, rd.final.model_hash.hex() if rd.final is not None else None
        )
        verdict.rounds.append(rv)
        if rd.decision is Decision.VOID:
            rv.derived_model, rv.ok = model_hash.hex(), True
            continue
        if rd.final is None:
            rv.problem = "the finalized candidate matches no vote in the events"
            return verdict
        excluded = set(excluded_positions(rd.final.mask, len(rd.updates)))
        ctx = aggregation.Context(ctx_base[0], ctx_base[1], job_id, r, model_hash)
        if spec.secure_aggregation:
            secure = _secure_round(folder, spec, joblog, rd, ctx, excluded, params, state, layout)
            if isinstance(secure, str):
                rv.problem = secure
                return verdict
            derived = content_hash(encode_frame(secure.params))
            rv.derived_model, rv.ok = derived.hex(), derived == rd.final.model_hash
            if not rv.ok:
                rv.problem = "the re-derived model differs from the one the chain finalized"
                return verdict
            params, state, model_hash = secure.params, secure.state, derived
            continue
        arrays = {}
        for u in rd.updates:
            if u.position in excluded:
                continue
            blob = _blob(folder, u.update_hash)
            if blob is None:
                rv.problem = f"the bundle lacks the update at position {u.position}"
                return verdict
            parts = None
            if layout.count > 1:
                hashes = manifest_hashes(blob) or []
                parts = [p for p in (_blob(folder, h) for h in hashes) if p is not None]
                if len(parts) != layout.count:
                    rv.problem = f"the bundle lacks shards of the update at position {u.position}"
                    return verdict
            checked = aggregation.check_update(blob, u, ctx, params, layout, parts)
            if isinstance(checked, str):
                rv.problem = f"the finalized vote used an invalid update ({u.position}): {checked}"
                return verdict
            arrays[u.position] = checked
        skipped = dict.fromkeys(excluded, "excluded by the finalized vote")
        if rd.final.shards_hash != _shards_hash(spec, layout, params, rd.updates, arrays):
            rv.problem = "the finalized shards hash is not the one the round's updates give"
            return verdict
        model = aggregation.aggregate(spec, params, state, rd.updates, arrays, skipped)
        derived = content_hash(encode_frame(model.params))
        rv.derived_model = derived.hex()
        rv.ok = derived == rd.final.model_hash
        if not rv.ok:
            rv.problem = "the re-derived model differs from the one the chain finalized"
            return verdict
        params, state, model_hash = model.params, model.state, derived
    return verdict


def _shards_hash(
    spec: JobSpec,
    layout: Layout,
    params: dict[str, np.ndarray],
    updates: Sequence[Update],
    arrays: dict[int, dict[str, np.ndarray]],
) -> bytes:
    """What a sharded round's votes name: every shard reduced over the used updates
    (NO_SHARDS for a round the job aggregates all-to-all)."""
    if job_round_mode(spec, layout.count, len(updates)) is not Mode.SHARDED or not arrays:
        return NO_SHARDS
    equal = spec.weighting == "equal"
    used = [u for u in updates if u.position in arrays]
    hashes = []
    for k in range(layout.count):
        usable = [
            ClientUpdate(u.author, 1 if equal else u.samples, layout.split(arrays[u.position], k))
            for u in used
        ]
        hashes.append(content_hash(reduce_shard(spec, layout.split(params, k), usable)[1]))
    return shards_hash(hashes)


def _reveal_sets(folder: Path, job_id: bytes, r: int) -> list[Any]:
    """The bundle's reveal sets for round r (any blob that parses as one)."""
    from gfl.fl.secagg import RevealSet, RoundContext, SecAggError

    ctx, out = RoundContext(job_id, r), []
    for path in sorted((folder / BLOBS_DIR).glob("*")):
        with path.open("rb") as f:
            if f.read(4) != b"GFLR":
                continue
        try:
            rs = RevealSet.from_bytes(path.read_bytes())
        except (OSError, SecAggError):
            continue
        if rs.ctx == ctx:
            out.append(rs)
    return out


def _secure_round(
    folder: Path,
    spec: JobSpec,
    joblog: JobLog,
    rd: Any,
    ctx: aggregation.Context,
    excluded: set[int],
    params: dict[str, np.ndarray],
    state: dict[str, np.ndarray],
    layout: Layout,
) -> aggregation.RoundModel | str:
    """A finalized secure round re-derived (its shards hash checked), or why it cannot be."""
    from gfl.fl.secagg import Incomplete, Recovery, address, recover
    from gfl.scheduler import masked
    from gfl.scheduler import secure as sa

    table, settings = spec.secure_aggregation, spec.secure
    assert settings is not None
    rm = None
    if table["masks"]:
        rm = sa.round_members(joblog, rd.number, settings, int(table["deal_timeout"]))
        outside = {
            u.position for u in rd.updates if rm is None or address(u.author) not in rm.members
        }
        if outside != excluded:
            return "the finalized mask is not the round's masking set (its dealers in time)"
    ranges = word_ranges(layout, params)
    used = [u for u in rd.updates if u.position not in excluded]
    vectors = []
    for u in used:
        blob = _blob(folder, u.update_hash)
        if blob is None:
            return f"the bundle lacks the update at position {u.position}"
        parts = None
        if len(ranges) > 1:
            parts = [p for p in (_blob(folder, h) for h in manifest_hashes(blob) or []) if p]
        checked = masked.decode_masked(blob, u, ctx, ranges, settings.word_bits, parts)
        if isinstance(checked, str):
            return f"the finalized vote used an invalid update ({u.position}): {checked}"
        vectors.append(checked)
    if not vectors:
        return "a finalized secure round with no update"
    short = sa.noise_shortfall(spec, len(vectors))
    if short is not None:
        return f"a finalized secure round under distributed DP with {short}"
    recovery: Recovery | None = None
    if rm is not None:
        survivors = [address(u.author) for u in used]
        reveals = _reveal_sets(folder, joblog.job_id, rd.number)
        got = recover(rm.ctx, rm.graph, survivors, rm.blobs, reveals, rm.members)
        if isinstance(got, Incomplete):
            return f"the bundle's reveals do not unmask the round: {got.reason}"
        recovery = got
    total = masked.unmasked_sum(vectors, recovery)
    named = NO_SHARDS
    if job_round_mode(spec, layout.count, len(rd.updates)) is Mode.SHARDED:
        named = shards_hash(masked.shard_sums(total, ranges, settings.word_bits))
    if rd.final.shards_hash != named:
        return "the finalized shards hash is not the one the round's sum gives"
    weight = sum(settings.weight(u.samples, spec.sample_cap) for u in used)
    new, new_state = masked.secure_step(spec, params, state, total, weight)
    why = dict.fromkeys(excluded, "excluded by the finalized vote")
    mask_ = mask_bytes(why, len(rd.updates))
    return aggregation.RoundModel(new, new_state, mask_, why, len(vectors))
