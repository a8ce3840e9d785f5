"""Faults on a real devnet: node processes killed at each round phase, the chain's RPC
endpoint going away mid-job, and a node cut off from everyone for a while.

Each test runs one short job on 3 `gfl up` processes (digits, min_updates 2 so the
others go on without the victim) and ends when every node finished the job with the
same final model, every round verified against the chain.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gfl.devnet import Devnet, _spawn, demo_spec, running_devnet, watch_job
from gfl.errors import GflError

pytestmark = pytest.mark.slow

NODES = 3


def _finished_alike(net: Devnet, jid: str, rounds: int) -> str:
    infos = [net.client(n.index).request("GET", f"/jobs/{jid}") for n in net.nodes]
    assert all(i["status"] == "finished" for i in infos), [i["status"] for i in infos]
    finals = {i["model_hash"] for i in infos}
    assert len(finals) == 1, f"nodes ended with different models: {finals}"
    for n in net.nodes:
        checks = net.client(n.index).request("GET", f"/jobs/{jid}/verify")
        assert [c["round"] for c in checks] == list(range(rounds)), checks
        assert all(c["verified"] for c in checks), (n.index, checks)
    return finals.pop()


def _wait_api(net: Devnet, i: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            net.client(i).status()
            return
        except GflError:
            assert time.monotonic() < deadline, f"node{i} did not come back"
            time.sleep(0.2)


def _kill_when(
    net: Devnet, i: int, matches: Callable[[dict[str, Any]], bool], timeout: float = 120
) -> dict[str, Any]:
    """SIGKILL node i the moment its event stream shows an event that `matches`."""
    hit: dict[str, Any] = {}
    seen: list[Any] = []
    done = threading.Event()
    pid = net.nodes[i].process.pid

    def follow() -> None:
        try:
            for ev in net.client(i).events(dead_after=timeout):
                seen.append((ev.get("type"), (ev.get("data") or {}).get("round")))
                if matches(ev):
                    os.kill(pid, signal.SIGKILL)
                    hit.update(ev)
                    break
        except GflError as exc:
            seen.append(exc)
        finally:
            done.set()

    threading.Thread(target=follow, daemon=True).start()
    assert done.wait(timeout) and hit, (
        f"node{i} never reached the phase to kill it in: {seen[-12:]}"
    )
    return hit


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


def _restart(net: Devnet, i: int, pause: float = 1.0) -> None:
    node = net.nodes[i]
    node.process.wait(10)
    time.sleep(pause)
    node.process = _spawn(node, False)  # `gfl up --home node.home`, as an operator would
    _wait_api(net, i)


def _event(kind: str, min_round: int) -> Callable[[dict[str, Any]], bool]:
    return lambda ev: ev.get("type") == f"job.{kind}" and ev["data"].get("round", -1) >= min_round


def test_sigkill_at_each_round_phase_then_restart_and_finish_alike(tmp_path):
    rounds = 12
    with running_devnet(NODES, root=tmp_path / "net", prefer_anvil=False) as net:
        spec = demo_spec(NODES, data="digits", rounds=rounds).replace(
            min_updates=2, round_timeout=6
        )
        jid = net.client(0).request("POST", "/jobs", json={"spec": spec.to_dict()})["job_id"]
        victim = 2
        home = net.nodes[victim].home
        killed = []
        # 1. while training (job.training emitted, the update not yet committed)
        ev = _kill_when(net, victim, _event("training", 1))
        killed.append(("train", ev["data"]["round"]))
        _restart(net, victim)
        # 2. right after its update is committed: waiting for the round to close
        ev = _kill_when(net, victim, _event("update_committed", killed[-1][1] + 1))
        killed.append(("update committed / waiting for close", ev["data"]["round"]))
        _restart(net, victim)
        # 3. aggregated: checkpoint M_{r+1} written, model hash being published/committed
        r = killed[-1][1] + 2
        cp = _kill_when_file(home, f"models/*/round-{r:06d}.gflm", net.nodes[victim].process.pid)
        killed.append(("aggregated, model commit", r - 1))
        assert cp.exists()
        _restart(net, victim)
        # 4. after its model commitment: round finished
        ev = _kill_when(net, victim, _event("round_finished", r))
        killed.append(("after model commit", ev["data"]["round"]))
        _restart(net, victim)
        assert killed[-1][1] < rounds - 1, (
            f"the job ran out of rounds before the last kill {killed}"
        )
        watch_job(net, jid, timeout=300, out=io.StringIO())
        _finished_alike(net, jid, rounds)
        status = net.client(victim).request("GET", f"/jobs/{jid}")
        print("kills:", killed, "victim rounds:", len(status["rounds_detail"]))


def _wait_round(net: Devnet, i: int, jid: str, r: int, timeout: float = 120) -> None:
    from gfl.api.client import ApiRequestError

    deadline = time.monotonic() + timeout
    while True:
        try:
            if net.client(i).request("GET", f"/jobs/{jid}")["round"] >= r:
                return
        except ApiRequestError as exc:
            assert exc.status == 404
        assert time.monotonic() < deadline, f"node{i} never reached round {r}"
        time.sleep(0.1)


def test_chain_rpc_killed_and_restarted_mid_job(tmp_path, monkeypatch):
    """The served embedded chain (journaled state) goes away for a few seconds, comes back
    on the same port with the same state; the nodes wait, retry and finish the job."""
    import gfl.devnet
    from gfl.chain.devchain import EMBEDDED_DEV_KEY, free_port, serve_embedded

    port, state = free_port(), tmp_path / "chain-state"

    def start_chain(prefer_anvil: bool = True):
        server = serve_embedded("127.0.0.1", port, state_dir=state)
        return server, server.url, "embedded", EMBEDDED_DEV_KEY

    monkeypatch.setattr(gfl.devnet, "start_chain", start_chain)
    rounds = 4
    with running_devnet(NODES, root=tmp_path / "net", prefer_anvil=False) as net:
        spec = demo_spec(NODES, data="digits", rounds=rounds).replace(
            min_updates=2, round_timeout=8
        )
        jid = net.client(0).request("POST", "/jobs", json={"spec": spec.to_dict()})["job_id"]
        _wait_round(net, 0, jid, 1)
        net._chain.close()
        time.sleep(5)  # nodes see connection refused for a while
        for n in net.nodes:
            assert n.process.poll() is None, f"node{n.index} died without its chain"
        net._chain = serve_embedded("127.0.0.1", port, state_dir=state)
        watch_job(net, jid, timeout=300, out=io.StringIO())
        _finished_alike(net, jid, rounds)


def test_node_cut_off_for_two_rounds_rejoins_and_catches_up(tmp_path):
    """SIGSTOP freezes one node (its peers' connections go silent, it reaches neither the
    network nor the chain) while the others finish rounds without it; SIGCONT brings it
    back: it must catch up by adopting the majority models and end with the same model."""
    rounds = 6
    with running_devnet(NODES, root=tmp_path / "net", prefer_anvil=False) as net:
        spec = demo_spec(NODES, data="digits", rounds=rounds).replace(
            min_updates=2, round_timeout=6
        )
        jid = net.client(0).request("POST", "/jobs", json={"spec": spec.to_dict()})["job_id"]
        victim = net.nodes[2]
        _wait_round(net, 2, jid, 1)
        os.kill(victim.process.pid, signal.SIGSTOP)
        try:
            stopped_at = net.client(0).request("GET", f"/jobs/{jid}")["round"]
            _wait_round(net, 0, jid, stopped_at + 2, timeout=120)
        finally:
            os.kill(victim.process.pid, signal.SIGCONT)
        watch_job(net, jid, timeout=300, out=io.StringIO())
        _finished_alike(net, jid, rounds)
        detail = net.client(2).request("GET", f"/jobs/{jid}")["rounds_detail"]
        assert any(r["metrics"].get("adopted") for r in detail), "the cut-off node did not adopt"
