"""Which verified jobs a node joins: its [data] and [jobs] policy (no network needed)."""

from __future__ import annotations

import dataclasses

from support import local_config

from gfl.fl.spec import JobSpec
from gfl.node.datadir import DataDir
from gfl.node.node import Node
from gfl.scheduler.service import JobService

OWNER = "0x1111111111111111111111111111111111111111"
OTHER = "0x2222222222222222222222222222222222222222"


def _service(tmp_path, **jobs) -> JobService:
    config = dataclasses.replace(local_config(), data={"digits": ""})
    config = config.replace("jobs", **jobs)
    datadir = DataDir(tmp_path / "node")
    identity = datadir.init(config)
    return JobService(Node(datadir, config, identity))


def _spec(dataset: str = "digits") -> JobSpec:
    return JobSpec.builder("p").model("mlp", in_features=64).data(dataset).rounds(1).build()


def test_auto_join_needs_the_dataset(tmp_path):
    svc = _service(tmp_path, auto_join=True)
    assert svc._should_join(_spec(), OWNER)[0]
    joined, why = svc._should_join(_spec("mnist"), OWNER)
    assert not joined and "mnist" in why


def test_without_auto_join_or_allow_list_nothing_is_joined(tmp_path):
    joined, why = _service(tmp_path, auto_join=False)._should_join(_spec(), OWNER)
    assert not joined and "auto_join" in why


def test_the_allow_list_admits_only_its_owners(tmp_path):
    svc = _service(tmp_path, auto_join=False, allow_owners=[OWNER.upper().replace("0X", "0x")])
    assert svc._should_join(_spec(), OWNER)[0]
    joined, why = svc._should_join(_spec(), OTHER)
    assert not joined and "allow_owners" in why


def test_max_concurrent_caps_running_jobs(tmp_path):
    svc = _service(tmp_path, auto_join=True, max_concurrent=1)
    svc.running[b"\x01" * 32] = object()  # one job already running
    joined, why = svc._should_join(_spec(), OWNER)
    assert not joined and "max_concurrent" in why
