"""GFL's gossip messages: job, update and model announcements.

The network layer enforces the envelope (a bounded msgpack map with ``v`` and
``type``); this module fixes the bodies and registers a strict check for each,
so a malformed announcement is dropped before it is forwarded. Announcements
are hints: a node trusts a job only after checking it on chain, and a blob only
after checking its bytes against the hash committed on chain.

- ``job``: ``job_id`` (32 bytes), ``spec`` (canonical spec bytes, ≤ 64 KiB).
- ``update`` / ``model``: ``job_id``, ``round``, ``hash`` (32 bytes, sha256 of
  the blob), ``size`` (bytes); updates also ``samples`` and ``sig``, the author's
  signed statement for (chain, registry, job, round, hash) that the contract accepts
  as evidence of equivocation. The sender holds the blob and serves it over the
  blob protocol; an update of at most `INLINE_MAX` bytes (every sharded update's
  manifest) also rides in ``data``, its bytes, which a receiver checks against ``hash``.
- ``shard``: an aggregator's statement on a shard of a sharded round (docs/protocol.md,
  section 8): ``job_id``, ``round``, ``shard``, ``hash`` (sha256 of the reduced shard's
  frame, which the sender serves), ``size``, ``mask`` (the update positions it could not
  use, as a vote's mask) and ``sig``, the aggregator's signature over all of these
  (`gfl.chain.proofs.shard_statement`).
- ``statements``: several ``shard`` statements of one round in one gossip message (an
  aggregator's shards reduced together): ``job_id``, ``round``, ``statements`` (1 to
  `MAX_BATCHED` maps ``shard``, ``hash``, ``size``, ``mask``, ``sig``, each one a ``shard``
  statement with the message's job and round, `batched_statements`).
- ``statements?``: a question (`gfl.net.asks`, not gossip) to an aggregator for its
  statements on some shards of a round: ``job_id``, ``round``, ``shards`` (distinct shard
  numbers). The answer: the ``shard`` statements it made on those shards, as gossiped.
- ``reveal``: a holder's reveal set for a round of secure aggregation (docs/protocol.md,
  9.7): ``job_id``, ``round``, ``data`` (the set's bytes) and ``hash`` (their sha256; the
  sender serves them as a blob too).
"""

from __future__ import annotations

from typing import Any

from gfl.content import MAX_BLOB_BYTES, content_hash
from gfl.fl.shards import MAX_MANIFEST
from gfl.fl.spec import MAX_SPEC_BYTES
from gfl.net.gossip import JOBS_TOPIC, round_topic
from gfl.net.messages import register_schema

__all__ = [
    "JOBS_TOPIC",
    "batched_statements",
    "blob_announcement",
    "check_job",
    "check_model",
    "check_reveal",
    "check_shard",
    "check_statements",
    "check_statements_question",
    "check_update",
    "job_announcement",
    "reveal_message",
    "round_topic",
    "shard_statement",
    "statements_message",
    "statements_question",
]

VERSION = 2
MAX_ROUND = 1_000_000
SIGNATURE_BYTES = 65
MAX_SHARD = 255
STATEMENTS = "statements?"  # the question for a shard's statements
MAX_MASK_BYTES = 128 * 1024  # a mask over a million updates
INLINE_MAX = MAX_MANIFEST  # an update this small rides in its announcement
MAX_BATCHED = 64  # shard statements in one ``statements`` message
_STATEMENT_KEYS = ("shard", "hash", "size", "mask", "sig")


def _b32(v: Any) -> bool:
    return isinstance(v, bytes) and len(v) == 32


def _uint(v: Any, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= hi


def _keys(msg: dict[str, Any], *keys: str) -> bool:
    return set(msg) == {"v", "type", *keys} and msg["v"] == VERSION


def check_job(msg: dict[str, Any]) -> bool:
    spec = msg.get("spec")
    return (
        _keys(msg, "job_id", "spec")
        and _b32(msg["job_id"])
        and isinstance(spec, bytes)
        and 0 < len(spec) <= MAX_SPEC_BYTES
    )


def check_update(msg: dict[str, Any]) -> bool:
    data = msg.get("data")
    inline = () if data is None else ("data",)
    return (
        _keys(msg, "job_id", "round", "hash", "size", "samples", "sig", *inline)
        and (data is None or _inline(data, msg["size"], msg["hash"]))
        and _b32(msg["job_id"])
        and _uint(msg["round"], MAX_ROUND)
        and _b32(msg["hash"])
        and _uint(msg["size"], MAX_BLOB_BYTES)
        and _uint(msg["samples"], 2**63 - 1)
        and isinstance(msg["sig"], bytes)
        and len(msg["sig"]) == SIGNATURE_BYTES
    )


def _inline(data: Any, size: Any, h: Any) -> bool:
    """An announcement's ``data``: the announced blob itself (its size and hash)."""
    return (
        isinstance(data, bytes)
        and 0 < len(data) <= INLINE_MAX
        and len(data) == size
        and content_hash(data) == h
    )


def check_model(msg: dict[str, Any]) -> bool:
    return (
        _keys(msg, "job_id", "round", "hash", "size")
        and _b32(msg["job_id"])
        and _uint(msg["round"], MAX_ROUND)
        and _b32(msg["hash"])
        and _uint(msg["size"], MAX_BLOB_BYTES)
    )


def check_shard(msg: dict[str, Any]) -> bool:
    return (
        _keys(msg, "job_id", "round", "shard", "hash", "size", "mask", "sig")
        and _b32(msg["job_id"])
        and _uint(msg["round"], MAX_ROUND)
        and _uint(msg["shard"], MAX_SHARD)
        and _b32(msg["hash"])
        and _uint(msg["size"], MAX_BLOB_BYTES)
        and isinstance(msg["mask"], bytes)
        and len(msg["mask"]) <= MAX_MASK_BYTES
        and isinstance(msg["sig"], bytes)
        and len(msg["sig"]) == SIGNATURE_BYTES
    )


def shard_statement(
    job_id: bytes, rnd: int, shard: int, h: bytes, size: int, mask: bytes, sig: bytes
) -> dict[str, Any]:
    return {
        "v": VERSION,
        "type": "shard",
        "job_id": job_id,
        "round": rnd,
        "shard": shard,
        "hash": h,
        "size": size,
        "mask": mask,
        "sig": sig,
    }


def statements_message(bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """``shard`` statements of one job and round (1 to `MAX_BATCHED`) as one message."""
    first = bodies[0]
    return {
        "v": VERSION,
        "type": "statements",
        "job_id": first["job_id"],
        "round": first["round"],
        "statements": [{k: b[k] for k in _STATEMENT_KEYS} for b in bodies],
    }


def batched_statements(msg: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``shard`` statements a ``statements`` message carries, each as if gossiped
    alone (checked by `check_statements`: each passes `check_shard`)."""
    return [
        {"v": VERSION, "type": "shard", "job_id": msg["job_id"], "round": msg["round"], **s}
        for s in msg["statements"]
    ]


def check_statements(msg: dict[str, Any]) -> bool:
    batch = msg.get("statements")
    return (
        _keys(msg, "job_id", "round", "statements")
        and isinstance(batch, list)
        and 0 < len(batch) <= MAX_BATCHED
        and all(isinstance(s, dict) and set(s) == set(_STATEMENT_KEYS) for s in batch)
        and all(check_shard(b) for b in batched_statements(msg))
    )


def check_statements_question(msg: dict[str, Any]) -> bool:
    shards = msg.get("shards")
    return (
        _keys(msg, "job_id", "round", "shards")
        and _b32(msg["job_id"])
        and _uint(msg["round"], MAX_ROUND)
        and isinstance(shards, list)
        and 0 < len(shards) <= MAX_SHARD + 1
        and all(_uint(k, MAX_SHARD) for k in shards)
        and len(set(shards)) == len(shards)
    )


def statements_question(job_id: bytes, rnd: int, shards: list[int]) -> dict[str, Any]:
    return {"v": VERSION, "type": STATEMENTS, "job_id": job_id, "round": rnd, "shards": shards}


MAX_REVEAL_BYTES = 63 + 53 * 255  # a holder's reveal set: at most k + 1 = 255 dealers


def check_reveal(msg: dict[str, Any]) -> bool:
    return (
        _keys(msg, "job_id", "round", "hash", "data")
        and _b32(msg["job_id"])
        and _uint(msg["round"], MAX_ROUND)
        and _b32(msg["hash"])
        and isinstance(msg["data"], bytes)
        and 0 < len(msg["data"]) <= MAX_REVEAL_BYTES
    )


def reveal_message(job_id: bytes, rnd: int, h: bytes, data: bytes) -> dict[str, Any]:
    """A holder's reveal set (docs/protocol.md 9.7), also served as the blob ``h``."""
    return {"v": VERSION, "type": "reveal", "job_id": job_id, "round": rnd, "hash": h, "data": data}


def job_announcement(job_id: bytes, spec: bytes) -> dict[str, Any]:
    return {"v": VERSION, "type": "job", "job_id": job_id, "spec": spec}


def blob_announcement(
    kind: str,
    job_id: bytes,
    rnd: int,
    h: bytes,
    size: int,
    samples: int = 0,
    sig: bytes = b"",
    data: bytes | None = None,
) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "v": VERSION,
        "type": kind,
        "job_id": job_id,
        "round": rnd,
        "hash": h,
        "size": size,
    }
    if kind == "update":
        msg["samples"] = samples
        msg["sig"] = sig
        if data is not None:
            msg["data"] = data
    return msg


register_schema("job", check_job)
register_schema("update", check_update)
register_schema("model", check_model)
register_schema("shard", check_shard)
register_schema("statements", check_statements)
register_schema("reveal", check_reveal)
register_schema(STATEMENTS, check_statements_question)
