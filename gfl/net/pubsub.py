"""Gossip: py-libp2p's Pubsub and GossipSub made safe and lean, and GFL's topics on top.

`GflPubsub` and `GflGossipSub` are the library's classes with:

- **no crash from one frame.** ``Pubsub.continuously_read_stream`` parses each
  frame with protobuf's ``ParseFromString``, which raises ``DecodeError``;
  ``Pubsub.stream_handler`` only catches libp2p's own ``ParseError``, so the
  exception escapes the service task and the service manager stops pubsub and,
  through it, the host. `GflPubsub.stream_handler` also catches any other
  exception from the read loop, resets that peer's stream and forgets the peer,
  as the library does for its own parse errors. A forged signature key, the other
  such frame, is `gfl.net.signatures.safe_signature_check`'s.
- **each check once** (`gfl.net.signatures`): the library's methods that call its
  signature, peer-record and own-record functions, copied to read ours
  (`gfl.net.rebind`).
- **no silent drops.** Valid messages go straight to `Gossip` (bad signatures and
  errors counted) instead of the library's 32-deep per-subscription queue that
  drops silently.
- **no lost subscription.** ``Pubsub._handle_new_peer`` builds the hello packet
  listing our topics, writes it, and only then adds the peer to ``peers``. A topic
  we join (or leave) while that write is pending goes neither into the hello nor
  into the broadcast, which skips peers not yet in ``peers``: that peer never
  learns it, and no mesh with us forms on the topic. After the peer is added we
  send it whatever changed since the hello.

`Gossip` is what `gfl.net.network.Network` offers: subscribe with a validator,
publish, and delivery of each validated message to its topic's channel.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, Protocol

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub

from gfl.identity import address_from_peer_id
from gfl.net import signatures
from gfl.net.errors import NetError
from gfl.net.gossip import SUBSCRIBER_QUEUE, GossipMessage, RateLimiter
from gfl.net.messages import MAX_MESSAGE_BYTES, decode_message, encode_message
from gfl.net.peers import Peers
from gfl.net.rebind import F, with_globals
from gfl.net.traffic import Reporter

logger = logging.getLogger(__name__)

Validator = Callable[[GossipMessage], bool | Awaitable[bool]]

_ONCE = {
    "signature_validator": signatures.signature_check_once,
    "maybe_consume_signed_record": signatures.consume_record_once,
    "env_to_send_in_RPC": signatures.own_record_reused,
}


def _once(func: F, *names: str) -> F:
    """The library's ``func`` calling `gfl.net.signatures`' ``names`` instead of its own."""
    return with_globals(func, **{name: _ONCE[name] for name in names})


class Sink(Protocol):
    """Where `GflPubsub` hands what it receives (`Gossip`)."""

    def deliver(self, msg: Any) -> None: ...

    def drop(self, reason: str, **data: Any) -> None: ...


class _PubsubCheckingOnce(Pubsub):
    """The library's Pubsub with `gfl.net.signatures`' checks."""

    get_hello_packet = _once(Pubsub.get_hello_packet, "env_to_send_in_RPC")
    continuously_read_stream = _once(Pubsub.continuously_read_stream, "maybe_consume_signed_record")
    _build_announce_rpc = _once(Pubsub._build_announce_rpc, "env_to_send_in_RPC")
    push_msg = _once(Pubsub.push_msg, "signature_validator")


class GflGossipSub(GossipSub):
    """The library's GossipSub router with `gfl.net.signatures`' checks, backing off
    from the peers its heartbeat prunes."""

    send_recent_messages = _once(GossipSub.send_recent_messages, "env_to_send_in_RPC")
    handle_rpc = _once(GossipSub.handle_rpc, "maybe_consume_signed_record")
    publish = _once(GossipSub.publish, "env_to_send_in_RPC")
    handle_iwant = _once(GossipSub.handle_iwant, "env_to_send_in_RPC")
    emit_control_message = _once(GossipSub.emit_control_message, "env_to_send_in_RPC")

    def mesh_heartbeat(self) -> tuple[Any, Any]:
        """The library's mesh upkeep, plus a back-off on each peer it prunes for being
        over ``degree_high``, as gossipsub v1.1 has it: the library's PRUNE tells the
        peer to wait, but keeps no back-off of its own, so the next time the mesh falls
        under ``degree_low`` it grafts the same peer at once. That peer, still backing
        off, refuses and prunes it again, or counts the GRAFT as a flood and penalises
        it: ~4,400 refusals over a 32-node swarm in a 3-round job (bench/RESULTS.md)."""
        graft, prune = super().mesh_heartbeat()
        for peer, topics in prune.items():
            for topic in topics:
                self._add_back_off(peer, topic, False)
        return graft, prune


# The topics in the hello that `Pubsub._handle_new_peer` (one task per new peer) built.
_hello_topics: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar(
    "gfl_hello_topics", default=None
)


class GflPubsub(_PubsubCheckingOnce):
    """Pubsub that survives malformed frames, counts bad signatures, tells a new peer
    the topics it missed and hands valid messages to its `sink`."""

    sink: Sink | None = None

    async def stream_handler(self, stream: Any) -> None:
        try:
            await super().stream_handler(stream)
        except Exception as exc:
            peer_id = stream.muxed_conn.peer_id
            logger.info("malformed pubsub frame from %s (%s); dropping its stream", peer_id, exc)
            if self.sink is not None:
                self.sink.drop(
                    "malformed_frame", peer_id=peer_id.to_base58(), error=type(exc).__name__
                )
            with suppress(Exception):
                await stream.reset()
            self._handle_dead_peer(peer_id)

    async def push_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        try:
            if self.strict_signing and msg_forwarder != self.my_id and not self._is_msg_seen(msg):
                if not signatures.safe_signature_check(msg):
                    topic = msg.topicIDs[0] if msg.topicIDs else ""
                    if self.sink is not None:
                        self.sink.drop(
                            "bad_signature", topic=topic, peer_id=msg_forwarder.to_base58()
                        )
                    return
                signatures.mark_verified(msg)  # the library checks it again next: skip that
            elif msg_forwarder == self.my_id:
                signatures.mark_verified(msg)  # signed by `Pubsub.publish` an instant ago
            await super().push_msg(msg_forwarder, msg)
        except Exception as exc:
            logger.warning("error handling a pubsub message from %s: %s", msg_forwarder, exc)
            if self.sink is not None:
                self.sink.drop("error", peer_id=str(msg_forwarder), error=type(exc).__name__)

    def notify_subscriptions(self, publish_message: rpc_pb2.Message) -> None:
        if self.sink is None:
            super().notify_subscriptions(publish_message)
        else:
            self.sink.deliver(publish_message)

    def get_hello_packet(self) -> rpc_pb2.RPC:
        _hello_topics.set(frozenset(self.topic_ids))
        packet: rpc_pb2.RPC = super().get_hello_packet()
        return packet

    async def _handle_new_peer(self, peer_id: ID) -> None:
        _hello_topics.set(None)
        await super()._handle_new_peer(peer_id)
        told = _hello_topics.get()
        queue = self.peer_queues.get(peer_id)
        if told is None or queue is None:
            return
        now = frozenset(self.topic_ids)
        changes = [(t, True) for t in sorted(now - told)] + [(t, False) for t in sorted(told - now)]
        if not changes:
            return
        packet = rpc_pb2.RPC()
        packet.subscriptions.extend(
            rpc_pb2.RPC.SubOpts(subscribe=on, topicid=topic) for topic, on in changes
        )
        packet.senderRecord, _ = signatures.own_record_reused(self.host)
        if not queue.push(packet):
            for topic, on in changes:
                self._schedule_announce_retry(
                    peer_id, rpc_pb2.RPC.SubOpts(subscribe=on, topicid=topic)
                )


class Gossip:
    """GFL's topics on a `GflPubsub`: envelope checks, validators, delivery, counters."""

    def __init__(self, pubsub: GflPubsub, peers: Peers, report: Reporter) -> None:
        self._pubsub = pubsub
        self._peers = peers
        self._report = report
        self._my_id: ID = peers.my_id
        self._my_id_bytes = self._my_id.to_bytes()
        self._subs: dict[str, trio.MemorySendChannel[GossipMessage]] = {}
        self._validators: dict[str, Validator | None] = {}
        # the message a validator just accepted and its decoded form, for `deliver`
        self._accepted: tuple[Any, GossipMessage] | None = None
        self._limiter = RateLimiter()
        pubsub.sink = self

    @property
    def topics(self) -> list[str]:
        return sorted(self._subs)

    def mesh_size(self, topic: str) -> int:
        """How many peers we exchange ``topic``'s messages with directly."""
        return len(getattr(self._pubsub.router, "mesh", {}).get(topic, ()))

    async def subscribe(
        self, topic: str, validator: Validator | None = None
    ) -> trio.MemoryReceiveChannel[GossipMessage]:
        """``Network.subscribe``."""
        if topic in self._subs:
            raise NetError(f"already subscribed to {topic}")
        send, recv = trio.open_memory_channel[GossipMessage](SUBSCRIBER_QUEUE)
        self._subs[topic] = send
        self._validators[topic] = validator
        if validator is not None and inspect.iscoroutinefunction(validator):
            self._pubsub.set_topic_validator(topic, self._async_validator(topic), True)
        else:
            self._pubsub.set_topic_validator(topic, self._sync_validator(topic), False)
        await self._pubsub.subscribe(topic)
        return recv

    async def unsubscribe(self, topic: str) -> None:
        """``Network.unsubscribe``."""
        send = self._subs.pop(topic, None)
        self._validators.pop(topic, None)
        if send is None:
            return
        self._pubsub.remove_topic_validator(topic)
        await self._pubsub.unsubscribe(topic)
        await send.aclose()

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        """``Network.publish``."""
        data = encode_message(payload)
        await self._pubsub.publish(topic, data)
        self._report.traffic.msgs_out += 1
        self._report.traffic.bytes_out += len(data)

    def drop(self, reason: str, **data: Any) -> None:
        self._report.drop(reason, **data)

    def _check(self, topic: str, forwarder: ID, msg: Any) -> GossipMessage | bool:
        """Envelope checks shared by the sync and async validators: False means drop,
        True is our own message (`publish` encoded it with the same checks), else the
        decoded message for the topic's own validator.

        Runs once per message (the library checks its seen-cache first).
        """
        if forwarder == self._my_id:
            return True
        fwd = forwarder.to_base58()
        if not self._limiter.allow((fwd, topic)):
            self.drop("rate_limited", topic=topic, peer_id=fwd)
            return False
        if len(msg.data) > MAX_MESSAGE_BYTES:
            self.drop("oversize", topic=topic, peer_id=fwd, size=len(msg.data))
            return False
        if len(msg.topicIDs) != 1:
            self.drop("malformed", topic=topic, peer_id=fwd, error="several topics")
            return False
        try:
            gm = _to_gossip(topic, msg, decode_message(msg.data))
        except Exception as exc:  # MessageError, or a sender id without a secp256k1 key
            self.drop("malformed", topic=topic, peer_id=fwd, error=str(exc))
            return False
        return gm

    def _sync_validator(self, topic: str) -> Callable[[ID, Any], bool]:
        def validate(forwarder: ID, msg: Any) -> bool:
            gm = self._check(topic, forwarder, msg)
            if not isinstance(gm, GossipMessage):
                return gm
            user = self._validators.get(topic)
            try:
                ok = user is None or bool(user(gm))
            except Exception as exc:
                ok = _validator_raised(topic, exc)
            return self._verdict(msg, gm, ok)

        return validate

    def _async_validator(self, topic: str) -> Callable[[ID, Any], Awaitable[bool]]:
        async def validate(forwarder: ID, msg: Any) -> bool:
            gm = self._check(topic, forwarder, msg)
            if not isinstance(gm, GossipMessage):
                return gm
            user = self._validators.get(topic)
            try:
                ok = user is None or bool(await user(gm))  # type: ignore[misc]
            except Exception as exc:
                ok = _validator_raised(topic, exc)
            return self._verdict(msg, gm, ok)

        return validate

    def _verdict(self, msg: Any, gm: GossipMessage, ok: bool) -> bool:
        """Count a rejection, or keep the accepted message's decoded form for `deliver`
        (the library delivers the same message object right after validating it)."""
        if not ok:
            self.drop("rejected", topic=gm.topic, peer_id=gm.sender_peer_id)
            return False
        self._accepted = (msg, gm)
        return True

    def deliver(self, msg: Any) -> None:
        """Called by pubsub for each new valid message (replaces its 32-deep queue)."""
        accepted, self._accepted = self._accepted, None
        for topic in msg.topicIDs:
            send = self._subs.get(topic)
            if send is None or msg.from_id == self._my_id_bytes:
                continue
            if accepted is not None and accepted[0] is msg and accepted[1].topic == topic:
                gm = accepted[1]
            else:  # validated concurrently with another message (async validators)
                try:
                    gm = _to_gossip(topic, msg, decode_message(msg.data))
                except Exception:
                    continue
            self._report.traffic.msgs_in += 1
            self._report.traffic.bytes_in += len(msg.data)
            self._peers.msgs_in[gm.sender_peer_id] += 1
            try:
                send.send_nowait(gm)
            except trio.WouldBlock:
                self.drop("queue_full", topic=topic, peer_id=gm.sender_peer_id)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


def _validator_raised(topic: str, exc: Exception) -> bool:
    """A topic validator that raises rejects the message."""
    logger.warning("validator for %s raised: %s", topic, exc)
    return False


def _to_gossip(topic: str, msg: Any, payload: dict[str, Any]) -> GossipMessage:
    sender, address = _sender(bytes(msg.from_id))
    return GossipMessage(
        topic=topic,
        sender_peer_id=sender,
        sender_address=address,
        payload=payload,
        seqno=int.from_bytes(msg.seqno[:8], "big") if msg.seqno else 0,
    )


@functools.lru_cache(maxsize=1024)
def _sender(from_id: bytes) -> tuple[str, str]:
    """Peer id (base58) and eth address of a message's origin. Deriving them costs
    ~0.1 ms (base58, secp256k1 point decompression, keccak) on every message, while
    few peers originate messages; raises for ids without a secp256k1 key."""
    sender = ID(from_id).to_base58()
    return sender, address_from_peer_id(sender)
