"""One `gfl up` node (embedded chain) driven as an operator would: `gfl job publish` refuses a
job this node could not run before any transaction, `gfl job join`/`leave` with their checks
and reasons, the queue behind ``max_concurrent``, and a failed job that says why."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from gfl_console.client import ApiRequestError
from support import local_config

from gfl.node.datadir import DataDir

JOB = """\
name = "{name}"
model = "{model}"
dataset = "{dataset}"
rounds = {rounds}
min_updates = {min_updates}
round_timeout = 600
local_epochs = {epochs}
batch_size = 8
max_samples = 5000
{extra}
[admission]
{admission}

[model_kwargs]
in_features = {in_features}
hidden = {hidden}
"""
OTHER = "0x2222222222222222222222222222222222222222"
WAIT_S = 120.0


def job_file(tmp_path: Path, name: str, **kw: Any) -> Path:
    values = {
        "name": name,
        "model": "mlp",
        "dataset": "digits",
        "rounds": 2,
        "min_updates": 1,
        "epochs": 1,
        "extra": "",
        "admission": 'bond = "0.001 ether"',
        "in_features": 64,
        "hidden": 16,
        **kw,
    }
    path = tmp_path / f"{name}.toml"
    path.write_text(JOB.format(**values))
    return path


def digits_home(init_home: Any, name: str, **jobs: Any) -> Path:
    config = dataclasses.replace(local_config(), data={"digits": ""})
    return init_home(name, config=config.replace("jobs", **jobs))


def one_line_error(result: Any) -> str:
    """The refusal of a `gfl` command: exit 1, one line on stderr, no traceback."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def wait_for(what: str, check: Any, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s"
        time.sleep(0.3)
    return value


def listed(run_gfl: Any, home: Path) -> dict[str, str]:
    """`gfl job list` as name -> its STATUS cell (``queued #2`` included)."""
    result = run_gfl("job", "list", "--home", home, timeout=30)
    assert result.returncode == 0, result.stderr
    rows = {}
    for line in result.stdout.splitlines()[1:]:
        name, rest = line[13:31].strip(), line[32:]
        rows[name] = rest[:10].strip()
    return rows


def test_publish_refuses_a_job_this_node_could_not_run_before_any_transaction(
    tmp_path, init_home, start_node, run_gfl
):
    home = digits_home(init_home, "publisher")
    node = start_node(home)
    cases = [
        ({"model": "transformer9000"}, "model 'transformer9000' is not installed on this node"),
        ({"extra": 'trainer = "boom"'}, "trainer 'boom' is not installed on this node"),
        ({"hidden": -3}, "model 'mlp' does not build from model_kwargs"),
        ({"in_features": 10}, "does not fit this node's 'digits' data: mat1 and mat2 shapes"),
        ({"dataset": "mnist"}, "this node has no dataset 'mnist' in [data]"),
        ({"admission": 'bond = "5000 ether"'}, "joining takes a bond of 5000 ETH"),
    ]
    with node.client(timeout=60) as client:
        block = client.status()["chain"]["block"]
        for i, (kw, expected) in enumerate(cases):
            path = job_file(tmp_path, f"bad{i}", **kw)
            line = one_line_error(run_gfl("job", "publish", path, "--home", home, timeout=60))
            assert expected in line, line
            with pytest.raises(ApiRequestError) as refused:
                client.publish(toml=path.read_text())
            assert refused.value.status == 400 and expected in str(refused.value)
        spec = {"name": "x", "model": "mlp", "dataset": "digits", "rounds": 1}
        for bad, expected in (
            ({"strategy": "fedavgm", "strategy_kwargs": {"bogus": 1}}, "bogus"),
            ({}, "max_samples is required"),
        ):
            with pytest.raises(ApiRequestError) as refused:
                client.publish({**spec, **bad})
            assert refused.value.status == 400 and expected in str(refused.value)
        assert client.status()["chain"]["block"] == block  # not one transaction
        assert client.jobs() == []
        # without taking part, the data is not this node's business
        ok = job_file(tmp_path, "elsewhere", dataset="mnist")
        job = client.publish(toml=ok.read_text(), participate=False)
        assert job["status"] == "active" and job["role"] == "owner"


def test_join_leave_and_the_queue_on_one_node(tmp_path, init_home, start_node, run_gfl):
    home = digits_home(init_home, "operator", auto_join=False, max_concurrent=1)
    node = start_node(home)

    def publish(name: str, *extra: str, **kw: Any) -> str:
        path = job_file(tmp_path, name, **kw)
        result = run_gfl("job", "publish", path, "--home", home, *extra, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout.split()[2]

    def gfl(*args: str) -> Any:
        return run_gfl("job", *args, "--home", home, timeout=60)

    # what a join refuses, with the reason
    for name, kw, expected in (
        ("no-data", {"dataset": "mnist"}, "this node has no dataset 'mnist' in [data]"),
        ("costly", {"admission": 'bond = "5000 ether"'}, "joining takes a bond of 5000 ETH"),
        ("closed", {"admission": f'allow = ["{OTHER}"]'}, "is not on the job's allow-list"),
    ):
        jid = publish(name, "--no-participate", **kw)
        line = one_line_error(gfl("join", jid[:12]))
        assert f"cannot join job 0x{jid[:10]}: " in line and expected in line, line

    # a job that holds the only slot: min_updates 2, so round 1 waits with our update in it
    hold = publish("hold", "--no-participate", min_updates=2)
    assert json.loads(gfl("show", hold, "--json").stdout)["role"] == "owner"
    joined = gfl("join", hold)
    assert joined.returncode == 0 and "joined job" in joined.stdout, joined.stderr
    with node.client(timeout=60) as client:
        wait_for(
            "the node committed its update",
            lambda: any(c["kind"] == "update" for c in client.job(hold)["commitments"]),
        )
    line = one_line_error(gfl("leave", hold))
    assert "committed an update to round 1" in line and "once the round closed" in line

    # the queue: priority first, then first come
    first = publish("first", "--no-participate", rounds=50, epochs=30, hidden=64)
    assert "queued #1 (priority 5)" in gfl("join", first, "--priority", "5").stdout
    second = publish("second", "--priority", "9", rounds=50, epochs=30, hidden=64)
    third = publish("third")
    assert listed(run_gfl, home) == {
        "no-data": "active",
        "costly": "active",
        "closed": "active",
        "hold": "active",
        "first": "queued #2",
        "second": "queued #1",
        "third": "queued #3",
    }
    shown = gfl("show", third).stdout
    assert "status    queued #3 (participant)" in shown and "queue     #3, priority 0" in shown
    left = gfl("leave", third)
    assert left.returncode == 0 and "observer" in left.stdout, left.stderr
    assert listed(run_gfl, home)["third"] == "active"  # followed, not trained

    # a slot frees up: the head starts, the rest move up
    assert gfl("cancel", hold).returncode == 0
    wait_for("the queue's head started", lambda: listed(run_gfl, home)["second"] == "active")
    assert listed(run_gfl, home)["first"] == "queued #1"

    # leaving a running job: its runner stops and it leaves the member set on chain
    for _ in range(5):  # the registry refuses while our update to the open round is in
        result = gfl("leave", second)
        if result.returncode == 0:
            break
        assert "committed an update" in one_line_error(result)
        time.sleep(0.5)
    assert result.returncode == 0, result.stderr
    job = json.loads(gfl("show", second, "--json").stdout)
    assert job["role"] == "observer" and not job["running"]
    line = one_line_error(gfl("join", second))
    assert "left the job; the registry admits an account once" in line
    wait_for("the next job started", lambda: listed(run_gfl, home)["first"] == "active")


def test_a_failed_job_says_why_in_one_sentence(tmp_path, init_home, start_node, run_gfl):
    home = digits_home(init_home, "broken")
    models = DataDir(home).models_dir
    shutil.rmtree(models)
    models.write_text("a file where the models folder belongs")  # no checkpoint can be written
    node = start_node(home)
    path = job_file(tmp_path, "doomed")
    result = run_gfl("job", "publish", path, "--home", home, timeout=60)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.split()[2]
    with node.client(timeout=60) as client:
        job = wait_for(
            "the job failed", lambda: (j := client.job(job_id))["status"] == "error" and j
        )
    assert (
        job["error"].startswith("cannot write the checkpoint ")
        and "Not a directory" in job["error"]
    )
    shown = run_gfl("job", "show", job_id[:10], "--home", home, timeout=30).stdout
    assert f"error     {job['error']}" in shown
    output = node.output()
    for never in ("Traceback", "ExceptionGroup", "Trio nursery"):
        assert never not in output and never not in job["error"], output[-3000:]
    assert f"job {job_id[:10]} failed: cannot write the checkpoint" in output
