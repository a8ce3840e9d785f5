"""The libp2p host of a GFL node: identity, listening, discovery, gossip and blobs.

`open_network` starts everything inside one trio nursery and tears it down in
the order py-libp2p 0.8.1 needs: our tasks first, then every peer is
disconnected *before* the pubsub, gossipsub and DHT services stop (leaving the
pubsub context with live peers crashes the library: "Nursery is closed to new
arrivals"), then the swarm.

Discovery: dial the bootstrap peers (with backoff, forever), then ask the DHT
for peers close to our own ID and dial those, so that every node finds all
others through one seed. Each connected peer is added to the DHT routing table.
With ``mdns=True`` peers announced on the local network are dialled too
(`gfl.net.mdns`). Past ``max_peers`` connected peers, new inbound connections
are closed (our own dials, bootstrap first, still go out) and counted.

Blobs: `Network.provide` announces a blob in the DHT; provider records expire
(48 h in py-libp2p, less elsewhere) and only reach the peers closest to the key
at that moment, so every ``reprovide_interval`` seconds the blobs we still hold
are announced again, and the ones evicted are forgotten.
"""

from __future__ import annotations

import functools
import inspect
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import trio

from gfl.identity import NodeIdentity, address_from_peer_id
from gfl.net import blob_protocol, patches
from gfl.net.blobs import BlobReader, BlobStore, BlobWriter
from gfl.net.errors import BlobError, MessageError, NetError
from gfl.net.gossip import SUBSCRIBER_QUEUE, GossipMessage, RateLimiter, Traffic
from gfl.net.mdns import SERVICE_TYPE as MDNS_SERVICE
from gfl.net.mdns import open_mdns
from gfl.net.messages import MAX_MESSAGE_BYTES, decode_message, encode_message

logger = logging.getLogger(__name__)

EventCallback = Callable[[str, dict], None]
Validator = Callable[[GossipMessage], bool | Awaitable[bool]]

DIAL_TIMEOUT = 10.0
MAX_PEERS = 64
DISCOVERY_INTERVAL = 15.0  # between DHT lookups while they find peers we lack
DISCOVERY_IDLE = 120.0  # the longest pause once lookups keep finding nobody new
MAX_CONCURRENT_SERVES = 8
SERVE_PIECE = 2 << 20  # a served blob is read from disk in pieces this big (8 MiB: slower)...
SERVE_READ_AHEAD = 2  # ...this many ahead of the send (a thread hop per piece costs ms)
REPROVIDE_INTERVAL = 600.0
MAX_CONCURRENT_REPROVIDES = 8
FOUND_DIAL_ATTEMPTS = 5  # dials of a peer found by mDNS before waiting to see it again
FOUND_DIAL_DEFER = 2.0
MAX_REMEMBERED_FOUND = 4096


class _Flight:
    """A blob fetch in progress; `pieces` is set once it succeeded."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.pieces: list[bytes] | None = None


class Network:
    """A running libp2p host; get one from `open_network`."""

    def __init__(
        self,
        identity: NodeIdentity,
        host: Any,
        pubsub: Any,
        dht: Any,
        blobs: BlobStore,
        nursery: trio.Nursery,
        on_event: EventCallback | None,
    ) -> None:
        from libp2p.peer.id import ID

        self._identity = identity
        self._host = host
        self._pubsub = pubsub
        self._dht = dht
        self._nursery = nursery
        self._on_event = on_event
        self._my_id: ID = host.get_id()
        self.peer_id: str = self._my_id.to_base58()
        self.eth_address: str = identity.eth_address
        self.blobs = blobs
        self.traffic = Traffic()
        self._peers: dict[str, dict[str, Any]] = {}
        self._peer_msgs: Counter[str] = Counter()
        self._subs: dict[str, trio.MemorySendChannel[GossipMessage]] = {}
        self._validators: dict[str, Validator | None] = {}
        # the message a validator just accepted and its decoded form, for _deliver
        self._accepted: tuple[Any, GossipMessage] | None = None
        self._limiter = RateLimiter()
        self._serve_slots = trio.Semaphore(MAX_CONCURRENT_SERVES)
        self._providing: set[bytes] = set()
        self._fetching: dict[bytes, _Flight] = {}  # blob hash -> the fetch in progress
        self._discover = True
        self._max_peers = MAX_PEERS
        self._found: set[str] = set()  # peers seen on mDNS
        self._dialing: set[str] = set()  # peers found by mDNS that a task is dialling
        self._peer_lost = trio.Event()  # brings the next DHT lookup forward

    # ---------------------------------------------------------------- events

    def _emit(self, kind: str, **data: Any) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(kind, data)
        except Exception:
            logger.exception("on_event callback failed for %s", kind)

    def _drop(self, reason: str, **data: Any) -> None:
        self.traffic.drops[reason] += 1
        logger.debug("dropped gossip (%s) %s", reason, data)
        self._emit("gossip_dropped", reason=reason, **data)

    def _start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """A task in the network's nursery, for work a library callback asks for; once the
        network is shutting down (its nursery closed) such work is moot and is dropped."""
        try:
            self._nursery.start_soon(fn, *args)
        except RuntimeError as exc:  # trio: "Nursery is closed to new arrivals"
            logger.debug("network closing, %s dropped: %s", getattr(fn, "__name__", fn), exc)

    def _peer_connected(self, peer: Any, direction: str) -> None:
        pid = peer.to_base58()
        if pid in self._peers:
            return
        if direction == "inbound" and len(self._peers) >= self._max_peers:
            # several handshakes can pass the gate in _gate_inbound at once: this is
            # the check that holds
            self._refuse_inbound(pid)
            self._start_soon(self._close_refused, peer)
            return
        try:
            addr = address_from_peer_id(pid)
        except Exception:
            addr = None
        self._peers[pid] = {
            "peer_id": pid,
            "eth_address": addr,
            "connected_since": time.time(),
            "direction": direction,
        }
        self._start_soon(self._add_to_routing_table, peer)
        self._emit("peer_connected", peer_id=pid, eth_address=addr, direction=direction)

    def _peer_disconnected(self, peer: Any) -> None:
        pid = peer.to_base58()
        if self._host.get_network().get_connections(peer):
            return
        if self._peers.pop(pid, None) is not None:
            self._peer_lost.set()
            self._emit("peer_disconnected", peer_id=pid)

    def _refuse_inbound(self, pid: str | None) -> None:
        self.traffic.connections_refused += 1
        logger.debug("inbound connection from %s refused: %d peers", pid, len(self._peers))
        self._emit("peer_refused", peer_id=pid, peers=len(self._peers), limit=self._max_peers)

    async def _close_refused(self, peer: Any) -> None:
        with trio.move_on_after(2.0):
            try:
                await self._host.disconnect(peer)
            except Exception as exc:
                logger.debug("closing refused %s: %s", peer, exc)

    def _gate_inbound(self) -> None:
        """Close inbound connections past ``max_peers`` before their handshake.

        py-libp2p 0.8.1 only limits all connections together (``max_connections``,
        which would also stop our own dials) and drops extra inbound ones silently.
        We wrap this host's ``Swarm._handle_inbound_connection`` (the listener's
        per-connection handler) so that a full node spends no Noise handshake on them.
        """
        swarm = self._host.get_network()
        handle = getattr(swarm, "_handle_inbound_connection", None)
        if handle is None:  # another py-libp2p: _peer_connected still enforces the limit
            logger.warning("cannot gate inbound connections before their handshake")
            return

        async def gated(read_write_closer: Any, maddr: Any) -> None:
            if len(self._peers) >= self._max_peers:
                self._refuse_inbound(None)
                with trio.move_on_after(1.0), suppress(Exception):
                    await read_write_closer.close()
                return
            await handle(read_write_closer, maddr)

        swarm._handle_inbound_connection = gated

    async def _add_to_routing_table(self, peer: Any) -> None:
        try:
            await self._dht.add_peer(peer, skip_server_mode_check=True)
        except Exception as exc:
            logger.debug("could not add %s to the DHT routing table: %s", peer, exc)

    # ------------------------------------------------------------- addresses

    def listen_addrs(self) -> list[str]:
        """Full multiaddrs (with ``/p2p/<peer id>``) that other nodes can dial."""
        out = []
        for a in self._host.get_addrs():
            s = str(a)
            if "/p2p/" not in s:
                s = f"{s}/p2p/{self.peer_id}"
            out.append(s)
        return out

    def peers(self) -> list[dict[str, Any]]:
        """Connected peers: id, eth address, addresses, since when, direction, messages."""
        store = self._host.get_peerstore()
        out = []
        for pid, info in list(self._peers.items()):
            try:
                addrs = [str(a) for a in store.addrs(_to_id(pid))]
            except Exception:
                addrs = []
            out.append({**info, "addrs": addrs, "msgs_in": self._peer_msgs[pid]})
        return out

    def stats(self) -> dict[str, Any]:
        """Peers, topics, traffic and discovery counters, drops by reason."""
        return {
            "peer_id": self.peer_id,
            "peers": len(self._peers),
            "max_peers": self._max_peers,
            "providing": len(self._providing),
            "topics": sorted(self._subs),
            "mesh": {t: len(self._mesh_peers(t)) for t in self._subs},
            "blobs": {
                "count": len(self.blobs),
                "bytes": self.blobs.total_bytes,
                "cap_bytes": self.blobs.cap_bytes,
                "evicted": self.blobs.evictions,  # past the cap, and ended jobs'
            },
            "dht_routing_table": self._dht.get_routing_table_size(),
            **self.traffic.as_dict(),
        }

    def _mesh_peers(self, topic: str) -> set[Any]:
        router = self._pubsub.router
        return set(getattr(router, "mesh", {}).get(topic, ()))

    # ------------------------------------------------------------------ dial

    async def connect(self, maddr: str) -> str:
        """Dial a full multiaddr (``.../p2p/<id>``); returns the peer id."""
        import multiaddr
        from libp2p.peer.peerinfo import info_from_p2p_addr

        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(maddr))
        except Exception as exc:
            raise NetError(
                f"not a dialable multiaddr with /p2p/<peer id>: {maddr} ({exc})"
            ) from None
        if info.peer_id == self._my_id:
            return self.peer_id
        await self._dial(info)
        return info.peer_id.to_base58()

    async def _dial(self, info: Any) -> None:
        swarm = self._host.get_network()
        # A failed dial blocks the peer for 60 s in the swarm; we run our own backoff.
        swarm.unblock_peer(info.peer_id)
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                await self._host.connect(info)
        except trio.TooSlowError:
            swarm.unblock_peer(info.peer_id)
            raise NetError(f"dialing {info.peer_id} timed out") from None
        except Exception as exc:
            swarm.unblock_peer(info.peer_id)
            raise NetError(f"could not connect to {info.peer_id}: {exc}") from None

    async def _keep_bootstrap(self, maddr: str) -> None:
        """Stay connected to one bootstrap peer: redial with exponential backoff."""
        import multiaddr
        from libp2p.peer.peerinfo import info_from_p2p_addr

        info = info_from_p2p_addr(multiaddr.Multiaddr(maddr))
        if info.peer_id == self._my_id:
            return
        delay = 0.5
        while True:
            if info.peer_id.to_base58() not in self._peers:
                try:
                    await self._dial(info)
                    delay = 0.5
                    if self._discover:
                        self._nursery.start_soon(self._discover_once)
                except NetError as exc:
                    logger.info("bootstrap %s unreachable (%s); retry in %.1fs", maddr, exc, delay)
                    await trio.sleep(delay * random.uniform(0.8, 1.2))
                    delay = min(delay * 2, 30.0)
                    continue
            await trio.sleep(2.0)

    async def _discover_once(self) -> int:
        """Ask the DHT for peers near our own id and dial the ones we lack; how many."""
        found: list[Any] = []
        try:
            with trio.move_on_after(DIAL_TIMEOUT):
                found = await self._dht.peer_routing.find_closest_peers_network(
                    self._my_id.to_bytes()
                )
        except Exception as exc:
            logger.debug("DHT lookup failed: %s", exc)
            return 0
        store = self._host.get_peerstore()
        from libp2p.peer.peerinfo import PeerInfo

        dialed = 0
        async with trio.open_nursery() as n:
            for peer in found or ():
                pid = peer.to_base58()
                if peer == self._my_id or pid in self._peers or len(self._peers) >= self._max_peers:
                    continue
                try:
                    addrs = store.addrs(peer)
                except Exception:
                    continue
                if addrs:
                    n.start_soon(self._dial_quietly, PeerInfo(peer, addrs))
                    dialed += 1
        return dialed

    async def _dial_quietly(self, info: Any) -> None:
        try:
            await self._dial(info)
        except NetError as exc:
            logger.debug("discovered peer unreachable: %s", exc)

    async def _discovery_loop(self) -> None:
        """DHT lookups: after 1, 3, 7 and 15 s, then every `DISCOVERY_INTERVAL` s while
        they find peers we lack, pausing twice as long after each that finds nobody new
        (up to `DISCOVERY_IDLE` s). Losing a peer cuts the pause back to the interval."""
        delay = 1.0
        while True:
            with trio.move_on_after(delay) as pause:
                await self._peer_lost.wait()
            if not pause.cancelled_caught:  # a peer was lost: start a shorter pause
                self._peer_lost = trio.Event()
                delay = min(delay, DISCOVERY_INTERVAL)
                continue
            if not self._peers:  # the bootstrap loop reconnects us
                delay = min(delay * 2, DISCOVERY_INTERVAL)
                continue
            dialed = 0 if len(self._peers) >= self._max_peers else await self._discover_once()
            longest = DISCOVERY_INTERVAL if dialed or delay < DISCOVERY_INTERVAL else DISCOVERY_IDLE
            delay = min(delay * 2, longest)

    async def _mdns_loop(self, found: trio.MemoryReceiveChannel[Any]) -> None:
        """Dial the peers that mDNS reports (`gfl.net.mdns` hands them over from zeroconf)."""
        async with found:
            async for info in found:
                self._mdns_found(info)

    def _mdns_found(self, info: Any) -> None:
        if info.peer_id == self._my_id:
            return
        pid = info.peer_id.to_base58()
        if pid not in self._found and len(self._found) < MAX_REMEMBERED_FOUND:
            self._found.add(pid)
            self.traffic.mdns_peers_found += 1
            self._emit("peer_discovered", peer_id=pid, via="mdns")
        self._host.get_peerstore().add_addrs(info.peer_id, info.addrs, 600)
        if pid in self._peers or pid in self._dialing or len(self._peers) >= self._max_peers:
            return
        self._dialing.add(pid)
        self._start_soon(self._dial_found, info)

    async def _dial_found(self, info: Any) -> None:
        """Dial a peer found on the local network, with backoff, a bounded number of times."""
        pid = info.peer_id.to_base58()
        delay = 0.5
        try:
            if pid < self.peer_id:
                # both ends hear each other: the smaller id dials first, the other only
                # if no connection came (two crossing dials make the library drop one)
                await trio.sleep(FOUND_DIAL_DEFER * random.uniform(0.8, 1.2))
            for _ in range(FOUND_DIAL_ATTEMPTS):
                if pid in self._peers or len(self._peers) >= self._max_peers:
                    return
                try:
                    await self._dial(info)
                    return
                except NetError as exc:
                    logger.debug("peer %s found by mDNS unreachable: %s", pid, exc)
                await trio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, 30.0)
        finally:
            self._dialing.discard(pid)

    # ---------------------------------------------------------------- gossip

    async def subscribe(
        self, topic: str, validator: Validator | None = None
    ) -> trio.MemoryReceiveChannel[GossipMessage]:
        """Join ``topic``; validated messages from other nodes arrive on the returned channel.

        ``validator`` sees each decoded message before it is delivered or forwarded;
        returning False drops it (counted as "rejected"). Our own messages are not
        delivered back to us.
        """
        if topic in self._subs:
            raise NetError(f"already subscribed to {topic}")
        send, recv = trio.open_memory_channel[GossipMessage](SUBSCRIBER_QUEUE)
        self._subs[topic] = send
        self._validators[topic] = validator
        if validator is not None and inspect.iscoroutinefunction(validator):
            self._pubsub.set_topic_validator(topic, self._make_async_validator(topic), True)
        else:
            self._pubsub.set_topic_validator(topic, self._make_sync_validator(topic), False)
        await self._pubsub.subscribe(topic)
        return recv

    async def unsubscribe(self, topic: str) -> None:
        send = self._subs.pop(topic, None)
        self._validators.pop(topic, None)
        if send is None:
            return
        self._pubsub.remove_topic_validator(topic)
        await self._pubsub.unsubscribe(topic)
        await send.aclose()

    async def publish(self, topic: str, payload: dict) -> None:
        """Sign and gossip ``payload``; raises `MessageError` if it breaks the envelope."""
        data = encode_message(payload)
        await self._pubsub.publish(topic, data)
        self.traffic.msgs_out += 1
        self.traffic.bytes_out += len(data)

    def _check(self, topic: str, forwarder: Any, msg: Any) -> GossipMessage | bool:
        """Envelope checks shared by the sync and async validators: False means drop,
        True is our own message (`publish` encoded it with the same checks), else the
        decoded message for the topic's own validator.

        Runs once per message (the library checks its seen-cache first).
        """
        if forwarder == self._my_id:
            return True
        fwd = forwarder.to_base58()
        if not self._limiter.allow((fwd, topic)):
            self._drop("rate_limited", topic=topic, peer_id=fwd)
            return False
        if len(msg.data) > MAX_MESSAGE_BYTES:
            self._drop("oversize", topic=topic, peer_id=fwd, size=len(msg.data))
            return False
        if len(msg.topicIDs) != 1:
            self._drop("malformed", topic=topic, peer_id=fwd, error="several topics")
            return False
        try:
            payload = decode_message(msg.data)
            gm = _to_gossip(topic, msg, payload)
        except (MessageError, Exception) as exc:
            self._drop("malformed", topic=topic, peer_id=fwd, error=str(exc))
            return False
        return gm

    def _make_sync_validator(self, topic: str) -> Callable[[Any, Any], bool]:
        def validate(forwarder: Any, msg: Any) -> bool:
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

    def _make_async_validator(self, topic: str) -> Callable[[Any, Any], Awaitable[bool]]:
        async def validate(forwarder: Any, msg: Any) -> bool:
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
        """Count a rejection, or hand the accepted message's decoded form to `_deliver`
        (the library delivers the same message object right after validating it)."""
        if not ok:
            self._drop("rejected", topic=gm.topic, peer_id=gm.sender_peer_id)
            return False
        self._accepted = (msg, gm)
        return True

    def _deliver(self, msg: Any) -> None:
        """Called by pubsub for each new valid message (replaces its 32-deep queue)."""
        accepted, self._accepted = self._accepted, None
        for topic in msg.topicIDs:
            send = self._subs.get(topic)
            if send is None or msg.from_id == self._my_id.to_bytes():
                continue
            if accepted is not None and accepted[0] is msg and accepted[1].topic == topic:
                gm = accepted[1]
            else:  # validated concurrently with another message (async validators)
                try:
                    gm = _to_gossip(topic, msg, decode_message(msg.data))
                except Exception:
                    continue
            self.traffic.msgs_in += 1
            self.traffic.bytes_in += len(msg.data)
            self._peer_msgs[gm.sender_peer_id] += 1
            try:
                send.send_nowait(gm)
            except trio.WouldBlock:
                self._drop("queue_full", topic=topic, peer_id=gm.sender_peer_id)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def _bad_signature(self, forwarder: Any, msg: Any) -> None:
        topic = msg.topicIDs[0] if msg.topicIDs else ""
        self._drop("bad_signature", topic=topic, peer_id=forwarder.to_base58())

    # ----------------------------------------------------------------- blobs

    async def provide(self, h: bytes) -> None:
        """Announce in the DHT that we hold blob ``h`` (we must have it); re-announced
        every ``reprovide_interval`` seconds while we hold it."""
        if not self.blobs.has(h):
            raise BlobError("cannot provide a blob this node does not hold")
        self._providing.add(bytes(h))
        await self._announce(h)

    async def _announce(self, h: bytes) -> bool:
        try:
            with trio.move_on_after(DIAL_TIMEOUT):
                return bool(await self._dht.provide(_dht_key(h)))
        except Exception as exc:
            logger.info("DHT provide failed (the blob is still served): %s", exc)
        return False

    async def _reprovide_loop(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            await self._reprovide_once()

    async def _reprovide_once(self) -> None:
        """Announce again every blob we provide and still hold; forget the evicted ones."""
        from libp2p.kad_dht.kad_dht import _encode_key

        limit = trio.CapacityLimiter(MAX_CONCURRENT_REPROVIDES)

        async def one(h: bytes) -> None:
            async with limit:
                if await self._announce(h):
                    self.traffic.reprovides += 1

        async with trio.open_nursery() as n:
            for h in list(self._providing):
                if self.blobs.has(h):
                    n.start_soon(one, h)
                else:
                    self._providing.discard(h)
                    # and stop the library's own 22 h republishing of it
                    self._dht.provider_store.providing_keys.discard(_encode_key(_dht_key(h)))

    async def fetch_blob(
        self,
        h: bytes,
        providers: Sequence[str] = (),
        *,
        max_size: int,
        timeout: float,
        tag: str | None = None,
    ) -> bytes:
        """Get blob ``h`` locally or from a provider; stores it and returns its bytes.

        Tries ``providers`` in order, then the DHT's providers. Raises `BlobError`
        when no provider delivered the right bytes within ``timeout`` seconds.
        ``tag`` (a job's) is added to the stored blob, for `BlobStore.evict`. A fetch
        of a blob that another task is fetching waits for that one instead of
        transferring the bytes twice.
        """
        pieces = await self._obtain(bytes(h), providers, max_size, timeout)
        await self._tag(h, tag)
        if len(pieces) <= 1:
            return pieces[0] if pieces else b""
        return await trio.to_thread.run_sync(b"".join, pieces)

    async def store_blob(
        self,
        h: bytes,
        providers: Sequence[str] = (),
        *,
        max_size: int,
        timeout: float,
        tag: str | None = None,
    ) -> int:
        """`fetch_blob` for a blob wanted in the store, not in memory (a prefetch); returns
        its size. A copy already stored is not read, and a fetched one is written as its
        pieces arrived, never joined into one object (a copy of the whole blob)."""
        size = self.blobs.size_of(h)
        if size is None:
            pieces = await self._obtain(bytes(h), providers, max_size, timeout)
            size = sum(len(p) for p in pieces)
        await self._tag(h, tag)
        return size

    async def _tag(self, h: bytes, tag: str | None) -> None:
        if tag is not None:
            await trio.to_thread.run_sync(self.blobs.tag, h, tag)

    async def _obtain(
        self, h: bytes, providers: Sequence[str], max_size: int, timeout: float
    ) -> list[bytes]:
        """The blob's pieces, from the store or one transfer (`_fetch`), or from the
        transfer of it already in progress."""
        errors: list[str] = []
        with trio.move_on_after(timeout):
            while (flight := self._fetching.get(h)) is not None:
                await flight.done.wait()
                if flight.pieces is not None:  # that fetch succeeded: its bytes are ours
                    if sum(len(p) for p in flight.pieces) > max_size:
                        raise BlobError(f"blob {h.hex()[:16]}… is over the {max_size}-byte limit")
                    return flight.pieces
            # none in progress (or the one we waited for failed): fetch it ourselves
            flight = self._fetching[h] = _Flight()
            try:
                flight.pieces = await self._fetch(h, providers, max_size, errors)
            finally:
                del self._fetching[h]
                flight.done.set()
            return flight.pieces
        why = "; ".join(errors) or "no provider answered"
        raise BlobError(
            f"could not fetch blob {h.hex()[:16]}…: timed out after {timeout:.0f}s ({why})"
        )

    async def _fetch(
        self, h: bytes, providers: Sequence[str], max_size: int, errors: list[str]
    ) -> list[bytes]:
        """`_obtain`'s one transfer (the caller owns the timeout); notes why each
        provider failed in ``errors``."""
        if self.blobs.has(h):  # (a thread hop is not free: only when it is there to read)
            local = await trio.to_thread.run_sync(self.blobs.get, h)
            if local is not None:
                return [local]
        tried = {self.peer_id}
        pieces = await self._fetch_from_first(providers, h, max_size, errors, tried)
        if pieces is None:
            pids = await self._dht_provider_ids(h)
            pieces = await self._fetch_from_first(pids, h, max_size, errors, tried)
        if pieces is None:
            why = "; ".join(errors) or "no provider known"
            raise BlobError(f"could not fetch blob {h.hex()[:16]}…: {why}")
        return pieces

    async def _fetch_from_first(
        self, pids: Sequence[str], h: bytes, max_size: int, errors: list[str], tried: set[str]
    ) -> list[bytes] | None:
        """The first of ``pids`` not ``tried`` yet that delivers the blob (each is
        added to ``tried``); None if none did."""
        for pid in pids:
            if pid in tried:
                continue
            tried.add(pid)
            pieces = await self._fetch_from(pid, h, max_size, errors)
            if pieces is not None:
                return pieces
        return None

    async def _dht_provider_ids(self, h: bytes) -> list[str]:
        """The DHT's providers of ``h``, their addresses added to the peerstore."""
        infos: list[Any] = []
        try:
            with trio.move_on_after(DIAL_TIMEOUT):
                infos = list(await self._dht.find_providers(_dht_key(h)))
        except Exception as exc:
            logger.debug("DHT provider lookup failed: %s", exc)
        pids = []
        for info in infos:
            pid = info.peer_id.to_base58()
            if pid != self.peer_id:
                self._host.get_peerstore().add_addrs(info.peer_id, info.addrs, 600)
                pids.append(pid)
        return pids

    async def _fetch_from(
        self, pid: str, h: bytes, max_size: int, errors: list[str]
    ) -> list[bytes] | None:
        """One provider's transfer, stored as it arrives; None (and why in ``errors``)
        when the provider failed. A failure to store it here raises."""
        writer = await trio.to_thread.run_sync(self.blobs.writer, h)
        try:
            pieces = await self._transfer(pid, h, max_size, errors, writer)
            if writer.error is not None:  # our disk, not the provider: no point in another
                raise writer.error
            if pieces is not None:
                await trio.to_thread.run_sync(writer.commit)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(writer.discard)
        if pieces is None:
            return None
        self.traffic.blobs_fetched += 1
        self.traffic.blob_bytes_in += writer.size
        self._emit("blob_fetched", hash=bytes(h).hex(), peer_id=pid, size=writer.size)
        return pieces

    async def _transfer(
        self, pid: str, h: bytes, max_size: int, errors: list[str], writer: BlobWriter
    ) -> list[bytes] | None:
        """Request ``h`` from ``pid``; its pieces go to ``writer`` (written by a worker
        thread) while the rest arrives."""
        from libp2p.custom_types import TProtocol

        peer = _to_id(pid)
        stream = None
        try:
            if pid not in self._peers:
                from libp2p.peer.peerinfo import PeerInfo

                await self._dial(PeerInfo(peer, self._host.get_peerstore().addrs(peer)))
            stream = await self._host.new_stream(peer, [TProtocol(blob_protocol.PROTOCOL)])
            failure: Exception | None = None
            complete = False
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, writer.drain)
                try:
                    pieces = await blob_protocol.request_blob(
                        stream, h, max_size=max_size, on_piece=writer.feed
                    )
                    complete = True
                except Exception as exc:  # raised below, outside the nursery's group
                    failure = exc
                finally:  # also when cancelled: the nursery waits for the drain thread
                    writer.end(complete=complete)
            if failure is not None:
                raise failure
        except (BlobError, NetError) as exc:
            errors.append(f"{pid[-8:]}: {exc}")
            if "hash" in str(exc):
                self._emit("blob_refused", hash=bytes(h).hex(), peer_id=pid, reason="bad_hash")
            elif "declares" in str(exc):
                self._emit("blob_refused", hash=bytes(h).hex(), peer_id=pid, reason="oversize")
            if stream is not None:
                await blob_protocol.abort(stream)
            return None
        except trio.TooSlowError:
            errors.append(f"{pid[-8:]}: stalled")
            if stream is not None:
                await blob_protocol.abort(stream)
            return None
        except Exception as exc:  # the library raises many stream/muxer errors
            errors.append(f"{pid[-8:]}: {type(exc).__name__}: {exc}")
            if stream is not None:
                await blob_protocol.abort(stream)
            return None
        with trio.move_on_after(1.0):
            with suppress(Exception):
                await stream.close()
        return pieces

    async def _serve_blob(self, stream: Any) -> None:
        pid = stream.muxed_conn.peer_id.to_base58()
        try:
            h = await blob_protocol.read_request(stream)
            if self._serve_slots.value == 0:
                await blob_protocol.refuse(stream, busy=True)
                return
            async with self._serve_slots:
                reader = await trio.to_thread.run_sync(self.blobs.open_reader, h)
                if reader is None:
                    await blob_protocol.refuse(stream)
                    size = None
                else:
                    try:
                        await self._send_blob(stream, reader)
                    finally:
                        reader.close()
                    size = reader.size
            if size is not None:
                self.traffic.blobs_served += 1
                self.traffic.blob_bytes_out += size
                self._emit("blob_served", hash=h.hex(), peer_id=pid, size=size)
            with trio.move_on_after(2.0):
                await stream.close()
        except Exception as exc:
            logger.debug("serving a blob to %s failed: %s", pid, exc)
            await blob_protocol.abort(stream)

    async def _send_blob(self, stream: Any, reader: BlobReader) -> None:
        """Stream a stored blob: a worker thread reads the next pieces while the current
        one is sent, so a serve holds a few MiB, not the whole blob, and the first byte
        leaves before the file was read.

        A failed read ends the pieces early instead of cancelling the send (a write
        cancelled halfway would break the connection's framing); `respond` then
        raises for the missing bytes and the stream is reset. The requester checks
        the hash; the reader checks it too, the first time this process serves a copy
        it did not write itself, to delete a corrupt one (`BlobStore`).
        """
        send, recv = trio.open_memory_channel[bytes](SERVE_READ_AHEAD)

        async def read_pieces() -> None:
            async with send:
                left = reader.size
                while left > 0:
                    try:
                        piece = await trio.to_thread.run_sync(reader.read, min(SERVE_PIECE, left))
                    except OSError as exc:
                        logger.warning("reading a stored blob failed: %s", exc)
                        return
                    if not piece:
                        return
                    left -= len(piece)
                    await send.send(piece)

        async with trio.open_nursery() as n:
            n.start_soon(read_pieces)
            await blob_protocol.respond(stream, reader.size, recv)
        if not await trio.to_thread.run_sync(reader.intact):
            raise BlobError("the stored copy is corrupt; it was deleted")

    # -------------------------------------------------------------- shutdown

    async def _disconnect_all(self) -> None:
        for peer in list(self._host.get_network().connections.keys()):
            with trio.move_on_after(2.0):
                try:
                    await self._host.disconnect(peer)
                except Exception as exc:
                    logger.debug("disconnecting %s: %s", peer, exc)


def _to_id(pid: str) -> Any:
    from libp2p.peer.id import ID

    return ID.from_base58(pid)


def _dht_key(h: bytes) -> str:
    # a sha256 multihash in hex, the form KadDHT.provide/find_providers accept
    return "1220" + bytes(h).hex()


def _validator_raised(topic: str, exc: Exception) -> bool:
    """A topic validator that raises rejects the message."""
    logger.warning("validator for %s raised: %s", topic, exc)
    return False


def _to_gossip(topic: str, msg: Any, payload: dict) -> GossipMessage:
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
    from libp2p.peer.id import ID

    sender = ID(from_id).to_base58()
    return sender, address_from_peer_id(sender)


@asynccontextmanager
async def open_network(
    identity: NodeIdentity,
    *,
    listen: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
    bootstrap: Sequence[str] = (),
    mdns: bool = False,
    blob_dir: Path | None = None,
    blob_cap_bytes: int = 2 << 30,
    on_event: EventCallback | None = None,
    discover: bool = True,
    max_peers: int = MAX_PEERS,
    reprovide_interval: float = REPROVIDE_INTERVAL,
    mdns_service: str = MDNS_SERVICE,
) -> AsyncIterator[Network]:
    """Start a libp2p host for ``identity`` and yield its `Network`; stops it cleanly on exit.

    ``discover=False`` keeps to the bootstrap peers and explicit `Network.connect`
    calls (no DHT peer lookups): for fixed topologies in tests. ``mdns`` announces
    and finds peers on the local network (under ``mdns_service``: a private
    ``_p2p-NAME._udp.local.`` keeps separate networks apart). ``max_peers`` bounds
    the connected peers that inbound connections may reach; ``reprovide_interval``
    is how often held blobs are announced again in the DHT.
    """
    import tempfile

    import multiaddr
    from libp2p import new_host
    from libp2p.custom_types import TProtocol
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
    from libp2p.network.config import MAX_CONNECTIONS, ConnectionConfig
    from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
    from libp2p.tools.anyio_service import background_trio_service

    if max_peers < 1:
        raise NetError("max_peers must be at least 1")
    if reprovide_interval <= 0:
        raise NetError("reprovide_interval must be positive")
    try:
        maddrs = [multiaddr.Multiaddr(a) for a in listen]
    except Exception as exc:
        raise NetError(f"invalid listen address: {exc}") from None

    async with AsyncExitStack() as stack:
        if blob_dir is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="gfl-blobs-"))
            blob_dir = Path(tmp)
        blobs = BlobStore(Path(blob_dir), blob_cap_bytes)

        host = new_host(
            key_pair=identity.libp2p_keypair(),
            listen_addrs=maddrs,
            muxer_preference="YAMUX",
            # one connection per peer: with more, each dial waits a fixed 250 ms;
            # the library's total cap stays above ours (Network._gate_inbound)
            connection_config=ConnectionConfig(
                max_connections_per_peer=1,
                max_connections=max(MAX_CONNECTIONS, 2 * max_peers),
                high_watermark=max(MAX_CONNECTIONS, 2 * max_peers),
            ),
        )
        gossipsub = GossipSub(
            protocols=[PROTOCOL_ID_V11, PROTOCOL_ID],
            # D_high 8 (the library's 12): each node receives about as many copies
            # of a message as it has mesh peers; 16 processes on 2 cores need
            # about a quarter less CPU per message (bench/gossip.py, bench/RESULTS.md)
            degree=6,
            degree_low=4,
            degree_high=8,
            heartbeat_interval=1,
            # GFL rate-limits and counts itself (gossip.RateLimiter) instead of
            # the library's silent 10 msg/s drop; all test peers share 127.0.0.1,
            # which the IP-diversity (eclipse) rule would keep out of the mesh.
            spam_protection_enabled=False,
            eclipse_protection_enabled=False,
            # the library's "adaptive gossip" (not in the gossipsub spec) re-scores the
            # network every 30 s and raises D_low/D_high by up to 3/4 when it judges it
            # unhealthy: 30 s into a 16-node run meshes of 12-13 peers (copies per
            # message 9 instead of 5-6, CPU per message x2). The degrees above hold.
            adaptive_gossip_enabled=False,
        )
        pubsub = patches.GflPubsub(host, gossipsub, strict_signing=True)
        dht = KadDHT(host, DHTMode.SERVER)

        try:
            await stack.enter_async_context(host.run(maddrs))
        except Exception as exc:
            raise NetError(f"cannot listen on {', '.join(listen)}: {exc}") from None
        await stack.enter_async_context(background_trio_service(pubsub))
        await stack.enter_async_context(background_trio_service(gossipsub))
        await stack.enter_async_context(background_trio_service(dht))
        with trio.fail_after(10):
            await pubsub.wait_until_ready()
        nursery = await stack.enter_async_context(trio.open_nursery())
        net = Network(identity, host, pubsub, dht, blobs, nursery, on_event)
        net._discover = discover
        net._max_peers = max_peers
        net._gate_inbound()
        pubsub.gfl_network = net
        host.get_network().register_notifee(patches.PeerNotifee(net))
        host.set_stream_handler(TProtocol(blob_protocol.PROTOCOL), net._serve_blob)
        for b in bootstrap:
            nursery.start_soon(net._keep_bootstrap, b)
        if discover:
            nursery.start_soon(net._discovery_loop)
        nursery.start_soon(net._reprovide_loop, reprovide_interval)
        if mdns:
            found = await stack.enter_async_context(
                open_mdns(
                    net.peer_id, net.listen_addrs(), service_type=mdns_service, task_group=nursery
                )
            )
            nursery.start_soon(net._mdns_loop, found)
        try:
            yield net
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await net._disconnect_all()
