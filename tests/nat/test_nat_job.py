"""Nodes behind NAT take part in a job: a public node, two private ones behind separate
"cone" NATs and a third behind a "symmetric" NAT, all built by this test in network
namespaces (tests/nat/netns.py).

Every node runs as `gfl up` in its own namespace; the chain (embedded, served over JSON-RPC)
and the control APIs are on a management network that reaches this process only. The
private nodes must learn that they are private (AutoNAT), reserve a slot on the public node
(which relays once it knows it is public), join the job and finish it with the same
verified model, which needs their updates to be fetched from behind their NATs. Between two
private nodes the relayed connection is upgraded to a direct one where the NATs allow it:
behind the two cone NATs (Linux's masquerade, which keeps source ports) the hole punch must
succeed; with the symmetric one (a random port per connection) on either side it cannot,
and the pair stays on the relay. The test prints which happened for each pair.

Needs root (namespaces, nftables); skipped otherwise, except under CI, which runs as root.
"""

from __future__ import annotations

import dataclasses
import io
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from netns import Lab, LabError, Site, nat_lab
from support import finished_alike

from gfl.node.devnet import Devnet, DevnetNode, _spawn, _wait_up, demo_spec, watch_job

pytestmark = pytest.mark.slow

NATS = ("cone", "cone", "symmetric")
ROUNDS = 2
WAIT_S = 60.0


def _wait(what: str, cond: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces and nftables need root")
    try:
        with nat_lab(NATS) as built:
            yield built
    except LabError as exc:
        pytest.skip(f"cannot build the NAT lab: {exc}")


@pytest.fixture
def devnet(lab: Lab, tmp_path: Path) -> Iterator[Devnet]:
    """Node 0 public (relay service on), nodes 1.. behind the lab's NATs."""
    from gfl.chain import deploy_registry
    from gfl.chain.devchain import EMBEDDED_DEV_KEY, fund, serve_embedded
    from gfl.node.config import Config, update_config
    from gfl.node.datadir import DataDir

    server = serve_embedded(lab.mgmt_ip, 0)
    net = Devnet(root=tmp_path, chain_url=server.url, registry="", chain_kind="embedded")
    net._chain = server
    sites = [lab.public, *lab.private]
    try:
        for i, site in enumerate(sites):
            home, port = tmp_path / f"node{i}", 4001 + i
            config = (
                Config()
                .replace("net", listen=[f"/ip4/{site.p2p_ip}/tcp/{port}"], relay_service=i == 0)
                .replace("api", host=site.mgmt_ip, port=0, heartbeat_s=2.0)
                .replace("chain", url=server.url)
                .replace("jobs", auto_join=True)
                .replace("node", name=f"node{i}")
            )
            part = {"partition": "iid", "index": i, "of": len(sites), "seed": 0}
            config = dataclasses.replace(config, data={"digits": part})
            identity = DataDir(home).init(config, force=True)
            net.nodes.append(
                DevnetNode(
                    i, home, 0, port, identity.peer_id, identity.eth_address, host=site.p2p_ip
                )
            )
        fund(server.url, EMBEDDED_DEV_KEY, [n.address for n in net.nodes], 10**20)
        net.registry = deploy_registry(server.url, DataDir(net.nodes[0].home).load_identity())
        for node in net.nodes:
            boot = [net.nodes[0].multiaddr] if node.index else []
            cfg = node.home / "config.toml"
            update_config(cfg, "chain", registry=net.registry)
            update_config(cfg, "net", bootstrap=boot, archive=True)
        for node, site in zip(net.nodes, sites, strict=True):
            node.process = _spawn(node, False, prefix=Lab.exec_prefix(site))
        _wait_up(net)
        yield net
    finally:
        net.stop()


def _net(net: Devnet, i: int) -> dict[str, Any]:
    return net.client(i).status()["net"]


def _peer(net: Devnet, i: int, j: int) -> dict[str, Any]:
    """Node ``j`` as node ``i`` lists it ({} while not connected)."""
    pid = net.nodes[j].peer_id
    return next((p for p in net.client(i).peers() if p["peer_id"] == pid), {})


def test_private_nodes_finish_a_job_through_the_relay_and_punch_holes_where_they_can(
    lab: Lab, devnet: Devnet
) -> None:
    net, public = devnet, devnet.nodes[0].peer_id
    private = range(1, len(net.nodes))
    t0 = time.monotonic()
    _wait("node0 to learn it is public", lambda: _net(net, 0)["reachability"] == "public")
    for i in private:
        _wait(
            f"node{i} to learn it is private",
            lambda i=i: _net(net, i)["reachability"] == "private",
        )
        _wait(
            f"node{i} to reserve a slot on node0",
            lambda i=i: public in _net(net, i)["nat"]["reservations"],
        )
        relayed = [a for a in net.client(i).status()["listen_addrs"] if "/p2p-circuit" in a]
        assert relayed and all(f"/p2p/{public}/p2p-circuit" in a for a in relayed), relayed
    took = time.monotonic() - t0
    print(f"\nreachability known and slots reserved {took:.1f}s after the nodes were up")

    n = len(net.nodes)
    spec = demo_spec(n, data="digits", rounds=ROUNDS).replace(min_updates=n, round_timeout=20)
    jid = net.client(0).request("POST", "/jobs", json={"spec": spec.to_dict()})["job_id"]
    watch_job(net, jid, timeout=120, out=io.StringIO())
    model = finished_alike(net, jid, ROUNDS)
    print(f"job finished alike on all {n} nodes (model {model[:16]})")

    # each pair of private nodes: a hole punch where both NATs keep ports, the relay otherwise
    for i in private:
        for j in private:
            if j <= i:
                continue
            nats = (lab.private[i - 1].nat, lab.private[j - 1].nat)
            want = "direct" if nats == ("cone", "cone") else "relayed"

            def outcome(i: int = i, j: int = j) -> str | None:
                # the end that accepted the relayed connection tried, and says how it went
                a, b = _peer(net, i, j), _peer(net, j, i)
                tried = a.get("hole_punch") or b.get("hole_punch")
                return tried if tried and a.get("path") == tried == b.get("path") else None

            got = _wait(f"a hole punch between node{i} and node{j}", outcome)
            how = "hole punch succeeded" if got == "direct" else "hole punch failed, relayed"
            print(f"node{i} ({nats[0]} NAT) <-> node{j} ({nats[1]} NAT): {got} ({how})")
            assert got == want, (nats, got)
    for i in private:
        moved = _net(net, i)["bytes"]
        assert moved["relayed"]["in"] > 0 and moved["relayed"]["out"] > 0, moved
        assert moved["direct"]["in"] > 0, moved
        print(f"node{i} bytes: {moved}")
    served = _net(net, 0)["bytes"]["relay_service"]
    assert served["in"] > 0 and served["out"] > 0, served


def test_lab_keeps_private_hosts_private(lab: Lab) -> None:
    """The NAT lab itself: a private host reaches the public one, nothing reaches a private
    host from outside, and the management network carries no traffic between nodes."""
    import subprocess
    import sys

    probe = (
        "import socket,sys\n"
        "try:\n"
        " socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.5); print('open')\n"
        "except OSError as e: print(type(e).__name__)\n"
    )
    listen = (
        "import socket,time\ns=socket.socket();s.bind(('0.0.0.0',5555));s.listen();time.sleep(20)"
    )

    def reach(site: Site, ip: str) -> str:
        argv = [*Lab.exec_prefix(site), sys.executable, "-c", probe, ip, "5555"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()

    servers = [
        subprocess.Popen([*Lab.exec_prefix(s), sys.executable, "-c", listen])
        for s in (lab.public, *lab.private)
    ]
    try:
        time.sleep(0.5)
        a, b = lab.private[:2]
        assert reach(a, lab.public.p2p_ip) == "open"
        assert reach(lab.public, a.public_ip) == "TimeoutError"  # dropped at the NAT
        assert reach(b, a.public_ip) == "TimeoutError"
        assert reach(b, a.p2p_ip) == "OSError"  # no route to a private network
        assert reach(b, a.mgmt_ip) == "TimeoutError"  # the management link is not a way round
    finally:
        for s in servers:
            s.kill()
            s.wait(5)
