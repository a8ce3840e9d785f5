"""Shared fixtures: free ports, running the `gfl` CLI, initialised datadirs, node processes.

    def test_something(init_home, start_node, run_gfl):
        home = init_home("a")                 # a datadir on 127.0.0.1, API port 0, embedded chain
        node = start_node(home)               # `gfl up` as a subprocess, waited until it answers
        assert node.client().status()["peer_id"] == node.peer_id
        result = run_gfl("status", "--home", home)
        assert result.returncode == 0

Every wait is bounded; every process started here is stopped at teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from gfl.node.config import Config
from gfl.node.datadir import DataDir

LOCAL_LISTEN = "/ip4/127.0.0.1/tcp/0"
NODE_START_TIMEOUT = 60.0
NODE_STOP_TIMEOUT = 20.0
IN_PROCESS_TIMEOUT = 30.0


def mnist_dir() -> Path:
    """The offline MNIST copy: ``$GFL_MNIST_DIR``, else ``shared/data/mnist`` beside the
    checkout (``../shared`` from the repository's root), here and in CI."""
    override = os.environ.get("GFL_MNIST_DIR", "").strip()
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (below the ephemeral range)."""
    from gfl.chain.devchain import free_port as dev_free_port

    return dev_free_port()


@pytest.fixture(name="free_port")
def free_port_fixture() -> Callable[[], int]:
    """``free_port()`` → a TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_port


def gfl_env(**extra: str) -> dict[str, str]:
    """Environment for a `gfl` subprocess: no inherited GFL_* settings, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GFL_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def gfl_command(*args: Any) -> list[str]:
    return [sys.executable, "-m", "gfl", *map(str, args)]


def run_gfl_process(
    *args: Any, timeout: float = 60.0, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``gfl ARGS`` to completion; output captured as text."""
    return subprocess.run(
        gfl_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or gfl_env(),
        input=input,
    )


@pytest.fixture
def run_gfl() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_gfl("status", "--home", home, timeout=30)`` → CompletedProcess."""
    return run_gfl_process


def local_config(**net: Any) -> Config:
    """A config for tests: loopback only, API on a free port, embedded chain, no mDNS."""
    config = Config().replace("net", listen=[LOCAL_LISTEN], mdns=False, **net)
    config = config.replace("api", port=0, heartbeat_s=1.0)
    return config.replace("chain", url="embedded")


@asynccontextmanager
async def running_node(
    home: Path, endpoints: Any = (), *, full: bool = False, timeout: float = IN_PROCESS_TIMEOUT
) -> AsyncIterator[Any]:
    """A node in this trio loop; ``full``: as `gfl up` assembles it (job service too)."""
    from gfl.node.node import Node, create_node

    datadir = DataDir(home)
    config, identity = datadir.load_config(), datadir.load_identity()
    node = create_node(datadir, config, identity) if full else Node(datadir, config, identity)
    node.add_endpoints(endpoints)
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            with trio.CancelScope(deadline=trio.current_time() + timeout):
                yield node
            node.request_shutdown()


@pytest.fixture
def init_home(tmp_path: Path) -> Callable[..., Path]:
    """``init_home(name="node", config=None, **net)`` → the path of an initialised datadir."""

    def make(name: str = "node", config: Config | None = None, **net: Any) -> Path:
        root = tmp_path / name
        DataDir(root).init(config or local_config(**net))
        return root

    return make


class NodeProcess:
    """A `gfl up` subprocess and how to reach it."""

    def __init__(self, home: Path, proc: subprocess.Popen[str], log_path: Path) -> None:
        self.home = home
        self.proc = proc
        self.log_path = log_path
        self.status: dict[str, Any] = {}

    @property
    def peer_id(self) -> str:
        return self.status["peer_id"]

    @property
    def listen_addrs(self) -> list[str]:
        return self.status["listen_addrs"]

    def client(self, **kw: Any) -> Any:
        from gfl_console.client import NodeClient

        return NodeClient.from_home(self.home, **kw)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = NODE_START_TIMEOUT) -> None:
        from gfl_console.client import NodeNotRunning

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"gfl up exited with {self.proc.returncode}:\n{self.output()[-3000:]}"
                )
            try:
                with self.client(timeout=5.0) as c:
                    self.status = c.status()
                return
            except NodeNotRunning:
                time.sleep(0.2)
        raise AssertionError(f"gfl up not ready after {timeout} s:\n{self.output()[-3000:]}")

    def stop(self, timeout: float = NODE_STOP_TIMEOUT) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """``start_node(home, *extra_up_args, wait=True)`` → a running `NodeProcess`."""
    started: list[NodeProcess] = []

    def start(home: Path, *args: Any, wait: bool = True) -> NodeProcess:
        log_path = tmp_path / f"{Path(home).name}-up-{len(started)}.out"
        out = open(log_path, "w")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            gfl_command("up", "--home", home, *args),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=gfl_env(),
        )
        out.close()
        node = NodeProcess(Path(home), proc, log_path)
        started.append(node)
        if wait:
            node.wait_ready()
        return node

    yield start
    for node in started:
        node.stop()


# -- devnets (gfl.node.devnet): jobs on several node processes ------------------------------------


def job_round(net: Any, i: int, job_id: str) -> int:
    """The round node i of a devnet is at in a job; -1 while it has not heard of the job."""
    from gfl_console.client import ApiRequestError

    try:
        return net.client(i).request("GET", f"/jobs/{job_id}")["round"]
    except ApiRequestError as exc:
        assert exc.status == 404, exc
        return -1


def wait_job_round(net: Any, i: int, job_id: str, r: int, timeout: float = 120) -> None:
    """Wait until node i of a devnet is at round r (or later) of a job."""
    deadline = time.monotonic() + timeout
    while job_round(net, i, job_id) < r:
        assert time.monotonic() < deadline, f"node{i} never reached round {r}"
        time.sleep(0.1)


def finished_alike(net: Any, job_id: str, rounds: int) -> str:
    """Assert that every devnet node finished the job with the same model, each of its rounds
    verified against the chain's majority; returns that model's hash."""
    infos = [net.client(n.index).request("GET", f"/jobs/{job_id}") for n in net.nodes]
    assert all(i["status"] == "finished" for i in infos), [i["status"] for i in infos]
    finals = {i["model_hash"] for i in infos}
    assert len(finals) == 1, f"nodes ended with different models: {finals}"
    for n in net.nodes:
        checks = net.client(n.index).request("GET", f"/jobs/{job_id}/verify")
        assert [c["round"] for c in checks] == list(range(rounds)), checks
        assert all(c["verified"] for c in checks), (n.index, checks)
    return finals.pop()


def on_event(
    client: Any,
    matches: Callable[[dict[str, Any]], bool],
    action: Callable[[], None],
    timeout: float = 120,
    since: int | None = 0,
) -> dict[str, Any]:
    """Call ``action()`` as soon as the events of the node ``client`` reaches (replayed
    from ``since``; 0: from its start) show one that `matches`; returns that event."""
    import threading

    from gfl_console.errors import NodeClientError

    from gfl.errors import GflError

    hit: dict[str, Any] = {}
    seen: list[Any] = []
    done = threading.Event()

    def follow() -> None:
        try:
            for ev in client.events(since=since, dead_after=timeout):
                seen.append((ev.get("type"), (ev.get("data") or {}).get("round")))
                if matches(ev):
                    action()
                    hit.update(ev)
                    break
        except (GflError, NodeClientError) as exc:
            seen.append(exc)
        finally:
            done.set()

    threading.Thread(target=follow, daemon=True).start()
    assert done.wait(timeout) and hit, f"the node never reached that phase: {seen[-12:]}"
    return hit


def act_on_event(
    net: Any,
    i: int,
    matches: Callable[[dict[str, Any]], bool],
    action: Callable[[], None],
    timeout: float = 120,
) -> dict[str, Any]:
    """`on_event` for node i of a devnet, from the events that follow the call."""
    return on_event(net.client(i), matches, action, timeout, since=None)


def job_events(net: Any, i: int, job_id: str, timeout: float = 30) -> list[dict[str, Any]]:
    """Node i's events for a job it finished, replayed from the start of its event buffer,
    up to its ``job.finished``."""
    found = []
    deadline = time.monotonic() + timeout
    for ev in net.client(i).events(since=0, dead_after=timeout):
        data = ev.get("data") or {}
        if data.get("job_id") == job_id:
            found.append(ev)
            if ev["type"] == "job.finished":
                return found
        assert time.monotonic() < deadline, f"node{i} never finished job {job_id}"
    raise AssertionError(f"node{i}'s event stream ended before job {job_id} finished")


def registered_job(
    tmp_path: Path, spec: Any, salt: bytes, table: dict[bytes, bytes] | None = None
) -> tuple[Any, bytes, Any]:
    """An embedded chain (state in tmp_path/chain) with `spec` registered on it, for runner
    tests: (the owner's registry, the job id, ``call(fn, *args)`` running chain calls in a
    worker thread, one at a time, as a node does). M_0 goes into ``table`` (a
    `MemoryExchange`'s), as the owner's node would hold it."""
    import time

    import trio

    from gfl.chain import open_chain
    from gfl.content import content_hash
    from gfl.fl.codec import encode_frame
    from gfl.fl.trainer import initial_params
    from gfl.identity import NodeIdentity
    from gfl.scheduler.registration import job_params

    owner = open_chain("embedded", NodeIdentity.generate(), state_dir=tmp_path / "chain")
    limiter = trio.CapacityLimiter(1)

    async def call(fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=limiter)

    frame = encode_frame(initial_params(spec))
    if table is not None:
        table[content_hash(frame)] = frame
    params = job_params(spec, spec.deadline_after(int(time.time())))
    job_id, _ = owner.register_job(salt * 32, spec.spec_hash, content_hash(frame), params)
    return owner, job_id, call


async def round_0_has_an_update(reg: Any, job_id: bytes, call: Callable[..., Any]) -> bool:
    """Wait until some member committed an update to round 0: True, or False once round 0
    closed without one seen (its count of updates is then back at 0: waiting for it would
    never end)."""
    import trio

    from gfl.chain.records import JobStatus

    while (job := await call(reg.get_job, job_id)).updates < 1:
        if job.round > 0 or job.status is not JobStatus.ACTIVE:
            return False
        await trio.sleep(0.05)
    return True


class MemoryExchange:
    """Blobs shared by the participants of one runner test (a stand-in for the blob protocol);
    round messages go on ``board``, shared the same way (a stand-in for gossip). With ``me``
    and a shared ``members`` (address -> exchange), a member can `ask` another for its
    statements (a stand-in for `gfl.net.asks`); ``gossip`` False: this one hears others'
    round messages only when it asks."""

    def __init__(
        self,
        table: dict[bytes, bytes] | None = None,
        board: list[dict[str, Any]] | None = None,
        me: str = "",
        members: dict[str, MemoryExchange] | None = None,
    ) -> None:
        self.table = {} if table is None else table
        self.board = [] if board is None else board
        self.batches: list[tuple[str, int]] = []  # (owner, blobs asked for) per fetch_many
        self.members = {} if members is None else members
        if me:
            self.members[me.lower()] = self
        self.gossip = True
        self.mine: list[dict[str, Any]] = []  # what this one posted
        self.answers: list[dict[str, Any]] = []  # what it was told when it asked
        self.asks: list[tuple[str, int, list[int]]] = []  # (owner, round, shards) asked
        self.published: list[tuple[str, int, bytes]] = []  # (kind, round, hash) announced
        self.fetched: list[bytes] = []  # blobs asked for one by one (`fetch`)
        self.batched: list[set[bytes]] = []  # the blobs of each batch (`fetch_many`)

    async def publish(
        self, kind: str, r: int, data: bytes, samples: int = 0, signature: bytes = b""
    ) -> bytes:
        h = await self.hold(data)
        self.published.append((kind, r, h))
        return h

    async def fetch(self, blob: bytes, owner: Any, max_size: int, timeout: float) -> bytes:
        import trio

        self.fetched.append(blob)
        with trio.fail_after(timeout):
            while blob not in self.table:
                await trio.sleep(0.01)
        return self.table[blob]

    async def fetch_many(
        self, blobs: Any, owner: str, max_size: int, timeout: float
    ) -> dict[bytes, bytes]:
        self.batches.append((owner, len(blobs)))
        self.batched.append(set(blobs))
        return {h: self.table[h] for h in blobs if h in self.table}

    async def load_local(self, blob: bytes) -> bytes | None:
        return None

    async def hold(self, data: bytes) -> bytes:
        import hashlib

        h = hashlib.sha256(data).digest()
        self.table[h] = bytes(data)
        return h

    async def post(self, body: dict[str, Any]) -> None:
        self.board.append(body)
        self.mine.append(body)

    def heard(self, kind: str, r: int) -> list[dict[str, Any]]:
        pool = (self.board if self.gossip else self.mine) + self.answers
        return [m for m in pool if m["type"] == kind and m["round"] == r]

    async def ask(self, owner: str, r: int, shards: Any) -> int:
        self.asks.append((owner.lower(), r, sorted(shards)))
        other = self.members.get(owner.lower())
        if other is None:
            return 0
        stated = [b for b in other.mine if b["type"] == "shard" and b["round"] == r]
        came = [b for b in stated if b["shard"] in shards]
        self.answers += came
        return len(came)


def small_job_params(chain: Any) -> Any:
    """JobParams of a one-round, one-participant job, its deadline an hour from ``chain``'s
    time."""
    from gfl.chain import JobParams

    return JobParams(
        rounds=1,
        min_updates=1,
        max_participants=1,
        round_timeout=10,
        vote_timeout=10,
        deadline=chain.chain_time() + 3600,
        bond=1,
    )


def register_small_job(
    chain: Any, salt: bytes | None = None, spec_hash: bytes | None = None
) -> bytes:
    """Register a one-round, one-participant job of ``chain``'s account (a random salt and
    spec hash unless given); returns its id."""
    import os

    params = small_job_params(chain)
    salt = os.urandom(32) if salt is None else salt
    spec_hash = os.urandom(32) if spec_hash is None else spec_hash
    return chain.register_job(salt, spec_hash, b"\x02" * 32, params)[0]
