"""A job's events as a hash chain: decoding registry logs and recomputing the running hash.

Every registry event carries the job's event number ``seq``; the contract folds each event
into a per-job running hash, ``logHead(jobId)``::

    h_0 = 0
    h_seq = uint192(keccak256(h_{seq-1} (24 bytes) ++ keccak256(abi.encode(topic0, fields...))))

where ``fields`` are the event's fields in declaration order, ``seq`` included. A verifier
that reads a job's logs from any RPC endpoint recomputes the chain and compares it with the
head: a missing, reordered or altered log shows. Needs eth_abi only, no web3.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from gfl.chain import artifact
from gfl.chain.errors import ChainError
from gfl.chain.records import ChainEvent

HASH_BYTES = 24
GENESIS = bytes(HASH_BYTES)


class LogChainBroken(ChainError):
    """A job's events do not add up to the head the contract holds."""


@cache
def _events() -> dict[bytes, dict[str, Any]]:
    out = {}
    for entry in artifact.abi():
        if entry["type"] == "event":
            signature = f"{entry['name']}({','.join(_type(i) for i in entry['inputs'])})"
            out[keccak(text=signature)] = entry
    return out


def topic_of(name: str) -> bytes:
    """topic0 of a registry event."""
    for topic, entry in _events().items():
        if entry["name"] == name:
            return topic
    raise KeyError(name)


def _type(item: Mapping[str, Any]) -> str:
    t: str = item["type"]
    if t.startswith("tuple"):
        return "(" + ",".join(_type(c) for c in item["components"]) + ")" + t[len("tuple") :]
    return t


def _from_abi(item: Mapping[str, Any], value: Any) -> Any:
    t = item["type"]
    if t == "tuple":
        return {c["name"]: _from_abi(c, v) for c, v in zip(item["components"], value, strict=True)}
    if t == "address":
        return to_checksum_address(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return value


def _to_abi(item: Mapping[str, Any], value: Any) -> Any:
    if item["type"] == "tuple":
        return tuple(_to_abi(c, value[c["name"]]) for c in item["components"])
    return value


def decode_log(raw: Mapping[str, Any]) -> ChainEvent | None:
    """A registry log (as eth_getLogs returns it) decoded, or None if it is not one of ours."""
    topics = [bytes(t) for t in raw.get("topics") or ()]
    entry = _events().get(topics[0]) if topics else None
    if entry is None:
        return None
    indexed = [i for i in entry["inputs"] if i["indexed"]]
    plain = [i for i in entry["inputs"] if not i["indexed"]]
    if len(topics) != len(indexed) + 1:
        return None
    data = raw.get("data") or b""
    data = bytes.fromhex(data[2:]) if isinstance(data, str) else bytes(data)
    try:
        values = dict(
            zip(
                (i["name"] for i in plain),
                abi_decode([_type(i) for i in plain], data),
                strict=True,
            )
        )
        for item, topic in zip(indexed, topics[1:], strict=True):
            values[item["name"]] = abi_decode([_type(item)], topic)[0]
    except Exception:
        return None
    args = {i["name"]: _from_abi(i, values[i["name"]]) for i in entry["inputs"]}
    tx_hash = raw.get("transactionHash") or b""
    return ChainEvent(
        name=entry["name"],
        job_id=args["jobId"],
        seq=args["seq"],
        args=args,
        block_number=int(raw.get("blockNumber") or 0),
        log_index=int(raw.get("logIndex") or 0),
        tx_hash=bytes.fromhex(tx_hash[2:]) if isinstance(tx_hash, str) else bytes(tx_hash),
    )


def event_hash(event: ChainEvent) -> bytes:
    """keccak256(abi.encode(topic0, fields in declaration order))."""
    topic = topic_of(event.name)
    entry = _events()[topic]
    types = ["bytes32"] + [_type(i) for i in entry["inputs"]]
    values = [topic] + [_to_abi(i, event.args[i["name"]]) for i in entry["inputs"]]
    return keccak(abi_encode(types, values))


def event_hash_step(prev: bytes, event: ChainEvent) -> bytes:
    """The running hash after `event`, from the one before it (24 bytes; `GENESIS` at first)."""
    if len(prev) != HASH_BYTES:
        raise ChainError(f"a running hash is {HASH_BYTES} bytes")
    return keccak(bytes(prev) + event_hash(event))[-HASH_BYTES:]


def verify_log_chain(events: Iterable[ChainEvent], seq: int, head: bytes) -> bytes:
    """Check that one job's `events` are exactly events 1..seq with running hash `head`.

    Raises `LogChainBroken` naming the first missing, repeated or altered event; returns the
    head on success.
    """
    h, expected = GENESIS, 1
    for event in sorted(events, key=lambda e: e.seq):
        if event.seq != expected:
            what = "missing" if event.seq > expected else "repeated"
            raise LogChainBroken(
                f"job 0x{event.job_id.hex()}: event {expected} is {what} "
                f"(next one read is {event.seq})"
            )
        h = event_hash_step(h, event)
        expected += 1
    if expected - 1 != seq:
        raise LogChainBroken(f"read {expected - 1} events, the chain holds {seq}")
    if h != bytes(head):
        raise LogChainBroken("the events do not hash to the head the chain holds (altered)")
    return h
