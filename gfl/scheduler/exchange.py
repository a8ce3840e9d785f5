"""The network as one job's `Exchange`, and the book of who holds which blob."""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from gfl.errors import GflError
from gfl.net.errors import BlobError
from gfl.scheduler import messages

if TYPE_CHECKING:
    from gfl.net.network import Network

log = logging.getLogger(__name__)

MAX_HINTS = 4096  # blobs whose announcers we remember (oldest forgotten first)
MAX_HEARD = 8192  # round messages kept per round (a round's shard statements: S x replicas)
HEARD_AHEAD = 4  # messages are kept for the round last asked about and this many after it
STATED_BACK = 2  # our statements are kept for this many rounds before that one, for askers
ASK_TIMEOUT_S = 10.0  # for an aggregator's answer (docs/protocol.md 8.4)
GATHER_QUIET_S = 0.05  # a statement of ours waits this long for the next one to go with it
GATHER_MAX_S = 0.5  # and no longer in all (docs/protocol.md 8.3)
BATCH_MASK_BYTES = 128 * 1024  # masks in one statements message (the envelope: 256 KiB)

MODEL_KEEPERS = 3  # contributors that announce a round's model (gossip and DHT)

Publish = Callable[[str, dict[str, Any]], Awaitable[None]]


def keeps_model(model_hash: bytes, me: str, contributors: Sequence[str]) -> bool:
    """Whether ``me`` is one of the `MODEL_KEEPERS` contributors that announce the model
    ``model_hash`` (docs/protocol.md 5.2): those first by sha256(model hash ‖ address), the
    same set on every node. Every contributor computes, stores and serves the model; N
    announcements and DHT provides of one hash would cost every node ~6 gossip copies of
    each, and the network a lookup plus ~20 streams each, for nothing a few do not give."""

    def rank(address: str) -> bytes:
        return hashlib.sha256(model_hash + bytes.fromhex(address.removeprefix("0x"))).digest()

    first = sorted({a.lower() for a in contributors}, key=rank)[:MODEL_KEEPERS]
    return me.lower() in first


class PeerBook:
    """Which peer is behind an Ethereum address, and which peers announced a blob: the
    providers to ask first for a blob, before any other connected peer."""

    def __init__(self, network: Network) -> None:
        self._network = network
        self._peer_of: dict[str, str] = {}  # eth address (lower case) -> peer id
        self._hints: OrderedDict[bytes, list[str]] = OrderedDict()  # blob -> announcers

    def saw(self, address: str | None, peer_id: str) -> None:
        """``address``'s node speaks as ``peer_id``."""
        if address:
            self._peer_of[address.lower()] = peer_id

    def announced(self, blob: bytes, peer_id: str) -> None:
        """``peer_id`` said it holds ``blob``."""
        peers = self._hints.setdefault(blob, [])
        self._hints.move_to_end(blob)
        if peer_id not in peers:
            peers.append(peer_id)
        while len(self._hints) > MAX_HINTS:
            self._hints.popitem(last=False)

    def peer_of(self, owner: str) -> str | None:
        """The peer id ``owner``'s node speaks as, if known."""
        key = owner.lower()
        if key in self._peer_of:
            return self._peer_of[key]
        for peer in self._network.peers():
            if peer.get("peer_id") and (peer.get("eth_address") or "").lower() == key:
                return str(peer["peer_id"])
        return None

    def providers(self, blob: bytes, owner: str | None) -> list[str]:
        """Peers to ask for ``blob``: its owner's node, its announcers, then everyone else."""
        first = self.peer_of(owner) if owner else None
        out: list[str] = [first] if first else []
        out += [p for p in self._hints.get(blob, []) if p not in out]
        out += [
            p["peer_id"]
            for p in self._network.peers()
            if p.get("peer_id") and p["peer_id"] not in out
        ]
        return out


def statement_batches(bodies: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """``bodies`` (shard statements) in batches for ``statements`` messages: one round each,
    at most `messages.MAX_BATCHED` statements and `BATCH_MASK_BYTES` of masks."""
    out: list[list[dict[str, Any]]] = []
    for r in sorted({b["round"] for b in bodies}):
        batch: list[dict[str, Any]] = []
        masks = 0
        for b in (b for b in bodies if b["round"] == r):
            if batch and (
                len(batch) == messages.MAX_BATCHED or masks + len(b["mask"]) > BATCH_MASK_BYTES
            ):
                out.append(batch)
                batch, masks = [], 0
            batch.append(b)
            masks += len(b["mask"])
        out.append(batch)
    return out


def answer_statements(
    exchange_of: Callable[[bytes], NetExchange | None],
) -> Callable[[dict[str, Any]], list[dict[str, Any]]]:
    """The answer to a member's ``statements?`` question (docs/protocol.md 5.4): our
    statements on the shards it names, from the exchange of its job (``exchange_of``: None
    for a job this node does not run)."""

    def answer(question: dict[str, Any]) -> list[dict[str, Any]]:
        exchange = exchange_of(question["job_id"])
        return [] if exchange is None else exchange.stated(question["round"], question["shards"])

    return answer


class NetExchange:
    """One job's blobs over the network: published blobs are stored, tagged with the job,
    announced on the job's topic and provided in the DHT (a task of the job's nursery, so
    it ends with the job); held blobs are stored and served only."""

    def __init__(
        self,
        network: Network,
        book: PeerBook,
        job_id: bytes,
        publish: Publish,
        nursery: trio.Nursery,
    ) -> None:
        self._network = network
        self._book = book
        self._job_id = job_id
        self._tag = job_id.hex()
        self._publish = publish
        self._nursery = nursery
        self._heard: dict[int, list[dict[str, Any]]] = {}  # round -> messages
        self._stated: dict[int, list[dict[str, Any]]] = {}  # round -> our shard statements
        self._unsent: list[dict[str, Any]] = []  # our statements gathering for one message
        self._more = trio.Event()  # set when a statement joins them
        self._floor = 0  # the round last asked about: older messages are of no use

    async def publish(
        self, kind: str, r: int, data: bytes, samples: int = 0, signature: bytes = b""
    ) -> bytes:
        blobs = self._network.blobs
        h: bytes = await trio.to_thread.run_sync(lambda: blobs.put(data, tag=self._tag))
        inline = kind == "update" and len(data) <= messages.INLINE_MAX
        msg = messages.blob_announcement(
            kind, self._job_id, r, h, len(data), samples, signature, data if inline else None
        )
        await self._publish(messages.round_topic(self._job_id), msg)
        if not inline:  # (who heard the announcement holds an inline blob: no DHT lookup)
            self._nursery.start_soon(self._provide, h)
        return h

    async def hold(self, data: bytes) -> bytes:
        """Store a blob and serve it, announced neither on gossip nor in the DHT: who
        fetches it asks us by name (an update's shards: its author, by the manifest; a
        reduced shard: the aggregators, by their statements; docs/protocol.md 5.2). A DHT
        provide costs a lookup and a stream to each of ~20 peers; a sharded round would
        make S + replicas · S / N of them per node."""
        blobs = self._network.blobs
        h: bytes = await trio.to_thread.run_sync(lambda: blobs.put(data, tag=self._tag))
        return h

    async def _provide(self, h: bytes) -> None:
        try:
            await self._network.provide(h)
        except GflError as exc:
            log.debug("DHT provide failed: %s", exc)

    async def fetch(self, blob: bytes, owner: str | None, max_size: int, timeout: float) -> bytes:
        data: bytes = await self._network.fetch_blob(
            blob,
            self._book.providers(blob, owner),
            max_size=max_size,
            timeout=timeout,
            tag=self._tag,
        )
        return data

    async def fetch_many(
        self, blobs: Sequence[bytes], owner: str, max_size: int, timeout: float
    ) -> dict[bytes, bytes]:
        pid = self._book.peer_of(owner)
        if pid is None:
            raise BlobError(f"the node of {owner} is not known yet")
        got: dict[bytes, bytes] = await self._network.fetch_blobs(
            blobs, pid, max_size=max_size, timeout=timeout, tag=self._tag
        )
        return got

    async def load_local(self, blob: bytes) -> bytes | None:
        # a read plus a sha256 of a multi-MB file: not on the trio thread
        data: bytes | None = await trio.to_thread.run_sync(self._network.blobs.get, blob)
        return data

    async def post(self, body: dict[str, Any]) -> None:
        """Gossip a round message; a shard statement goes with the others of ours posted
        with it (`GATHER_QUIET_S` apart, within `GATHER_MAX_S`), in one ``statements``
        message: an aggregator's shards are reduced together, and each message costs every
        node a check and ~6 copies."""
        self.hear(body)  # gossip does not bring our own messages back
        if body["type"] != "shard":
            await self._publish(messages.round_topic(self._job_id), body)
            return
        self._stated.setdefault(body["round"], []).append(body)
        self._unsent.append(body)
        self._more.set()
        if len(self._unsent) == 1:
            self._nursery.start_soon(self._gossip_statements)

    async def _gossip_statements(self) -> None:
        deadline = trio.current_time() + GATHER_MAX_S
        while trio.current_time() < deadline:
            self._more = trio.Event()
            with trio.move_on_at(min(deadline, trio.current_time() + GATHER_QUIET_S)):
                await self._more.wait()
            if not self._more.is_set():
                break
        bodies, self._unsent = self._unsent, []
        for batch in statement_batches(bodies):
            msg = batch[0] if len(batch) == 1 else messages.statements_message(batch)
            await self._publish(messages.round_topic(self._job_id), msg)

    def stated(self, r: int, shards: Sequence[int]) -> list[dict[str, Any]]:
        """Our statements on ``shards`` of round ``r``: the answer to a member that asks."""
        wanted = set(shards)
        return [b for b in self._stated.get(r, ()) if b["shard"] in wanted]

    async def ask(self, owner: str, r: int, shards: Sequence[int]) -> int:
        """Ask ``owner``'s node for its statements on ``shards`` of round ``r``, heard as if
        gossiped (`heard` returns them); how many came. Best effort: 0 when it cannot be
        asked or does not answer."""
        pid = self._book.peer_of(owner)
        if pid is None:
            return 0
        question = messages.statements_question(self._job_id, r, sorted(shards))
        try:
            answers = await self._network.ask(pid, question, ASK_TIMEOUT_S)
        except GflError as exc:
            log.debug("asking %s for statements failed: %s", owner[:10], exc)
            return 0
        wanted = set(shards)
        came = [
            b for b in answers
            if b["type"] == "shard" and b["job_id"] == self._job_id and b["round"] == r
            and b["shard"] in wanted
        ]  # fmt: skip
        for body in came:
            self.hear(body)
        return len(came)

    def hear(self, body: dict[str, Any]) -> None:
        """A round message from the job's topic (checked against its schema already); kept
        only for rounds near the one the runner works on, and only so many per round, so
        that no peer can fill this node's memory or crowd out the round at hand."""
        r = body["round"]
        if not self._floor <= r <= self._floor + HEARD_AHEAD:
            return
        kept = self._heard.setdefault(r, [])
        if len(kept) < MAX_HEARD and body not in kept:  # a statement is stated again
            kept.append(body)

    def heard(self, kind: str, r: int) -> list[dict[str, Any]]:
        if r > self._floor:
            self._floor = r
            self._heard = {n: v for n, v in self._heard.items() if n >= r}
            self._stated = {n: v for n, v in self._stated.items() if n >= r - STATED_BACK}
        return [m for m in self._heard.get(r, ()) if m["type"] == kind]
