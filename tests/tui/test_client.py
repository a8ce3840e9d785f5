"""The typed API client: on a real training node, and its pure parts (SSE, finding a node)."""

from __future__ import annotations

import asyncio
import csv
import fcntl
import hashlib
import io
import json
import re
import time
from pathlib import Path

import pytest
from gfl_console.client import (
    ApiRequestError,
    AsyncNodeClient,
    NodeClient,
    NodeClientError,
    NodeNotRunning,
    SSEParser,
)
from gfl_console.home import TOKEN_ENV, NodeHome, Target, find_target

JOB_TOML = """\
name = "client-demo"
model = "mlp"
dataset = "digits"
rounds = 2
min_updates = 1
round_timeout = 30
local_epochs = 1
batch_size = 32
lr = 0.05
seed = 1
max_samples = 2000

[model_kwargs]
in_features = 64
hidden = 16

[admission]
bond = "0.001 ether"
"""


def test_the_typed_client_on_a_training_node(training_home, start_node) -> None:
    node = start_node(training_home)
    with NodeClient.from_home(training_home) as client:
        status = client.status()
        assert status["peer_id"] == node.peer_id and status["pid"] == node.status["pid"]
        service = status.get("jobs")
        assert service is not None and service["jobs"] == {} and "alarms" in service
        assert client.peers() == [] and client.jobs() == []
        assert client.openapi()["openapi"].startswith("3.")

        with pytest.raises(ApiRequestError) as refused:
            client.job("abcd/../../status")  # one (bad) id, not a way to another route
        assert refused.value.status == 404
        with pytest.raises(ApiRequestError, match="rounds") as refused:
            client.publish(toml=JOB_TOML.replace("rounds = 2", "rounds = 0"))
        assert refused.value.status == 400

        job = client.publish(toml=JOB_TOML)
        job_id = job["job_id"]
        assert job["name"] == "client-demo" and job["rounds"] == 2
        deadline = time.monotonic() + 180
        while client.job(job_id[:10])["status"] == "active":
            assert time.monotonic() < deadline, "the job did not finish"
            time.sleep(0.2)

        # the chain's votes (one per round) reach node.db with the chain watcher's next poll
        deadline = time.monotonic() + 15
        while len([c for c in client.job(job_id)["commitments"] if c["kind"] == "model"]) < 2:
            assert time.monotonic() < deadline, "the job's votes never reached its detail"
            time.sleep(0.2)
        detail = client.job(job_id)
        assert detail["status"] == "finished", detail.get("error")
        assert [r["round"] for r in detail["rounds_detail"]] == [0, 1]
        assert all(r["metrics"].get("accuracy") is not None for r in detail["rounds_detail"])
        assert {c["kind"] for c in detail["commitments"]} == {"update", "model"}
        checks = client.verify(job_id)
        assert [c["round"] for c in checks] == [0, 1] and all(c["verified"] for c in checks)

        # what a verifier needs: the chain's decisions, and every blob by its hash
        bundle = client.bundle(job_id)
        decided = bundle["manifest"]["rounds"]
        assert [r["round"] for r in decided] == [0, 1]
        assert all(r["decision"] == "finalized" for r in decided), decided
        assert decided[-1]["model"] == detail["model_hash"]
        hashes = {b["hash"] for b in bundle["blobs"]}
        assert {bundle["manifest"]["model0"], detail["model_hash"]} <= hashes
        assert all(b["held"] for b in bundle["blobs"]), bundle["blobs"]
        for h in hashes:
            assert hashlib.sha256(client.blob(h)).hexdigest() == h
        with pytest.raises(ApiRequestError) as refused:
            client.blob("00" * 32)
        assert refused.value.status == 404

        report = client.report(job_id)
        # the report is for people: rounds from 1 (the detail and /verify count from 0)
        assert report["job_id"] == job_id and [r["round"] for r in report["rounds"]] == [1, 2]
        rows = list(csv.DictReader(io.StringIO(client.report(job_id, "csv"))))
        assert [int(r["round"]) for r in rows] == [1, 2]
        assert [float(r["accuracy"]) for r in rows] == [r["accuracy"] for r in report["rounds"]]

    async def the_same_async() -> None:
        async with AsyncNodeClient.from_home(training_home) as client:
            assert [j["job_id"] for j in await client.jobs()] == [job_id]
            assert (await client.job(job_id))["model_hash"] == detail["model_hash"]
            seen = []
            async for event in client.events(since=0):  # replayed from the node's buffer
                seen.append(event)
                if event["type"] == "job.published" or len(seen) > 1000:
                    break
            assert seen[-1]["data"]["job_id"] == job_id
            assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))

    asyncio.run(asyncio.wait_for(the_same_async(), 60))


def test_calls_refused_before_anything_is_sent() -> None:
    with pytest.raises(NodeClientError, match="1 to 65535"):
        NodeClient(port=0)
    with NodeClient(port=1) as client:
        with pytest.raises(ValueError, match="exactly one"):
            client.publish()
        with pytest.raises(ValueError, match="exactly one"):
            client.publish({"name": "x"}, toml='name = "x"')
        with pytest.raises(ValueError, match="csv"):
            client.report("abcd", "xml")  # type: ignore[call-overload]
        with pytest.raises(NodeNotRunning, match=r"no node answers at 127\.0\.0\.1:1 "):
            client.status()


def test_server_sent_events_become_events() -> None:
    parser = SSEParser()
    lines = [
        ": gfl events; heartbeat every 10s",
        "",
        "id: 3",
        'data: {"seq": 3, "ts": 1.0, "type": "job.joined", "data": {"job_id": "ab"}}',
        "",
        ": heartbeat",
        'data: {"seq": 0, "ts": 2.0,',
        'data:  "type": "gap", "data": {}}',
        "",
    ]
    events = list(parser.parse(lines))
    assert [e["type"] for e in events] == ["job.joined", "gap"]
    assert events[0]["data"] == {"job_id": "ab"} and parser.last_id == 3
    for bad in ("{", "[1, 2]"):
        with pytest.raises(NodeClientError, match="malformed"):
            list(SSEParser().parse([f"data: {bad}", ""]))


def test_finding_a_running_node_from_its_datadir(tmp_path: Path) -> None:
    root = tmp_path / "node"
    with pytest.raises(NodeClientError, match=re.escape(f"no datadir at {root}; run `gfl init")):
        NodeHome(root).locate()
    root.mkdir()
    with pytest.raises(NodeClientError, match=r"no API token at .*; run `gfl init"):
        NodeHome(root).locate()
    (root / "api.token").write_text("secret\n")
    with pytest.raises(NodeNotRunning, match=re.escape(f"no node is running with datadir {root}")):
        NodeHome(root).locate()
    (root / "api.json").write_text(json.dumps({"host": "127.0.0.1", "port": 5555, "pid": 1}))
    with pytest.raises(NodeNotRunning):  # a killed node's api.json: nobody holds the lock
        NodeHome(root).locate()
    with open(root / "node.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running node does
        assert NodeHome(root).locate() == Target("127.0.0.1", 5555, "secret")
        (root / "api.json").write_text("{")
        with pytest.raises(NodeClientError, match="corrupt"):
            NodeHome(root).locate()
    assert not NodeHome(root).is_running()


def test_which_address_and_token_the_console_takes(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.setenv("GFL_HOME", str(tmp_path))
    (tmp_path / "api.token").write_text("mine\n")
    assert NodeHome().root == tmp_path
    assert find_target() == Target("127.0.0.1", 9434, "mine")
    assert find_target(fallback=lambda: ("127.0.0.2", 7000)) == Target("127.0.0.2", 7000, "mine")
    (tmp_path / "api.json").write_text(json.dumps({"host": "127.0.0.1", "port": 5555, "pid": 1}))
    assert find_target().port == 5555

    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert find_target().token == "mine"  # no address named: the datadir's node, its token
    assert find_target(port=1234) == Target("127.0.0.1", 1234, "from-env")
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert find_target("h", token_file=token_file) == Target("h", 9434, "from-file")
    assert find_target(port=1, token="given", token_file=token_file).token == "given"
    with pytest.raises(NodeClientError, match="empty"):
        find_target(port=1, token=" ")
    with pytest.raises(NodeClientError, match="cannot read the token file"):
        find_target(port=1, token_file=tmp_path / "missing")
