"""The jobs this node runs now, one slot each (at most ``max_concurrent``; the rest queue).

Each job runs in a nursery of its own — its round gossip, the prefetch of the updates
announced there, its blob transfers and its `JobRunner` — so everything a job started ends
with it, and a leave stops it through its cancel scope. A job that fails keeps one sentence
saying why (`failures.reason`) and logs no traceback on stderr. Once a job ended here its
blobs are evicted after a while.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from gfl.content import MAX_BLOB_BYTES
from gfl.errors import GflError
from gfl.fl.shards import MAX_MANIFEST, manifest_hashes
from gfl.fl.spec import JobSpec
from gfl.scheduler import failures, history, messages
from gfl.scheduler.checkpoints import Checkpoints
from gfl.scheduler.exchange import NetExchange, PeerBook, answer_statements
from gfl.scheduler.ledger import ChainLedger
from gfl.scheduler.ports import JobRole, JobStatus
from gfl.scheduler.runner import WOKEN_POLL_S, ChainPlace, JobRunner

if TYPE_CHECKING:
    from gfl.chain.registry import Registry
    from gfl.net.gossip import GossipMessage
    from gfl.net.network import Network
    from gfl.node.events import EventBus
    from gfl.node.store import Store
    from gfl.scheduler.service import ServiceSettings
    from gfl.scheduler.sources import DataSources

log = logging.getLogger(__name__)

PREFETCH_LIMIT = 4
PREFETCH_TIMEOUT_S = 60.0

ChainCall = Callable[..., Awaitable[Any]]
Gossip = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass
class RunningJob:
    job_id: bytes
    spec: JobSpec
    ledger: ChainLedger
    runner: JobRunner | None = None  # built once the job's nursery and data exist
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)  # cancelled: it stops
    done: trio.Event = field(default_factory=trio.Event)

    def poke(self) -> None:
        if self.runner is not None:
            self.runner.poke()

    def hint(self) -> None:
        if self.runner is not None:
            self.runner.hint()


class JobSlots:
    """The running jobs by id; `start` one, cancel its ``scope`` to stop it."""

    def __init__(
        self,
        *,
        store: Store,
        network: Network,
        book: PeerBook,
        registry: Registry | None,
        chain_call: ChainCall,
        events: EventBus,
        sources: DataSources,
        settings: ServiceSettings,
        gossip: Gossip,
        on_free: Callable[[], None],
    ) -> None:
        self.store = store
        self.network = network
        self.book = book
        self.registry = registry
        self._call = chain_call
        self.events = events
        self.sources = sources
        self.settings = settings
        self._gossip = gossip
        self._on_free = on_free
        self.jobs: dict[bytes, RunningJob] = {}
        self.train_limiter = trio.CapacityLimiter(settings.policy.max_concurrent)
        self._prefetch = trio.CapacityLimiter(PREFETCH_LIMIT)
        network.answer(messages.STATEMENTS, answer_statements(self._exchange_of))

    def free(self) -> int:
        """Slots left: jobs that may start now."""
        return self.settings.policy.max_concurrent - len(self.jobs)

    def _exchange_of(self, job_id: bytes) -> NetExchange | None:
        """The running job's exchange, if it runs here."""
        running = self.jobs.get(job_id)
        exchange = running.runner.exchange if running and running.runner else None
        return exchange if isinstance(exchange, NetExchange) else None

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        self.events.publish(kind, data)
        if kind == "job.divergence" and data.get("job_id"):
            history.record_divergence(self.store, data)

    # -- a job's life ---------------------------------------------------------------------------

    def start(self, nursery: trio.Nursery, job_id: bytes, spec: JobSpec) -> None:
        """Run the job in ``nursery`` (the service's) until it ends, fails or is stopped."""
        if job_id in self.jobs or self.registry is None:
            return
        if spec.dataset not in self.sources:
            self.store.update_job(
                job_id.hex(), status=JobStatus.ERROR, error=f"no dataset {spec.dataset!r}"
            )
            return
        self.store.update_job(job_id.hex(), status=JobStatus.ACTIVE, role=JobRole.PARTICIPANT)
        ledger = ChainLedger(self.registry, job_id, self._call, allow=spec.allow_list)
        running = RunningJob(job_id, spec, ledger)
        self.jobs[job_id] = running
        nursery.start_soon(self._run, nursery, running)

    async def _run(self, service_nursery: trio.Nursery, running: RunningJob) -> None:
        job_id, hx = running.job_id, running.job_id.hex()
        topic = messages.round_topic(job_id)
        status = None  # stays so when the job's scope is cancelled (it was left or removed)
        try:
            with running.scope:
                status = await self._run_job(running, topic)
            if status is JobStatus.FINISHED and running.runner is not None:
                service_nursery.start_soon(self._watch_last_round, running.runner, hx)
        except BaseException as exc:  # one job's failure must not stop the node
            if failures.failure(exc) is None:
                raise  # cancelled: the node stops
            self.failed(hx, exc)
        finally:
            running.done.set()
            self.jobs.pop(job_id, None)
            self._on_free()
            service_nursery.start_soon(self.evict_blobs, hx)  # if it ended (not on shutdown)
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await self.network.unsubscribe(topic)
                except Exception as exc:  # the network may be closing
                    log.debug("unsubscribe %s: %s", topic, exc)

    async def _run_job(self, running: RunningJob, topic: str) -> JobStatus:
        assert self.registry is not None
        job_id, hx = running.job_id, running.job_id.hex()
        async with trio.open_nursery() as nursery:
            channel = await self.network.subscribe(topic, _round_validator(job_id))
            nursery.start_soon(self._round_messages, nursery, job_id, channel)
            running.runner = JobRunner(
                job_id=hx,
                spec=running.spec,
                ledger=running.ledger,
                exchange=NetExchange(self.network, self.book, job_id, self._gossip, nursery),
                data=await self.sources.load(running.spec.dataset),
                checkpoints=Checkpoints(self.settings.models_dir / hx),
                train_limiter=self.train_limiter,
                emit=self._emit,
                record=history.round_recorder(self.store, hx),
                place=ChainPlace(
                    self.registry.chain_id,
                    bytes.fromhex(self.registry.registry_address.removeprefix("0x")),
                ),
                device=self.settings.device,
                poll_s=WOKEN_POLL_S,  # chain events wake it
            )
            status = await running.runner.run()
            self.store.update_job(hx, status=status)
            nursery.cancel_scope.cancel()
        return status

    async def _watch_last_round(self, runner: JobRunner, hx: str) -> None:
        """A finished job's last round, until its vote deadline (late dissent is still
        evidence); its slot is free meanwhile. A failure costs only that evidence."""
        try:
            await runner.watch_last_round()
        except BaseException as exc:
            if failures.failure(exc) is None:
                raise  # cancelled: the node stops
            why = failures.reason(exc)
            log.info("job %s: its last round's late votes go unwatched: %s", hx[:10], why)

    def failed(self, hx: str, exc: BaseException) -> None:
        """A job stopped by an error: one sentence in its record, its event and the log (the
        traceback of an unexpected error goes to the log file only)."""
        why = failures.reason(exc)
        log.error("job %s failed: %s", hx[:10], why)
        leaf = failures.failure(exc)
        if leaf is not None and not isinstance(leaf, GflError):
            log.info("job %s: how it failed", hx[:10], exc_info=leaf)
        self.store.update_job(hx, status=JobStatus.ERROR, error=why)
        self.events.publish("job.error", {"job_id": hx, "error": why})

    async def evict_blobs(self, hx: str) -> None:
        """A job that ended here (finished, cancelled or failed): its blobs stay
        ``blob_keep_s`` after that for peers still finishing its last round, then they are
        evicted, all but its final model (which stays under the store's cap)."""
        if self.settings.archive:
            return
        keep_s = self.settings.blob_keep_s
        row = self.store.job(hx)
        if row is None or not JobStatus(row.status).ended:
            return
        await trio.sleep(min(keep_s, max(0.0, row.updated_at + keep_s - time.time())))
        row = self.store.job(hx)
        final = [bytes.fromhex(row.model_hash)] if row is not None and row.model_hash else []
        blobs = self.network.blobs
        n = await trio.to_thread.run_sync(lambda: blobs.evict(hx, keep=final))
        log.info("job %s ended: %d of its blobs evicted", hx[:10], n)
        self.events.publish("job.blobs_evicted", {"job_id": hx, "blobs": n})

    # -- round gossip: provider hints and prefetch ------------------------------------------------

    async def _round_messages(self, nursery: trio.Nursery, job_id: bytes, channel: Any) -> None:
        async with channel:
            async for msg in channel:
                p = msg.payload
                bodies = messages.batched_statements(p) if p["type"] == "statements" else [p]
                self.book.saw(msg.sender_address, msg.sender_peer_id)
                for body in bodies:
                    self.book.announced(body["hash"], msg.sender_peer_id)
                running = self.jobs.get(job_id)
                if running is not None:
                    runner = running.runner
                    if p["type"] in ("shard", "statements", "reveal") and runner is not None:
                        exchange = runner.exchange
                        if isinstance(exchange, NetExchange):
                            for body in bodies:
                                exchange.hear(body)
                    running.hint()
                    if p["type"] == "update":
                        # a job aggregated all-to-all in every round fetches shards too
                        whole = running.spec.aggregation == "all"
                        author = msg.sender_address if whole else None
                        nursery.start_soon(
                            self._prefetch_one, job_id, p["hash"], p["size"], author, p.get("data")
                        )

    async def _prefetch_one(
        self,
        job_id: bytes,
        h: bytes,
        size: int,
        author: str | None = None,
        data: bytes | None = None,
    ) -> None:
        """An announced update into the store (``data``: its bytes, when they came with the
        announcement, checked against ``h`` by the schema); with ``author``, when it is a
        sharded update's manifest, its shard frames too (a sharded round fetches them by
        need instead)."""
        if size > MAX_BLOB_BYTES:
            return
        async with self._prefetch:
            try:
                if data is not None:
                    blobs, tag = self.network.blobs, job_id.hex()
                    await trio.to_thread.run_sync(
                        lambda: blobs.put_verified([data], h, tag=tag, durable=False)
                    )
                wanted = [h]
                while wanted:
                    blob = wanted.pop(0)
                    if not self.network.blobs.has(blob):
                        await self.network.store_blob(
                            blob,
                            self.book.providers(blob, author),
                            max_size=size if blob == h else MAX_BLOB_BYTES,
                            timeout=PREFETCH_TIMEOUT_S,
                            tag=job_id.hex(),
                        )
                    if blob == h and author is not None and size <= MAX_MANIFEST:
                        manifest = await trio.to_thread.run_sync(self.network.blobs.get, h)
                        wanted += manifest_hashes(manifest) or [] if manifest else []
            except GflError as exc:
                log.debug("prefetch of %s failed: %s", h.hex()[:12], exc)


def _round_validator(job_id: bytes) -> Callable[[GossipMessage], bool]:
    """Round topics carry this job's update/model announcements, shard statements (alone
    or several in a message) and reveal sets only (others: dropped)."""

    def validate(msg: GossipMessage) -> bool:
        p = msg.payload
        kinds = ("update", "model", "shard", "statements", "reveal")
        return p.get("type") in kinds and p.get("job_id") == job_id

    return validate
