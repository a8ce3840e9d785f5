"""Fuzzing the control API from its own OpenAPI schema: no input yields a 5xx.

Schemathesis generates requests (valid and invalid) for every documented
operation of a running `gfl up`; /shutdown (it would stop the node) and
/events (an endless stream) are left out.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

SKIP = {("POST", "/shutdown"), ("GET", "/events")}


@pytest.mark.slow
def test_no_request_makes_the_node_fail(init_home, start_node):
    node = start_node(init_home("fuzz"))
    api = node.status["api"]
    base_url = f"http://{api['host']}:{api['port']}"
    headers = {"Authorization": f"Bearer {(node.home / 'api.token').read_text().strip()}"}
    with node.client() as client:
        raw = client.openapi()
    schema = schemathesis.openapi.from_dict(raw)
    checked = []
    for result in schema.get_all_operations():
        op = result.ok()
        if (op.method.upper(), op.path) in SKIP:
            continue

        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy())
        def check(case) -> None:
            response = case.call(base_url=base_url, headers=headers, timeout=15)
            assert response.status_code < 500, (case.method, case.formatted_path, response.text)
            assert response.status_code != 401

        check()
        checked.append((op.method.upper(), op.path))
    assert ("GET", "/status") in checked and len(checked) >= 3
    assert node.proc.poll() is None
