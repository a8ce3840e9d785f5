"""A hostile libp2p peer for the security tests, built on py-libp2p directly.

It does not use GFL's send path (`gfl.net.Network`): it runs its own libp2p
host with stock `Pubsub` + `GossipSub` (to hear honest gossip it can replay),
and writes hand-made pubsub RPC frames — signed by its own key, batched many
messages per frame — straight onto ``/meshsub/1.1.0`` streams, so that nothing
GFL checks on the way out can clean them up. It also speaks the blob protocol
(``/gfl/blob/1.0.0``) badly: it serves bytes that do not match the hash asked
for, floods requests for unknown hashes, and holds streams open (slowloris).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import struct
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import msgpack
import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils.varint import encode_uvarint, encode_varint_prefixed

from gfl.chain.registry import Registry
from gfl.fl.spec import JobSpec
from gfl.scheduler.messages import VERSION as V
from gfl.scheduler.registration import job_params

MESHSUB = TProtocol("/meshsub/1.1.0")
BLOB = TProtocol("/gfl/blob/1.0.0")
SIGNING_PREFIX = b"libp2p-pubsub:"
# opening a stream, writing a frame, reading an answer: generous, since the nodes under
# attack share 2 cores with the attackers (a slow answer is not what these tests measure)
NET_TIMEOUT = 30.0


@dataclass
class MaliciousPeer:
    """One hostile identity: a libp2p host, its key and its raw streams."""

    key_bytes: bytes
    host: Any
    pubsub: Any
    nursery: trio.Nursery
    seqno: int = field(default_factory=lambda: random.getrandbits(48))
    _streams: dict[ID, Any] = field(default_factory=dict)
    frames_sent: int = 0
    stream_errors: int = 0
    bad_blobs_served: int = 0

    @property
    def peer_id(self) -> ID:
        return self.host.get_id()

    async def connect(self, maddr: str) -> ID:
        info = info_from_p2p_addr(multiaddr.Multiaddr(maddr))
        with trio.fail_after(NET_TIMEOUT):
            await self.host.connect(info)
        return info.peer_id

    # -- gossip --------------------------------------------------------------------------

    def sign(self, topic: str, data: bytes, *, from_id: bytes | None = None) -> Any:
        """A pubsub message signed with this peer's key, with a fresh seqno."""
        self.seqno += 1
        msg = rpc_pb2.Message(
            data=data,
            topicIDs=[topic],
            from_id=from_id or self.peer_id.to_bytes(),
            seqno=self.seqno.to_bytes(8, "big"),
        )
        key = self.host.get_private_key()
        msg.signature = key.sign(SIGNING_PREFIX + msg.SerializeToString())
        msg.key = self.host.get_public_key().serialize()
        return msg

    async def send_frame(self, target: ID, frame: bytes) -> bool:
        """Write one raw frame on our own meshsub stream to ``target`` (reopened if reset)."""
        for _ in range(2):
            stream = self._streams.get(target)
            try:
                if stream is None:
                    with trio.fail_after(NET_TIMEOUT):
                        stream = await self.host.new_stream(target, [MESHSUB])
                    self._streams[target] = stream
                with trio.fail_after(NET_TIMEOUT):
                    await stream.write(frame)
                self.frames_sent += 1
                return True
            except Exception:
                self.stream_errors += 1
                self._streams.pop(target, None)
                if stream is not None:
                    with trio.move_on_after(1), suppress(Exception):
                        await stream.reset()
        return False

    async def publish_batch(self, target: ID, topic: str, payloads: list[bytes]) -> bool:
        """Many signed messages in one RPC frame."""
        rpc = rpc_pb2.RPC(publish=[self.sign(topic, p) for p in payloads])
        return await self.send_frame(target, encode_varint_prefixed(rpc.SerializeToString()))

    async def replay(self, target: ID, msgs: list[Any]) -> bool:
        """Re-send captured messages byte for byte (their original signer and seqno)."""
        rpc = rpc_pb2.RPC(publish=list(msgs))
        return await self.send_frame(target, encode_varint_prefixed(rpc.SerializeToString()))

    async def bad_frames(self, target: ID) -> int:
        """Oversize, truncated and undecodable frames, each on a fresh stream; returns count."""
        frames = [
            encode_uvarint(8 << 20) + b"\0" * 1024,  # declares 8 MiB (over the 1 MiB limit)
            encode_uvarint(1000) + b"\x0a\x05",  # truncated: 2 of 1000 bytes, then closed
            encode_varint_prefixed(b"\x0a\xff\xff\xff\xff\x0f"),  # undecodable protobuf
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # varint that never ends
        ]
        sent = 0
        for frame in frames:
            try:
                with trio.fail_after(NET_TIMEOUT):
                    stream = await self.host.new_stream(target, [MESHSUB])
                    await stream.write(frame)
                    await stream.close()
                sent += 1
            except Exception:
                self.stream_errors += 1
        return sent

    async def capture(self, topic: str, into: list[Any]) -> None:
        """Subscribe to ``topic`` (stock gossipsub) and keep every message heard, for ever."""
        sub = await self.pubsub.subscribe(topic)
        while True:
            into.append(await sub.get())

    # -- blobs -----------------------------------------------------------------------------

    def serve_lies(self) -> None:
        """Answer every blob request with 'found' and bytes that do not hash to the request."""

        async def handler(stream: Any) -> None:
            try:
                with trio.fail_after(NET_TIMEOUT):
                    req = b""
                    while len(req) < 33:
                        chunk = await stream.read(33 - len(req))
                        if not chunk:
                            return
                        req += chunk
                    junk = hashlib.sha256(req).digest() * 64
                    await stream.write(struct.pack(">BQ", 0, len(junk)) + junk)
                    self.bad_blobs_served += 1
                    await stream.close()
            except Exception:
                with suppress(Exception):
                    await stream.reset()

        self.host.set_stream_handler(BLOB, handler)

    async def blob_request(self, target: ID, h: bytes) -> int | None:
        """Ask ``target`` for blob ``h``; returns the status byte (None: stream failed)."""
        stream = None
        try:
            with trio.fail_after(NET_TIMEOUT):
                stream = await self.host.new_stream(target, [BLOB])
                await stream.write(b"\x01" + h)
                head = b""
                while len(head) < 9:
                    chunk = await stream.read(9 - len(head))
                    if not chunk:
                        return None
                    head += chunk
                return head[0]
        except Exception:
            return None
        finally:
            if stream is not None:
                with trio.move_on_after(1), suppress(Exception):
                    await stream.reset()

    async def slowloris(self, target: ID, *, interval: float, max_s: float) -> float | None:
        """Open a blob stream and trickle the request one byte per ``interval`` seconds.

        Returns after how many seconds the node cut the stream off (None: it never did
        within ``max_s``).
        """
        try:
            with trio.fail_after(NET_TIMEOUT):
                stream = await self.host.new_stream(target, [BLOB])
        except Exception:
            return None
        t0 = trio.current_time()  # the node's clock on the request starts with the stream
        request = b"\x01" + b"\x5a" * 32
        with trio.move_on_after(max_s):
            for i in range(len(request) - 1):  # never sends the last byte
                try:
                    await stream.write(request[i : i + 1])
                except Exception:
                    return trio.current_time() - t0
                with trio.move_on_after(interval):
                    try:
                        if not await stream.read(1):
                            return trio.current_time() - t0
                    except Exception:
                        return trio.current_time() - t0
        with suppress(Exception):
            await stream.reset()
        return None


@asynccontextmanager
async def open_malicious_peer(key_bytes: bytes | None = None) -> AsyncIterator[MaliciousPeer]:
    """A running hostile host on 127.0.0.1 (stock py-libp2p, no GFL networking code)."""
    key_bytes = key_bytes or _random_key()
    maddr = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
    host = new_host(key_pair=create_new_key_pair(key_bytes), listen_addrs=[maddr])
    gossipsub = GossipSub(
        protocols=[PROTOCOL_ID_V11, PROTOCOL_ID],
        degree=6,
        degree_low=4,
        degree_high=12,
        spam_protection_enabled=False,
        eclipse_protection_enabled=False,
    )
    pubsub = Pubsub(host, gossipsub, strict_signing=True)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(host.run([maddr]))
        await stack.enter_async_context(background_trio_service(pubsub))
        await stack.enter_async_context(background_trio_service(gossipsub))
        with trio.fail_after(NET_TIMEOUT):
            await pubsub.wait_until_ready()
        nursery = await stack.enter_async_context(trio.open_nursery())
        peer = MaliciousPeer(key_bytes, host, pubsub, nursery)
        try:
            yield peer
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                for p in list(host.get_network().connections.keys()):
                    with trio.move_on_after(2), suppress(Exception):
                        await host.disconnect(p)


def register_job(chain: Registry, spec: JobSpec, salt: bytes, **skew: int) -> bytes:
    """The attacker registers ``spec`` as its own job (``skew``: params other than the
    spec's); the M_0 hash is made up, since nobody fetches it."""
    params = job_params(spec, spec.deadline_after(chain.chain_time()))
    job_id, _ = chain.register_job(
        salt * 32, spec.spec_hash, b"\7" * 32, dataclasses.replace(params, **skew)
    )
    return job_id


def _random_key() -> bytes:
    order = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    while True:
        k = random.SystemRandom().getrandbits(256)
        if 0 < k < order:
            return k.to_bytes(32, "big")


# -- the fuzz corpus ---------------------------------------------------------------------------


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


_ODD = [None, True, -1, 2**64 - 1, 1.5, "", "x" * 70, b"", b"\0" * 31, b"\0" * 33, [], {}, [1, 2]]


def fuzz_message(rng: random.Random, job_ids: list[bytes], spec: bytes) -> tuple[str, bytes]:
    """One hostile gossip payload (category, bytes), seeded: cheap-to-check kinds dominate.

    ``job_ids`` are ids the attacker wants to confuse nodes about; ``spec`` is a
    valid canonical spec to mutate. Nothing returned is a valid, chain-backed
    announcement by its owner.
    """
    k = rng.random()
    jid = rng.choice(job_ids)
    if k < 0.12:
        return "garbage", rng.randbytes(rng.randint(0, 300))
    if k < 0.22:
        full = _pack(
            {
                "v": V,
                "type": "update",
                "job_id": jid,
                "round": 1,
                "hash": rng.randbytes(32),
                "size": 10,
                "samples": 5,
                "sig": rng.randbytes(65),
            }
        )
        return "truncated", full[: rng.randint(0, len(full) - 1)]
    if k < 0.28:
        return "not_a_map", _pack(rng.choice([[1, 2], 7, "job", b"\0" * 40, None, [{"v": V}]]))
    if k < 0.36:
        env = {"v": rng.choice([None, "1", -1, 2**16, True, 1.0]), "type": "job"}
        if rng.random() < 0.5:
            env = {"type": rng.choice([None, 1, "", "t" * 65, b"job"]), "v": V}
        return "bad_envelope", _pack(env)
    if k < 0.46:
        t = rng.choice(["ping", "x", "update2", "JOB", "model.", "\u00e9"])
        body = {"v": V, "type": t}
        if rng.random() < 0.5:
            body |= {"job_id": jid, "round": 0, "hash": rng.randbytes(32)}
        return "unknown_type", _pack(body)
    if k < 0.70:
        kind = rng.choice(["job", "update", "model"])
        if kind == "job":
            body = {"v": V, "type": "job", "job_id": jid, "spec": spec}
        else:
            body = {
                "v": V,
                "type": kind,
                "job_id": jid,
                "round": 0,
                "hash": rng.randbytes(32),
                "size": 100,
            }
            if kind == "update":
                body |= {"samples": 10, "sig": rng.randbytes(65)}
        key = rng.choice([*body.keys(), "extra"])
        if key in ("v", "type") or rng.random() < 0.15:
            body.pop(rng.choice([k for k in body if k not in ("v", "type")]))
        else:
            body[key] = rng.choice(_ODD)
        return "wrong_types", _pack(body)
    if k < 0.76:
        nest: Any = 1
        for _ in range(rng.randint(9, 40)):
            nest = [nest] if rng.random() < 0.5 else {"a": nest}
        return "too_deep", _pack({"v": V, "type": "job", "x": nest})
    if k < 0.80:
        n = rng.randint(4097, 20000)
        return "huge_container", _pack({"v": V, "type": "job", "x": list(range(n))})
    if k < 0.84:
        ext = msgpack.ExtType(rng.randint(0, 127), rng.randbytes(4))
        return "ext_or_int_key", rng.choice(
            [_pack({"v": V, "type": "job", "e": ext}), _pack({"v": V, "type": "job", 1: 2})]
        )
    if k < 0.97:
        bad = rng.choice(
            [
                rng.randbytes(rng.randint(1, 200)),
                spec + b"\0",
                spec[:-1],
                _pack({"name": "x"}),
                _pack({"name": "x", "model": "mlp", "dataset": "digits", "rounds": -1}),
            ]
        )
        return "bad_spec", _pack({"v": V, "type": "job", "job_id": rng.randbytes(32), "spec": bad})
    return "unregistered_job", _pack(
        {"v": V, "type": "job", "job_id": rng.randbytes(32), "spec": spec}
    )
