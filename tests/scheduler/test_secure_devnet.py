"""Secure aggregation on a 3-node devnet (real libp2p gossip and blob transfer, the embedded
chain served over JSON-RPC): a secure job and the same job with quantisation only
(``masks = false``) end with the same model hash, and the secure job verifies from its
exported bundle and the chain alone (`gfl job export`, `gfl job verify --bundle`). Beside
them a job with distributed DP on 24-bit words: its noise is in the masked updates, so it
verifies the same way, and each node's API shows the ε it spent. And the secure job
sharded (docs/protocol.md 9.12): masked shard frames over the blob protocol, sums stated
over gossip, the same model hash, and a bundle whose shards hash verifies."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from support import finished_alike, run_gfl_process

from gfl.node.devnet import demo_spec, running_devnet

NODES, ROUNDS = 3, 2
TIMEOUT_S = 300.0


def test_a_secure_job_and_its_quantised_plain_twin_end_with_the_same_model(tmp_path: Path) -> None:
    table = {"threshold": 2, "neighbours": 2, "clip": 1.0, "weight_levels": 64}
    base = demo_spec(NODES, data="digits", rounds=ROUNDS).replace(min_updates=NODES)
    secure = base.replace(name="secure", secure_aggregation=table)
    fixed = base.replace(name="fixed", secure_aggregation={**table, "masks": False})
    dp = base.replace(
        name="dp",
        secure_aggregation={**table, "word_bits": 24},
        privacy={"mode": "distributed", "epsilon": 8.0, "delta": 1e-5, "max_grad_norm": 1.0},
        weighting="equal",
        max_samples=0,
    )
    sharded = secure.replace(name="secure-sharded", aggregation="sharded", shards=3, replicas=2)
    with running_devnet(NODES, root=tmp_path / "net", prefer_anvil=False) as net:
        owner = net.client(0)
        ids = [owner.publish(spec.to_dict())["job_id"] for spec in (secure, fixed, dp, sharded)]
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            statuses = {(i, jid): _status(net, i, jid) for i in range(NODES) for jid in ids}
            if all(s == "finished" for s in statuses.values()):
                break
            assert not [s for s in statuses.values() if s in ("error", "cancelled", "expired")]
            assert time.monotonic() < deadline, statuses
            time.sleep(1.0)
        hashes = [finished_alike(net, jid, ROUNDS) for jid in ids]
        assert hashes[0] == hashes[1] == hashes[3] != hashes[2]
        for i in range(NODES):
            rounds = net.client(i).job(ids[3])["rounds_detail"]
            assert [rd["metrics"]["mode"] for rd in rounds] == ["sharded"] * ROUNDS
        for i in range(NODES):  # every participant spent (at most) the job's budget
            spent = net.client(i).request("GET", f"/jobs/{ids[2]}")["epsilon"]
            assert 7.5 < spent <= 8.0 + 1e-9, (i, spent)

        bundle = tmp_path / "bundle"
        home = str(net.nodes[1].home)
        res = run_gfl_process("job", "export", ids[0][:12], "-o", str(bundle), "--home", home)
        assert res.returncode == 0, res.stderr
        reveals = [p for p in (bundle / "blobs").iterdir() if p.read_bytes()[:4] == b"GFLR"]
        assert len(reveals) >= ROUNDS * table["threshold"]  # enough to unmask every round
        verdict = _verify(bundle, net.chain_url)
        assert verdict["verified"] and len(verdict["rounds"]) == ROUNDS, verdict
        assert verdict["rounds"][-1]["derived_model"] == hashes[0]

        # without its reveals a secure round cannot be unmasked: the verifier says so
        bare = tmp_path / "no-reveals"
        shutil.copytree(bundle, bare)
        for p in reveals:
            (bare / "blobs" / p.name).unlink()
        verdict = _verify(bare, net.chain_url, ok=False)
        assert not verdict["verified"] and "reveals do not unmask" in json.dumps(verdict)

        split = tmp_path / "sharded-bundle"
        res = run_gfl_process("job", "export", ids[3][:12], "-o", str(split), "--home", home)
        assert res.returncode == 0, res.stderr
        verdict = _verify(split, net.chain_url)
        assert verdict["rounds"][-1]["derived_model"] == hashes[3]

        noisy = tmp_path / "dp-bundle"
        res = run_gfl_process("job", "export", ids[2][:12], "-o", str(noisy), "--home", home)
        assert res.returncode == 0, res.stderr
        verdict = _verify(noisy, net.chain_url)
        assert verdict["rounds"][-1]["derived_model"] == hashes[2]


def _status(net, i: int, jid: str) -> str:
    """The job's status on node i ("unknown" until the node heard and verified it)."""
    jobs = {j["job_id"]: j for j in net.client(i).request("GET", "/jobs")}
    return str(jobs[jid]["status"]) if jid in jobs else "unknown"


def _verify(bundle: Path, rpc: str, ok: bool = True) -> dict:
    res = run_gfl_process("job", "verify", "--bundle", str(bundle), "--rpc", rpc, "--json")
    assert (res.returncode == 0) == ok, (res.stdout, res.stderr)
    out: dict = json.loads(res.stdout)
    return out
