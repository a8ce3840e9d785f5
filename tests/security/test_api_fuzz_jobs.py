"""Schema-driven fuzzing of the control API with a real job on the node, with and without a token.

Extends tests/api/test_api_fuzz.py (token only, no job): here a one-node job has
run on the node first, and half of the generated requests for the job routes
use its real id (full or as a prefix), so the handlers behind the 404 run too.
Every generated request is sent three times: with the token (never 5xx, never
401), without any token and with a wrong one (always 401, whatever the body,
path or query). /shutdown and the endless /events stream are left out of the
generated part; their 401 is checked by hand.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gfl.node.datadir import DataDir

pytestmark = pytest.mark.slow

SKIP = {("POST", "/shutdown"), ("GET", "/events")}
EXAMPLES = 12


def _config():
    from support import local_config

    config = local_config().replace("jobs", auto_join=True)
    return dataclasses.replace(config, data={"digits": ""})


def test_fuzzed_requests_with_a_job_present_never_5xx_and_always_need_the_token(
    tmp_path: Path, start_node
) -> None:
    from gfl.node.devnet import demo_spec

    home = tmp_path / "node"
    DataDir(home).init(_config())
    node = start_node(home)
    token = (home / "api.token").read_text().strip()
    api = node.status["api"]
    base_url = f"http://{api['host']}:{api['port']}"
    spec = demo_spec(1, data="digits", rounds=1).replace(min_updates=1, round_timeout=10)
    with node.client(timeout=30) as client:
        job_id = client.request("POST", "/jobs", json={"spec": spec.to_dict()})["job_id"]
        deadline = time.monotonic() + 120
        while client.request("GET", f"/jobs/{job_id}")["status"] != "finished":
            assert time.monotonic() < deadline, "the job did not finish"
            time.sleep(0.5)
        raw = client.openapi()

    schema = schemathesis.openapi.from_dict(raw)
    good = {"Authorization": f"Bearer {token}"}
    bad_headers = [{}, {"Authorization": f"Bearer {token[:-1]}"}]
    seen: dict[tuple[str, str], set[int]] = {}
    with httpx.Client(base_url=base_url, timeout=20) as http:
        for result in schema.get_all_operations():
            op = result.ok()
            key = (op.method.upper(), op.path)
            if key in SKIP:
                continue
            seen[key] = set()

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=op.as_strategy(), real=st.sampled_from([None, "full", "prefix"]))
            def check(case, real) -> None:
                if real and case.path_parameters and "job_id" in case.path_parameters:
                    case.path_parameters["job_id"] = job_id if real == "full" else job_id[:10]
                r = case.call(base_url=base_url, headers=good, timeout=20)
                assert r.status_code < 500, (case.method, case.formatted_path, r.text)
                assert r.status_code != 401, (case.method, case.formatted_path)
                seen[(case.method.upper(), case.path)].add(r.status_code)
                for headers in bad_headers:
                    r = case.call(base_url=base_url, headers=headers, timeout=20)
                    assert r.status_code == 401, (case.method, case.formatted_path, headers)

            check()
        for method, path in SKIP:
            for headers in bad_headers:
                assert http.request(method, path, headers=headers).status_code == 401
        # the job's own routes answered for the real job, not only 404
        for path in ("/jobs/{job_id}", "/jobs/{job_id}/verify", "/jobs/{job_id}/report"):
            assert 200 in seen[("GET", path)], (path, seen[("GET", path)])
            r = http.get(path.format(job_id=job_id), headers=good)
            assert r.status_code == 200
        assert ("POST", "/jobs/{job_id}/cancel") in seen and ("POST", "/jobs") in seen
    assert node.proc.poll() is None, "the node died under the fuzzer"
    with node.client(timeout=10) as client:
        assert client.status()["peer_id"] == node.peer_id
