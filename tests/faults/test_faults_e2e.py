"""Faults on a real devnet: node processes killed at each round phase, the chain's RPC
endpoint going away mid-job, and a node frozen (SIGSTOP) for a while. A real network
partition, where the cut-off node keeps running, is in test_partition.py.

Each test runs one short job on 3 `gfl up` processes (digits, min_updates 2 so the
others go on without the victim, which is never ejected for the rounds it misses) and
ends when every node finished the job with the same final model, every round finalized
on chain on the model each node holds.
"""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gfl_console.errors import NodeClientError
from phases import phase, training_after_full_round, voted
from support import act_on_event, finished_alike, wait_job_round

from gfl.errors import GflError
from gfl.node.devnet import Devnet, _spawn, demo_spec, running_devnet, watch_job

pytestmark = pytest.mark.slow

NODES = 3


def _wait_api(net: Devnet, i: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            net.client(i).status()
            return
        except (GflError, NodeClientError):
            assert time.monotonic() < deadline, f"node{i} did not come back"
            time.sleep(0.2)


def _kill_when(
    net: Devnet,
    i: int,
    matches: Callable[[dict[str, Any]], bool],
    timeout: float = 120,
    sig: signal.Signals = signal.SIGKILL,
) -> dict[str, Any]:
    """Send node i `sig` (SIGKILL) the moment its event stream shows an event that `matches`."""
    pid = net.nodes[i].process.pid
    return act_on_event(net, i, matches, lambda: os.kill(pid, sig), timeout)


def _kill_when_file(home: Path, pattern: str, pid: int, timeout: float = 120) -> Path:
    """SIGKILL the node as soon as a file matching `pattern` appears under its datadir."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(home.glob(pattern))
        if found:
            os.kill(pid, signal.SIGKILL)
            return found[0]
        time.sleep(0.005)
    raise AssertionError(f"{pattern} never appeared")


def _restart(net: Devnet, i: int) -> None:
    node = net.nodes[i]
    node.process.wait(30)  # reaped: its datadir lock and ports are free
    node.process = _spawn(node, False)  # `gfl up --home node.home`, as an operator would
    _wait_api(net, i)


def _until_every_node_lost_its_chain(net: Devnet, timeout: float = 90) -> None:
    """Wait until each node's /status shows no chain block: its chain calls fail now."""
    deadline = time.monotonic() + timeout
    waiting = {n.index for n in net.nodes}
    while waiting:
        for i in sorted(waiting):
            chain = net.client(i).status()["chain"]
            if chain is not None and chain["block"] is None:
                waiting.discard(i)
        assert time.monotonic() < deadline, f"nodes {sorted(waiting)} still read the chain"
        time.sleep(0.2)


def _spec(rounds: int, round_timeout: int) -> Any:
    """The demo job on NODES nodes, two updates a round, no member ejected for idling."""
    return demo_spec(NODES, data="digits", rounds=rounds).replace(
        min_updates=2, round_timeout=round_timeout, max_missed=rounds
    )


def test_sigkill_at_each_round_phase_then_restart_and_finish_alike(tmp_path):
    # rounds to spare: after each restart the victim adopts the rounds it missed, one by
    # one, before it takes part again (slowly on a loaded machine)
    rounds = 16
    with running_devnet(NODES, root=tmp_path / "net", prefer_anvil=False) as net:
        spec = _spec(rounds, 8)
        jid = net.client(0).request("POST", "/jobs", json={"spec": spec.to_dict()})["job_id"]
        victim = 2
        home = net.nodes[victim].home
        killed = []
        # 1. while training (job.training emitted, the update not yet committed)
        ev = _kill_when(net, victim, training_after_full_round(1, NODES))
        killed.append(("train", ev["data"]["round"]))
        _restart(net, victim)
        # 2. right after its update is committed: waiting for the round to close
        ev = _kill_when(net, victim, phase("update_committed", killed[-1][1] + 1))
        killed.append(("update committed / waiting for close", ev["data"]["round"]))
        _restart(net, victim)
        # 3. aggregated: checkpoint M_{r+1} written, its vote on round r not sent yet
        r = killed[-1][1] + 2
        cp = _kill_when_file(home, f"models/*/round-{r:06d}.gflm", net.nodes[victim].process.pid)
        killed.append(("aggregated, before the vote", r - 1))
        assert cp.exists()
        _restart(net, victim)
        # 4. right after its vote is on chain
        ev = _kill_when(net, victim, voted(r))
        killed.append(("voted", ev["data"]["round"] - (ev["type"] == "job.update_committed")))
        _restart(net, victim)
        assert killed[-1][1] < rounds - 1, (
            f"the job ran out of rounds before the last kill {killed}"
        )
        watch_job(net, jid, timeout=300, out=io.StringIO())
        finished_alike(net, jid, rounds)
        status = net.client(victim).request("GET", f"/jobs/{jid}")
        print("kills:", killed, "victim rounds:", len(status["rounds_detail"]))


def test_chain_rpc_killed_and_restarted_mid_job(tmp_path, monkeypatch):
    """The served embedded chain (journaled state) goes away for a few seconds, comes back
    on the same port with the same state; the nodes wait, retry and finish the job."""
    import gfl.node.devnet
    from gfl.chain.devchain import EMBEDDED_DEV_KEY, free_port, serve_embedded

    port, state = free_port(), tmp_path / "chain-state"

    def start_chain(prefer_anvil: bool = True):
        server = serve_embedded("127.0.0.1", port, state_dir=state)
        return server, server.url, "embedded", EMBEDDED_DEV_KEY

    monkeypatch.setattr(gfl.node.devnet, "start_chain", start_chain)
    rounds = 4
    with running_devnet(NODES, root=tmp_path / "net", prefer_anvil=False) as net:
        spec = _spec(rounds, 8)
        jid = net.client(0).request("POST", "/jobs", json={"spec": spec.to_dict()})["job_id"]
        wait_job_round(net, 0, jid, 1)
        net._chain.close()
        _until_every_node_lost_its_chain(net)
        for n in net.nodes:
            assert n.process.poll() is None, f"node{n.index} died without its chain"
        net._chain = serve_embedded("127.0.0.1", port, state_dir=state)
        watch_job(net, jid, timeout=300, out=io.StringIO())
        finished_alike(net, jid, rounds)


def test_node_cut_off_for_two_rounds_rejoins_and_catches_up(tmp_path):
    """SIGSTOP freezes one node (a hung process: its connections go silent, it does nothing
    at all) while the others finish rounds without it; SIGCONT brings it back: it must
    catch up by adopting the majority models and end with the same model."""
    rounds = 6
    with running_devnet(NODES, root=tmp_path / "net", prefer_anvil=False) as net:
        spec = _spec(rounds, 6)
        jid = net.client(0).request("POST", "/jobs", json={"spec": spec.to_dict()})["job_id"]
        victim = net.nodes[2]
        # stopped while it trains round r: the others finish r and r + 1 without it
        ev = _kill_when(net, 2, training_after_full_round(1, NODES), sig=signal.SIGSTOP)
        try:
            wait_job_round(net, 0, jid, ev["data"]["round"] + 2, timeout=120)
        finally:
            os.kill(victim.process.pid, signal.SIGCONT)
        watch_job(net, jid, timeout=300, out=io.StringIO())
        finished_alike(net, jid, rounds)
        detail = net.client(2).request("GET", f"/jobs/{jid}")["rounds_detail"]
        assert any(r["metrics"].get("adopted") for r in detail), "the cut-off node did not adopt"
