"""A sharded job on a devnet of real `gfl up` processes (docs/protocol.md, section 8): shard
frames over the blob protocol, shard statements over gossip, every round verified on chain,
then `gfl job export` and `gfl job verify --bundle --rpc` re-derive every round all-to-all."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import pytest
from support import finished_alike, run_gfl_process, wait_job_round

from gfl.node.devnet import demo_spec, running_devnet

N = 4
SHARDS = 4  # the digits MLP is one shard by the derived rule
PHASES = ("manifests", "shards", "settled", "recomputed")


@pytest.mark.slow
def test_a_sharded_devnet_job_finishes_alike_and_verifies_from_its_bundle(tmp_path: Path):
    with running_devnet(N, root=tmp_path / "net", prefer_anvil=False) as net:
        spec = demo_spec(N, data="digits", rounds=2).replace(
            aggregation="sharded", shards=SHARDS, min_updates=N
        )
        job_id = net.client(0).publish(spec.to_dict())["job_id"]
        for n in net.nodes:  # (a node hears of the job a moment after it is published)
            wait_job_round(net, n.index, job_id, 2, timeout=120)
            for _ in range(100):
                if net.client(n.index).job(job_id)["status"] == "finished":
                    break
                time.sleep(0.1)
        final = finished_alike(net, job_id, 2)  # every round verified against the chain

        for n in net.nodes:
            detail = net.client(n.index).job(job_id)
            for rd in detail["rounds_detail"]:
                m = rd["metrics"]
                assert m["mode"] == "sharded" and m["shards"] == SHARDS, m
                assert m["role"] == "author" and not m["recomputed"], m
                # a shard it did not reduce was settled by statements heard over gossip and
                # fetched from an aggregator: no recomputation, settled bytes instead
                assert (m.get("bytes_settled", 0) > 0) == (len(m["aggregated"]) < SHARDS), m
                assert m["bytes_received"] == sum(m.get(f"bytes_{p}", 0) for p in PHASES), m
        rounds = [net.client(n.index).job(job_id)["rounds_detail"] for n in net.nodes]
        for r in range(2):  # each shard reduced by its 3 replicas, on some node each
            assert sum(len(rd[r]["metrics"]["aggregated"]) for rd in rounds) == SHARDS * 3

        # roles and bytes per phase in the report, JSON and CSV
        report = net.client(1).report(job_id)
        assert [row["mode"] for row in report["rounds"]] == ["sharded", "sharded"]
        assert all(row["bytes_shards"] > 0 and row["role"] for row in report["rounds"])
        rows = list(csv.DictReader(io.StringIO(net.client(1).report(job_id, "csv"))))
        assert [int(row["round"]) for row in rows] == [1, 2]
        assert all(int(row["bytes_shards"]) > 0 and row["role"] == "author" for row in rows)

        bundle = tmp_path / "bundle"
        res = run_gfl_process(
            "job", "export", job_id[:12], "-o", str(bundle), "--home", str(net.nodes[1].home)
        )
        assert res.returncode == 0, res.stderr
        res = run_gfl_process(
            "job", "verify", "--bundle", str(bundle), "--rpc", net.chain_url, "--json"
        )
        assert res.returncode == 0, (res.stdout, res.stderr)
        verdict = json.loads(res.stdout)
        assert verdict["verified"] and verdict["rounds"][-1]["chain_model"] == final
