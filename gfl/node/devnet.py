"""`gfl devnet`: a local testnet — a chain, N node processes, a dataset split among them.

It starts anvil when it is installed (else the embedded chain, served over
JSON-RPC from this process), deploys the JobRegistry, funds every node's
account, starts N ``gfl up`` processes on 127.0.0.1 (each with its own datadir
and its own partition of the data; forked from a zygote that imported torch, web3
and py-libp2p once, see gfl/zygote.py), publishes a demo job through node 0's
control API, shows progress, checks every round's model hash on chain and
prints a summary. Without ``--keep`` it then stops everything it started.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gfl.errors import GflError
from gfl.node.zygote import NODE_MODULES, ForkedProcess, Zygote, ZygoteError

if TYPE_CHECKING:
    from gfl_console.client import NodeClient
    from gfl_console.types import NodeStatus

START_TIMEOUT_S = 90.0
START_PER_NODE_S = 4.0  # each node imports torch, web3 and libp2p: ~5 CPU-seconds on its own
FUNDING_WEI = 100 * 10**18

log = logging.getLogger(__name__)


DEMO_BOND = "0.001 ether"
DEMO_MAX_SAMPLES = 10_000


class DevnetError(GflError):
    """The devnet could not be started or did not complete its demo."""


@dataclass
class DevnetNode:
    index: int
    home: Path
    api_port: int
    p2p_port: int
    peer_id: str
    address: str
    process: subprocess.Popen[bytes] | ForkedProcess | None = None
    host: str = "127.0.0.1"  # the IPv4 address its libp2p host listens on

    @property
    def multiaddr(self) -> str:
        return f"/ip4/{self.host}/tcp/{self.p2p_port}/p2p/{self.peer_id}"


@dataclass
class Devnet:
    """A running devnet: its chain and nodes (a context manager stops them)."""

    root: Path
    chain_url: str
    registry: str
    chain_kind: str
    nodes: list[DevnetNode] = field(default_factory=list)
    _chain: Any = None
    _zygote: Zygote | None = None
    _cleanup_root: bool = False

    _clients: dict[int, NodeClient] = field(default_factory=dict, repr=False)

    def client(self, i: int) -> NodeClient:
        """Node i's API client, made once and reused (the progress loops poll often)."""
        if i not in self._clients:
            from gfl_console.client import NodeClient

            self._clients[i] = NodeClient.from_home(self.nodes[i].home, timeout=30)
        return self._clients[i]

    def stop(self) -> None:
        from gfl_console.client import NodeClientError

        for n in self.nodes:
            if n.process is not None and n.process.poll() is None:
                with contextlib.suppress(GflError, NodeClientError):
                    self.client(n.index).shutdown()
        deadline = time.monotonic() + 20
        for n in self.nodes:
            if n.process is None:
                continue
            try:
                n.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                n.process.kill()
                n.process.wait(5)
        for c in self._clients.values():
            c.close()
        self._clients.clear()
        if self._zygote is not None:  # after the nodes: it reports their exit status
            self._zygote.close()
            self._zygote = None
        if self._chain is not None:
            (self._chain.stop if hasattr(self._chain, "stop") else self._chain.close)()
            self._chain = None
        if self._cleanup_root:
            shutil.rmtree(self.root, ignore_errors=True)


def _free_port(taken: set[int]) -> int:
    from gfl.chain.devchain import free_port

    return free_port(taken)


def start_chain(prefer_anvil: bool = True) -> tuple[Any, str, str, bytes]:
    """(handle, url, kind, funder key): anvil when installed, else the served embedded chain."""
    from gfl.chain.devchain import (
        ANVIL_DEV_KEY,
        EMBEDDED_DEV_KEY,
        find_anvil,
        serve_embedded,
        start_anvil,
    )

    if prefer_anvil and find_anvil() is not None:
        handle = start_anvil()
        return handle, handle.url, "anvil", ANVIL_DEV_KEY
    server = serve_embedded("127.0.0.1", 0)
    return server, server.url, "embedded", EMBEDDED_DEV_KEY


def start_devnet(
    n: int,
    *,
    data: str = "digits",
    partition: str = "iid",
    root: Path | None = None,
    prefer_anvil: bool = True,
    seed: int = 0,
    verbose: bool = False,
    data_limit: int | None = None,
    host: str = "127.0.0.1",
    fork: bool = True,
    jobs: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
) -> Devnet:
    """Start a chain and `n` node processes; returns once every node's API answers.

    ``host`` is the IPv4 address the nodes' libp2p hosts listen on (their APIs stay
    on loopback). With ``fork`` the nodes are forked from a zygote (one import of torch,
    web3 and py-libp2p for all, shared memory); else each is a fresh ``gfl up`` process.
    ``jobs``, ``train``: more ``[jobs]`` / ``[train]`` settings for every node
    (``max_concurrent=1``, ``eval_limit=200``).
    """
    if not 1 <= n <= 64:
        raise DevnetError("--nodes must be between 1 and 64")
    cleanup = root is None
    root = Path(tempfile.mkdtemp(prefix="gfl-devnet-")) if root is None else root
    root.mkdir(parents=True, exist_ok=True)
    # the zygote imports while this process imports web3, starts the chain and deploys
    zygote = _start_zygote(root, data) if fork else None
    try:
        from gfl.chain import deploy_registry
        from gfl.chain.devchain import fund
        from gfl.node.config import Config
        from gfl.node.datadir import DataDir

        chain, url, kind, funder = start_chain(prefer_anvil)
    except BaseException:
        if zygote is not None:
            zygote.close()
        raise
    net = Devnet(
        root=root,
        chain_url=url,
        registry="",
        chain_kind=kind,
        _chain=chain,
        _zygote=zygote,
        _cleanup_root=cleanup,
    )
    try:
        homes = []
        taken: set[int] = set()  # else 2n picks among 12,000 ports collide: odds ~n²/6,000
        for i in range(n):
            home = root / f"node{i}"
            api_port, p2p_port = _free_port(taken), _free_port(taken)
            config = (
                Config()
                .replace("net", listen=[f"/ip4/{host}/tcp/{p2p_port}"])
                .replace("api", port=api_port, heartbeat_s=2.0)
                .replace("chain", url=url)
                .replace("jobs", auto_join=True, **(jobs or {}))
                .replace("train", **(train or {}))
                .replace("node", name=f"node{i}")
            )
            src: dict[str, Any] = {"partition": partition, "index": i, "of": n, "seed": seed}
            if data_limit:
                src["limit"] = data_limit
            if data != "digits":
                src["root"] = os.environ.get("GFL_DATA_DIR", "")
            config = dataclasses.replace(config, data={data: src})
            identity = DataDir(home).init(config, force=True)
            homes.append(home)
            net.nodes.append(
                DevnetNode(
                    i, home, api_port, p2p_port, identity.peer_id, identity.eth_address, host=host
                )
            )
        deployer = DataDir(homes[0]).load_identity()
        fund(url, funder, [d.address for d in net.nodes], FUNDING_WEI)
        net.registry = deploy_registry(url, deployer)
        for node in net.nodes:
            _set_chain_and_peers(node, net)
        for node in net.nodes:
            node.process = _spawn(node, verbose, zygote=net._zygote)
        _wait_up(net)
        return net
    except BaseException:
        net.stop()
        raise


def _set_chain_and_peers(node: DevnetNode, net: Devnet) -> None:
    from gfl.node.config import update_config

    boot = [net.nodes[0].multiaddr] if node.index else []
    cfg = node.home / "config.toml"
    update_config(cfg, "chain", url=net.chain_url, registry=net.registry)
    # archive nodes: a devnet's jobs are small, and `gfl job export` then works on any node
    update_config(cfg, "net", bootstrap=boot, archive=True)


def _start_zygote(root: Path, data: str) -> Zygote | None:
    preload = (*NODE_MODULES, "sklearn.datasets") if data == "digits" else NODE_MODULES
    try:
        return Zygote.start(preload, env=_node_env(), stderr=root / "zygote.log")
    except OSError as exc:
        log.warning("devnet: no zygote (%s); starting each node as its own process", exc)
        return None


def _node_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _spawn(
    node: DevnetNode,
    verbose: bool,
    prefix: Sequence[str] = (),
    zygote: Zygote | None = None,
) -> subprocess.Popen[bytes] | ForkedProcess:
    """``gfl up --home node.home``, output to its logs/out.log: forked from ``zygote``
    when given, else a new process; ``prefix`` wraps the command (e.g. ``ip netns exec
    NS`` to run the node in a network namespace)."""
    (node.home / "logs").mkdir(parents=True, exist_ok=True)
    log_path = node.home / "logs" / "out.log"
    argv = ["-m", "gfl", "up", "--home", str(node.home), *(["-v"] if verbose else [])]
    if zygote is not None and not prefix:
        try:
            return zygote.spawn(argv, log_path=log_path, env=_node_env())
        except ZygoteError as exc:
            log.warning("devnet: %s; starting node%d as its own process", exc, node.index)
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            [*prefix, sys.executable, *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=_node_env(),
            start_new_session=True,
        )


def _wait_up(net: Devnet) -> None:
    from gfl_console.client import NodeClientError

    limit = START_TIMEOUT_S + START_PER_NODE_S * len(net.nodes)  # they share the cores
    deadline = time.monotonic() + limit
    pending = list(net.nodes)
    while pending:
        node = pending[0]
        if node.process is not None and node.process.poll() is not None:
            tail = (node.home / "logs" / "out.log").read_text(errors="replace")[-600:]
            raise DevnetError(f"node{node.index} exited at start:\n{tail}")
        try:
            net.client(node.index).status()
            pending.pop(0)
            continue
        except (NodeClientError, GflError):
            pass
        if time.monotonic() > deadline:
            raise DevnetError(f"node{node.index} did not start within {limit:.0f}s")
        time.sleep(0.2)
    # wait until each node has torch and its data loaded, so round 1 costs what round 2 does
    deadline = time.monotonic() + limit
    for node in net.nodes:
        while not _warmed_up(net.client(node.index).status()):
            if time.monotonic() > deadline:
                raise DevnetError(f"node{node.index} did not warm up within {limit:.0f}s")
            time.sleep(0.2)
    # wait until each node sees at least one peer (gossip needs a mesh)
    deadline = time.monotonic() + 30
    for node in net.nodes if len(net.nodes) > 1 else []:
        while not net.client(node.index).peers():
            if time.monotonic() > deadline:
                raise DevnetError(f"node{node.index} found no peers within 30s")
            time.sleep(0.2)


def _warmed_up(status: NodeStatus) -> bool:
    """Whether the node's job service has torch and its data loaded."""
    jobs = status.get("jobs")
    return bool(jobs and jobs.get("ready"))


def demo_spec(
    nodes: int,
    *,
    data: str,
    rounds: int,
    model: str | None = None,
    allow: Sequence[str] = (),
) -> Any:
    """The demo job: McMahan's 2NN (or CNN) with FedAvg on the devnet's data. Admission:
    the ``allow`` addresses, or (none given) anyone paying a small bond (dev accounts are
    funded); at most 10,000 samples per update."""
    from gfl.fl.spec import JobSpec

    if data == "digits":
        b = JobSpec.builder("devnet-demo").model(model or "mlp", in_features=64, hidden=64)
        b = b.data("digits").train(epochs=3, batch_size=16, lr=0.1)
    else:
        b = JobSpec.builder("devnet-demo").model(model or "cnn").data(data)
        b = b.train(epochs=1, batch_size=10, lr=0.05)
    spec = (
        b.strategy("fedavg")
        .rounds(rounds, min_updates=max(1, nodes - 1), timeout=30)
        .seed(7)
        .build()
    )
    admission = {"allow": list(allow)} if allow else {"bond": DEMO_BOND}
    return spec.replace(max_samples=DEMO_MAX_SAMPLES, admission=admission)


def watch_job(net: Devnet, job_id: str, *, timeout: float, out: Any = sys.stdout) -> dict[str, Any]:
    """Follow the job until every node finished it; print a line per evaluated round."""
    from gfl_console.client import ApiRequestError

    t0 = time.monotonic()
    printed = 0
    while True:
        try:
            infos = [net.client(n.index).job(job_id) for n in net.nodes]
        except ApiRequestError as exc:  # a node has not heard of the job yet
            if exc.status != 404 or time.monotonic() - t0 > 30:
                raise
            time.sleep(0.2)
            continue
        head = infos[0]
        for rd in head["rounds_detail"][printed:]:
            acc = rd["metrics"].get("accuracy")
            if acc is None:
                break
            printed += 1
            elapsed = time.monotonic() - t0
            eta = elapsed / printed * (head["rounds"] - printed)
            print(
                f"round {printed:>3}/{head['rounds']}  accuracy {100 * acc:5.1f}%  "
                f"elapsed {elapsed:6.1f}s  eta {eta:6.1f}s",
                file=out,
                flush=True,
            )
        if all(i["status"] in ("finished", "cancelled", "error") for i in infos):
            return {"infos": infos, "elapsed": time.monotonic() - t0}
        if time.monotonic() - t0 > timeout:
            raise DevnetError(f"the demo job did not finish within {timeout:.0f}s")
        time.sleep(0.25)


def summarize(net: Devnet, job_id: str, result: dict[str, Any], out: Any = sys.stdout) -> bool:
    """Print accuracy per round and the chain check; True when everything verifies."""
    head = net.client(0).job(job_id)
    print("\nround  accuracy   loss    model hash (node0)   on chain", file=out)
    checks = [net.client(n.index).verify(job_id) for n in net.nodes]
    ok = True
    for rd in head["rounds_detail"]:
        r = rd["round"]
        m = rd["metrics"]
        verified = all(any(c["round"] == r and c["verified"] for c in chk) for chk in checks)
        ok &= verified
        acc = m.get("accuracy")
        print(
            f"{r + 1:>5}  {100 * acc if acc is not None else float('nan'):7.2f}%  "
            f"{m.get('loss', float('nan')):6.4f}  {(rd.get('model_hash') or '')[:16]}     "
            f"{'verified' if verified else 'MISMATCH'}",
            file=out,
        )
    finals = {i["model_hash"] for i in result["infos"]}
    same = len(finals) == 1
    ok &= same and all(i["status"] == "finished" for i in result["infos"])
    print(
        f"\n{len(net.nodes)} nodes, {head['rounds']} rounds in {result['elapsed']:.1f}s; "
        f"final model {'identical on every node' if same else 'DIFFERS between nodes'}; "
        f"every round's hash {'matches' if ok else 'does NOT match'} the chain "
        f"({net.chain_kind} chain, registry {net.registry})",
        file=out,
    )
    return ok


@contextlib.contextmanager
def running_devnet(n: int, **kw: Any) -> Iterator[Devnet]:
    net = start_devnet(n, **kw)
    try:
        yield net
    finally:
        net.stop()


def run(args: Any) -> int:
    """The `gfl devnet` command."""
    root = Path(args.dir).resolve() if args.dir else None
    print(f"starting a devnet of {args.nodes} nodes ...", flush=True)
    t0 = time.monotonic()
    net = start_devnet(
        args.nodes,
        data=args.data,
        partition=args.partition,
        root=root,
        prefer_anvil=not args.no_anvil,
        verbose=getattr(args, "verbose", 0) > 0,
    )
    try:
        print(f"chain: {net.chain_kind} at {net.chain_url}, registry {net.registry}")
        for node in net.nodes:
            print(
                f"node{node.index}: {node.address}  api 127.0.0.1:{node.api_port}  {node.multiaddr}"
            )
        print(f"up in {time.monotonic() - t0:.1f}s; publishing the demo job", flush=True)
        spec = demo_spec(
            args.nodes,
            data=args.data,
            rounds=args.rounds,
            allow=[n.address for n in net.nodes],
        )
        job = net.client(0).publish(spec.to_dict())
        print(
            f"job {job['job_id']} ({spec.name}: {spec.model} on {spec.dataset}, "
            f"{spec.rounds} rounds, {spec.strategy})",
            flush=True,
        )
        result = watch_job(net, job["job_id"], timeout=args.timeout)
        ok = summarize(net, job["job_id"], result)
        if args.keep:
            print(
                f"\ndevnet kept running in {net.root}. Attach with:\n"
                f"  gfl attach --home {net.nodes[0].home}\nPress Ctrl-C to stop it.",
                flush=True,
            )
            net._cleanup_root = False
            with contextlib.suppress(KeyboardInterrupt):
                while any(n.process and n.process.poll() is None for n in net.nodes):
                    time.sleep(1)
        return 0 if ok else 1
    finally:
        print("stopping the devnet ...", flush=True)
        net.stop()
