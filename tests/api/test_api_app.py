"""The control API served by a real node in this trio loop: auth, schema, errors, events."""

from __future__ import annotations

import dataclasses
import hashlib

import httpx
import jsonschema_rs
import pytest
import trio
from gfl_console.client import (
    ApiRequestError,
    AsyncNodeClient,
    NodeClient,
    NodeNotRunning,
    Unauthorized,
)
from support import local_config, running_node

from gfl.errors import GflError
from gfl.node.api.app import Endpoint, read_json
from gfl.node.api.server import is_loopback
from gfl.node.devnet import demo_spec
from gfl.node.node import Node

TIMEOUT = 30


def base_url(node: Node) -> str:
    host, port = node.api_address
    return f"http://{host}:{port}"


def auth(node: Node) -> dict[str, str]:
    return {"Authorization": f"Bearer {node.datadir.read_token()}"}


def operations(schema: dict) -> list[tuple[str, str]]:
    return [(m.upper(), p) for p, ops in schema["paths"].items() for m in ops]


@pytest.mark.trio
async def test_every_endpoint_needs_the_token(init_home):
    async with (
        running_node(init_home(), full=True) as node,
        httpx.AsyncClient(base_url=base_url(node), timeout=10) as http,
    ):
        schema = (await http.get("/openapi.json", headers=auth(node))).json()
        ops = operations(schema)
        core = {("GET", "/status"), ("GET", "/peers"), ("POST", "/shutdown"), ("GET", "/events")}
        assert core | {("GET", "/openapi.json"), ("GET", "/jobs")} <= set(ops)
        token = node.datadir.read_token()
        for method, path in ops:
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": token},
                {"Authorization": f"Bearer {token}x"},
            ):
                r = await http.request(method, path, headers=headers)
                assert r.status_code == 401, (method, path, headers)
                assert r.headers["www-authenticate"] == "Bearer"
                assert "token" in r.json()["error"]
        # with the token: the simple routes answer 200, none of them 401 or 5xx
        # (shutdown last: it stops the node)
        for method, path in sorted(ops, key=lambda op: op[1] == "/shutdown"):
            async with http.stream(method, path, headers=auth(node)) as r:
                if (method == "GET" and "{" not in path) or (method, path) in core:
                    assert r.status_code == 200, (method, path)
                else:
                    assert 400 <= r.status_code < 500 and r.status_code != 401, (method, path)
        with trio.fail_after(TIMEOUT):
            await node.finished.wait()


def _validate(schema: dict, method: str, path: str, response: httpx.Response) -> None:
    """The response is a 200 of the media type the schema names, and matches its schema."""
    assert response.status_code == 200, (method, path, response.text[:300])
    [(media, body)] = schema["paths"][path][method.lower()]["responses"]["200"]["content"].items()
    assert response.headers["content-type"].split(";")[0] == media, (method, path)
    if media == "application/json":
        jsonschema_rs.validator_for(body["schema"]).validate(response.json())


@pytest.mark.trio
async def test_every_route_answers_as_its_openapi_schema_says(init_home):
    """A node as `gfl up` assembles it (job service, embedded chain), with a job: each
    documented operation is called, and its answer validated against the schema."""
    config = dataclasses.replace(local_config(), data={"digits": ""})  # it may join the job
    async with (
        running_node(init_home(config=config), full=True) as node,
        httpx.AsyncClient(base_url=base_url(node), headers=auth(node), timeout=30) as http,
    ):
        schema = (await http.get("/openapi.json")).json()
        ops = set(operations(schema))
        checked = set()

        async def call(method: str, path: str, **kw: object) -> httpx.Response:
            url = path.replace("{job_id}", job_id).replace("{hash}", blob_hash)
            if path == "/events":  # an endless stream: its head is enough
                async with http.stream(method, url, params={"since": 0}) as r:
                    _validate(schema, method, path, r)
                    assert (await anext(r.aiter_lines())).startswith(("id:", ":"))
            else:
                r = await http.request(method, url, **kw)
                _validate(schema, method, path, r)
            checked.add((method, path))
            return r

        spec = demo_spec(1, data="digits", rounds=20)  # still running when it is cancelled
        job_id = blob_hash = ""
        published = await call("POST", "/jobs", json={"spec": spec.to_dict(), "participate": False})
        job_id = published.json()["job_id"]
        # the owner holds M_0 at once: the bundle names it, /blobs serves it by its hash
        bundle = (await call("GET", "/jobs/{job_id}/bundle")).json()
        assert bundle["manifest"]["job_id"].removeprefix("0x") == job_id.removeprefix("0x")
        assert bytes.fromhex(bundle["spec"]) == spec.to_bytes()
        blob_hash = bundle["manifest"]["model0"]
        assert {"hash": blob_hash, "held": True} in bundle["blobs"], bundle["blobs"]
        blob = await call("GET", "/blobs/{hash}")
        assert hashlib.sha256(blob.content).hexdigest() == blob_hash
        missing = await http.get(f"/blobs/{'ab' * 32}")
        assert missing.status_code == 404 and "no blob" in missing.json()["error"]
        status = (await call("GET", "/status")).json()
        assert status["chain"] is not None and status["chain"]["chain_id"] > 0
        assert status["peer_id"] == node.identity.peer_id
        assert status["address"] == node.identity.eth_address
        last = [("POST", "/jobs/{job_id}/cancel"), ("POST", "/shutdown")]  # they change state
        for method, path in sorted(ops - checked - set(last)):
            await call(method, path)
        report = await http.get(f"/jobs/{job_id}/report", params={"format": "csv"})
        assert report.status_code == 200 and report.text.startswith("round,")
        assert [j["job_id"] for j in (await call("GET", "/jobs")).json()] == [job_id]
        for method, path in last:
            await call(method, path)
        assert checked == ops, ops - checked
        with pytest.raises(jsonschema_rs.ValidationError):  # the check can fail
            body = schema["paths"]["/status"]["get"]["responses"]["200"]["content"]
            jsonschema_rs.validator_for(body["application/json"]["schema"]).validate(
                {**status, "peers": "none"}
            )
        with trio.fail_after(TIMEOUT):
            await node.finished.wait()


@pytest.mark.trio
async def test_bad_input_is_4xx_with_an_error(init_home):
    async with (
        running_node(init_home()) as node,
        httpx.AsyncClient(base_url=base_url(node), headers=auth(node), timeout=10) as http,
    ):
        cases = [
            ("GET", "/events?since=abc", {}, 400, "since"),
            ("GET", "/events?since=-1", {}, 400, "since"),
            ("GET", "/events", {"Last-Event-ID": "x"}, 400, "Last-Event-ID"),
            ("GET", "/nope", {}, 404, "no such endpoint"),
            ("POST", "/status", {}, 405, "not allowed"),
            ("GET", "/shutdown", {}, 405, "not allowed"),
        ]
        for method, path, headers, status, words in cases:
            r = await http.request(method, path, headers=headers)
            assert r.status_code == status, (method, path)
            assert words in r.json()["error"]
        assert not node.finished.is_set()


@pytest.mark.trio
async def test_event_stream_replays_and_sends_heartbeats(init_home):
    async with running_node(init_home()) as node:
        node.events.publish("test.odd", {"raw": b"\x01\x02", "tags": {"x"}})
        for i in range(3):
            node.events.publish("test.tick", {"i": i})
        token = node.datadir.read_token()
        async with AsyncNodeClient(*node.api_address, token) as client:
            seen = []
            with trio.fail_after(10):
                async for event in client.events(since=0):
                    seen.append(event)
                    if event["type"] == "test.tick" and event["data"]["i"] == 2:
                        break
            assert "node.started" in [e["type"] for e in seen]
            (odd,) = [e for e in seen if e["type"] == "test.odd"]
            assert odd["data"] == {"raw": "0102", "tags": ["x"]}
            assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))
            assert set(seen[0]) == {"seq", "ts", "type", "data"}
            last = seen[-1]["seq"]

        # Last-Event-ID resumes after the given event; silence is filled with heartbeats
        async with httpx.AsyncClient(base_url=base_url(node), timeout=10) as http:
            headers = {**auth(node), "Last-Event-ID": str(last - 1)}
            async with http.stream("GET", "/events", headers=headers) as r:
                assert r.headers["content-type"].startswith("text/event-stream")
                lines = []
                with trio.fail_after(10):
                    async for line in r.aiter_lines():
                        lines.append(line)
                        if line == ": heartbeat":
                            break
        assert f"id: {last}" in lines
        assert f"id: {last - 1}" not in lines


@pytest.mark.trio
async def test_event_stream_ends_when_the_node_stops(init_home):
    async with running_node(init_home()) as node:
        token = node.datadir.read_token()
        async with AsyncNodeClient(*node.api_address, token) as client:
            types = []
            since = node.events.last_seq
            node.events.publish("test.go", {})
            with trio.fail_after(15):
                async for event in client.events(since=since):
                    types.append(event["type"])
                    if event["type"] == "test.go":
                        await client.shutdown()
            assert types == ["test.go", "node.stopping"]


@pytest.mark.trio
async def test_sync_client_and_its_errors(init_home, free_port):
    async with running_node(init_home()) as node:
        host, port = node.api_address
        token = node.datadir.read_token()

        def use_clients() -> None:
            with NodeClient.from_home(node.datadir.root) as client:
                assert client.status()["peer_id"] == node.identity.peer_id
                assert client.peers() == []
                with pytest.raises(ApiRequestError) as err:
                    client.request("GET", "/nope")
                assert err.value.status == 404
                events = client.events(since=0)
                assert next(events)["seq"] == 1
                events.close()
            with NodeClient(host, port, "wrong") as client, pytest.raises(Unauthorized):
                client.status()
            with NodeClient(host, free_port(), token) as client, pytest.raises(NodeNotRunning):
                client.status()

        await trio.to_thread.run_sync(use_clients)


class Missing(GflError):
    status = 404


async def echo(request):
    body = await read_json(request)
    if body.get("missing"):
        raise Missing("no such thing")
    return {"echo": body}


@pytest.mark.trio
async def test_added_endpoints_are_served_documented_and_protected(init_home):
    extra = [
        Endpoint(
            "POST",
            "/echo",
            echo,
            "Echo a JSON body",
            {"type": "object"},
            request_body={"type": "object"},
            errors=(404,),
            tag="test",
        )
    ]
    async with (
        running_node(init_home(), extra) as node,
        httpx.AsyncClient(base_url=base_url(node), timeout=10) as http,
    ):
        schema = (await http.get("/openapi.json", headers=auth(node))).json()
        op = schema["paths"]["/echo"]["post"]
        assert op["summary"] == "Echo a JSON body" and "404" in op["responses"]
        assert (await http.post("/echo", json={"a": 1})).status_code == 401
        r = await http.post("/echo", json={"a": 1}, headers=auth(node))
        assert (r.status_code, r.json()) == (200, {"echo": {"a": 1}})
        for body, status, words in [
            (b"{nope", 400, "not valid JSON"),
            (b"", 400, "JSON body"),
            (b'{"missing": true}', 404, "no such thing"),
        ]:
            r = await http.post("/echo", content=body, headers=auth(node))
            assert r.status_code == status and words in r.json()["error"], body


def test_loopback_hosts():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
