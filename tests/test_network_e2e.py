"""End to end: real node processes, a real chain, real training — no server.

These start `gfl up` processes through `gfl.node.devnet`, publish jobs through the
control API and check the outcome against the chain.
"""

from __future__ import annotations

import io
import os
import signal
import time
from collections import Counter

import pytest
from gfl_console.errors import NodeClientError
from skip_policy import in_ci

from gfl.chain.devchain import find_anvil
from gfl.errors import GflError
from gfl.node.devnet import demo_spec, running_devnet, watch_job

pytestmark = pytest.mark.slow

ANVIL = find_anvil() is not None
IN_CI = in_ci()


def _chains() -> list:
    anvil = pytest.param(
        True,
        id="anvil",
        marks=pytest.mark.skipif(not ANVIL and not IN_CI, reason="anvil not installed"),
    )
    return [pytest.param(False, id="embedded"), anvil]


def _round_of(net, i: int, job_id: str) -> int:
    from gfl_console.client import ApiRequestError

    try:
        return net.client(i).request("GET", f"/jobs/{job_id}")["round"]
    except ApiRequestError as exc:  # not heard of the job yet
        assert exc.status == 404
        return -1


def _check_finished_and_verified(net, job_id: str, rounds: int) -> dict:
    infos = [net.client(n.index).request("GET", f"/jobs/{job_id}") for n in net.nodes]
    assert all(i["status"] == "finished" for i in infos), [i["status"] for i in infos]
    finals = {i["model_hash"] for i in infos}
    assert len(finals) == 1, "every node must end with the same model"
    for n in net.nodes:
        checks = net.client(n.index).request("GET", f"/jobs/{job_id}/verify")
        assert [c["round"] for c in checks] == list(range(rounds))
        assert all(c["verified"] for c in checks), checks
        assert all(c["decision"] == "finalized" and not c["dissenters"] for c in checks), checks
        # every update this node aggregated matched its chain hash; every vote the chain
        # recorded is on the model its round finalized
        commitments = net.client(n.index).request("GET", f"/jobs/{job_id}")["commitments"]
        updates = [c for c in commitments if c["kind"] == "update"]
        assert updates and all(c["verified"] is True for c in updates), updates
        final = {c["round"]: c["chain_model"] for c in checks}
        votes = [c for c in commitments if c["kind"] == "model"]
        assert votes and all(v["hash"] == final[v["round"]] for v in votes), votes
    return infos[0]


@pytest.mark.parametrize("prefer_anvil", _chains())
def test_three_nodes_train_digits_and_agree_with_the_chain(tmp_path, prefer_anvil):
    if prefer_anvil and not ANVIL:
        pytest.fail("CI must have anvil (npm ci in contracts/)")
    with running_devnet(3, root=tmp_path / "net", prefer_anvil=prefer_anvil) as net:
        assert net.chain_kind == ("anvil" if prefer_anvil else "embedded")
        spec = demo_spec(3, data="digits", rounds=5).replace(min_updates=3)
        job = net.client(0).request("POST", "/jobs", json={"spec": spec.to_dict()})
        watch_job(net, job["job_id"], timeout=300, out=io.StringIO())
        head = _check_finished_and_verified(net, job["job_id"], 5)
        detail = net.client(1).request("GET", f"/jobs/{job['job_id']}")
        last = detail["rounds_detail"][-1]
        assert last["model_hash"] == head["model_hash"]
        assert last["metrics"]["accuracy"] >= 0.90
        # every round used all three updates, in chain order
        assert all(r["metrics"].get("updates") == 3 for r in detail["rounds_detail"])


def test_two_jobs_at_once_both_finish(tmp_path):
    with running_devnet(2, root=tmp_path / "net", prefer_anvil=False) as net:
        spec = demo_spec(2, data="digits", rounds=3)
        a = net.client(0).request("POST", "/jobs", json={"spec": spec.to_dict()})
        b = net.client(1).request(
            "POST", "/jobs", json={"spec": spec.replace(name="second", seed=3).to_dict()}
        )
        watch_job(net, a["job_id"], timeout=300, out=io.StringIO())
        watch_job(net, b["job_id"], timeout=300, out=io.StringIO())
        _check_finished_and_verified(net, a["job_id"], 3)
        _check_finished_and_verified(net, b["job_id"], 3)
        # each node holds every update of each job, its own and the fetched ones, under the
        # job's tag: what `blob_keep_s` after the job's end evicts
        for n in net.nodes:
            for jid in (a["job_id"], b["job_id"]):
                detail = net.client(n.index).request("GET", f"/jobs/{jid}")
                updates = [c for c in detail["commitments"] if c["kind"] == "update"]
                # the node that joined second is waited for from round 1 on (it joined once
                # round 0 had an update: it may contribute there, but the round need not wait)
                by_round = Counter(c["round"] for c in updates)
                assert by_round[0] >= 1 and by_round[1] == by_round[2] == 2, by_round
                tags = n.home / "blobs" / "tags" / jid.removeprefix("0x")
                assert {c["hash"] for c in updates} <= {f.name for f in tags.iterdir()}


def test_sigkilled_node_restarts_resumes_and_ends_with_the_same_model(tmp_path):
    from gfl.node.devnet import _spawn

    with running_devnet(4, root=tmp_path / "net", prefer_anvil=False) as net:
        spec = demo_spec(4, data="digits", rounds=5).replace(min_updates=2, round_timeout=8)
        job = net.client(0).request("POST", "/jobs", json={"spec": spec.to_dict()})
        jid = job["job_id"]
        victim = net.nodes[3]
        deadline = time.monotonic() + 120
        while _round_of(net, 3, jid) < 2:
            assert time.monotonic() < deadline, "round 2 never started"
            time.sleep(0.05)
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.wait(10)
        time.sleep(3)  # the others go on without it (min_updates 2, round timeout)
        victim.process = _spawn(victim, False)
        deadline = time.monotonic() + 60
        while True:  # wait for the restarted node's API
            try:
                net.client(3).status()
                break
            except (GflError, NodeClientError):
                assert time.monotonic() < deadline, "the restarted node did not come up"
                time.sleep(0.2)
        watch_job(net, jid, timeout=300, out=io.StringIO())
        infos = [net.client(n.index).request("GET", f"/jobs/{jid}") for n in net.nodes]
        assert all(i["status"] == "finished" for i in infos)
        assert len({i["model_hash"] for i in infos}) == 1


def test_a_job_announced_by_someone_who_did_not_register_it_is_ignored(tmp_path):
    """A rogue peer (a plain GFL network host, not a node) announces jobs it does not own."""
    import trio

    from gfl.chain import open_chain
    from gfl.identity import NodeIdentity
    from gfl.net import JOBS_TOPIC, open_network
    from gfl.scheduler import messages as protocol
    from gfl.scheduler.registration import job_params

    with running_devnet(2, root=tmp_path / "net", prefer_anvil=False) as net:
        spec = demo_spec(2, data="digits", rounds=2)
        # a job registered on chain by account X ...
        x = open_chain(net.chain_url, NodeIdentity.generate(), registry_address=net.registry)
        from gfl.chain.devchain import EMBEDDED_DEV_KEY, fund

        fund(net.chain_url, EMBEDDED_DEV_KEY, [x.account], 10**18)
        salt, model0 = b"\x02" * 32, b"\x03" * 32  # M_0 is never fetched: nobody joins
        params = job_params(spec, spec.deadline_after(x.chain_time()))
        registered, _ = x.register_job(salt, spec.spec_hash, model0, params)
        assert registered == x.job_id_for(x.account, salt, spec.spec_hash)
        assert x.get_job(registered) is not None
        unregistered = b"\x09" * 32

        async def rogue() -> None:
            async with open_network(
                NodeIdentity.generate(),
                blob_dir=tmp_path / "rogue",
                bootstrap=[net.nodes[0].multiaddr],
            ) as host:
                with trio.fail_after(30):
                    while not host.peers():
                        await trio.sleep(0.1)
                await trio.sleep(1.5)  # let the gossip mesh form
                for _ in range(5):  # gossip is lossy: repeat, as an owner would
                    for job_id in (registered, unregistered):
                        await host.publish(
                            JOBS_TOPIC, protocol.job_announcement(job_id, spec.to_bytes())
                        )
                    await trio.sleep(0.3)

        trio.run(rogue)
        deadline = time.monotonic() + 30
        while True:
            rejected = [
                (net.client(n.index).status()["jobs"] or {}).get("rejected", {}) for n in net.nodes
            ]
            # node0 (the rogue's only peer) refuses both; being refused, they are not
            # forwarded, so the others never see them
            if rejected[0].get("rejected.unverified", 0) >= 2:
                break
            assert time.monotonic() < deadline, rejected
            time.sleep(0.2)
        for n in net.nodes:
            assert net.client(n.index).request("GET", "/jobs") == []
