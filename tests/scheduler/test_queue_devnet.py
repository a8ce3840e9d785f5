"""The job queue on a 2-node devnet with ``max_concurrent = 1``: three jobs published at once
run one after the other on both nodes, in the order they came, as `gfl job list` shows."""

from __future__ import annotations

import time
from pathlib import Path

from support import finished_alike

from gfl.node.devnet import demo_spec, running_devnet

NAMES = ("queue-a", "queue-b", "queue-c")
TIMEOUT_S = 300.0


def _statuses(net, i: int, ids: list[str]) -> tuple[str, ...]:
    """Each job's status on node i, with its place while queued ("-": not heard of yet)."""
    known = {j["job_id"]: j for j in net.client(i).jobs()}
    out = []
    for jid in ids:
        j = known.get(jid)
        if j is None:
            out.append("-")
        elif j["status"] == "queued":
            out.append(f"queued #{j['queue_position']}")
        else:
            out.append(j["status"])
    return tuple(out)


def _in_order(states: list[tuple[str, ...]]) -> None:
    """At most one job runs; none runs or ends before the jobs published ahead of it
    ended; queued ones stand in publication order."""
    for state in states:
        assert sum(s == "active" for s in state) <= 1, state
        for k, s in enumerate(state):
            if s in ("active", "finished"):
                assert all(p == "finished" for p in state[:k]), state
        places = [int(s.split("#")[1]) for s in state if s.startswith("queued")]
        assert places == list(range(1, len(places) + 1)), state


def test_a_two_node_devnet_drains_its_queue_in_order(tmp_path: Path, run_gfl) -> None:
    with running_devnet(
        2, root=tmp_path / "net", prefer_anvil=False, jobs={"max_concurrent": 1}
    ) as net:
        owner = net.client(0)
        ids = []
        for name in NAMES:
            spec = demo_spec(2, data="digits", rounds=2).replace(name=name)
            ids.append(owner.publish(spec.to_dict())["job_id"])
        assert _statuses(net, 0, ids) == ("active", "queued #1", "queued #2")

        listings: list[str] = []
        states: dict[int, list[tuple[str, ...]]] = {0: [], 1: []}
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            for i in (0, 1):
                state = _statuses(net, i, ids)
                if not states[i] or states[i][-1] != state:
                    states[i].append(state)
            listed = run_gfl("job", "list", "--home", net.nodes[0].home, timeout=30)
            assert listed.returncode == 0, listed.stderr
            if not listings or listings[-1] != listed.stdout:
                listings.append(listed.stdout)
            if all(s[-1] == ("finished",) * 3 for s in states.values()):
                break
            assert time.monotonic() < deadline, states
            time.sleep(0.5)

        print("\n\n".join(f"$ gfl job list   (node0)\n{text}" for text in listings))
        for i in (0, 1):
            _in_order(states[i])
            assert states[i][-1] == ("finished",) * 3
        # node0 showed the queue and watched it drain: one job after the other
        firsts = [next(k for k, s in enumerate(states[0]) if s[j] == "active") for j in range(3)]
        assert firsts == sorted(firsts) and len(set(firsts)) == 3, states[0]
        assert any("queued #2" in text for text in listings), listings
        for jid in ids:
            finished_alike(net, jid, 2)
