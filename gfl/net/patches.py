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
signatures, survives any exception in ``push_msg``, and hands valid messages
straight to `gfl.net.network.Network` instead of the library's 32-deep
per-subscription queue that drops silently.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any

with warnings.catch_warnings():
    # `import libp2p` imports websockets.legacy, which warns on import.
    warnings.simplefilter("ignore", DeprecationWarning)
    import libp2p  # noqa: F401
    import libp2p.pubsub.pubsub as _pubsub_mod
    from libp2p.abc import INotifee
    from libp2p.pubsub import validators as _validators
    from libp2p.pubsub.pubsub import Pubsub

logger = logging.getLogger(__name__)

_original_signature_validator = _validators.signature_validator
_original_stream_handler = Pubsub.stream_handler
_applied = False


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


def apply() -> None:
    """Install the two fixes (idempotent)."""
    global _applied
    if _applied:
        return
    _pubsub_mod.signature_validator = _safe_signature_validator
    Pubsub.stream_handler = _guarded_stream_handler  # type: ignore[method-assign]
    _applied = True


def unapply() -> None:
    """Restore the library's behaviour (tests use it to show the crashes are real)."""
    global _applied
    _pubsub_mod.signature_validator = _original_signature_validator
    Pubsub.stream_handler = _original_stream_handler  # type: ignore[method-assign]
    _applied = False


class GflPubsub(Pubsub):
    """Pubsub that counts bad signatures and delivers to `Network` without silent drops."""

    gfl_network: Any = None

    async def push_msg(self, msg_forwarder: Any, msg: Any) -> None:
        net = self.gfl_network
        try:
            if (
                self.strict_signing
                and msg_forwarder != self.my_id
                and not self._is_msg_seen(msg)
                and not _safe_signature_validator(msg)
            ):
                if net is not None:
                    net._bad_signature(msg_forwarder, msg)
                return
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
