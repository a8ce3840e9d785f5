"""A lying participant against real node processes.

Three honest `gfl up` nodes run a job. A fourth participant is this test itself: a chain
account of its own that joins the job through the JobRegistry binding and commits a model
hash for a round that is not the model the committed updates produce (a malicious node is
any program that speaks to the contract). The contract lets any participant commit a model
hash for a closed round without having sent an update, so the liar needs no gossip.

The honest nodes must name the liar (a ``job.divergence`` event, the round marked divergent
with the liar among its dissenters, the node's divergence alarm counter) and finish on the
majority's model, every round verified against the chain.
"""

from __future__ import annotations

import hashlib
import io
import time

import pytest
from support import finished_alike, job_events

from gfl.node.devnet import FUNDING_WEI, Devnet, demo_spec, running_devnet, watch_job

pytestmark = pytest.mark.slow

NODES = 3


def _liar(net: Devnet):
    """A funded chain account of its own, speaking to the devnet's JobRegistry."""
    from gfl.chain import open_chain
    from gfl.chain.devchain import EMBEDDED_DEV_KEY, fund
    from gfl.identity import NodeIdentity

    identity = NodeIdentity.generate()
    fund(net.chain_url, EMBEDDED_DEV_KEY, [identity.eth_address], FUNDING_WEI)
    return open_chain(net.chain_url, identity, registry_address=net.registry)


def test_a_late_lying_participant_is_named_and_the_job_ends_on_the_majority_model(tmp_path):
    """The liar commits its hash for round 1 after the honest nodes compared theirs: they
    must still name it (a dissenter is named whenever its commitment arrives)."""
    rounds, lied = 4, 1
    with running_devnet(NODES, root=tmp_path / "net", prefer_anvil=False) as net:
        liar = _liar(net)
        spec = demo_spec(NODES, data="digits", rounds=rounds).replace(
            min_updates=NODES, round_timeout=5
        )
        jid = net.client(0).request("POST", "/jobs", json={"spec": spec.to_dict()})["job_id"]
        job_id = bytes.fromhex(jid)
        # Lie late: once every honest node has committed its model for the round (and
        # checked it against the others), join and commit another hash for it.
        deadline = time.monotonic() + 120
        while len(liar.get_round(job_id, lied).models) < NODES:
            assert time.monotonic() < deadline, "the honest nodes never committed round 1"
            time.sleep(0.2)
        liar.join_job(job_id)
        liar.commit_model(job_id, lied, hashlib.sha256(b"not the model").digest())

        watch_job(net, jid, timeout=300, out=io.StringIO())
        final = finished_alike(net, jid, rounds)

        models = liar.get_round(job_id, lied).models
        assert [m.participant for m in models][-1] == liar.account  # on chain, outvoted 3:1
        for n in net.nodes:
            client = net.client(n.index)
            info = client.request("GET", f"/jobs/{jid}")
            assert info["divergent_rounds"] == [lied], (n.index, info["divergent_rounds"])
            assert info["model_hash"] == final
            (round_detail,) = [r for r in info["rounds_detail"] if r["round"] == lied]
            assert round_detail["divergent"]
            assert round_detail["metrics"]["dissenters"] == [liar.account]
            assert client.status()["jobs"]["alarms"].get("alarms.divergence") == 1
            events = job_events(net, n.index, jid)
            alarms = [e["data"] for e in events if e["type"] == "job.divergence"]
            assert [(a["round"], a["dissenters"], a["self_diverged"]) for a in alarms] == [
                (lied, [liar.account], False)
            ], (n.index, alarms)
