"""Job endpoints of the control API: publish, list, inspect, join, leave, cancel, verify,
report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio
from starlette.requests import Request
from starlette.responses import Response

from gfl.fl.spec import JobSpec
from gfl.node.api.app import ApiError, Endpoint, Param, read_json
from gfl.scheduler.queue import MAX_PRIORITY, MIN_PRIORITY, check_priority

if TYPE_CHECKING:
    from gfl.scheduler.service import JobService

JOB_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["job_id", "name", "status", "rounds", "round"],
    "properties": {
        "job_id": {"type": "string"},
        "name": {"type": "string"},
        "owner": {"type": "string"},
        "status": {
            "type": "string",
            "description": "queued, active, finished, cancelled, expired or error",
        },
        "role": {"type": "string", "description": "participant, observer or owner"},
        "error": {"type": ["string", "null"], "description": "why it failed, one sentence"},
        "running": {"type": "boolean", "description": "a runner runs it on this node now"},
        "priority": {"type": "integer", "description": "its priority in the queue"},
        "queue_position": {
            "type": ["integer", "null"],
            "description": "its place in the queue while queued (1 starts next), else null",
        },
        "rounds": {"type": "integer"},
        "round": {"type": "integer"},
        "accuracy": {"type": ["number", "null"]},
        "loss": {"type": ["number", "null"]},
        "epsilon": {"type": ["number", "null"], "description": "DP budget spent here"},
        "model_hash": {"type": ["string", "null"]},
        "participants": {"type": "integer"},
        "divergent_rounds": {"type": "array", "items": {"type": "integer"}},
    },
}
_PRIORITY = {
    "type": "integer",
    "minimum": MIN_PRIORITY,
    "maximum": MAX_PRIORITY,
    "description": "higher starts first; equal priorities start in the order they came",
}
PUBLISH_BODY: dict[str, Any] = {
    "type": "object",
    "description": "One of `toml` (a job file's text) or `spec` (its table).",
    "properties": {
        "toml": {"type": "string", "maxLength": 65536},
        "spec": {"type": "object"},
        "participate": {"type": "boolean", "default": True},
        "priority": {**_PRIORITY, "default": 0},
    },
    "additionalProperties": False,
}
JOIN_BODY: dict[str, Any] = {
    "type": "object",
    "description": "Optional: the job's priority in the queue (a queued job: its new one).",
    "properties": {"priority": _PRIORITY},
    "additionalProperties": False,
}
_JOB_ID = Param(
    "job_id",
    {"type": "string", "pattern": "^(0x)?[0-9a-fA-F]{4,64}$"},
    "job id (hex, a unique prefix is enough)",
    required=True,
)


def _service(request: Request) -> JobService:
    service: JobService | None = getattr(request.app.state.node, "jobs", None)
    if service is None:
        raise ApiError("this node runs no job service", 503)
    return service


def _job_id(request: Request) -> str:
    raw = str(request.path_params.get("job_id", ""))
    hx = raw.lower().removeprefix("0x")
    if not 4 <= len(hx) <= 64 or any(c not in "0123456789abcdef" for c in hx):
        raise ApiError("a job id is 4 to 64 hex digits", 404)
    return hx


async def list_jobs(request: Request) -> list[dict[str, Any]]:
    return _service(request).jobs()


async def publish_job(request: Request) -> dict[str, Any]:
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) - {"toml", "spec", "participate", "priority"}:
        raise ApiError(
            'send {"toml": ...} or {"spec": {...}}, optionally "participate" and "priority"'
        )
    if ("toml" in body) == ("spec" in body):
        raise ApiError('send exactly one of "toml" and "spec"')
    participate = body.get("participate", True)
    if not isinstance(participate, bool):
        raise ApiError('"participate" must be true or false')
    if "toml" in body:
        if not isinstance(body["toml"], str) or len(body["toml"]) > 65536:
            raise ApiError('"toml" must be a job file\'s text (at most 64 KiB)')
        spec = JobSpec.from_toml(body["toml"])
    else:
        spec = JobSpec.from_dict(body["spec"])
    priority = check_priority(body.get("priority", 0))
    return await _service(request).publish_job(spec, participate=participate, priority=priority)


async def get_job(request: Request) -> dict[str, Any]:
    return _service(request).job_detail(_job_id(request))


async def join_job(request: Request) -> dict[str, Any]:
    body = await read_json(request) if await request.body() else {}
    if not isinstance(body, dict) or set(body) - {"priority"}:
        raise ApiError('send nothing, or {"priority": N}')
    priority = check_priority(body["priority"]) if "priority" in body else None
    return await _service(request).join_job(_job_id(request), priority=priority)


async def leave_job(request: Request) -> dict[str, Any]:
    return await _service(request).leave_job(_job_id(request))


async def cancel_job(request: Request) -> dict[str, Any]:
    return await _service(request).cancel_job(_job_id(request))


async def verify_job(request: Request) -> list[dict[str, Any]]:
    return await _service(request).verify_rounds(_job_id(request))


async def job_report(request: Request) -> Response:
    from gfl.scheduler.report import render_report

    fmt = request.query_params.get("format", "json")
    if fmt not in ("json", "csv"):
        raise ApiError("format must be json or csv")
    detail = _service(request).job_detail(_job_id(request))
    body, media = render_report(detail, fmt)
    return Response(body, media_type=media)


async def job_bundle(request: Request) -> dict[str, Any]:
    return await _service(request).bundle(_job_id(request))


async def get_blob(request: Request) -> Response:
    raw = str(request.path_params.get("hash", "")).lower().removeprefix("0x")
    if len(raw) != 64 or any(c not in "0123456789abcdef" for c in raw):
        raise ApiError("a blob hash is 64 hex digits", 404)
    data = await trio.to_thread.run_sync(_service(request).blob, bytes.fromhex(raw))
    if data is None:
        raise ApiError(f"this node holds no blob {raw[:16]}…", 404)
    return Response(data, media_type="application/octet-stream")


def job_endpoints() -> list[Endpoint]:
    """The job routes, added by the job service."""
    job = {"type": "object"}
    return [
        Endpoint(
            "GET",
            "/jobs",
            list_jobs,
            "Jobs this node knows",
            {"type": "array", "items": JOB_SCHEMA},
            tag="jobs",
        ),
        Endpoint(
            "POST",
            "/jobs",
            publish_job,
            "Register a job on chain and announce it",
            JOB_SCHEMA,
            request_body=PUBLISH_BODY,
            tag="jobs",
            errors=(503,),
        ),
        Endpoint(
            "GET",
            "/jobs/{job_id}",
            get_job,
            "One job with its rounds and commitments",
            job,
            params=(),
            tag="jobs",
            errors=(404,),
            path_params=(_JOB_ID,),
        ),
        Endpoint(
            "POST",
            "/jobs/{job_id}/join",
            join_job,
            "Take part in a job: queued until one of max_concurrent slots is free",
            JOB_SCHEMA,
            request_body=JOIN_BODY,
            tag="jobs",
            errors=(404, 409),
            path_params=(_JOB_ID,),
            description="The checks of auto-join first: the dataset, [jobs] allow_owners, "
            "the job's allow-list, whether the model takes this node's data, the job's state "
            "on chain and the bond against the account's balance; a refusal (409) says why. "
            "The body is optional.",
        ),
        Endpoint(
            "POST",
            "/jobs/{job_id}/leave",
            leave_job,
            "Stop taking part in a job: out of the queue, or its runner stopped and its member "
            "slot left on chain",
            JOB_SCHEMA,
            tag="jobs",
            errors=(404, 409),
            path_params=(_JOB_ID,),
            description="Refused (409) while this node's update to the collecting round is "
            "committed: the registry lets a member leave only before it commits.",
        ),
        Endpoint(
            "POST",
            "/jobs/{job_id}/cancel",
            cancel_job,
            "Cancel a job (owner only)",
            JOB_SCHEMA,
            tag="jobs",
            errors=(404,),
            path_params=(_JOB_ID,),
        ),
        Endpoint(
            "GET",
            "/jobs/{job_id}/verify",
            verify_job,
            "Each round's local model hash against the chain's majority",
            {"type": "array", "items": {"type": "object"}},
            tag="jobs",
            errors=(404,),
            path_params=(_JOB_ID,),
        ),
        Endpoint(
            "GET",
            "/jobs/{job_id}/bundle",
            job_bundle,
            "What a verifier needs: the job's rounds as the chain decided them, its spec, "
            "and the hashes of the blobs to fetch (GET /blobs/{hash})",
            {
                "type": "object",
                "required": ["manifest", "spec", "blobs"],
                "properties": {
                    "manifest": {"type": "object"},
                    "spec": {"type": "string"},
                    "blobs": {"type": "array", "items": {"type": "object"}},
                },
            },
            tag="jobs",
            errors=(404,),
            path_params=(_JOB_ID,),
        ),
        Endpoint(
            "GET",
            "/blobs/{hash}",
            get_blob,
            "A blob this node holds, by its sha256",
            {"type": "string", "format": "binary"},
            media_type="application/octet-stream",
            tag="jobs",
            errors=(404,),
            path_params=(
                Param(
                    "hash",
                    {"type": "string", "pattern": "^(0x)?[0-9a-fA-F]{64}$"},
                    "sha256 of the blob (hex)",
                    required=True,
                ),
            ),
        ),
        Endpoint(
            "GET",
            "/jobs/{job_id}/report",
            job_report,
            "Per-round metrics as JSON or CSV",
            {
                "type": "object",
                "description": "with format=csv: the same rows as text/csv, a header first",
                "required": ["job_id", "rounds"],
                "properties": {
                    "job_id": {"type": "string"},
                    "name": {"type": ["string", "null"]},
                    "status": {"type": ["string", "null"]},
                    "rounds": {"type": "array", "items": {"type": "object"}},
                },
            },
            tag="jobs",
            errors=(404,),
            path_params=(_JOB_ID,),
            params=(Param("format", {"type": "string", "enum": ["json", "csv"]}),),
        ),
    ]
