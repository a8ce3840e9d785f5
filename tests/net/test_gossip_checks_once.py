"""Each gossip message's crypto and decoding is done once per node (gfl.net.signatures,
gfl.net.pubsub's hand-off from validator to subscriber), and what is skipped is only
what was already checked: forged signatures and foreign peer records are still refused."""

from __future__ import annotations

import inspect

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.peer.envelope import seal_record
from libp2p.peer.id import ID
from libp2p.peer.peer_record import PeerRecord
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX
from net_helpers import connected_pair, wait_for

from gfl.identity import NodeIdentity
from gfl.net import JOBS_TOPIC, pubsub, signatures


def _keypair_and_id() -> tuple[object, ID]:
    kp = NodeIdentity.generate().libp2p_keypair()
    return kp, ID.from_pubkey(kp.public_key)


def _record_rpc(kp: object, pid: ID, seq: int = 1) -> rpc_pb2.RPC:
    record = PeerRecord(pid, [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/4001")], seq=seq)
    rpc = rpc_pb2.RPC()
    rpc.senderRecord = seal_record(record, kp.private_key).marshal_envelope()  # type: ignore[attr-defined]
    return rpc


def _signed_msg(kp: object, pid: ID, data: bytes) -> rpc_pb2.Message:
    msg = rpc_pb2.Message(data=data, topicIDs=[JOBS_TOPIC], from_id=pid.to_bytes(), seqno=b"\0" * 8)
    signed = PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString()
    msg.signature = kp.private_key.sign(signed)  # type: ignore[attr-defined]
    msg.key = kp.public_key.serialize()  # type: ignore[attr-defined]
    return msg


@pytest.fixture
def consumed(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The records that reach the library's (verifying) consume function."""
    seen: list[bytes] = []
    original = signatures.library_consume_record

    def counting(msg: rpc_pb2.RPC, host: object, peer_id: object) -> bool:
        seen.append(msg.senderRecord)
        return bool(original(msg, host, peer_id))

    monkeypatch.setattr(signatures, "library_consume_record", counting)
    return seen


def test_a_peer_record_seen_before_is_not_verified_again(consumed: list[bytes]) -> None:
    host = new_host(key_pair=NodeIdentity.generate().libp2p_keypair())
    kp, pid = _keypair_and_id()
    rpc = _record_rpc(kp, pid)
    assert all(signatures.consume_record_once(rpc, host, pid) for _ in range(5))
    assert len(consumed) == 1
    assert host.get_peerstore().get_peer_record(pid) is not None
    newer = _record_rpc(kp, pid, seq=2)
    assert signatures.consume_record_once(newer, host, pid)
    assert len(consumed) == 2


def test_a_peer_record_is_checked_again_after_the_recheck_interval(
    consumed: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    host = new_host(key_pair=NodeIdentity.generate().libp2p_keypair())
    kp, pid = _keypair_and_id()
    rpc = _record_rpc(kp, pid)
    monkeypatch.setattr(signatures, "RECORD_RECHECK", -1.0)  # every entry is already stale
    assert all(signatures.consume_record_once(rpc, host, pid) for _ in range(3))
    assert len(consumed) == 3


def test_another_peers_record_is_refused_every_time(consumed: list[bytes]) -> None:
    host = new_host(key_pair=NodeIdentity.generate().libp2p_keypair())
    kp, pid = _keypair_and_id()
    _, other = _keypair_and_id()
    rpc = _record_rpc(kp, pid)
    assert signatures.consume_record_once(rpc, host, pid)
    # the same bytes relayed by another peer are not that peer's record
    assert not signatures.consume_record_once(rpc, host, other)
    assert not signatures.consume_record_once(rpc, host, other)
    assert len(consumed) == 3


def test_only_the_message_just_verified_skips_the_librarys_signature_check() -> None:
    kp, pid = _keypair_and_id()
    good = _signed_msg(kp, pid, b"\x82\xa1v\x01\xa4type\xa1x")
    forged = _signed_msg(kp, pid, b"\x82\xa1v\x01\xa4type\xa1x")
    forged.data = b"\x82\xa1v\x01\xa4type\xa1y"  # signature no longer matches
    signatures.mark_verified(good)
    assert not signatures.signature_check_once(forged)
    assert signatures.signature_check_once(good)
    signatures.mark_verified(forged)  # a mark is for that object only...
    twin = rpc_pb2.Message()
    twin.CopyFrom(forged)
    assert not signatures.signature_check_once(twin)  # ...not for equal bytes


def _copy_of(cls: type, func: object) -> object:
    """The copy of the library's ``func`` that ``cls`` inherits (`gfl.net.rebind`)."""
    for klass in cls.__mro__:
        for attr in vars(klass).values():
            if getattr(attr, "__wrapped__", None) is func:
                return attr
    raise AssertionError(f"{cls.__name__} has no copy of {func}")


def test_gfl_pubsub_uses_the_check_once_functions_and_the_library_its_own() -> None:
    import libp2p.pubsub.gossipsub as gossipsub_mod
    import libp2p.pubsub.pubsub as pubsub_mod

    ours = {
        "signature_validator": signatures.signature_check_once,
        "maybe_consume_signed_record": signatures.consume_record_once,
        "env_to_send_in_RPC": signatures.own_record_reused,
    }
    calls = 0
    for cls, lib in ((pubsub.GflPubsub, pubsub_mod.Pubsub), (pubsub.GflGossipSub, GossipSub)):
        for func in vars(lib).values():
            if not inspect.isfunction(func):
                continue
            names = set(func.__code__.co_names) & set(ours)
            if names:
                copy = _copy_of(cls, func)
                assert all(copy.__globals__[n] is ours[n] for n in names), func  # type: ignore[attr-defined]
                calls += len(names)
    assert calls == 9  # every call of the three in py-libp2p 0.8.1's Pubsub and GossipSub
    # and the library's modules are untouched
    assert pubsub_mod.signature_validator is signatures.library_signature_check
    for mod in (pubsub_mod, gossipsub_mod):
        assert mod.maybe_consume_signed_record is signatures.library_consume_record
        assert mod.env_to_send_in_RPC is signatures.library_own_record


@pytest.mark.trio
async def test_a_relayed_message_is_verified_and_decoded_once_per_node(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    verified: list[bytes] = []
    decoded: list[bytes] = []
    verify, decode = signatures.library_signature_check, pubsub.decode_message

    def counting_verify(msg: rpc_pb2.Message) -> bool:
        verified.append(msg.seqno)
        return bool(verify(msg))

    def counting_decode(data: bytes) -> dict:
        decoded.append(data)
        return decode(data)

    monkeypatch.setattr(signatures, "library_signature_check", counting_verify)
    monkeypatch.setattr(pubsub, "decode_message", counting_decode)
    validated: list = []

    def validator(gm: object) -> bool:
        validated.append(gm)
        return True

    async with connected_pair(tmp_path) as (a, b):
        ra = await a.subscribe(JOBS_TOPIC, validator)
        await b.subscribe(JOBS_TOPIC)
        await wait_for(lambda: a.stats()["mesh"][JOBS_TOPIC] >= 1)
        await b.publish(JOBS_TOPIC, {"v": 1, "type": "test.once", "n": 1})
        with trio.fail_after(5):
            got = await ra.receive()
    assert got.payload == {"v": 1, "type": "test.once", "n": 1}
    assert validated == [got] and validated[0] is got  # the validator's decode, handed on
    assert len(verified) == 1 and len(decoded) == 1
