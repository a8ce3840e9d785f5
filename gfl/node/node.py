"""A running GFL node: the libp2p host, the chain backend and the control API, on one trio loop.

`Node.run` owns everything the node starts, in one nursery, and tears it down
in reverse order: the API stops accepting and closes its event streams, the
network leaves its peers, the chain backend closes, the datadir lock is
released. Later layers plug in without editing this file: `add_endpoints`
for API routes, `add_service` for tasks that live as long as the node (the
job scheduler).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, suppress
from typing import TYPE_CHECKING, Any, TypeVar

import trio

import gfl
from gfl.errors import GflError
from gfl.node.api.app import Endpoint, build_app
from gfl.node.api.core import core_endpoints
from gfl.node.api.server import bind_socket, serve_api
from gfl.node.config import Config
from gfl.node.datadir import ApiInfo, DataDir
from gfl.node.events import EventBus

if TYPE_CHECKING:
    from gfl.identity import NodeIdentity

log = logging.getLogger(__name__)

T = TypeVar("T")
Service = Callable[["Node", trio.TaskStatus[None]], Awaitable[None]]

CHAIN_STATUS_TIMEOUT = 5.0


class NodeStartError(GflError):
    """The node cannot start as configured."""


class Node:
    """One node process: identity, config, network, chain, API and event bus."""

    def __init__(self, datadir: DataDir, config: Config, identity: NodeIdentity) -> None:
        self.datadir = datadir
        self.config = config
        self.identity = identity
        self.events = EventBus(config.api.event_buffer)
        self.network: Any = None  # gfl.net.Network once running
        self.chain: Any = None  # gfl.chain Registry once running
        self.jobs: Any = None  # the job service, when one is installed (gfl.node.api.jobs uses it)
        self.nursery: trio.Nursery | None = None
        self.api_address: tuple[str, int] | None = None
        self.started_at: float | None = None
        self.finished = trio.Event()
        self._stop = trio.Event()
        self._chain_lock = trio.CapacityLimiter(1)
        self._endpoints: list[Endpoint] = list(core_endpoints())
        self._services: list[Service] = []
        self._peer_id = identity.peer_id
        self._address = identity.eth_address

    # -- extension points -----------------------------------------------------------------
    def add_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """Serve more API routes (call before `run`)."""
        self._endpoints.extend(endpoints)

    def add_service(self, service: Service) -> None:
        """Run ``await service(node, task_status)`` in the node's nursery; it must call
        ``task_status.started()`` once ready and return when cancelled."""
        self._services.append(service)

    async def chain_call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking chain call in a worker thread, one at a time.

        Cancellation does not wait for the call (a dead RPC endpoint can take its
        whole retry budget): the thread is abandoned and the chain stays the
        authority on whether a write landed, which the job runner re-reads.
        """
        return await trio.to_thread.run_sync(
            fn, *args, limiter=self._chain_lock, abandon_on_cancel=True
        )

    @property
    def heartbeat_s(self) -> float:
        return self.config.api.heartbeat_s

    # -- what the API asks ----------------------------------------------------------------
    async def peers(self) -> list[dict[str, Any]]:
        return list(self.network.peers()) if self.network is not None else []

    async def chain_info(self) -> dict[str, Any] | None:
        if self.chain is None:
            return None
        chain = self.chain
        block = balance = None
        with trio.move_on_after(CHAIN_STATUS_TIMEOUT):
            try:
                block, balance = await trio.to_thread.run_sync(
                    lambda: (chain.block_number(), chain.balance()),
                    limiter=self._chain_lock,
                    abandon_on_cancel=True,
                )
            except Exception as exc:
                log.warning("cannot read the chain's block number and balance: %s", exc)
        return {
            "endpoint": str(chain.endpoint),
            "chain_id": chain.chain_id,
            "block": block,
            "registry": chain.registry_address,
            "account": str(chain.account),
            "balance_wei": balance,
        }

    async def status(self) -> dict[str, Any]:
        host, port = self.api_address or (self.config.api.host, self.config.api.port)
        return {
            "version": gfl.__version__,
            "name": self.config.node.name,
            "address": self._address,
            "peer_id": self._peer_id,
            "listen_addrs": self.network.listen_addrs() if self.network is not None else [],
            "peers": await self.peers(),
            "uptime_s": round(time.monotonic() - self.started_at, 3) if self.started_at else 0.0,
            "chain": await self.chain_info(),
            "api": {"host": host, "port": port},
            "home": str(self.datadir.root),
            "pid": os.getpid(),
            "net": self.network.stats() if self.network is not None else None,
            "jobs": self.jobs.status() if self.jobs is not None else None,
        }

    def request_shutdown(self) -> None:
        """Begin a clean stop (API POST /shutdown, SIGINT, SIGTERM)."""
        if not self._stop.is_set():
            log.info("shutdown requested")
            self._stop.set()

    # -- lifecycle --------------------------------------------------------------------------
    async def _stop_api(self) -> None:
        await self._stop.wait()
        self.events.publish("node.stopping", {})
        self.events.close()  # ends the event streams so the API can stop at once

    async def _open_chain(self, stack: AsyncExitStack) -> None:
        try:
            from gfl.chain import open_chain
        except ImportError:  # the chain layer is not installed in this checkout yet
            log.warning("gfl.chain.open_chain is not available; running without a chain")
            return
        cfg = self.config.chain
        self.datadir.chain_dir.mkdir(exist_ok=True)
        log.info("opening chain %s", cfg.url)
        chain = await trio.to_thread.run_sync(
            lambda: open_chain(
                cfg.url,
                self.identity,
                registry_address=cfg.registry or None,
                state_dir=self.datadir.chain_dir,
            )
        )
        self.chain = chain

        async def close() -> None:
            self.chain = None
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(chain.close)

        stack.push_async_callback(close)
        self.events.publish(
            "chain.connected", {"endpoint": str(chain.endpoint), "chain_id": chain.chain_id}
        )
        await self._check_funding()

    async def _check_funding(self) -> None:
        """Warn once at start when the account cannot pay for a round (it would fail later,
        at its first job, far from the cause)."""
        from gfl.node.funding import check_funding

        funding = None
        with trio.move_on_after(CHAIN_STATUS_TIMEOUT):
            try:
                funding = await self.chain_call(check_funding, self.chain, self.config.chain.url)
            except Exception as exc:  # a warning, not a reason to refuse the start
                log.warning("cannot read the account's balance: %s", exc)
        if funding is not None and not funding.enough:
            log.warning("%s", funding.warning())
            self.events.publish("chain.underfunded", funding.as_event())

    async def _open_network(self, stack: AsyncExitStack) -> None:
        from gfl.net import open_network
        from gfl.net.relay import RelaySettings
        from gfl.node.logs import adopt_library_loggers

        adopt_library_loggers()
        net_cfg = self.config.net
        self.datadir.blobs_dir.mkdir(exist_ok=True)
        self.network = await stack.enter_async_context(
            open_network(
                self.identity,
                listen=net_cfg.listen,
                bootstrap=net_cfg.bootstrap,
                mdns=net_cfg.mdns,
                max_peers=net_cfg.max_peers,
                reprovide_interval=net_cfg.reprovide_s,
                blob_dir=self.datadir.blobs_dir,
                blob_cap_bytes=net_cfg.blob_cap_mb << 20,
                on_event=self.events.on_event,
                reachability=net_cfg.reachability,
                relay=RelaySettings(
                    serve=net_cfg.relay_service,
                    max_reservations=net_cfg.relay_max_reservations,
                    max_circuits=net_cfg.relay_max_circuits,
                    circuit_bytes=net_cfg.relay_circuit_mb << 20,
                    circuit_s=net_cfg.relay_circuit_s,
                ),
            )
        )
        stack.callback(setattr, self, "network", None)
        if net_cfg.listen and not self.network.listen_addrs():
            # py-libp2p logs a failed listen and carries on deaf; a node nobody can dial
            # is a misconfiguration, so refuse to start.
            raise NodeStartError(
                f"cannot listen on {', '.join(net_cfg.listen)} "
                "(is the port in use? choose another with --listen)"
            )

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        """Start everything, report started, and run until `request_shutdown`."""
        try:
            with self.datadir.lock():
                sock = bind_socket(self.config.api.host, self.config.api.port)
                try:
                    await self._run_locked(sock, task_status)
                finally:
                    sock.close()
        finally:
            self.finished.set()

    async def _run_locked(self, sock: Any, task_status: trio.TaskStatus[Node]) -> None:
        check_listen_ports(self.config.net.listen)
        token = self.datadir.read_token()
        app = build_app(self, self._endpoints, token=token)
        self.started_at = time.monotonic()
        async with AsyncExitStack() as stack:
            await self._open_chain(stack)
            await self._open_network(stack)
            async with trio.open_nursery() as services:
                self.nursery = services
                for service in self._services:
                    await services.start(service, self)
                async with trio.open_nursery() as api:
                    self.api_address = await api.start(serve_api, app, sock, self._stop_api)
                    host, port = self.api_address
                    self.datadir.write_api_info(ApiInfo(host=host, port=port, pid=os.getpid()))
                    stack.callback(self.datadir.clear_api_info)
                    self.events.publish(
                        "node.started",
                        {"peer_id": self._peer_id, "address": self._address, "api_port": port},
                    )
                    log.info(
                        "node %s (%s) up; API on %s:%d", self._peer_id, self._address, host, port
                    )
                    task_status.started(self)
                # the API has stopped (request_shutdown): stop the services
                services.cancel_scope.cancel()
            self.nursery = None
        log.info("node stopped")


def check_listen_ports(listen: Sequence[str]) -> None:
    """Refuse a TCP port another process listens on (`NodeStartError`).

    py-libp2p binds with SO_REUSEPORT, so a second node on a port in use would start
    and the kernel would share the incoming connections between the two. A plain bind
    (SO_REUSEADDR only, so our own last run's TIME_WAIT is no conflict) fails while any
    socket listens there; the probe is closed at once and libp2p binds next.
    """
    from multiaddr import Multiaddr

    for addr in listen:
        ma = Multiaddr(addr)
        port = int(ma.value_for_protocol("tcp"))
        if port == 0:
            continue
        names = [p.name for p in ma.protocols()]
        family = socket.AF_INET6 if names[0] == "ip6" else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((ma.value_for_protocol(names[0]), port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise NodeStartError(
                        f"tcp/{port} is in use by another process: choose another with --listen"
                    ) from None
                raise NodeStartError(f"cannot listen on {addr}: {exc.strerror}") from None


async def job_service(node: Node, task_status: trio.TaskStatus[None]) -> None:
    """The job service as a node service, built from the node's parts once they run."""
    from gfl.node.store import Store
    from gfl.scheduler.policy import JoinPolicy
    from gfl.scheduler.service import JobService, ServiceSettings
    from gfl.scheduler.sources import DataSources

    assert node.network is not None
    cfg = node.config
    store = Store(node.datadir.db_path)
    try:
        node.jobs = JobService(
            store=store,
            network=node.network,
            registry=node.chain,
            chain_call=node.chain_call,
            events=node.events,
            sources=DataSources(cfg.data, eval_limit=cfg.train.eval_limit),
            settings=ServiceSettings(
                policy=JoinPolicy.from_config(
                    cfg.jobs.auto_join,
                    cfg.jobs.allow_owners,
                    cfg.jobs.max_concurrent,
                    max_epsilon=cfg.privacy.max_epsilon,
                ),
                device=cfg.train.device,
                models_dir=node.datadir.models_dir,
                blob_keep_s=cfg.net.blob_keep_s,
                archive=cfg.net.archive,
            ),
        )
        await node.jobs.serve(task_status=task_status)
    finally:
        node.jobs = None
        store.close()


MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt() parameter number


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """Let glibc's malloc use at most ``arenas`` arenas in this process (no-op elsewhere).

    glibc gives threads that allocate at once arenas of their own, up to 8 per core, and
    an arena keeps what was freed in it: a node's worker threads (training, evaluation
    beside it, codec, chain calls) each held on to tens of MB. With two, a 4-node MNIST
    devnet's peak memory fell ~20 % (bench/RESULTS.md)."""
    import ctypes

    with suppress(OSError, AttributeError):  # AttributeError: not glibc
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, arenas)


def create_node(datadir: DataDir, config: Config, identity: NodeIdentity) -> Node:
    """The node as `gfl up` runs it: network, chain, control API and the job service."""
    from gfl.node.api.jobs import job_endpoints

    limit_malloc_arenas()

    node = Node(datadir, config, identity)
    node.add_endpoints(job_endpoints())
    node.add_service(job_service)
    return node
