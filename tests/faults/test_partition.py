"""A real network partition: one node of a devnet runs in its own network namespace and the
test cuts its links with ``ip link set ... down`` while a job runs.

The namespace has two veth links to the root namespace, where the other nodes and the chain
run: "p2p" (libp2p) and "mgmt" (the chain's JSON-RPC endpoint and the node's control API).
Unlike SIGSTOP, the cut-off node keeps running: its dials fail, its chain calls fail, its
timers fire, and it must find its way back by itself once the links return.

Needs root (network namespaces); skipped otherwise, except under CI, which runs as root
(tests/skip_policy.py).
"""

from __future__ import annotations

import io
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from gfl_console.errors import NodeClientError
from phases import phase, training_after_full_round
from support import act_on_event, finished_alike, job_round, wait_job_round

from gfl.errors import GflError
from gfl.fl.rounds import excluded_positions
from gfl.node.devnet import Devnet, _spawn, demo_spec, running_devnet, watch_job
from gfl.scheduler.joblog import JobLog

pytestmark = pytest.mark.slow

NODES = 3
VICTIM = 2
# How long the full cut lasts is the fault itself, not a wait: longer than one chain call's
# retry budget (gfl.chain.open_chain: 30 s), so the first chain call to meet the cut gives
# up (the node makes them one at a time: the job runner's, or the event poller's with the
# runner's queued behind it) and the node must wait the chain out.
FULL_CUT_S = 35.0


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@dataclass
class Link:
    """One veth pair: `outside` in the root namespace, `inside` in the node's namespace."""

    outside: str
    inside: str
    outside_ip: str
    inside_ip: str


@dataclass
class Namespace:
    """A network namespace joined to the root namespace by a p2p and a mgmt link."""

    name: str
    p2p: Link
    mgmt: Link

    @property
    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def cut(self, *links: Link) -> None:
        """Take the namespace's end of each link down: the node inside loses its routes
        (its sends fail at once), and what the others send it is silently dropped."""
        for link in links:
            _ip("-n", self.name, "link", "set", link.inside, "down")

    def heal(self, *links: Link) -> None:
        for link in links:
            _ip("-n", self.name, "link", "set", link.inside, "up")


def _free_slot() -> int:
    """A number for this run's namespace, interface names and /30 subnets that nothing on
    this machine uses (another run of this test, a leftover of a killed one)."""
    used = set()
    for cmd in (["ip", "-o", "addr"], ["ip", "-o", "link"], ["ip", "netns", "list"]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
        used |= {w.rstrip(":").split("@")[0] for w in out.split()}
    n = os.getpid() % 4096
    while used & {f"gfl-part-{n}", f"gflp{n}o", f"10.{224 + n // 256}.{n % 256}.1/30"}:
        n = (n + 1) % 4096
    return n


@pytest.fixture(scope="module")
def namespace() -> Iterator[Namespace]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    n = _free_slot()
    name = f"gfl-part-{n}"
    try:
        _ip("netns", "add", name)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot create a network namespace: {exc}")
    links = [
        Link(f"gflp{n}o", f"gflp{n}i", f"10.{224 + n // 256}.{n % 256}.1", ""),
        Link(f"gflm{n}o", f"gflm{n}i", f"10.{240 + n // 256}.{n % 256}.1", ""),
    ]
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("link", "add", links[0].outside, "type", "veth", "peer", "name", links[0].inside)
    except subprocess.CalledProcessError as exc:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        pytest.skip(f"cannot create veth links: {exc.stderr.strip()}")
    try:
        for link in links:
            link.inside_ip = link.outside_ip[:-1] + "2"
            if link is not links[0]:
                _ip("link", "add", link.outside, "type", "veth", "peer", "name", link.inside)
            _ip("link", "set", link.inside, "netns", name)
            _ip("addr", "add", f"{link.outside_ip}/30", "dev", link.outside)
            _ip("-n", name, "addr", "add", f"{link.inside_ip}/30", "dev", link.inside)
            _ip("link", "set", link.outside, "up")
            _ip("-n", name, "link", "set", link.inside, "up")
        yield Namespace(name, *links)
    finally:
        for link in links:
            subprocess.run(["ip", "link", "del", link.outside], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def devnet(namespace: Namespace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    """3 nodes: 0 and 1 in the root namespace, 2 in `namespace`; the chain on the mgmt link."""
    import gfl.node.devnet
    from gfl.chain.devchain import EMBEDDED_DEV_KEY, serve_embedded

    def start_chain(prefer_anvil: bool = True) -> tuple[Any, str, str, bytes]:
        server = serve_embedded(namespace.mgmt.outside_ip, 0)
        return server, server.url, "embedded", EMBEDDED_DEV_KEY

    root = tmp_path_factory.mktemp("partition")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gfl.node.devnet, "start_chain", start_chain)
        with running_devnet(
            NODES, root=root / "net", prefer_anvil=False, host=namespace.p2p.outside_ip
        ) as net:
            try:
                _move_into(net, VICTIM, namespace)
                yield net
            finally:
                namespace.heal(namespace.p2p, namespace.mgmt)  # so that it can stop cleanly


def _move_into(net: Devnet, i: int, ns: Namespace, timeout: float = 90) -> None:
    """Stop node i, point its config at the namespace's addresses, start it there."""
    from gfl.node.config import update_config

    node = net.nodes[i]
    net.client(i).shutdown()
    node.process.wait(30)
    net._clients.pop(i).close()
    cfg = node.home / "config.toml"
    update_config(cfg, "net", listen=[f"/ip4/{ns.p2p.inside_ip}/tcp/{node.p2p_port}"])
    update_config(cfg, "api", host=ns.mgmt.inside_ip)  # the node warns: not loopback
    node.host = ns.p2p.inside_ip
    node.process = _spawn(node, False, prefix=ns.exec_prefix)
    deadline = time.monotonic() + timeout
    while True:
        assert node.process.poll() is None, _tail(net, i)
        try:
            status = net.client(i).status()
            if (status.get("jobs") or {}).get("ready") and status["peers"]:
                break
        except (GflError, NodeClientError):
            net._clients.pop(i, None)  # the API info file may not be written yet
        assert time.monotonic() < deadline, f"node{i} not up in its namespace:\n{_tail(net, i)}"
        time.sleep(0.3)
    assert any(ns.p2p.inside_ip in a for a in status["listen_addrs"]), status["listen_addrs"]


def _wait_api(net: Devnet, i: int, timeout: float = 90) -> None:
    """Wait until node i's API answers again: a link that was down takes a moment to carry
    traffic again (carrier, neighbour entries), and the node must have survived."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            net.client(i).status()
            return
        except (GflError, NodeClientError) as exc:
            assert net.nodes[i].process.poll() is None, f"node{i} died:\n{_tail(net, i)}"
            assert time.monotonic() < deadline, f"node{i}'s API is gone: {exc}\n{_tail(net, i)}"
            time.sleep(0.3)


def _tail(net: Devnet, i: int) -> str:
    return (net.nodes[i].home / "logs" / "out.log").read_text(errors="replace")[-3000:]


def _job(net: Devnet, rounds: int, timeout: int = 6) -> str:
    """The demo job: two updates a round, no member ejected for the rounds it missed."""
    spec = demo_spec(NODES, data="digits", rounds=rounds).replace(
        min_updates=2, round_timeout=timeout, max_missed=rounds
    )
    return net.client(0).request("POST", "/jobs", json={"spec": spec.to_dict()})["job_id"]


def _chain_log(net: Devnet, jid: str) -> JobLog:
    """The job's history as the devnet's chain recorded it (checked against its log head)."""
    from gfl.chain import open_chain
    from gfl.identity import NodeIdentity

    chain = open_chain(net.chain_url, NodeIdentity.generate(), registry_address=net.registry)
    try:
        log = JobLog(bytes.fromhex(jid))
        log.apply(chain.verify_log(bytes.fromhex(jid)))
    finally:
        chain.close()
    return log


def test_partitioned_node_rejoins_and_catches_up(devnet: Devnet, namespace: Namespace):
    """Node 2 loses both links, its peers and its chain endpoint, while it trains a round
    (after one that used all three updates), for over half a minute; the others go on
    without it. It keeps running (its dials and chain calls fail meanwhile, it waits for
    the chain), and once the links return it reconnects by itself, adopts the rounds it
    missed and ends with the same model."""
    net, rounds, both = devnet, 5, (namespace.p2p, namespace.mgmt)
    jid = _job(net, rounds)
    # cut while it trains round r: it cannot commit that update; the others close r and
    # r + 1 without it, so that it is behind when it comes back
    cut_now = training_after_full_round(1, NODES, jid)
    ev = act_on_event(net, VICTIM, cut_now, lambda: namespace.cut(*both))
    cut_at = time.monotonic()
    try:
        wait_job_round(net, 0, jid, ev["data"]["round"] + 2)
        time.sleep(max(0.0, FULL_CUT_S - (time.monotonic() - cut_at)))
        assert net.nodes[VICTIM].process.poll() is None, "the cut-off node died"
    finally:
        namespace.heal(*both)
    _wait_api(net, VICTIM)
    watch_job(net, jid, timeout=300, out=io.StringIO())
    finished_alike(net, jid, rounds)
    detail = net.client(VICTIM).request("GET", f"/jobs/{jid}")["rounds_detail"]
    assert any(r["metrics"].get("adopted") for r in detail), "the cut-off node did not adopt"


def test_node_cut_off_from_its_peers_only_is_excluded_and_the_job_goes_on(
    devnet: Devnet, namespace: Namespace
):
    """Node 2 loses its peers but not the chain while it trains round 1 or later, in step
    with the others. It still commits its update, which nobody can fetch, and it cannot
    fetch theirs: once the availability timeout passes the others exclude its update, their
    votes finalize the round without it (the job does not wait for the link), and it is
    ejected as a withholder. Once the link returns it follows the job to the same end."""
    net, rounds = devnet, 4
    jid = _job(net, rounds)
    training = phase("training", 1, jid)

    def in_step(ev: dict[str, Any]) -> bool:
        # a node that lags already holds the others' updates and never needs the link
        return training(ev) and job_round(net, 0, jid) <= ev["data"]["round"]

    ev = act_on_event(net, VICTIM, in_step, lambda: namespace.cut(namespace.p2p))
    r = ev["data"]["round"]
    try:
        wait_job_round(net, 0, jid, r + 1)  # node 0 recorded round r decided: no waiting
        assert net.nodes[VICTIM].process.poll() is None, "the cut-off node died"
    finally:
        namespace.heal(namespace.p2p)
    t0 = time.monotonic()
    watch_job(net, jid, timeout=300, out=io.StringIO())
    finished_alike(net, jid, rounds)
    print(f"the job finished {time.monotonic() - t0:.1f}s after the link returned")
    log = _chain_log(net, jid)
    victim = net.nodes[VICTIM].address
    withheld = log.rounds[r].update_of(victim)
    final = log.rounds[r].final
    assert withheld is not None and final is not None, "its update never reached the chain"
    assert withheld.position in excluded_positions(final.mask, len(log.rounds[r].updates))
    assert not log.is_member(victim), "the withholder was not ejected"
