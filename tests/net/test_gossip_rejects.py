"""Bad gossip is dropped, counted and not forwarded; raw frames cannot crash a node."""

from contextlib import AsyncExitStack

import msgpack
import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.pubsub.pb import rpc_pb2
from libp2p.utils.varint import encode_varint_prefixed
from net_helpers import wait_for

from gfl.identity import NodeIdentity
from gfl.net import JOBS_TOPIC, open_network, register_schema
from gfl.net.messages import unregister_schema


async def _line(stack, tmp_path, n=3):
    """x -- a -- b, no discovery: b hears x only through a's forwarding."""
    out = []
    for i in range(n):
        net = await stack.enter_async_context(
            open_network(NodeIdentity.generate(), blob_dir=tmp_path / f"l{i}", discover=False)
        )
        if out:
            await net.connect(out[-1].listen_addrs()[0])
        out.append(net)
    return out


async def _raw_publish(x, topic, data, *, sign=True):
    ps = x._pubsub
    old = ps.strict_signing
    ps.strict_signing = sign
    try:
        await ps.publish(topic, data)
    finally:
        ps.strict_signing = old


@pytest.mark.trio
async def test_bad_gossip_is_rejected_and_not_forwarded(tmp_path):
    register_schema("test.job", lambda m: isinstance(m.get("id"), bytes) and len(m["id"]) == 32)
    try:
        async with AsyncExitStack() as stack:
            x, a, b = await _line(stack, tmp_path)
            ra = await a.subscribe(JOBS_TOPIC)
            rb = await b.subscribe(JOBS_TOPIC)
            await wait_for(lambda: a.stats()["mesh"][JOBS_TOPIC] >= 1)
            await wait_for(lambda: JOBS_TOPIC in x._pubsub.peer_topics)

            good = {"v": 1, "type": "test.job", "id": b"\x07" * 32}
            await _raw_publish(x, JOBS_TOPIC, msgpack.packb(good))
            with trio.fail_after(5):
                assert (await rb.receive()).payload == good  # forwarding works
            assert (await ra.receive()).payload == good

            bad = {
                "oversize": msgpack.packb({"v": 1, "type": "test.job", "pad": b"\0" * 300_000}),
                "malformed": b"\xc1 not msgpack",
                "no envelope": msgpack.packb({"hello": 1}),
                "wrong type": msgpack.packb({"v": 1, "type": "test.job", "id": "not bytes"}),
                "ext type": msgpack.packb({"v": 1, "type": "x", "e": msgpack.ExtType(5, b"")}),
                "int keys": msgpack.packb({"v": 1, "type": "x", 1: 2}),
            }
            for data in bad.values():
                await _raw_publish(x, JOBS_TOPIC, data)
            await _raw_publish(x, JOBS_TOPIC, msgpack.packb(good | {"n": 1}), sign=False)
            last = good | {"n": 2}
            await _raw_publish(x, JOBS_TOPIC, msgpack.packb(last))
            with trio.fail_after(5):
                assert (await rb.receive()).payload == last  # nothing bad came before it
            with trio.fail_after(5):
                assert (await ra.receive()).payload == last
            drops = a.stats()["drops"]
            assert drops["oversize"] == 1
            assert drops["malformed"] == 5
            assert drops["bad_signature"] == 1
            assert b.stats()["drops"] == {} and b.stats()["msgs_in"] == 2
    finally:
        unregister_schema("test.job")


def _refuse(gm):
    return gm.payload["n"] != 1


def _raise(gm):
    if gm.payload["n"] == 1:
        raise ValueError("validator bug")
    return True


async def _refuse_async(gm):
    await trio.sleep(0)
    return gm.payload["n"] != 1


async def _raise_async(gm):
    await trio.sleep(0)
    return _raise(gm)


@pytest.mark.trio
@pytest.mark.parametrize("validator", [_refuse, _raise, _refuse_async, _raise_async])
async def test_a_topic_validator_refusing_or_raising_drops_the_message(tmp_path, validator):
    async with AsyncExitStack() as stack:
        x, a, b = await _line(stack, tmp_path)
        ra = await a.subscribe(JOBS_TOPIC, validator)
        rb = await b.subscribe(JOBS_TOPIC)
        await wait_for(lambda: a.stats()["mesh"][JOBS_TOPIC] >= 1)
        await wait_for(lambda: JOBS_TOPIC in x._pubsub.peer_topics)
        for n in (1, 2):
            await x.publish(JOBS_TOPIC, {"v": 1, "type": "test.validated", "n": n})
        with trio.fail_after(5):
            assert (await ra.receive()).payload["n"] == 2  # n=1 was dropped at a
        with trio.fail_after(5):
            assert (await rb.receive()).payload["n"] == 2  # ... and not forwarded to b
        assert a.stats()["drops"] == {"rejected": 1}


@pytest.mark.trio
async def test_publish_refuses_oversize_and_badly_formed_messages(tmp_path):
    from gfl.net import MessageError

    async with open_network(NodeIdentity.generate(), blob_dir=tmp_path) as a:
        with pytest.raises(MessageError, match="over the"):
            await a.publish(JOBS_TOPIC, {"v": 1, "type": "x", "pad": b"\0" * 300_000})
        with pytest.raises(MessageError, match='"type"'):
            await a.publish(JOBS_TOPIC, {"v": 1})


def _frame(rpc: rpc_pb2.RPC) -> bytes:
    return encode_varint_prefixed(rpc.SerializeToString())


def _forged_key_rpc(topic: str) -> bytes:
    # A sender id that does not embed its key (sha256 multihash) plus an
    # undecodable key: stock 0.8.1 raises out of signature_validator.
    msg = rpc_pb2.Message(
        from_id=b"\x12\x20" + b"\x01" * 32,
        data=msgpack.packb({"v": 1, "type": "x"}),
        seqno=b"\0" * 8,
        topicIDs=[topic],
        signature=b"sig",
        key=b"\x08\x02\x12\x03bad",
    )
    return _frame(rpc_pb2.RPC(publish=[msg]))


RAW_FRAMES = {
    "forged signature key": _forged_key_rpc,
    "undecodable protobuf": lambda topic: encode_varint_prefixed(b"\x0a\xff\xff\xff\xff\x0f"),
}


@pytest.mark.trio
@pytest.mark.parametrize("kind", sorted(RAW_FRAMES))
async def test_raw_malformed_frame_does_not_crash_the_node(tmp_path, kind):
    async with AsyncExitStack() as stack:
        x, a, b = await _line(stack, tmp_path)
        ra = await a.subscribe(JOBS_TOPIC)
        rb = await b.subscribe(JOBS_TOPIC)
        await wait_for(lambda: a.stats()["mesh"][JOBS_TOPIC] >= 1)
        stream = await x._host.new_stream(a._my_id, [TProtocol("/meshsub/1.1.0")])
        await stream.write(RAW_FRAMES[kind](JOBS_TOPIC))
        await wait_for(lambda: sum(a.stats()["drops"].values()) >= 1, timeout=5)
        # a keeps working: b's gossip still reaches it
        await b.publish(JOBS_TOPIC, {"v": 1, "type": "ping"})
        with trio.fail_after(5):
            assert (await ra.receive()).payload["type"] == "ping"
        assert a._pubsub.manager.is_running
        del rb


def _leaf_types(exc: BaseException) -> set[str]:
    if isinstance(exc, BaseExceptionGroup):
        return set().union(*(_leaf_types(e) for e in exc.exceptions))
    return {type(exc).__name__}


# each frame with the one fix it needs removed: the library's method back in GflPubsub
WITHOUT_ITS_FIX = {
    "forged signature key": ("push_msg", "ValueError"),
    "undecodable protobuf": ("stream_handler", "DecodeError"),
}


@pytest.mark.trio
@pytest.mark.parametrize("kind", sorted(WITHOUT_ITS_FIX))
async def test_without_its_fix_the_same_frame_shuts_the_node_down(tmp_path, monkeypatch, kind):
    """The tests above can fail: without the fix, one frame takes the node down."""
    from libp2p.pubsub.pubsub import Pubsub

    from gfl.net.pubsub import GflPubsub

    method, error = WITHOUT_ITS_FIX[kind]
    monkeypatch.setattr(GflPubsub, method, getattr(Pubsub, method))
    with pytest.raises(BaseExceptionGroup) as info:
        async with AsyncExitStack() as stack:
            x, a, _b = await _line(stack, tmp_path)
            await a.subscribe(JOBS_TOPIC)
            stream = await x._host.new_stream(a._my_id, [TProtocol("/meshsub/1.1.0")])
            await stream.write(RAW_FRAMES[kind](JOBS_TOPIC))
            with trio.fail_after(5):
                while a._pubsub.manager.is_running:
                    await trio.sleep(0.05)
    assert error in _leaf_types(info.value)
