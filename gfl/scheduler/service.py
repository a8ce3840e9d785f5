"""The job service: publishing, verifying, joining and running jobs on a node.

This is where the layers meet (DESIGN.md's Manager and Scheduler). It
subscribes to job announcements, checks each one against the chain (the job
exists, its spec hash is sha256 of the announced bytes, its owner signed the
announcement), joins per the node's policy, and runs one `JobRunner` per job,
several at once, with a limit on concurrent training. It adapts the chain
`Registry` (blocking web3, in worker threads) and the libp2p `Network` to the
runner's `Ledger` and `Exchange` interfaces.

Nothing waits on fixed sleeps in the critical path: the chain is polled for
events every 100 ms while a job runs (every second otherwise) and each event
wakes the runner of its job; gossip about
an update starts fetching it at once, before its round closes.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from gfl.errors import GflError
from gfl.fl.data import ArrayDataset, DataError, load_dataset, load_partition
from gfl.fl.rounds import consensus_of
from gfl.fl.spec import JobSpec, SpecError
from gfl.node.store import Store
from gfl.scheduler import messages as protocol
from gfl.scheduler.checkpoints import Checkpoints
from gfl.scheduler.runner import (
    STATUS_ACTIVE,
    STATUS_CANCELLED,
    STATUS_FINISHED,
    WOKEN_POLL_S,
    JobRunner,
    LedgerJob,
    LedgerRefused,
    LedgerRound,
    LedgerUnavailable,
    NodeData,
)

if TYPE_CHECKING:
    from gfl.node.node import Node

log = logging.getLogger(__name__)

CHAIN_POLL_S = 0.1  # chain event polling while this node runs a job (events wake its runners)
CHAIN_IDLE_POLL_S = 1.0  # and while it runs none (announcements come by gossip, not events)
REANNOUNCE_S = 5.0
PREFETCH_LIMIT = 4
MAX_REFUSED = 4096
REFUSED_TTL_S = 60.0
_STATUS = {1: STATUS_ACTIVE, 2: STATUS_FINISHED, 3: STATUS_CANCELLED}


class JobError(GflError):
    """A job request the node refuses (bad spec, unknown job, no such dataset, ...)."""


class JobNotFound(JobError):
    """No job with that id on this node."""

    status = 404


@dataclass(frozen=True)
class DataSource:
    """A node-local dataset: a name in config [data], optionally one partition of it."""

    dataset: str
    root: str | None = None
    partition: str | None = None  # "iid" | "dirichlet:0.5" | "shards:2"
    index: int = 0
    of: int = 1
    seed: int = 0
    limit: int | None = None  # keep only the first `limit` examples (benchmarks, quick runs)

    @classmethod
    def parse(cls, name: str, value: Any) -> DataSource:
        """``digits = ""`` (whole set), ``mnist = "/data/mnist"`` or a table with
        ``root``, ``dataset``, ``partition``, ``index``, ``of``, ``seed``, ``limit``."""
        if isinstance(value, str):
            return cls(dataset=name, root=value or None)
        if isinstance(value, dict):
            known = {"root", "dataset", "partition", "index", "of", "seed", "limit"}
            bad = set(value) - known
            if bad:
                raise JobError(f"[data.{name}] has unknown keys: {', '.join(sorted(bad))}")
            return cls(
                dataset=str(value.get("dataset", name)),
                root=value.get("root") or None,
                partition=value.get("partition"),
                index=int(value.get("index", 0)),
                of=int(value.get("of", 1)),
                seed=int(value.get("seed", 0)),
                limit=int(value["limit"]) if value.get("limit") else None,
            )
        raise JobError(f"[data] {name} must be a path or a table")

    def load(self, eval_limit: int = 0) -> NodeData:
        """The training data and (up to `eval_limit` examples of) the test split."""
        # only the examples kept are converted to floats (the limits apply before that)
        if self.partition:
            train = load_partition(
                self.dataset,
                self.index,
                self.of,
                self.partition,
                self.seed,
                root=self.root,
                limit=self.limit,
            )
        else:
            train = load_dataset(self.dataset, root=self.root, train=True, limit=self.limit)
        try:
            test: ArrayDataset | None = load_dataset(
                self.dataset, root=self.root, train=False, limit=eval_limit
            )
        except DataError:
            test = None
        return NodeData(train=train, test=test)


# -- adapters -------------------------------------------------------------------------------


class ChainLedger:
    """The chain registry, as one job's `Ledger`.

    ``call`` runs a blocking registry method off the trio thread (the node's
    `chain_call`, which also serialises them).
    """

    def __init__(self, registry: Any, job_id: bytes, call: Callable[..., Awaitable[Any]]) -> None:
        self._chain = registry
        self._job_id = job_id
        self._run = call
        self.address = registry.account
        self._participants: tuple[str, ...] = ()
        self._joined_count = -1

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        from gfl.chain import ChainUnavailable, ContractRevert

        try:
            return await self._run(fn, *args)
        except ContractRevert as exc:
            raise LedgerRefused(str(exc)) from None
        except ChainUnavailable as exc:
            raise LedgerUnavailable(str(exc)) from None

    async def job(self) -> LedgerJob:
        chain = self._chain
        rec = await self._call(chain.get_job, self._job_id)
        if rec is None:
            raise JobError(f"the chain holds no job 0x{self._job_id.hex()}")
        if rec.joined_count != self._joined_count:
            self._participants = tuple(await self._call(chain.participants, self._job_id))
            self._joined_count = rec.joined_count
        return LedgerJob(
            status=_STATUS.get(int(rec.status), STATUS_CANCELLED),
            rounds=rec.rounds,
            min_updates=rec.min_updates,
            round_timeout=rec.round_timeout,
            current_round=rec.current_round,
            joined=self._participants,
        )

    async def round(self, r: int) -> LedgerRound:
        rec = await self._call(self._chain.get_round, self._job_id, r)
        return LedgerRound(
            round=r,
            opens_at=float(rec.opens_at),
            closed=bool(rec.closed),
            closed_at=None if rec.closed_at is None else float(rec.closed_at),
            updates=tuple((u.participant, u.update_hash, u.samples) for u in rec.updates),
            models=tuple((m.participant, m.model_hash) for m in rec.models),
        )

    async def join(self) -> None:
        await self._call(self._chain.join_job, self._job_id)

    async def commit_update(self, r: int, update_hash: bytes, samples: int) -> None:
        await self._call(self._chain.commit_update, self._job_id, r, update_hash, samples)

    async def commit_model(self, r: int, model_hash: bytes) -> None:
        await self._call(self._chain.commit_model, self._job_id, r, model_hash)

    async def settle(self) -> None:
        await self._call(self._chain.settle, self._job_id)


class NetExchange:
    """The libp2p network as one job's `Exchange`."""

    def __init__(self, service: JobService, job_id: bytes) -> None:
        self._service = service
        self._job_id = job_id
        self._tag = job_id.hex()

    async def publish(self, kind: str, r: int, data: bytes, samples: int = 0) -> bytes:
        net = self._service.node.network
        h = await trio.to_thread.run_sync(lambda: net.blobs.put(data, tag=self._tag))
        msg = protocol.blob_announcement(kind, self._job_id, r, h, len(data), samples)
        await self._service.publish(self._service.topic(self._job_id), msg)
        self._service.node.nursery.start_soon(self._provide, h)
        return h

    async def _provide(self, h: bytes) -> None:
        try:
            await self._service.node.network.provide(h)
        except GflError as exc:
            log.debug("DHT provide failed: %s", exc)

    async def fetch(self, blob: bytes, owner: str | None, max_size: int, timeout: float) -> bytes:
        providers = self._service.providers(blob, owner)
        net = self._service.node.network
        data = await net.fetch_blob(
            blob, providers, max_size=max_size, timeout=timeout, tag=self._tag
        )
        self._service.traffic_in[self._tag] = self._service.traffic_in.get(self._tag, 0) + len(data)
        return data

    async def load_local(self, blob: bytes) -> bytes | None:
        # a read plus a sha256 of a multi-MB file: not on the trio thread
        return await trio.to_thread.run_sync(self._service.node.network.blobs.get, blob)


# -- the service ------------------------------------------------------------------------------


@dataclass
class RunningJob:
    job_id: bytes
    spec: JobSpec
    runner: JobRunner


class JobService:
    """Jobs on this node: publish, verify, join, run, report."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.store = Store(node.datadir.root / "node.db")
        cfg = node.config.jobs
        self.auto_join = cfg.auto_join
        self.allow_owners = {a.lower() for a in cfg.allow_owners}
        self.max_concurrent = max(1, cfg.max_concurrent)
        self.train_limiter = trio.CapacityLimiter(max(1, cfg.max_concurrent))
        self.running: dict[bytes, RunningJob] = {}
        self.traffic_in: dict[str, int] = {}
        self._hints: dict[bytes, list[str]] = {}  # blob hash -> peer ids that announced it
        self._addr_peer: dict[str, str] = {}  # eth address (lower) -> peer id
        self._prefetch = trio.CapacityLimiter(PREFETCH_LIMIT)
        self._nursery: trio.Nursery | None = None
        self._subscribed: set[bytes] = set()
        self._announce_due: dict[str, tuple[float, float]] = {}  # job -> (next, gap)
        self._announce_wake = trio.Event()
        self._data_cache: dict[str, NodeData] = {}
        self._refused: dict[tuple[bytes, bytes, str], tuple[str, float]] = {}
        self._verified: dict[tuple[bytes, bytes, str], tuple[JobSpec, Any]] = {}
        self.ready = False
        self._data_lock = trio.Lock()
        self.sources = self._data_sources()

    def _data_sources(self) -> dict[str, DataSource]:
        out = {}
        for name, value in self.node.config.data.items():
            try:
                out[name] = DataSource.parse(name, value)
            except (JobError, TypeError, ValueError) as exc:
                log.warning("ignoring [data] %s: %s", name, exc)
        return out

    # -- plumbing

    @staticmethod
    def topic(job_id: bytes) -> str:
        from gfl.net import round_topic

        return round_topic(job_id)

    async def publish(self, topic: str, msg: dict[str, Any]) -> None:
        try:
            await self.node.network.publish(topic, msg)
        except GflError as exc:
            log.warning("gossip publish on %s failed: %s", topic, exc)

    def providers(self, blob: bytes, owner: str | None) -> list[str]:
        out: list[str] = []
        if owner and owner.lower() in self._addr_peer:
            out.append(self._addr_peer[owner.lower()])
        out += [p for p in self._hints.get(blob, []) if p not in out]
        for peer in self.node.network.peers():
            pid = peer.get("peer_id")
            addr = (peer.get("eth_address") or "").lower()
            if owner and addr == owner.lower() and pid not in out:
                out.insert(0, pid)
            elif pid not in out:
                out.append(pid)
        return out

    def _refuse(self, key: tuple[bytes, bytes, str], reason: str) -> None:
        """Remember a refused announcement for a while (bounded), so replays cost no chain
        call; it expires because a chain endpoint that lags may not hold a new job yet."""
        if len(self._refused) >= MAX_REFUSED:
            self._refused.pop(next(iter(self._refused)))
        self._refused[key] = (reason, time.monotonic() + REFUSED_TTL_S)

    def _reject(self, reason: str, **data: Any) -> None:
        self.store.bump(f"rejected.{reason}")
        self.node.events.publish("job.rejected", {"reason": reason, **data})

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        self.node.events.publish(kind, data)
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

    # -- the service task

    async def serve(self, node: Node, task_status: trio.TaskStatus[None]) -> None:
        """Node service: runs until the node stops."""
        import gfl.scheduler.messages  # noqa: F401  (registers the message schemas)
        from gfl.net import JOBS_TOPIC

        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                channel = await node.network.subscribe(JOBS_TOPIC, self._validate_job_msg)
                nursery.start_soon(self._job_announcements, channel)
                if node.chain is not None:
                    nursery.start_soon(self._poll_chain)
                nursery.start_soon(self._reannounce)
                nursery.start_soon(self._warm_up)
                nursery.start_soon(self._record_peers)
                held = set(node.network.blobs.tags())
                for row in self.store.jobs():
                    if row.status == STATUS_ACTIVE and row.role == "participant":
                        self._start(bytes.fromhex(row.job_id), JobSpec.from_bytes(row.spec))
                    elif row.status != STATUS_ACTIVE and row.job_id in held:
                        nursery.start_soon(self._evict_blobs, row.job_id)
                task_status.started()
        finally:
            self.store.close()

    async def _record_peers(self) -> None:
        """Keep the peers we met in node.db (and their address book for blob providers)."""
        sub = self.node.events.subscription(0)
        while (event := await sub.get()) is not None:
            if event.type != "peer_connected":
                continue
            pid, addr = event.data.get("peer_id"), event.data.get("eth_address")
            if addr:
                self._addr_peer[addr.lower()] = pid
            try:
                self.store.saw_peer(pid, addr, [])
            except GflError as exc:
                log.warning("cannot record peer %s: %s", pid, exc)

    async def _warm_up(self) -> None:
        """Import torch, touch the training path once and load the configured data, off the
        critical path: the first round then costs what every later round costs."""
        t0 = trio.current_time()
        for name in list(self.sources):
            try:
                await self._data(name)
            except GflError as exc:
                log.warning("dataset %s cannot be loaded: %s", name, exc)
        await trio.to_thread.run_sync(_touch_training)
        self.ready = True
        log.info("warmed up in %.1fs", trio.current_time() - t0)

    async def _data(self, name: str) -> NodeData:
        async with self._data_lock:
            if name not in self._data_cache:
                limit = self.node.config.train.eval_limit
                self._data_cache[name] = await trio.to_thread.run_sync(
                    self.sources[name].load, limit
                )
            return self._data_cache[name]

    # -- announcements

    def _validate_job_msg(self, msg: Any) -> bool:
        """Gossip validator (runs before a message is forwarded): cheap checks only.

        A spec that does not decode, or a replay of an announcement the chain
        already refused, stops here and is neither queued nor relayed; a new
        announcement is forwarded and checked on chain by `_on_job_announcement`
        (a chain call inside the validator would hold up all gossip when the
        chain is slow).
        """
        p = msg.payload
        if p.get("type") != "job":
            return False
        key = _announcement_key(msg)
        if key in self._verified:
            return True
        refused = self._refused.get(key)
        if refused is not None and refused[1] > time.monotonic():
            self._reject(
                refused[0], job_id=p["job_id"].hex(), sender=msg.sender_address, replay=True
            )
            return False
        try:
            JobSpec.from_bytes(p["spec"])
        except SpecError as exc:
            self._reject(
                "bad_spec", job_id=p["job_id"].hex(), sender=msg.sender_address, detail=str(exc)
            )
            self._refuse(key, "bad_spec")
            return False
        return True

    @staticmethod
    def _round_validator(job_id: bytes) -> Callable[[Any], bool]:
        """Round topics carry this job's update/model announcements only (others: dropped)."""

        def validate(msg: Any) -> bool:
            p = msg.payload
            return p.get("type") in ("update", "model") and p.get("job_id") == job_id

        return validate

    async def _job_announcements(self, channel: Any) -> None:
        async with channel:
            async for msg in channel:
                await self._on_job_announcement(msg)

    async def _verify_announcement(self, msg: Any) -> tuple[JobSpec, Any] | None:
        """(spec, chain record) of a valid announcement, or None (counted as rejected).

        DESIGN.md's rule: the chain holds the job, its spec hash is sha256 of the
        announced bytes, and its owner signed the message. Outcomes are cached
        (bounded) so replays and re-announcements cost no chain call.
        """
        job_id, spec_bytes = msg.payload["job_id"], msg.payload["spec"]
        hx = job_id.hex()
        key = _announcement_key(msg)
        verified = self._verified.get(key)
        if verified is not None:
            return verified
        refused = self._refused.get(key)
        if refused is not None and refused[1] > time.monotonic():
            self._reject(refused[0], job_id=hx, sender=msg.sender_address, replay=True)
            return None
        try:
            spec = JobSpec.from_bytes(spec_bytes)
        except SpecError as exc:
            self._reject("bad_spec", job_id=hx, sender=msg.sender_address, detail=str(exc))
            self._refuse(key, "bad_spec")
            return None
        from gfl.chain import AnnouncementRejected, ChainError

        try:
            rec = await self.node.chain_call(
                self.node.chain.verify_announcement, job_id, spec_bytes, msg.sender_address
            )
        except AnnouncementRejected as exc:
            self._reject("unverified", job_id=hx, sender=msg.sender_address, detail=str(exc))
            self._refuse(key, "unverified")
            return None
        except ChainError as exc:
            log.warning("cannot verify job %s now: %s", hx[:10], exc)
            return None
        if len(self._verified) >= MAX_REFUSED:
            self._verified.pop(next(iter(self._verified)))
        self._verified[key] = (spec, rec)
        return spec, rec

    async def _on_job_announcement(self, msg: Any) -> None:
        job_id = msg.payload["job_id"]
        hx = job_id.hex()
        self._addr_peer[msg.sender_address.lower()] = msg.sender_peer_id
        if self.store.job(hx) is not None:
            return  # known already (re-announcement)
        checked = await self._verify_announcement(msg)
        if checked is None:
            return
        spec, rec = checked
        if int(rec.status) != 1:
            self._reject("not_active", job_id=hx)
            return
        join, why = self._should_join(spec, rec.owner)
        self.store.add_job(
            hx,
            spec.to_bytes(),
            spec.spec_hash.hex(),
            rec.owner,
            spec.name,
            spec.rounds,
            STATUS_ACTIVE,
            "participant" if join else "observer",
        )
        self.node.events.publish(
            "job.discovered",
            {"job_id": hx, "name": spec.name, "owner": rec.owner, "joining": join, "why": why},
        )
        if join:
            self._start(job_id, spec)

    def _should_join(self, spec: JobSpec, owner: str) -> tuple[bool, str]:
        if spec.dataset not in self.sources:
            return False, f"no dataset {spec.dataset!r} in [data]"
        if self.allow_owners and owner.lower() not in self.allow_owners:
            return False, "owner not in [jobs] allow_owners"
        if not self.auto_join and not self.allow_owners:
            return False, "[jobs] auto_join is off"
        if len(self.running) >= self.max_concurrent:
            return False, f"already running {len(self.running)} jobs (max_concurrent)"
        return True, "policy"

    async def _reannounce(self) -> None:
        """Gossip is lossy: repeat our active jobs' announcements now and then.

        A fresh job is repeated quickly at first (0.25 s, 0.5 s, 1 s, ... up to
        REANNOUNCE_S), since the gossip mesh of a young network may not carry
        the first copy; peers ignore copies of jobs they already know. The loop
        sleeps until the next one is due (it reads node.db only then).
        """
        from gfl.net import JOBS_TOPIC

        while True:
            now = trio.current_time()
            soonest = min((due for due, _ in self._announce_due.values()), default=now)
            with trio.move_on_at(max(soonest, now) if self._announce_due else now + REANNOUNCE_S):
                await self._announce_wake.wait()
            self._announce_wake = trio.Event()
            me = self.node.identity.eth_address.lower()
            now = trio.current_time()
            mine = {
                row.job_id: row.spec
                for row in self.store.jobs()
                if row.status == STATUS_ACTIVE and row.owner.lower() == me
            }
            for job_id in set(self._announce_due) - set(mine):  # finished or cancelled
                del self._announce_due[job_id]
            for job_id, spec in mine.items():
                due, gap = self._announce_due.get(job_id, (now, REANNOUNCE_S))
                if now < due:
                    continue
                self._announce_due[job_id] = (now + gap, min(gap * 2, REANNOUNCE_S))
                await self.publish(
                    JOBS_TOPIC, protocol.job_announcement(bytes.fromhex(job_id), spec)
                )

    # -- round gossip: provider hints and prefetch

    async def _round_messages(self, job_id: bytes, channel: Any) -> None:
        async with channel:
            async for msg in channel:
                p = msg.payload
                if p.get("type") not in ("update", "model") or p.get("job_id") != job_id:
                    continue
                self._addr_peer[msg.sender_address.lower()] = msg.sender_peer_id
                hints = self._hints.setdefault(p["hash"], [])
                if msg.sender_peer_id not in hints:
                    hints.append(msg.sender_peer_id)
                running = self.running.get(job_id)
                if running is not None:
                    running.runner.poke()
                    if p["type"] == "update" and self._nursery is not None:
                        self._nursery.start_soon(self._prefetch_one, job_id, p["hash"], p["size"])

    async def _prefetch_one(self, job_id: bytes, h: bytes, size: int) -> None:
        net = self.node.network
        if net.blobs.has(h) or size > protocol.MAX_BLOB_BYTES:
            return
        async with self._prefetch:
            try:
                await net.store_blob(
                    h, self.providers(h, None), max_size=size, timeout=60, tag=job_id.hex()
                )
            except GflError as exc:
                log.debug("prefetch of %s failed: %s", h.hex()[:12], exc)

    # -- chain events

    async def _poll_chain(self) -> None:
        chain = self.node.chain
        cursor = await self.node.chain_call(chain.block_number)
        while True:
            await trio.sleep(CHAIN_POLL_S if self.running else CHAIN_IDLE_POLL_S)
            try:
                events, cursor = await self.node.chain_call(chain.poll_events, cursor)
            except GflError as exc:
                log.warning("chain poll failed (retrying): %s", exc)
                await trio.sleep(1.0)
                continue
            for ev in events:
                running = self.running.get(ev.job_id)
                if running is not None:
                    if ev.name == "ModelCommitted":
                        running.runner.model_committed(int(ev.args.get("round", 0)))
                    running.runner.poke()
                self._on_chain_event(ev)

    def _on_chain_event(self, ev: Any) -> None:
        hx = ev.job_id.hex()
        if ev.name == "JobCancelled" and self.store.job(hx) is not None:
            self.store.update_job(hx, status=STATUS_CANCELLED)
        if ev.name in ("UpdateCommitted", "ModelCommitted") and self.store.job(hx) is not None:
            a = ev.args
            kind = "update" if ev.name == "UpdateCommitted" else "model"
            h = a.get("updateHash") or a.get("modelHash") or b""
            self.store.add_commitment(
                hx,
                int(a.get("round", 0)),
                kind,
                ev.block_number * 10_000 + ev.log_index,
                a.get("participant", ""),
                bytes(h).hex(),
                int(a.get("samples", 0)),
            )

    # -- running

    def _start(self, job_id: bytes, spec: JobSpec) -> None:
        if job_id in self.running or self._nursery is None:
            return
        hx = job_id.hex()
        if spec.dataset not in self.sources:
            self.store.update_job(hx, status="error", error=f"no dataset {spec.dataset!r}")
            return
        runner = JobRunner(
            job_id=hx,
            spec=spec,
            ledger=ChainLedger(self.node.chain, job_id, self.node.chain_call),
            exchange=NetExchange(self, job_id),
            data=NodeData(train=None, test=None),  # type: ignore[arg-type]  (set in _run)
            checkpoints=Checkpoints(self.node.datadir.root / "models" / hx),
            train_limiter=self.train_limiter,
            emit=self._emit,
            record=self._record(hx),
            device=self.node.config.train.device,
            poll_s=WOKEN_POLL_S,  # `_poll_chain` wakes it on every event of its job
        )
        running = RunningJob(job_id, spec, runner)
        self.running[job_id] = running
        self._nursery.start_soon(self._run, running)

    async def _run(self, running: RunningJob) -> None:
        hx = running.job_id.hex()
        topic = self.topic(running.job_id)
        try:
            async with trio.open_nursery() as nursery:
                if running.job_id not in self._subscribed:
                    channel = await self.node.network.subscribe(
                        topic, self._round_validator(running.job_id)
                    )
                    self._subscribed.add(running.job_id)
                    nursery.start_soon(self._round_messages, running.job_id, channel)
                try:
                    running.runner.data = await self._data(running.spec.dataset)
                    status = await running.runner.run()
                    self.store.update_job(hx, status=status)
                except Exception as exc:  # one job's failure must not stop the node
                    if isinstance(exc, GflError):
                        log.error("job %s stopped: %s", hx[:10], exc)
                    else:
                        log.exception("job %s failed", hx[:10])
                    self.store.update_job(hx, status="error", error=str(exc))
                    self.node.events.publish("job.error", {"job_id": hx, "error": str(exc)})
                nursery.cancel_scope.cancel()
        finally:
            self.running.pop(running.job_id, None)
            self._nursery.start_soon(self._evict_blobs, hx)  # if it ended (not on shutdown)
            if running.job_id in self._subscribed:
                self._subscribed.discard(running.job_id)
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    try:
                        await self.node.network.unsubscribe(topic)
                    except Exception as exc:  # the network may be closing
                        log.debug("unsubscribe %s: %s", topic, exc)

    async def _evict_blobs(self, hx: str) -> None:
        """A job that ended here (finished, cancelled or failed): its blobs stay
        ``net.blob_keep_s`` after that for peers still finishing its last round, then
        they are evicted, all but its final model (which stays under the store's cap)."""
        keep_s = self.node.config.net.blob_keep_s
        row = self.store.job(hx)
        if row is None or row.status == STATUS_ACTIVE:
            return
        await trio.sleep(min(keep_s, max(0.0, row.updated_at + keep_s - time.time())))
        row = self.store.job(hx)
        final = [bytes.fromhex(row.model_hash)] if row is not None and row.model_hash else []
        blobs = self.node.network.blobs
        n = await trio.to_thread.run_sync(lambda: blobs.evict(hx, keep=final))
        log.info("job %s ended: %d of its blobs evicted", hx[:10], n)
        self.node.events.publish("job.blobs_evicted", {"job_id": hx, "blobs": n})

    # -- API operations

    async def publish_job(self, spec: JobSpec, *, participate: bool = True) -> dict[str, Any]:
        """Register `spec` on chain, announce it, and (if we have the data) take part."""
        from gfl.net import JOBS_TOPIC

        chain = self.node.chain
        if chain is None:
            raise JobError("this node has no chain backend; cannot register jobs")
        spec_bytes = spec.to_bytes()
        job_id = await self.node.chain_call(
            chain.make_job_id, spec.spec_hash, secrets.token_bytes(32)
        )
        await self.node.chain_call(
            chain.register_job,
            job_id,
            spec.spec_hash,
            spec.rounds,
            spec.min_updates,
            spec.round_timeout,
        )
        hx = job_id.hex()
        join = participate and spec.dataset in self.sources
        self.store.add_job(
            hx,
            spec_bytes,
            spec.spec_hash.hex(),
            self.node.identity.eth_address,
            spec.name,
            spec.rounds,
            STATUS_ACTIVE,
            "participant" if join else "owner",
        )
        await self.publish(JOBS_TOPIC, protocol.job_announcement(job_id, spec_bytes))
        self._announce_due[hx] = (trio.current_time() + 0.25, 0.5)
        self._announce_wake.set()
        self.node.events.publish("job.published", {"job_id": hx, "name": spec.name})
        if join:
            self._start(job_id, spec)
        return self.job_summary(hx)

    async def cancel_job(self, hx: str) -> dict[str, Any]:
        row = self._row(hx)
        await self.node.chain_call(self.node.chain.cancel_job, bytes.fromhex(row.job_id))
        self.store.update_job(row.job_id, status=STATUS_CANCELLED)
        running = self.running.get(bytes.fromhex(row.job_id))
        if running is not None:
            running.runner.poke()
        return self.job_summary(row.job_id)

    def _row(self, hx: str) -> Any:
        hx = hx.lower().removeprefix("0x")
        row = self.store.job(hx)
        if row is None:
            matches = (
                [j for j in self.store.jobs() if j.job_id.startswith(hx)] if len(hx) >= 4 else []
            )
            if len(matches) != 1:
                raise JobNotFound(f"no job {hx!r} on this node")
            row = matches[0]
        return row

    def job_summary(self, hx: str) -> dict[str, Any]:
        row = self._row(hx)
        out = row.summary()
        rounds = self.store.rounds(row.job_id)
        evaluated = [r for r in rounds if r["metrics"].get("accuracy") is not None]
        last = evaluated[-1]["metrics"] if evaluated else {}
        out.update(
            running=bytes.fromhex(row.job_id) in self.running,
            accuracy=last.get("accuracy"),
            loss=last.get("loss"),
            participants=len(
                {
                    c["participant"]
                    for c in self.store.commitments(row.job_id)
                    if c["kind"] == "update"
                }
            ),
            divergent_rounds=[r["round"] for r in rounds if r["divergent"]],
            bytes_received=sum(r["metrics"].get("bytes_received", 0) for r in rounds),
            bytes_sent=sum(r["metrics"].get("bytes_sent_update", 0) for r in rounds),
        )
        return out

    def jobs(self) -> list[dict[str, Any]]:
        return [self.job_summary(r.job_id) for r in self.store.jobs()]

    def job_detail(self, hx: str) -> dict[str, Any]:
        row = self._row(hx)
        out = self.job_summary(row.job_id)
        out["spec"] = JobSpec.from_bytes(row.spec).to_dict()
        out["rounds_detail"] = self.store.rounds(row.job_id)
        out["commitments"] = self.store.commitments(row.job_id)
        return out

    async def verify_rounds(self, hx: str) -> list[dict[str, Any]]:
        """Compare every finished round's model hash here with what the chain holds."""
        row = self._row(hx)
        jid = bytes.fromhex(row.job_id)
        out = []
        for r in self.store.rounds(row.job_id):
            rec = await self.node.chain_call(self.node.chain.get_round, jid, r["round"])
            top = consensus_of({m.participant: m.model_hash for m in rec.models}).majority
            majority = top.hex() if top is not None else None
            for seq, m in enumerate(rec.models):  # chain order, as the chain returns them
                self.store.add_commitment(
                    row.job_id,
                    r["round"],
                    "model",
                    seq,
                    m.participant,
                    m.model_hash.hex(),
                    replace=True,
                )
                self.store.mark_verified(
                    row.job_id, r["round"], "model", m.participant, m.model_hash.hex() == majority
                )
            out.append(
                {
                    "round": r["round"],
                    "closed": rec.closed,
                    "updates": len(rec.updates),
                    "model_commitments": len(rec.models),
                    "chain_majority": majority,
                    "local_model": r.get("model_hash"),
                    "verified": majority is not None and majority == r.get("model_hash"),
                }
            )
        return out

    def status(self) -> dict[str, Any]:
        rows = self.store.jobs()
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.status] = counts.get(r.status, 0) + 1
        return {
            "ready": self.ready,
            "jobs": counts,
            "running": len(self.running),
            "rejected": self.store.counters("rejected."),
            "alarms": self.store.counters("alarms."),
        }


def _announcement_key(msg: Any) -> tuple[bytes, bytes, str]:
    """What makes two job announcements the same claim: job, spec bytes, signer."""
    p = msg.payload
    return p["job_id"], hashlib.sha256(p["spec"]).digest(), msg.sender_address


def _touch_training() -> None:
    """One tiny job through the real training path (torch's lazy set-up happens here)."""
    import numpy as np

    from gfl.fl.data import ArrayDataset
    from gfl.fl.spec import JobSpec
    from gfl.fl.trainer import initial_params, train_local

    kw = {"in_features": 4, "hidden": 4, "num_classes": 2}
    spec = JobSpec(name="warm-up", model="mlp", model_kwargs=kw, dataset="digits", rounds=1)
    data = ArrayDataset(np.zeros((4, 4), np.float32), np.array([0, 1, 0, 1]))
    train_local(spec, initial_params(spec), data, eval_data=data)
