"""The signature and signed-record checks on the gossip path: safe, and each done once.

`gfl.net.pubsub` hands these to its subclasses of the library's Pubsub and
GossipSub in place of the library's functions (`gfl.net.rebind`); nothing here
changes the library itself.

**A forged key must not crash the node.** ``pubsub.validators.signature_validator``
raises when ``msg.key`` cannot be deserialized (a ``from`` peer id that does not
embed its key, plus garbage in ``key``). It runs inside ``Pubsub.push_msg``, a task
of the pubsub service, and the service manager then stops the whole service and,
through it, the host. `safe_signature_check` answers False instead.

With 16 nodes on few cores, gossip latency is set by the CPU all nodes spend per
message, and py-libp2p 0.8.1 repeats three checks whose inputs have not changed
(bench/gossip.py measures them):

- **The message signature, twice.** ``GflPubsub.push_msg`` verifies a new
  message's signature (to count bad ones) and the library's ``push_msg`` verifies
  it again at once; it also verifies each message we publish right after signing
  it. `mark_verified` marks the message object just verified (or signed);
  `signature_check_once` passes that one object and checks any other.
- **The sender's signed peer record on every RPC.** Each pubsub RPC carries the
  sender's signed peer record, and ``maybe_consume_signed_record`` verifies and
  stores it for every RPC received (twice for control RPCs): with ~7 copies of
  each message arriving, ~7 ECDSA verifications per message and node.
  `consume_record_once` skips bytes identical to those this peer sent last and
  that were accepted within `RECORD_RECHECK` seconds; any other record takes the
  library's full path.
- **Our own signed peer record on every RPC sent.** ``env_to_send_in_RPC``
  rebuilds the host's addresses (multiaddr parsing) for each RPC to see whether
  the record needs reissuing. `own_record_reused` reuses its bytes for
  `OWN_RECORD_REUSE` seconds.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import OrderedDict
from typing import Any

from libp2p.peer.peerstore import env_to_send_in_RPC
from libp2p.pubsub.utils import maybe_consume_signed_record
from libp2p.pubsub.validators import signature_validator

logger = logging.getLogger(__name__)

RECORD_RECHECK = 60.0
OWN_RECORD_REUSE = 1.0
MAX_RECORD_PEERS = 4096

# The library's checks, looked up here at each call (tests count the calls).
library_signature_check = signature_validator
library_consume_record = maybe_consume_signed_record
library_own_record = env_to_send_in_RPC

# The message object verified last; trio runs one task at a time and no await
# separates the mark from the library's check, so one slot is enough.
_verified: Any = None
_peer_records: weakref.WeakKeyDictionary[Any, OrderedDict[Any, tuple[bytes, float]]] = (
    weakref.WeakKeyDictionary()
)
_own_records: weakref.WeakKeyDictionary[Any, tuple[float, bytes]] = weakref.WeakKeyDictionary()


def safe_signature_check(msg: Any) -> bool:
    """The library's signature check, False (not an exception) for an unusable key."""
    try:
        return bool(library_signature_check(msg))
    except Exception as exc:
        logger.debug("rejecting a pubsub message with an unusable key: %s", exc)
        return False


def mark_verified(msg: Any) -> None:
    """``msg`` (this object) was just verified or signed: `signature_check_once` passes it."""
    global _verified
    _verified = msg


def signature_check_once(msg: Any) -> bool:
    """`safe_signature_check`, except for the message object `mark_verified` named last."""
    global _verified
    if msg is _verified:
        _verified = None
        return True
    return safe_signature_check(msg)


def consume_record_once(msg: Any, host: Any, peer_id: Any) -> bool:
    """``maybe_consume_signed_record`` that skips a record identical to one this peer
    sent and had accepted within `RECORD_RECHECK` seconds."""
    if peer_id is None or not msg.HasField("senderRecord"):
        return bool(library_consume_record(msg, host, peer_id))
    record = msg.senderRecord
    now = time.monotonic()
    known = _peer_records.setdefault(host, OrderedDict())
    hit = known.get(peer_id)
    if hit is not None and hit[0] == record and hit[1] > now:
        return True
    ok = bool(library_consume_record(msg, host, peer_id))
    if ok:
        known[peer_id] = (record, now + RECORD_RECHECK)
        known.move_to_end(peer_id)
        while len(known) > MAX_RECORD_PEERS:
            known.popitem(last=False)
    else:
        known.pop(peer_id, None)
    return ok


def own_record_reused(host: Any) -> tuple[bytes, bool]:
    """``env_to_send_in_RPC`` whose result is reused for `OWN_RECORD_REUSE` seconds."""
    now = time.monotonic()
    hit = _own_records.get(host)
    if hit is not None and hit[0] > now:
        return hit[1], False
    envelope, created = library_own_record(host)
    _own_records[host] = (now + OWN_RECORD_REUSE, envelope)
    return envelope, created
