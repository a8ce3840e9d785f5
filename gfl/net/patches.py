"""Narrow fixes for py-libp2p 0.8.1, applied once when `gfl.net` is imported.

Two paths let a single malformed message from a remote peer shut a stock node
down, because an exception escapes a task of the pubsub service and the service
manager then stops the whole service (and, through it, the host):

1. **Forged signature key.** ``pubsub.validators.signature_validator`` re-raises
   when ``msg.key`` cannot be deserialized (a ``from`` peer id that does not
   embed its key, plus garbage in ``key``). It runs inside ``Pubsub.push_msg``,
   a service task. Fix: `_safe_signature_validator` returns False instead
   (the message is dropped), installed as ``libp2p.pubsub.pubsub.signature_validator``.
2. **Undecodable frame.** ``Pubsub.continuously_read_stream`` parses each frame
   with protobuf's ``ParseFromString``, which raises
   ``google.protobuf.message.DecodeError``; ``Pubsub.stream_handler`` only
   catches libp2p's own ``ParseError``. Fix: `_guarded_stream_handler` also
   catches any other exception from the read loop, resets that peer's stream
   and forgets the peer, as the library does for its own parse errors.

Besides these, `GflPubsub` (a subclass, not a patch) counts messages with bad
signatures, survives any exception in ``push_msg``, hands valid messages
straight to `gfl.net.network.Network` instead of the library's 32-deep
per-subscription queue that drops silently, and (10) tells a new peer the topics
we joined or left while its pubsub stream was being set up, which the library
loses (the peer never learns them, so no mesh with us forms on those topics).

**Transport tuning** (`tune_transport`, installed with the fixes when `gfl.net`
is imported; measured in bench/transfer.py, figures in bench/RESULTS.md). The
library has no settings for these:

3. **Yamux frame size.** ``yamux.MAX_MESSAGE_SIZE`` (64 KiB) caps the payload
   of each DATA frame, and every frame costs a pass through Yamux's Python
   receive loop, its locks and its eagerly formatted debug logs on both ends.
   A 64 KiB frame plus its 12-byte header is also 17 bytes over Noise's
   65,519-byte plaintext limit, so each frame went out as two Noise messages.
   We send frames of exactly four Noise messages (`YAMUX_FRAME_BYTES`, ~256 KiB),
   which any Yamux peer accepts: a frame only has to fit the receive window
   (256 KiB at the start, by the spec).
4. **Window updates on every read.** The receiver answers each read with a
   WINDOW_UPDATE frame: with ``PY_YAMUX_RELEASE_ON_READ`` at its default for
   every read, and without it still for most small reads (its "partial slack"
   branch), so each small gossip message costs a second frame back, on both
   ends. `_window_update` returns credit once `YAMUX_CREDIT_BATCH` (16 KiB) has
   been read: dozens of gossip messages, or each read of a bulk transfer. Not
   go-yamux's half window: the library's sender polls every 10 ms once its
   window is empty, and its window auto-tuning grows only on frequent updates,
   so with credit that late a 50 MiB transfer took 2-4x longer (measured). An
   explicit ``PY_YAMUX_RELEASE_ON_READ`` in the environment still returns credit
   on every read (read once, when the tuning is installed). The window size
   itself is left alone: the library auto-tunes it up to 16 MiB.
5. **Noise reads of two bytes.** ``NoisePacketReadWriter.read_msg`` reads each
   message's 2-byte length and then its body with separate socket reads.
   `_read_noise_msg` reads ahead up to `NOISE_READ_AHEAD` bytes into a buffer
   kept on the raw connection itself (the handshake's and the transport's
   readers are two objects over one connection, so bytes read ahead during the
   handshake are not lost) and cuts messages out of it.
6. **One send per Noise message.** ``BaseNoiseMsgReadWriter.write_msg`` splits a
   write larger than one Noise message and sends each piece with its own
   socket write; `_write_noise_msg` encrypts the pieces in order and sends them
   with one write. The bytes on the wire are the same.
7. **Zero-window waits poll.** A ``YamuxStream.write`` out of send window polls
   it every 10 ms, so each time the reader's credit arrives the writer sleeps on
   until its next poll: a 1 MiB blob (four frames against the 256 KiB starting
   window) took 3x as long as with a wake-up. `_yamux_write` is the library's
   write with the same frames whose wait ends when a WINDOW_UPDATE raises
   ``send_window`` (a property whose setter wakes the writer), still polling
   for the stream closing, and still failing after 5 s without credit.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import struct
import time
import warnings
import weakref
from collections import OrderedDict
from typing import Any

import trio

with warnings.catch_warnings():
    # `import libp2p` imports websockets.legacy, which warns on import.
    warnings.simplefilter("ignore", DeprecationWarning)
    import libp2p  # noqa: F401
    import libp2p.pubsub.gossipsub as _gossipsub_mod
    import libp2p.pubsub.pubsub as _pubsub_mod
    from libp2p.abc import INotifee
    from libp2p.io.exceptions import IncompleteReadError
    from libp2p.pubsub import validators as _validators
    from libp2p.pubsub.pb import rpc_pb2
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.security.noise import io as _noise_io
    from libp2p.stream_muxer.exceptions import MuxedStreamError
    from libp2p.stream_muxer.yamux import yamux as _yamux

logger = logging.getLogger(__name__)

_original_signature_validator = _validators.signature_validator
_original_stream_handler = Pubsub.stream_handler
_original_yamux_frame = _yamux.MAX_MESSAGE_SIZE
_original_window_update = _yamux.YamuxStream._auto_tune_and_send_window_update
_original_noise_read = _noise_io.NoisePacketReadWriter.read_msg
_original_noise_write = _noise_io.BaseNoiseMsgReadWriter.write_msg
_original_yamux_write = _yamux.YamuxStream.write
_applied = False

# A Yamux DATA frame (12-byte header + payload) that fills exactly four Noise messages.
YAMUX_FRAME_BYTES = 4 * _noise_io.MAX_PLAINTEXT_LENGTH
NOISE_READ_AHEAD = 256 * 1024
# Yamux credit is returned once this much has been read (or half the window, if less).
YAMUX_CREDIT_BATCH = 16 * 1024
_NOISE_LEN = _noise_io.SIZE_NOISE_MESSAGE_LEN
_READ_AHEAD_ATTR = "_gfl_read_ahead"


def _safe_signature_validator(msg: Any) -> bool:
    try:
        return bool(_original_signature_validator(msg))
    except Exception as exc:
        logger.debug("rejecting a pubsub message with an unusable key: %s", exc)
        return False


async def _guarded_stream_handler(self: Pubsub, stream: Any) -> None:
    try:
        await _original_stream_handler(self, stream)
    except Exception as exc:
        peer_id = stream.muxed_conn.peer_id
        logger.info("malformed pubsub frame from %s (%s); dropping its stream", peer_id, exc)
        net = getattr(self, "gfl_network", None)
        if net is not None:
            net._drop("malformed_frame", peer_id=peer_id.to_base58(), error=type(exc).__name__)
        with contextlib.suppress(Exception):
            await stream.reset()
        self._handle_dead_peer(peer_id)


_release_on_read = False  # set by `tune_transport` from the environment


async def _window_update(self: Any, *, bytes_read: int = 0) -> None:
    """``YamuxStream._auto_tune_and_send_window_update`` returning credit in bulk (4)."""
    increment = 0
    async with self.window_lock:
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        due = self.target_recv_window - (self.recv_window + buffered)
        if due > 0 and (due >= min(self._grow_threshold(), YAMUX_CREDIT_BATCH) or _release_on_read):
            increment = self._grow_to_delta(buffered) + self._apply_autotune_epoch(buffered)
    if increment > 0:
        await self.send_window_update(increment, skip_lock=True)


_WINDOW_ATTR, _WAITER_ATTR = "_gfl_send_window", "_gfl_window_waiter"
ZERO_WINDOW_POLL_S = 0.01  # the library's poll, still what notices a stream closing
ZERO_WINDOW_TIMEOUT_S = 5.0  # the library's: a reader stalled this long fails the write


def _get_send_window(self: Any) -> int:
    return self.__dict__.get(_WINDOW_ATTR, 0)


def _set_send_window(self: Any, value: int) -> None:
    """``YamuxStream.send_window``'s setter: credit arriving wakes a writer waiting for it."""
    self.__dict__[_WINDOW_ATTR] = value
    if value > 0:
        waiter = self.__dict__.pop(_WAITER_ATTR, None)
        if waiter is not None:
            waiter.set()


async def _yamux_write(self: Any, data: bytes) -> None:
    """``YamuxStream.write`` (7): the same frames, but a writer out of window waits for
    the WINDOW_UPDATE itself instead of polling every 10 ms."""
    total, sent = len(data), 0
    while sent < total:
        frame = None
        while frame is None:
            async with self.rw_lock.write_lock():
                if self.send_closed:
                    raise MuxedStreamError("Stream is closed for sending")
                async with self.window_lock:
                    if self.closed:
                        raise MuxedStreamError("Stream is closed")
                    if self.send_window > 0:
                        n = min(
                            self.send_window,
                            _yamux.MAX_MESSAGE_SIZE - _yamux.HEADER_SIZE,
                            total - sent,
                        )
                        self.send_window -= n
                        head = struct.pack(
                            _yamux.YAMUX_HEADER_FORMAT, 0, _yamux.TYPE_DATA, 0, self.stream_id, n
                        )
                        frame = head + data[sent : sent + n]
                    else:  # one event for every writer waiting on this stream
                        waiter = self.__dict__.get(_WAITER_ATTR) or trio.Event()
                        self.__dict__[_WAITER_ATTR] = waiter
            if frame is None:
                await _window_opened(self, waiter)
        await self.conn._write_frame(frame)
        sent += len(frame) - _yamux.HEADER_SIZE


async def _window_opened(stream: Any, waiter: trio.Event) -> None:
    with trio.move_on_after(ZERO_WINDOW_TIMEOUT_S) as scope:
        while not (stream.send_window > 0 or stream.closed):
            with trio.move_on_after(ZERO_WINDOW_POLL_S):
                await waiter.wait()
    if scope.cancelled_caught:
        raise MuxedStreamError(
            f"Timed out waiting for window update after {ZERO_WINDOW_TIMEOUT_S:.0f} seconds."
        )


async def _read_noise_msg(self: Any) -> bytes:
    conn = self.read_write_closer
    buf = getattr(conn, _READ_AHEAD_ATTR, None)
    if buf is None:
        buf = bytearray()
        try:
            setattr(conn, _READ_AHEAD_ATTR, buf)
        except AttributeError:  # a connection type that takes no attributes
            return await _original_noise_read(self)
    while len(buf) < _NOISE_LEN:
        await _read_ahead(conn, buf, _NOISE_LEN)
    end = _NOISE_LEN + int.from_bytes(buf[:_NOISE_LEN], "big")
    while len(buf) < end:
        await _read_ahead(conn, buf, end)
    with memoryview(buf) as view:
        msg = bytes(view[_NOISE_LEN:end])
    del buf[:end]
    return msg


async def _read_ahead(conn: Any, buf: bytearray, wanted: int) -> None:
    chunk = await conn.read(max(NOISE_READ_AHEAD, wanted - len(buf)))
    if not chunk:
        raise IncompleteReadError(
            f"connection closed with {len(buf)} of {wanted} bytes of a Noise message",
            expected_bytes=wanted,
            received_bytes=len(buf),
        )
    buf += chunk


async def _write_noise_msg(self: Any, msg: bytes, prefix_encoded: bool = False) -> None:
    step = _noise_io.MAX_PLAINTEXT_LENGTH
    if len(msg) <= step or prefix_encoded:
        return await _original_noise_write(self, msg, prefix_encoded)
    parts = []
    for off in range(0, len(msg), step):
        sealed = self.encrypt(bytes(msg[off : off + step]))
        parts.append(len(sealed).to_bytes(_NOISE_LEN, "big"))
        parts.append(sealed)
    await self.read_writer.read_write_closer.write(b"".join(parts))


def tune_transport() -> None:
    """Install the Yamux and Noise tuning (idempotent)."""
    global _release_on_read
    _release_on_read = "PY_YAMUX_RELEASE_ON_READ" in os.environ and _yamux._yamux_release_on_read()
    _yamux.MAX_MESSAGE_SIZE = YAMUX_FRAME_BYTES
    _yamux.YamuxStream._auto_tune_and_send_window_update = _window_update  # type: ignore[method-assign]
    _noise_io.NoisePacketReadWriter.read_msg = _read_noise_msg  # type: ignore[method-assign]
    _noise_io.BaseNoiseMsgReadWriter.write_msg = _write_noise_msg  # type: ignore[method-assign]
    _yamux.YamuxStream.send_window = property(_get_send_window, _set_send_window)  # type: ignore[assignment]
    _yamux.YamuxStream.write = _yamux_write  # type: ignore[method-assign]


def untune_transport() -> None:
    """Restore the library's defaults (bench/transfer.py measures both).

    Only for a process that has not opened a connection yet: a connection read
    with the tuning keeps bytes in its read-ahead buffer.
    """
    _yamux.MAX_MESSAGE_SIZE = _original_yamux_frame
    _yamux.YamuxStream._auto_tune_and_send_window_update = _original_window_update  # type: ignore[method-assign]
    _noise_io.NoisePacketReadWriter.read_msg = _original_noise_read  # type: ignore[method-assign]
    _noise_io.BaseNoiseMsgReadWriter.write_msg = _original_noise_write  # type: ignore[method-assign]
    if isinstance(_yamux.YamuxStream.__dict__.get("send_window"), property):
        del _yamux.YamuxStream.send_window
    _yamux.YamuxStream.write = _original_yamux_write  # type: ignore[method-assign]


def apply() -> None:
    """Install the two fixes (idempotent)."""
    global _applied
    if _applied:
        return
    _pubsub_mod.signature_validator = _safe_signature_validator
    Pubsub.stream_handler = _guarded_stream_handler  # type: ignore[method-assign]
    verify_once()
    _applied = True


def unapply() -> None:
    """Restore the library's behaviour (tests use it to show the crashes are real)."""
    global _applied
    unverify_once()
    _pubsub_mod.signature_validator = _original_signature_validator
    Pubsub.stream_handler = _original_stream_handler  # type: ignore[method-assign]
    _applied = False


# The topics in the hello that `Pubsub._handle_new_peer` (one task per new peer) built.
_hello_topics: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar(
    "gfl_hello_topics", default=None
)


class GflPubsub(Pubsub):
    """Pubsub that counts bad signatures and delivers to `Network` without silent drops.

    It also closes a race in ``Pubsub._handle_new_peer`` (10): the hello packet
    listing our topics is built, then written, and only then is the peer added to
    ``peers``. A topic we subscribe to (or leave) while that write is pending goes
    neither into the hello nor into the broadcast, which skips peers not yet in
    ``peers``: that peer never learns it, and no mesh with us forms on the topic.
    After the peer is added we send it whatever changed since the hello.
    """

    gfl_network: Any = None

    def get_hello_packet(self) -> Any:
        _hello_topics.set(frozenset(self.topic_ids))
        return super().get_hello_packet()

    async def _handle_new_peer(self, peer_id: Any) -> None:
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
        packet.senderRecord, _ = _pubsub_mod.env_to_send_in_RPC(self.host)
        if not queue.push(packet):
            for topic, on in changes:
                self._schedule_announce_retry(
                    peer_id, rpc_pb2.RPC.SubOpts(subscribe=on, topicid=topic)
                )

    async def push_msg(self, msg_forwarder: Any, msg: Any) -> None:
        net = self.gfl_network
        try:
            if self.strict_signing and msg_forwarder != self.my_id and not self._is_msg_seen(msg):
                if not _safe_signature_validator(msg):
                    if net is not None:
                        net._bad_signature(msg_forwarder, msg)
                    return
                _signature_verified(msg)  # the library checks it again next: skip that
            elif msg_forwarder == self.my_id:
                _signature_verified(msg)  # signed by `Pubsub.publish` an instant ago
            await super().push_msg(msg_forwarder, msg)
        except Exception as exc:
            logger.warning("error handling a pubsub message from %s: %s", msg_forwarder, exc)
            if net is not None:
                net._drop("error", peer_id=str(msg_forwarder), error=type(exc).__name__)

    def notify_subscriptions(self, publish_message: Any) -> None:
        if self.gfl_network is None:
            super().notify_subscriptions(publish_message)
        else:
            self.gfl_network._deliver(publish_message)


class PeerNotifee(INotifee):
    """Reports connections and disconnections to `Network` (called in the trio thread)."""

    def __init__(self, net: Any) -> None:
        self.net = net

    async def opened_stream(self, network: Any, stream: Any) -> None:
        pass

    async def closed_stream(self, network: Any, stream: Any) -> None:
        pass

    async def connected(self, network: Any, conn: Any) -> None:
        direction = getattr(conn, "_direction", None)
        name = getattr(direction, "name", str(direction)).lower() if direction else "unknown"
        self.net._peer_connected(conn.muxed_conn.peer_id, name)

    async def disconnected(self, network: Any, conn: Any) -> None:
        self.net._peer_disconnected(conn.muxed_conn.peer_id)

    async def listen(self, network: Any, multiaddr: Any) -> None:
        pass

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        pass


# ------------------------------------------------------------------------------------
# Per-message crypto done once (gossip CPU; bench/gossip.py, bench/RESULTS.md)
#
# With 16 nodes on few cores, gossip latency is set by the CPU all nodes spend per
# message. py-libp2p 0.8.1 repeats three checks whose inputs have not changed:
#
# 7. **The message signature, twice.** `GflPubsub.push_msg` verifies a new message's
#    signature (to count bad ones) and ``Pubsub.push_msg`` verifies it again at once.
#    It also verifies the signature of each message we publish, right after signing
#    it. `_signature_verified` marks the message object just verified (or signed);
#    the library's check (`_signature_validator_once`) passes that one object and
#    checks any other.
# 8. **The sender's signed peer record on every RPC.** Each pubsub RPC carries the
#    sender's signed peer record, and ``maybe_consume_signed_record`` verifies its
#    signature and stores it for every RPC received (twice for control RPCs): with
#    ~7 copies of each message arriving, that is ~7 ECDSA verifications per message
#    and node. `_consume_record_once` skips bytes identical to those this peer sent
#    last and that were accepted within `RECORD_RECHECK` seconds; any other record
#    takes the library's full path.
# 9. **Our own signed peer record on every RPC sent.** ``env_to_send_in_RPC`` rebuilds
#    the host's addresses (``get_addrs``, ~0.2 ms of multiaddr parsing) for each RPC to
#    see whether the record needs reissuing. `_own_record_reused` reuses its bytes
#    for `OWN_RECORD_REUSE` seconds.
# ------------------------------------------------------------------------------------

RECORD_RECHECK = 60.0
OWN_RECORD_REUSE = 1.0
MAX_RECORD_PEERS = 4096

_original_consume_record = _pubsub_mod.maybe_consume_signed_record
_original_own_record = _pubsub_mod.env_to_send_in_RPC
_verified_msg: Any = None
_peer_records: weakref.WeakKeyDictionary[Any, OrderedDict[Any, tuple[bytes, float]]] = (
    weakref.WeakKeyDictionary()
)
_own_records: weakref.WeakKeyDictionary[Any, tuple[float, bytes]] = weakref.WeakKeyDictionary()


def _signature_verified(msg: Any) -> None:
    global _verified_msg
    _verified_msg = msg


def _signature_validator_once(msg: Any) -> bool:
    """The library's signature check, except for the message object `GflPubsub.push_msg`
    verified just before (no await runs between the two checks)."""
    global _verified_msg
    if msg is _verified_msg:
        _verified_msg = None
        return True
    return _safe_signature_validator(msg)


def _consume_record_once(msg: Any, host: Any, peer_id: Any) -> bool:
    """``maybe_consume_signed_record`` that skips a record identical to one this peer
    sent and had accepted within `RECORD_RECHECK` seconds."""
    if peer_id is None or not msg.HasField("senderRecord"):
        return bool(_original_consume_record(msg, host, peer_id))
    record = msg.senderRecord
    now = time.monotonic()
    known = _peer_records.setdefault(host, OrderedDict())
    hit = known.get(peer_id)
    if hit is not None and hit[0] == record and hit[1] > now:
        return True
    ok = bool(_original_consume_record(msg, host, peer_id))
    if ok:
        known[peer_id] = (record, now + RECORD_RECHECK)
        known.move_to_end(peer_id)
        while len(known) > MAX_RECORD_PEERS:
            known.popitem(last=False)
    else:
        known.pop(peer_id, None)
    return ok


def _own_record_reused(host: Any) -> tuple[bytes, bool]:
    """``env_to_send_in_RPC`` whose result is reused for `OWN_RECORD_REUSE` seconds."""
    now = time.monotonic()
    hit = _own_records.get(host)
    if hit is not None and hit[0] > now:
        return hit[1], False
    envelope, created = _original_own_record(host)
    _own_records[host] = (now + OWN_RECORD_REUSE, envelope)
    return envelope, created


def verify_once() -> None:
    """Install 7-9: each signature and signed record on the gossip path is checked once
    (idempotent; `unverify_once` restores the library's functions)."""
    _pubsub_mod.signature_validator = _signature_validator_once
    for mod in (_pubsub_mod, _gossipsub_mod):
        mod.maybe_consume_signed_record = _consume_record_once  # type: ignore[attr-defined]
        mod.env_to_send_in_RPC = _own_record_reused  # type: ignore[attr-defined]


def unverify_once() -> None:
    """Restore the library's per-RPC checks (the signature check stays the safe one)."""
    _pubsub_mod.signature_validator = _safe_signature_validator
    for mod in (_pubsub_mod, _gossipsub_mod):
        mod.maybe_consume_signed_record = _original_consume_record  # type: ignore[attr-defined]
        mod.env_to_send_in_RPC = _original_own_record  # type: ignore[attr-defined]
    _peer_records.clear()
    _own_records.clear()
