"""Whole node processes: two nodes on 127.0.0.1 find each other through --bootstrap."""

from __future__ import annotations

import platform
import time

import pytest

PEER_TIMEOUT = 45.0


def peer_ids(node) -> set[str]:
    with node.client() as client:
        return {p["peer_id"] for p in client.status()["peers"]}


@pytest.mark.slow
def test_two_nodes_connect_via_bootstrap(init_home, start_node, run_gfl):
    a = start_node(init_home("a"))
    b = start_node(init_home("b"), "--bootstrap", a.listen_addrs[0])
    deadline = time.monotonic() + PEER_TIMEOUT
    while time.monotonic() < deadline:
        if b.peer_id in peer_ids(a) and a.peer_id in peer_ids(b):
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"no connection within {PEER_TIMEOUT} s:\n{a.output()}\n{b.output()}")
    with a.client() as client:
        (peer,) = client.peers()
    assert peer["eth_address"] == b.status["address"]
    status_b = run_gfl("status", "--home", b.home, timeout=30)
    assert a.peer_id in status_b.stdout
    assert run_gfl("stop", "--home", a.home, timeout=40).returncode == 0
    assert a.proc.wait(20) == 0
    assert b.stop() == 0


@pytest.mark.slow
def test_a_full_node_refuses_further_inbound_peers(init_home, start_node):
    """`[net] max_peers` reaches the running node: past it, inbound connections are closed
    and counted in its status."""
    a = start_node(init_home("a", max_peers=1))
    b = start_node(init_home("b"), "--bootstrap", a.listen_addrs[0])
    deadline = time.monotonic() + PEER_TIMEOUT
    while b.peer_id not in peer_ids(a):
        assert time.monotonic() < deadline, f"b never connected:\n{a.output()}\n{b.output()}"
        time.sleep(0.3)
    c = start_node(init_home("c"), "--bootstrap", a.listen_addrs[0])
    deadline = time.monotonic() + PEER_TIMEOUT
    while True:
        with a.client() as client:
            net = client.status()["net"]
        if net["connections_refused"] >= 1:
            break
        assert time.monotonic() < deadline, f"c was never refused:\n{a.output()}\n{c.output()}"
        time.sleep(0.3)
    assert net["max_peers"] == 1 and peer_ids(a) == {b.peer_id}
    assert c.peer_id not in peer_ids(a)


ARENA_PROBE = """
import ctypes, sys, threading
from gfl.node.node import limit_malloc_arenas
if sys.argv[1] == "limit":
    limit_malloc_arenas(1)
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
start = threading.Barrier(4)
def allocate():
    start.wait()
    for _ in range(1000):
        libc.malloc(64)
threads = [threading.Thread(target=allocate) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
libc.malloc_stats()
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_a_node_process_keeps_few_malloc_arenas():
    """Threads that allocate at once each get a glibc arena of their own unless limited
    (a node's worker threads each kept tens of MB that way)."""
    import subprocess
    import sys

    def arenas(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", ARENA_PROBE, mode], capture_output=True, text=True, timeout=60
        )
        return sum(line.startswith("Arena ") for line in out.stderr.splitlines())

    assert arenas("free") > 1
    assert arenas("limit") == 1
