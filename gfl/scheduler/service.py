"""The job service: the Scheduler of one node.

It hears job announcements (checked by `Announcements`), accepts jobs per the node's policy
(`JoinPolicy`) or the operator's word (`join`, `leave`), queues them (`JobQueue`) and runs
one `JobRunner` per job, at most ``max_concurrent`` at once, starts fetching an update as
soon as its announcement arrives, wakes runners on chain events (`watch_chain`), and evicts
an ended job's blobs after a while. It is built from what it uses — the network, the chain
registry and its executor, the store, the event bus, the data sources — never from the node.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from gfl.chain.heads import ws_url
from gfl.content import MAX_BLOB_BYTES, content_hash
from gfl.errors import GflError
from gfl.fl.spec import JobSpec
from gfl.scheduler import audit, history, messages
from gfl.scheduler.announcements import Announcements
from gfl.scheduler.chain_watch import watch_chain
from gfl.scheduler.checks import model0_frame
from gfl.scheduler.exchange import PeerBook
from gfl.scheduler.ledger import ChainLedger
from gfl.scheduler.membership import Membership
from gfl.scheduler.policy import JoinPolicy, bond_refusal, chain_refusal
from gfl.scheduler.ports import JobRole, JobState, JobStatus
from gfl.scheduler.queue import JobQueue
from gfl.scheduler.registration import job_params
from gfl.scheduler.slots import JobSlots
from gfl.scheduler.sources import DataSources
from gfl.scheduler.views import JobNotFound, JobViews, verify_rows

if TYPE_CHECKING:
    from gfl.chain.records import ChainEvent
    from gfl.chain.registry import Registry
    from gfl.net.gossip import GossipMessage
    from gfl.net.network import Network
    from gfl.node.events import EventBus
    from gfl.node.store import JobRow, Store

log = logging.getLogger(__name__)

STOP_WAIT_S = 5.0  # a leave waits this long for the job's runner to stop
EXPORT_FETCH_S = 60.0  # an export waits this long for the blobs this node lacks
_CHAIN_STATUS = {2: JobStatus.FINISHED, 3: JobStatus.CANCELLED, 4: JobStatus.EXPIRED}

ChainCall = Callable[..., Awaitable[Any]]

__all__ = ["JobError", "JobNotFound", "JobRefused", "JobService", "ServiceSettings"]


class JobError(GflError):
    """A job request the node refuses (bad spec, unknown job, no such dataset, ...)."""


class JobRefused(JobError):
    """The node will not join or leave a job now; the message says why."""

    status = 409


@dataclass(frozen=True)
class ServiceSettings:
    """The parts of the node's config the job service reads."""

    policy: JoinPolicy
    device: str = "cpu"
    models_dir: Path = Path("models")
    blob_keep_s: float = 600.0
    archive: bool = False  # keep every blob of every job (no eviction)


class JobService:
    """Jobs on this node: publish, verify, join, run, report."""

    def __init__(
        self,
        *,
        store: Store,
        network: Network,
        registry: Registry | None,
        chain_call: ChainCall,
        events: EventBus,
        sources: DataSources,
        settings: ServiceSettings,
    ) -> None:
        self.store = store
        self.network = network
        self.registry = registry
        self._call = chain_call
        self.events = events
        self.sources = sources
        self.settings = settings
        self.address: str = registry.account if registry is not None else ""
        self.ready = False
        self.book = PeerBook(network)
        self.queue = JobQueue(store)
        self.slots = JobSlots(
            store=store,
            network=network,
            book=self.book,
            registry=registry,
            chain_call=chain_call,
            events=events,
            sources=sources,
            settings=settings,
            gossip=self._gossip,
            on_free=self.queue.poke,
        )
        self.running = self.slots.jobs  # job id -> its RunningJob, while it runs here
        self.views = JobViews(
            store, lambda hx: bytes.fromhex(hx) in self.running, self.queue.positions
        )
        self.announcements = (
            Announcements(registry, chain_call, store, events, self._gossip, self.address)
            if registry is not None
            else None
        )
        self.membership = (
            Membership(registry, chain_call, sources, settings.policy, self.address)
            if registry is not None
            else None
        )
        self._nursery: trio.Nursery | None = None

    # -- plumbing -------------------------------------------------------------------------------

    async def _gossip(self, topic: str, msg: dict[str, Any]) -> None:
        try:
            await self.network.publish(topic, msg)
        except GflError as exc:
            log.warning("gossip publish on %s failed: %s", topic, exc)

    # -- the service task -------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: hear announcements, watch the chain, run jobs."""
        async with trio.open_nursery() as nursery:
            if self.announcements is not None:
                channel = await self.network.subscribe(
                    messages.JOBS_TOPIC, self.announcements.validate
                )
                nursery.start_soon(self._job_announcements, channel)
                nursery.start_soon(self.announcements.repeat_own)
            if self.registry is not None:
                nursery.start_soon(
                    watch_chain,
                    self.registry,
                    self._call,
                    self._on_chain_events,
                    self._busy,
                    ws_url(self.registry.endpoint),
                )
            nursery.start_soon(self._warm_up)
            nursery.start_soon(self._record_peers)
            self._nursery = nursery
            held = set(self.network.blobs.tags())
            for row in self.store.jobs():
                if row.status == JobStatus.ACTIVE and row.role == JobRole.PARTICIPANT:
                    # it ran when the node stopped: it runs again first, as slots allow
                    if self.slots.free() > 0:
                        self._start(nursery, row)
                    else:
                        self.queue.put(row.job_id, at=row.created_at)
                elif JobStatus(row.status).ended and row.job_id in held:
                    nursery.start_soon(self.slots.evict_blobs, row.job_id)
            nursery.start_soon(self.queue.keep, self.slots.free, self._admit, self._start_queued)
            task_status.started()

    def _busy(self) -> bool:
        return bool(self.running)

    async def _record_peers(self) -> None:
        """Keep the peers we met in node.db (and their addresses for blob providers)."""
        sub = self.events.subscription(0)
        while (event := await sub.get()) is not None:
            if event.type != "peer_connected":
                continue
            pid, addr = event.data.get("peer_id"), event.data.get("eth_address")
            if not isinstance(pid, str):
                continue
            self.book.saw(addr, pid)
            try:
                self.store.saw_peer(pid, addr, [])
            except GflError as exc:
                log.warning("cannot record peer %s: %s", pid, exc)

    async def _warm_up(self) -> None:
        """Import torch, touch the training path once and load the configured data, off the
        critical path: the first round then costs what every later round costs."""
        t0 = trio.current_time()
        for name in self.sources.names():
            try:
                await self.sources.load(name)
            except GflError as exc:
                log.warning("dataset %s cannot be loaded: %s", name, exc)
        await trio.to_thread.run_sync(_touch_training)
        self.ready = True
        log.info("warmed up in %.1fs", trio.current_time() - t0)

    # -- announcements --------------------------------------------------------------------------

    async def _job_announcements(self, channel: Any) -> None:
        async with channel:
            async for msg in channel:
                await self._on_job_announcement(msg)

    async def _on_job_announcement(self, msg: GossipMessage) -> None:
        assert self.announcements is not None
        job_id = msg.payload["job_id"]
        hx = job_id.hex()
        self.book.saw(msg.sender_address, msg.sender_peer_id)
        if self.store.job(hx) is not None:
            return  # known already (re-announcement)
        checked = await self.announcements.verify(msg)
        if checked is None:
            return
        spec, rec = checked
        if int(rec.status) != 1:
            self.announcements.reject("not_active", job_id=hx)
            return
        join, why = self.settings.policy.decide(spec, rec.owner, self.address, self.sources.names())
        if join and self.membership is not None:
            unfit = await self.membership.fit_refusal(spec)
            join, why = unfit is None, unfit or why
        self.store.add_job(
            hx,
            spec.to_bytes(),
            spec.spec_hash.hex(),
            rec.owner,
            spec.name,
            spec.rounds,
            JobStatus.QUEUED if join else JobStatus.ACTIVE,
            JobRole.PARTICIPANT if join else JobRole.OBSERVER,
        )
        self.events.publish(
            "job.discovered",
            {"job_id": hx, "name": spec.name, "owner": rec.owner, "joining": join, "why": why},
        )
        if join:
            self.queue.poke()

    # -- chain events -----------------------------------------------------------------------------

    def _on_chain_events(self, events: Sequence[ChainEvent]) -> None:
        by_job: dict[bytes, list[ChainEvent]] = {}
        for ev in events:
            by_job.setdefault(ev.job_id, []).append(ev)
            history.record_chain_event(self.store, ev, running=ev.job_id in self.running)
        for job_id, evs in by_job.items():
            running = self.running.get(job_id)
            if running is not None:
                running.ledger.feed(evs)
                running.poke()

    # -- the queue --------------------------------------------------------------------------------

    def _start_queued(self, row: JobRow) -> None:
        if self._nursery is not None:
            self._start(self._nursery, row)

    def _start(self, nursery: trio.Nursery, row: JobRow) -> None:
        """Run a recorded job, unless this node no longer reads its spec (one recorded under
        another spec version, docs/protocol.md 2.1: its arithmetic is not this node's): that
        job is marked failed with the reason, and the node goes on."""
        try:
            spec = JobSpec.from_bytes(row.spec)
        except GflError as exc:
            self.slots.failed(row.job_id, exc)
            return
        self.slots.start(nursery, bytes.fromhex(row.job_id), spec)

    async def _drain(self) -> None:
        """Start what the queue's head may start now (publish and join answer with it)."""
        if self._nursery is not None:
            await self.queue.drain(self.slots.free, self._admit, self._start_queued)

    async def _admit(self, row: JobRow) -> bool:
        """May the queue start this job now? One that ended on chain, or can no longer be
        joined, leaves the queue with the reason; an unreadable chain keeps it waiting."""
        if self.membership is None:
            return False
        try:
            rec, member, balance = await self.membership.chain_view(bytes.fromhex(row.job_id))
        except GflError as exc:
            log.warning("queued job %s waits for the chain: %s", row.job_id[:10], exc)
            return False
        why = chain_refusal(rec, member, balance, self.address)
        if why is None:
            return True
        status = JobStatus.ERROR if rec is None else _CHAIN_STATUS.get(int(rec.status))
        self.store.update_job(
            row.job_id,
            status=status or JobStatus.ACTIVE,
            role=JobRole.OBSERVER,
            error=why if status is JobStatus.ERROR else None,
        )
        log.info("job %s left the queue: %s", row.job_id[:10], why)
        self.events.publish("job.dequeued", {"job_id": row.job_id, "reason": why})
        return False

    # -- API operations ---------------------------------------------------------------------------

    def _registry(self) -> Registry:
        if self.registry is None:
            raise JobError("this node has no chain backend; cannot register jobs")
        return self.registry

    async def publish_job(
        self, spec: JobSpec, *, participate: bool = True, priority: int = 0
    ) -> dict[str, Any]:
        """Register `spec` on chain and announce it; unless told not to, this node takes part
        (queued like any job). Refused before any transaction when this node could not run
        the job itself, or could not take part in it."""
        chain = self._registry()
        # a private job builds its model here (torch, Opacus): not on the trio thread
        problems = await trio.to_thread.run_sync(spec.publish_problems)
        me = self.address
        if participate:
            why = self.settings.policy.refusal(spec, me, me, self.sources.names())
            if why is not None:
                problems.append(
                    f"{why}; to publish a job this node does not train: --no-participate"
                )
        if problems:
            raise JobError("; ".join(problems))
        data = (await self.sources.load(spec.dataset)).train if participate else None
        # M_0 is made once, here, and registered by hash: every node starts from these bytes
        frame = await trio.to_thread.run_sync(model0_frame, spec, data)
        if participate:
            why = bond_refusal(spec.bond_wei, await self._call(chain.balance), me)
            if why is not None:
                raise JobError(f"{why}, or publish with --no-participate")
        params = job_params(spec, spec.deadline_after(int(time.time())))
        job_id, _tx = await self._call(
            chain.register_job, secrets.token_bytes(32), spec.spec_hash, content_hash(frame), params
        )
        hx, spec_bytes = job_id.hex(), spec.to_bytes()
        blobs = self.network.blobs
        model0 = await trio.to_thread.run_sync(lambda: blobs.put(frame, tag=hx))
        if self._nursery is not None:
            self._nursery.start_soon(self._provide, model0)
        self.store.add_job(
            hx,
            spec_bytes,
            spec.spec_hash.hex(),
            me,
            spec.name,
            spec.rounds,
            JobStatus.QUEUED if participate else JobStatus.ACTIVE,
            JobRole.PARTICIPANT if participate else JobRole.OWNER,
            priority=priority,
        )
        await self._gossip(messages.JOBS_TOPIC, messages.job_announcement(job_id, spec_bytes))
        assert self.announcements is not None
        self.announcements.announce_soon(hx)
        self.events.publish("job.published", {"job_id": hx, "name": spec.name})
        if participate:
            await self._drain()
        return self.views.summary(hx)

    def _membership(self) -> Membership:
        if self.membership is None:
            raise JobError("this node has no chain backend; cannot join or leave jobs")
        return self.membership

    async def join_job(self, ref: str, *, priority: int | None = None) -> dict[str, Any]:
        """Take part in a job this node knows (queued until a slot is free), after the checks
        auto-join makes; a queued job gets ``priority``. Refused with the reason."""
        row, membership = self.views.row(ref), self._membership()
        hx, jid = row.job_id, bytes.fromhex(row.job_id)
        if jid in self.running:
            return self.views.summary(hx)
        if row.status != JobStatus.QUEUED:
            if JobStatus(row.status).ended:
                raise JobRefused(f"job 0x{hx[:10]} is {row.status}: there is nothing to join")
            why = await membership.join_refusal(JobSpec.from_bytes(row.spec), row.owner, jid)
            if why is not None:
                raise JobRefused(f"cannot join job 0x{hx[:10]}: {why}")
            self.events.publish("job.accepted", {"job_id": hx})
        self.queue.put(hx, priority)
        await self._drain()
        return self.views.summary(hx)

    async def leave_job(self, ref: str) -> dict[str, Any]:
        """Stop taking part in a job: out of the queue, or its runner stopped and (a member)
        out of its member set on chain, which the registry refuses once this node committed
        an update to the collecting round."""
        row, membership = self.views.row(ref), self._membership()
        hx, jid = row.job_id, bytes.fromhex(row.job_id)
        running = self.running.get(jid)
        if running is None and row.status != JobStatus.QUEUED:
            state = row.status if JobStatus(row.status).ended else f"its {row.role}"
            raise JobRefused(f"this node does not take part in job 0x{hx[:10]} ({state})")
        if running is not None:
            why = await membership.leave_refusal(jid)
            if why is not None:
                raise JobRefused(f"cannot leave job 0x{hx[:10]}: {why}")
            running.scope.cancel()
            with trio.move_on_after(STOP_WAIT_S):
                await running.done.wait()
            try:  # it may have committed before it stopped
                why = await membership.leave_refusal(jid)
                if why is None:
                    await membership.leave(jid)
            except GflError as exc:
                why = str(exc)
            if why is not None:
                self.queue.put(hx, at=row.created_at)  # it goes on, first in the queue
                raise JobRefused(f"cannot leave job 0x{hx[:10]}: {why}")
        self.store.update_job(hx, status=JobStatus.ACTIVE, role=JobRole.OBSERVER, queued_at=None)
        self.events.publish("job.left", {"job_id": hx})
        return self.views.summary(hx)

    async def _provide(self, h: bytes) -> None:
        try:
            await self.network.provide(h)
        except GflError as exc:
            log.debug("DHT provide failed: %s", exc)

    async def cancel_job(self, ref: str) -> dict[str, Any]:
        row = self.views.row(ref)
        await self._call(self._registry().cancel_job, bytes.fromhex(row.job_id))
        self.store.update_job(row.job_id, status=JobStatus.CANCELLED)
        running = self.running.get(bytes.fromhex(row.job_id))
        if running is not None:
            running.poke()
        return self.views.summary(row.job_id)

    async def _chain_state(self, row: JobRow) -> JobState:
        """The job as the chain holds it (its running job's ledger when it runs here)."""
        jid = bytes.fromhex(row.job_id)
        running = self.running.get(jid)
        ledger = running.ledger if running else ChainLedger(self._registry(), jid, self._call)
        try:
            return await ledger.sync()
        except GflError as exc:
            raise JobError(f"cannot read job 0x{row.job_id[:10]} from the chain: {exc}") from None

    async def verify_rounds(self, ref: str) -> list[dict[str, Any]]:
        """Each round this node recorded, against what the chain decided (its events, checked
        against the contract's running hash)."""
        row = self.views.row(ref)
        state = await self._chain_state(row)
        return verify_rows(self.store.rounds(row.job_id), state.log)

    async def bundle(self, ref: str) -> dict[str, Any]:
        """What ``gfl job export`` writes: the manifest, the spec bytes, and the blobs a
        verifier needs (with whether this node holds each)."""
        row = self.views.row(ref)
        state, chain = await self._chain_state(row), self._registry()
        manifest = audit.bundle_manifest(
            chain_id=chain.chain_id,
            registry=chain.registry_address,
            job_id=bytes.fromhex(row.job_id),
            spec=JobSpec.from_bytes(row.spec),
            joblog=state.log,
        )
        reveals = [  # secure rounds: the reveal sets this node unmasked with
            bytes.fromhex(h)
            for rec in self.store.rounds(row.job_id)
            for h in rec["metrics"].get("reveals", ())
        ]
        needed = await trio.to_thread.run_sync(
            audit.blobs_needed, state.log, self.network.blobs, reveals
        )
        authors = {u.author for rd in state.log.rounds.values() for u in rd.updates}
        await self._fetch_missing(row.job_id, needed, authors)
        return {
            "manifest": manifest,
            "spec": row.spec.hex(),
            "blobs": [{"hash": h.hex(), "held": self.network.blobs.has(h)} for h in needed],
        }

    async def _fetch_missing(self, hx: str, hashes: list[bytes], authors: set[str]) -> None:
        """Blobs an export needs that this node never fetched (a sharded round's shard frames
        go to their aggregators only): from the peers that may hold them, the ``authors``'
        nodes among them (shard frames have no DHT record), a few at a time."""
        missing = [h for h in hashes if not self.network.blobs.has(h)]
        limiter = trio.CapacityLimiter(4)
        known = [p for p in (self.book.peer_of(a) for a in sorted(authors)) if p]

        async def one(h: bytes) -> None:
            async with limiter:
                try:
                    providers = self.book.providers(h, None)
                    providers += [p for p in known if p not in providers]
                    await self.network.store_blob(
                        h, providers, max_size=MAX_BLOB_BYTES, timeout=EXPORT_FETCH_S, tag=hx
                    )
                except GflError as exc:
                    log.info("export of %s: blob %s: %s", hx[:10], h.hex()[:12], exc)

        with trio.move_on_after(EXPORT_FETCH_S):
            async with trio.open_nursery() as nursery:
                for h in missing:
                    nursery.start_soon(one, h)

    def blob(self, h: bytes) -> bytes | None:
        """A stored blob by hash (checked), for export."""
        data: bytes | None = self.network.blobs.get(h)
        return data

    # read models, as the API asks for them
    def jobs(self) -> list[dict[str, Any]]:
        return self.views.all()

    def job_summary(self, ref: str) -> dict[str, Any]:
        return self.views.summary(ref)

    def job_detail(self, ref: str) -> dict[str, Any]:
        return self.views.detail(ref)

    def status(self) -> dict[str, Any]:
        return {"ready": self.ready, "running": len(self.running), **self.views.counts()}


def _touch_training() -> None:
    """One tiny job through the real training path (torch's lazy set-up happens here)."""
    import numpy as np

    from gfl.fl.data import ArrayDataset
    from gfl.fl.trainer import initial_params, train_local

    kw = {"in_features": 4, "hidden": 4, "num_classes": 2}
    spec = JobSpec(name="warm-up", model="mlp", model_kwargs=kw, dataset="digits", rounds=1)
    data = ArrayDataset(np.zeros((4, 4), np.float32), np.array([0, 1, 0, 1]))
    train_local(spec, initial_params(spec), data, eval_data=data)
