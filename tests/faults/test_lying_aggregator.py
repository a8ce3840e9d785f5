"""A lying aggregator among real node processes.

Three `gfl up` nodes run a job; one of them runs with its aggregation replaced
(tests/faults/lying_node.py): in a round of three updates, its own among them, it votes
for a model that is not the one the round's updates produce, with the same mask as
everyone else.

The honest majority's votes finalize the round; the liar is named a dissenter (the chain
holds its vote for another model over the same updates), the designated honest member
slashes it (its bond and its seat), and the job finishes on the majority's model on every
node, the liar's included, every round finalized.
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gfl_console.errors import NodeClientError
from support import finished_alike, job_events

from gfl.chain import MemberStatus, SlashReason
from gfl.errors import GflError
from gfl.node.devnet import Devnet, _node_env, demo_spec, running_devnet, watch_job
from gfl.scheduler.joblog import JobLog

pytestmark = pytest.mark.slow

NODES = 3
LIAR = 2
LYING_NODE = Path(__file__).with_name("lying_node.py")


def _restart_lying(net: Devnet, i: int, timeout: float = 90) -> None:
    """Stop node i and start it again as a liar, on the same datadir; wait until it is
    ready and sees a peer."""
    node = net.nodes[i]
    net.client(i).shutdown()
    node.process.wait(30)
    net._clients.pop(i).close()
    with open(node.home / "logs" / "out.log", "ab") as out:
        node.process = subprocess.Popen(
            [sys.executable, str(LYING_NODE), "up", "--home", str(node.home), "-v"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=_node_env(),
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while True:
        assert node.process.poll() is None, "the lying node exited at start"
        try:
            status = net.client(i).status()
            if (status.get("jobs") or {}).get("ready") and status["peers"]:
                return
        except (GflError, NodeClientError):
            net._clients.pop(i, None)  # the API info file may not be written yet
        assert time.monotonic() < deadline, "the lying node did not come up"
        time.sleep(0.3)


def _chain_log(net: Devnet, jid: str) -> tuple[JobLog, MemberStatus]:
    """The job's history on the devnet's chain, and the liar's member status."""
    from gfl.chain import open_chain
    from gfl.identity import NodeIdentity

    chain = open_chain(net.chain_url, NodeIdentity.generate(), registry_address=net.registry)
    try:
        log = JobLog(bytes.fromhex(jid))
        events = chain.verify_log(bytes.fromhex(jid))
        log.apply(events)
        status = chain.member(bytes.fromhex(jid), net.nodes[LIAR].address).status
    finally:
        chain.close()
    slashed = [e for e in events if e.name == "Slashed"]
    assert [SlashReason(e.args["reason"]) for e in slashed] == [SlashReason.DISSENT], slashed
    return log, status


def test_a_lying_aggregator_is_outvoted_named_and_slashed_and_the_job_finishes(tmp_path):
    rounds = 5
    with running_devnet(NODES, root=tmp_path / "net", prefer_anvil=False) as net:
        _restart_lying(net, LIAR)
        liar = net.nodes[LIAR].address
        # A round closes early only on all three updates, so the first one has the liar's
        # (it lies there); a loaded machine cannot make it late past a long timeout. Once
        # it is slashed the honest two go on alone: two updates a round.
        spec = demo_spec(NODES, data="digits", rounds=rounds).replace(
            min_updates=2, round_timeout=60
        )
        jid = net.client(0).request("POST", "/jobs", json={"spec": spec.to_dict()})["job_id"]
        watch_job(net, jid, timeout=300, out=io.StringIO())
        final = finished_alike(net, jid, rounds)  # the liar's node too

        log, status = _chain_log(net, jid)
        assert status is MemberStatus.SLASHED
        # honest in rounds of two updates: it lies in a round of three it is part of
        lied = next(r for r, rd in sorted(log.rounds.items()) if rd.dissenters())
        rd = log.rounds[lied]
        vote = rd.votes[liar.lower()]
        assert rd.final is not None and vote.mask == rd.final.mask  # the same updates
        assert vote.model_hash != rd.final.model_hash and rd.dissenters() == [liar]
        assert log.slashed == [(liar, lied)]
        assert log.rounds[rounds - 1].final.model_hash.hex() == final
        reporters = 0
        for n in net.nodes[:LIAR]:
            checks = net.client(n.index).request("GET", f"/jobs/{jid}/verify")
            assert next(c for c in checks if c["round"] == lied)["dissenters"] == [liar]
            events = job_events(net, n.index, jid)
            reported = [e["data"] for e in events if e["type"] == "job.dissenter_reported"]
            assert all((d["round"], d["member"]) == (lied, liar) for d in reported), reported
            reporters += bool(reported)
        assert reporters == 1, "one honest member, the designated one, reports the liar"
