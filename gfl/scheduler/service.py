"""The job service: the Scheduler of one node.

It hears job announcements (checked by `Announcements`), joins per the node's policy
(`JoinPolicy`), runs one `JobRunner` per job, several at once with a limit on concurrent
training, starts fetching an update as soon as its announcement arrives, wakes runners on
chain events (`watch_chain`), and evicts an ended job's blobs after a while. It is built
from what it uses — the network, the chain registry and its executor, the store, the event
bus, the data sources — never from the node itself.
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

from gfl.content import MAX_BLOB_BYTES, content_hash
from gfl.errors import GflError
from gfl.fl.spec import JobSpec
from gfl.scheduler import audit, messages
from gfl.scheduler.announcements import Announcements
from gfl.scheduler.chain_watch import watch_chain
from gfl.scheduler.checkpoints import Checkpoints
from gfl.scheduler.exchange import NetExchange, PeerBook
from gfl.scheduler.ledger import ChainLedger
from gfl.scheduler.policy import JoinPolicy
from gfl.scheduler.ports import JobRole, JobStatus
from gfl.scheduler.registration import job_params
from gfl.scheduler.runner import WOKEN_POLL_S, ChainPlace, JobRunner
from gfl.scheduler.sources import DataSources
from gfl.scheduler.views import JobNotFound, JobViews

if TYPE_CHECKING:
    from gfl.chain.records import ChainEvent
    from gfl.chain.registry import Registry
    from gfl.net.gossip import GossipMessage
    from gfl.net.network import Network
    from gfl.node.events import EventBus
    from gfl.node.store import Store

log = logging.getLogger(__name__)

PREFETCH_LIMIT = 4
PREFETCH_TIMEOUT_S = 60.0

ChainCall = Callable[..., Awaitable[Any]]

__all__ = ["JobError", "JobNotFound", "JobService", "ServiceSettings"]


class JobError(GflError):
    """A job request the node refuses (bad spec, unknown job, no such dataset, ...)."""


@dataclass(frozen=True)
class ServiceSettings:
    """The parts of the node's config the job service reads."""

    policy: JoinPolicy
    device: str = "cpu"
    models_dir: Path = Path("models")
    blob_keep_s: float = 600.0
    archive: bool = False  # keep every blob of every job (no eviction)


@dataclass
class RunningJob:
    job_id: bytes
    spec: JobSpec
    ledger: ChainLedger
    runner: JobRunner | None = None  # built once the job's nursery and data exist

    def poke(self) -> None:
        if self.runner is not None:
            self.runner.poke()


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
        self.running: dict[bytes, RunningJob] = {}
        self.ready = False
        self.train_limiter = trio.CapacityLimiter(settings.policy.max_concurrent)
        self.book = PeerBook(network)
        self.views = JobViews(store, lambda hx: bytes.fromhex(hx) in self.running)
        self.announcements = (
            Announcements(registry, chain_call, store, events, self._gossip, self.address)
            if registry is not None
            else None
        )
        self._prefetch = trio.CapacityLimiter(PREFETCH_LIMIT)
        self._nursery: trio.Nursery | None = None

    # -- plumbing -------------------------------------------------------------------------------

    async def _gossip(self, topic: str, msg: dict[str, Any]) -> None:
        try:
            await self.network.publish(topic, msg)
        except GflError as exc:
            log.warning("gossip publish on %s failed: %s", topic, exc)

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        self.events.publish(kind, data)
        jid = data.get("job_id")
        if kind == "job.divergence" and jid:
            r = int(data["round"])
            self.store.upsert_round(jid, r, divergent=1, majority_hash=data.get("majority"))
            # who committed another model than the majority: shown in the round's detail
            self.store.merge_round_metrics(jid, r, {"dissenters": data.get("dissenters", [])})
            self.store.bump("alarms.divergence")

    def _record(self, job_id: str) -> Callable[[int, dict[str, Any]], None]:
        def record(r: int, values: dict[str, Any]) -> None:
            values = dict(values)
            for seq, (addr, hash_hex, samples) in enumerate(values.pop("updates_verified", ())):
                # the chain poller may not have stored the commitment yet: store it too
                self.store.add_commitment(
                    job_id, r, "update", seq, addr, hash_hex, samples, replace=True
                )
                self.store.mark_verified(job_id, r, "update", addr, True)
            self.store.merge_round_metrics(job_id, r, values)
            fields: dict[str, Any] = {}
            if "update_hash" in values:
                fields["phase"] = "committed"
                fields["update_hash"] = values["update_hash"]
            if "model_hash" in values:
                fields["phase"] = "done"
                fields["model_hash"] = values["model_hash"]
                fields["finished_at"] = time.time()
                self.store.update_job(job_id, current_round=r + 1, model_hash=values["model_hash"])
            self.store.upsert_round(job_id, r, **fields)

        return record

    # -- the service task -------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: hear announcements, watch the chain, run jobs."""
        async with trio.open_nursery() as nursery:
            if self.announcements is not None:
                channel = await self.network.subscribe(
                    messages.JOBS_TOPIC, self.announcements.validate
                )
                nursery.start_soon(self._job_announcements, nursery, channel)
                nursery.start_soon(self.announcements.repeat_own)
            if self.registry is not None:
                nursery.start_soon(
                    watch_chain, self.registry, self._call, self._on_chain_events, self._busy
                )
            nursery.start_soon(self._warm_up)
            nursery.start_soon(self._record_peers)
            self._nursery = nursery
            held = set(self.network.blobs.tags())
            for row in self.store.jobs():
                if row.status == JobStatus.ACTIVE and row.role == JobRole.PARTICIPANT:
                    self._start(nursery, bytes.fromhex(row.job_id), JobSpec.from_bytes(row.spec))
                elif row.status != JobStatus.ACTIVE and row.job_id in held:
                    nursery.start_soon(self._evict_blobs, row.job_id)
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

    async def _job_announcements(self, nursery: trio.Nursery, channel: Any) -> None:
        async with channel:
            async for msg in channel:
                await self._on_job_announcement(nursery, msg)

    async def _on_job_announcement(self, nursery: trio.Nursery, msg: GossipMessage) -> None:
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
        join, why = self.settings.policy.decide(
            spec, rec.owner, self.sources.names(), len(self.running)
        )
        self.store.add_job(
            hx,
            spec.to_bytes(),
            spec.spec_hash.hex(),
            rec.owner,
            spec.name,
            spec.rounds,
            JobStatus.ACTIVE,
            JobRole.PARTICIPANT if join else JobRole.OBSERVER,
        )
        self.events.publish(
            "job.discovered",
            {"job_id": hx, "name": spec.name, "owner": rec.owner, "joining": join, "why": why},
        )
        if join:
            self._start(nursery, job_id, spec)

    # -- round gossip: provider hints and prefetch ------------------------------------------------

    @staticmethod
    def _round_validator(job_id: bytes) -> Callable[[GossipMessage], bool]:
        """Round topics carry this job's update/model announcements only (others: dropped)."""

        def validate(msg: GossipMessage) -> bool:
            p = msg.payload
            return p.get("type") in ("update", "model") and p.get("job_id") == job_id

        return validate

    async def _round_messages(self, nursery: trio.Nursery, job_id: bytes, channel: Any) -> None:
        async with channel:
            async for msg in channel:
                p = msg.payload
                self.book.saw(msg.sender_address, msg.sender_peer_id)
                self.book.announced(p["hash"], msg.sender_peer_id)
                running = self.running.get(job_id)
                if running is not None:
                    running.poke()
                    if p["type"] == "update":
                        nursery.start_soon(self._prefetch_one, job_id, p["hash"], p["size"])

    async def _prefetch_one(self, job_id: bytes, h: bytes, size: int) -> None:
        if self.network.blobs.has(h) or size > MAX_BLOB_BYTES:
            return
        async with self._prefetch:
            try:
                await self.network.store_blob(
                    h,
                    self.book.providers(h, None),
                    max_size=size,
                    timeout=PREFETCH_TIMEOUT_S,
                    tag=job_id.hex(),
                )
            except GflError as exc:
                log.debug("prefetch of %s failed: %s", h.hex()[:12], exc)

    # -- chain events -----------------------------------------------------------------------------

    def _on_chain_events(self, events: Sequence[ChainEvent]) -> None:
        by_job: dict[bytes, list[ChainEvent]] = {}
        for ev in events:
            by_job.setdefault(ev.job_id, []).append(ev)
            self._store_chain_event(ev)
        for job_id, evs in by_job.items():
            running = self.running.get(job_id)
            if running is not None:
                running.ledger.feed(evs)
                running.poke()

    def _store_chain_event(self, ev: ChainEvent) -> None:
        """Keep what the API shows of a job's history (the chain stays the authority)."""
        hx = ev.job_id.hex()
        if self.store.job(hx) is None:
            return
        a = ev.args
        if ev.name in ("JobCancelled", "JobExpired"):
            status = JobStatus.CANCELLED if ev.name == "JobCancelled" else JobStatus.EXPIRED
            self.store.update_job(hx, status=status)
        elif ev.name == "UpdateCommitted":
            self.store.add_commitment(
                hx,
                int(a["round"]),
                "update",
                ev.seq,
                a["author"],
                bytes(a["updateHash"]).hex(),
                int(a["samples"]),
            )
        elif ev.name == "Voted":
            self.store.add_commitment(
                hx, int(a["round"]), "model", ev.seq, a["voter"], bytes(a["modelHash"]).hex()
            )

    # -- running ----------------------------------------------------------------------------------

    def _start(self, nursery: trio.Nursery, job_id: bytes, spec: JobSpec) -> None:
        if job_id in self.running or self.registry is None:
            return
        if spec.dataset not in self.sources:
            self.store.update_job(
                job_id.hex(), status=JobStatus.ERROR, error=f"no dataset {spec.dataset!r}"
            )
            return
        ledger = ChainLedger(self.registry, job_id, self._call, allow=spec.allow_list)
        running = RunningJob(job_id, spec, ledger)
        self.running[job_id] = running
        nursery.start_soon(self._run, nursery, running)

    async def _run(self, service_nursery: trio.Nursery, running: RunningJob) -> None:
        """One job from start to end, in a nursery of its own (its round gossip, its DHT
        provides and its runner end with it)."""
        assert self.registry is not None
        job_id, hx = running.job_id, running.job_id.hex()
        topic = messages.round_topic(job_id)
        try:
            async with trio.open_nursery() as nursery:
                channel = await self.network.subscribe(topic, self._round_validator(job_id))
                nursery.start_soon(self._round_messages, nursery, job_id, channel)
                try:
                    running.runner = JobRunner(
                        job_id=hx,
                        spec=running.spec,
                        ledger=running.ledger,
                        exchange=NetExchange(
                            self.network, self.book, job_id, self._gossip, nursery
                        ),
                        data=await self.sources.load(running.spec.dataset),
                        checkpoints=Checkpoints(self.settings.models_dir / hx),
                        train_limiter=self.train_limiter,
                        emit=self._emit,
                        record=self._record(hx),
                        place=ChainPlace(
                            self.registry.chain_id,
                            bytes.fromhex(self.registry.registry_address.removeprefix("0x")),
                        ),
                        device=self.settings.device,
                        poll_s=WOKEN_POLL_S,  # chain events wake it
                    )
                    status = await running.runner.run()
                    self.store.update_job(hx, status=status)
                except Exception as exc:  # one job's failure must not stop the node
                    if isinstance(exc, GflError):
                        log.error("job %s stopped: %s", hx[:10], exc)
                    else:
                        log.exception("job %s failed", hx[:10])
                    self.store.update_job(hx, status=JobStatus.ERROR, error=str(exc))
                    self.events.publish("job.error", {"job_id": hx, "error": str(exc)})
                nursery.cancel_scope.cancel()
        finally:
            self.running.pop(job_id, None)
            service_nursery.start_soon(self._evict_blobs, hx)  # if it ended (not on shutdown)
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await self.network.unsubscribe(topic)
                except Exception as exc:  # the network may be closing
                    log.debug("unsubscribe %s: %s", topic, exc)

    async def _evict_blobs(self, hx: str) -> None:
        """A job that ended here (finished, cancelled or failed): its blobs stay
        ``blob_keep_s`` after that for peers still finishing its last round, then they are
        evicted, all but its final model (which stays under the store's cap)."""
        if self.settings.archive:
            return
        keep_s = self.settings.blob_keep_s
        row = self.store.job(hx)
        if row is None or row.status == JobStatus.ACTIVE:
            return
        await trio.sleep(min(keep_s, max(0.0, row.updated_at + keep_s - time.time())))
        row = self.store.job(hx)
        final = [bytes.fromhex(row.model_hash)] if row is not None and row.model_hash else []
        blobs = self.network.blobs
        n = await trio.to_thread.run_sync(lambda: blobs.evict(hx, keep=final))
        log.info("job %s ended: %d of its blobs evicted", hx[:10], n)
        self.events.publish("job.blobs_evicted", {"job_id": hx, "blobs": n})

    # -- API operations ---------------------------------------------------------------------------

    def _registry(self) -> Registry:
        if self.registry is None:
            raise JobError("this node has no chain backend; cannot register jobs")
        return self.registry

    async def publish_job(self, spec: JobSpec, *, participate: bool = True) -> dict[str, Any]:
        """Register `spec` on chain, announce it, and (if we have the data) take part."""
        chain = self._registry()
        problems = spec.publish_problems()
        if problems:
            raise JobError("; ".join(problems))
        spec_bytes = spec.to_bytes()
        # M_0 is made once, here, and registered by hash: every node starts from these bytes
        frame = await trio.to_thread.run_sync(_initial_frame, spec)
        params = job_params(spec, spec.deadline_after(int(time.time())))
        job_id, _tx = await self._call(
            chain.register_job, secrets.token_bytes(32), spec.spec_hash, content_hash(frame), params
        )
        hx = job_id.hex()
        blobs = self.network.blobs
        model0 = await trio.to_thread.run_sync(lambda: blobs.put(frame, tag=hx))
        if self._nursery is not None:
            self._nursery.start_soon(self._provide, model0)
        join = participate and spec.dataset in self.sources
        self.store.add_job(
            hx,
            spec_bytes,
            spec.spec_hash.hex(),
            self.address,
            spec.name,
            spec.rounds,
            JobStatus.ACTIVE,
            JobRole.PARTICIPANT if join else JobRole.OWNER,
        )
        await self._gossip(messages.JOBS_TOPIC, messages.job_announcement(job_id, spec_bytes))
        assert self.announcements is not None
        self.announcements.announce_soon(hx)
        self.events.publish("job.published", {"job_id": hx, "name": spec.name})
        if join and self._nursery is not None:
            self._start(self._nursery, job_id, spec)
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

    async def verify_rounds(self, ref: str) -> list[dict[str, Any]]:
        """Each round this node recorded, against what the chain decided (its events, checked
        against the contract's running hash)."""
        row = self.views.row(ref)
        jid = bytes.fromhex(row.job_id)
        running = self.running.get(jid)
        ledger = running.ledger if running is not None else None
        if ledger is None:
            ledger = ChainLedger(self._registry(), jid, self._call)
        try:
            state = await ledger.sync()
        except GflError as exc:
            raise JobError(f"cannot read job 0x{row.job_id[:10]} from the chain: {exc}") from None
        out = []
        for r in self.store.rounds(row.job_id):
            rd = state.log.rounds.get(r["round"])
            final = rd.final.model_hash.hex() if rd is not None and rd.final is not None else None
            decision = rd.decision.value if rd is not None and rd.decision is not None else None
            local = r.get("model_hash")
            out.append(
                {
                    "round": r["round"],
                    "closed": rd is not None and rd.closed,
                    "updates": len(rd.updates) if rd is not None else 0,
                    "votes": len(rd.votes) if rd is not None else 0,
                    "decision": decision,
                    "chain_model": final,
                    "local_model": local,
                    "dissenters": rd.dissenters() if rd is not None else [],
                    "verified": final is not None and final == local,
                }
            )
        return out

    async def bundle(self, ref: str) -> dict[str, Any]:
        """What ``gfl job export`` writes: the manifest, the spec bytes, and the blobs a
        verifier needs (with whether this node holds each)."""
        row = self.views.row(ref)
        jid = bytes.fromhex(row.job_id)
        chain = self._registry()
        running = self.running.get(jid)
        ledger = running.ledger if running is not None else ChainLedger(chain, jid, self._call)
        try:
            state = await ledger.sync()
        except GflError as exc:
            raise JobError(f"cannot read job 0x{row.job_id[:10]} from the chain: {exc}") from None
        spec = JobSpec.from_bytes(row.spec)
        manifest = audit.bundle_manifest(
            chain_id=chain.chain_id,
            registry=chain.registry_address,
            job_id=jid,
            spec=spec,
            joblog=state.log,
        )
        needed = audit.blobs_needed(state.log)
        return {
            "manifest": manifest,
            "spec": row.spec.hex(),
            "blobs": [{"hash": h.hex(), "held": self.network.blobs.has(h)} for h in needed],
        }

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


def _initial_frame(spec: JobSpec) -> bytes:
    """M_0's blob: the model the spec describes, initialised from its seed on this machine."""
    from gfl.fl.codec import encode_frame
    from gfl.fl.trainer import initial_params

    return encode_frame(initial_params(spec))


def _touch_training() -> None:
    """One tiny job through the real training path (torch's lazy set-up happens here)."""
    import numpy as np

    from gfl.fl.data import ArrayDataset
    from gfl.fl.trainer import initial_params, train_local

    kw = {"in_features": 4, "hidden": 4, "num_classes": 2}
    spec = JobSpec(name="warm-up", model="mlp", model_kwargs=kw, dataset="digits", rounds=1)
    data = ArrayDataset(np.zeros((4, 4), np.float32), np.array([0, 1, 0, 1]))
    train_local(spec, initial_params(spec), data, eval_data=data)
