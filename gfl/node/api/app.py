"""The control API's ASGI application: endpoints, bearer-token auth, errors, OpenAPI.

An `Endpoint` is a route plus its documentation; the OpenAPI schema is built
from the same list the router is, so the schema cannot drift from the routes.
A later layer adds its routes by passing its own endpoints to `build_app`
(see `gfl.node.api.core` for the node's own):

    JOB_ENDPOINTS = [Endpoint("GET", "/jobs", list_jobs, "List jobs", {...})]
    app = build_app(node, [*core_endpoints(), *JOB_ENDPOINTS], token=token)

Handlers get the Starlette `Request`; ``request.app.state.node`` is the
`NodeService` (the running node). They return a JSON-able value (sent as 200)
or a Starlette `Response`. Bad input raises `ApiError` (or any `GflError`, whose
optional ``status`` attribute picks the code, default 400) and becomes
``{"error": "..."}``; nothing a client sends yields a 5xx.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

import gfl
from gfl.errors import GflError
from gfl.node.events import EventBus

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Any]]


class NodeService(Protocol):
    """What the API needs from the running node (`gfl.node.node.Node` implements it)."""

    events: EventBus

    async def status(self) -> dict[str, Any]: ...

    async def peers(self) -> list[dict[str, Any]]: ...

    def request_shutdown(self) -> None: ...


class ApiError(GflError):
    """A request the API refuses; ``status`` is the HTTP status (4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Param:
    """A documented query parameter."""

    name: str
    schema: dict[str, Any]
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Endpoint:
    """One route of the control API together with its OpenAPI description."""

    method: str
    path: str
    handler: Handler
    summary: str
    response: dict[str, Any]
    params: tuple[Param, ...] = ()
    path_params: tuple[Param, ...] = ()
    headers: tuple[Param, ...] = ()
    request_body: dict[str, Any] | None = None
    media_type: str = "application/json"
    tag: str = "node"
    description: str = ""
    errors: tuple[int, ...] = field(default=())


# -- schema pieces shared by every endpoint ----------------------------------------------

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}


def error_response(message: str, status: int) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def read_json(request: Request) -> Any:
    """The request body as JSON; a 400 for anything else."""
    body = await request.body()
    if not body:
        raise ApiError("the request needs a JSON body")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError("the request body is not valid JSON") from None


def query_int(request: Request, name: str, *, minimum: int = 0) -> int | None:
    """An integer query parameter, or None when absent; a 400 when malformed."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(f"query parameter {name!r} must be an integer") from None
    if value < minimum:
        raise ApiError(f"query parameter {name!r} must be at least {minimum}")
    return value


# -- auth --------------------------------------------------------------------------------


class BearerAuth:
    """Refuse every HTTP request without the right bearer token (schema included)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        if not token:
            raise ValueError("the API token must not be empty")
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                message = (
                    "wrong API token" if given else "missing API token (Authorization: Bearer ...)"
                )
                await error_response(message, 401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


# -- the app -----------------------------------------------------------------------------


def _wrap(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        result = await endpoint.handler(request)
        if isinstance(result, Response):
            return result
        return JSONResponse(result)

    run.__name__ = endpoint.handler.__name__
    return run


async def _on_api_error(request: Request, exc: Exception) -> Response:
    # Any GflError may name its HTTP status (``status = 404``); the default is 400.
    status = getattr(exc, "status", 400)
    if not isinstance(status, int) or not 400 <= status <= 599:
        status = 400
    return error_response(str(exc), status)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = {404: "no such endpoint", 405: "method not allowed"}.get(exc.status_code, exc.detail)
    return error_response(str(detail), exc.status_code)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("API %s %s failed", request.method, request.url.path)
    return error_response(f"internal error: {exc}", 500)


def build_app(node: NodeService, endpoints: Sequence[Endpoint], *, token: str) -> ASGIApp:
    """The ASGI app serving ``endpoints`` plus GET /openapi.json, all behind the token."""
    seen: set[tuple[str, str]] = set()
    for e in endpoints:
        if (e.method, e.path) in seen:
            raise ValueError(f"two endpoints for {e.method} {e.path}")
        seen.add((e.method, e.path))
        for p in e.path_params:
            if f"{{{p.name}}}" not in e.path:
                raise ValueError(f"{e.method} {e.path} has no path parameter {{{p.name}}}")
    schema = openapi_schema(endpoints)

    async def get_openapi(request: Request) -> Response:
        return JSONResponse(schema)

    routes = [Route(e.path, _wrap(e), methods=[e.method]) for e in endpoints]
    routes.append(Route("/openapi.json", get_openapi, methods=["GET"]))
    app = Starlette(
        routes=routes,
        exception_handlers={
            GflError: _on_api_error,
            HTTPException: _on_http_error,
            Exception: _on_unexpected,
        },
    )
    app.state.node = node
    app.state.openapi = schema
    return BearerAuth(app, token)


def openapi_schema(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``endpoints`` (and for /openapi.json itself)."""
    paths: dict[str, dict[str, Any]] = {}
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for e in endpoints:
        responses: dict[str, Any] = {
            "200": {"description": "OK", "content": {e.media_type: {"schema": e.response}}},
            "401": {"description": "missing or wrong bearer token", "content": error},
        }
        for status in sorted({400, *e.errors}):
            responses[str(status)] = {"description": "refused", "content": error}
        op: dict[str, Any] = {
            "summary": e.summary,
            "operationId": e.handler.__name__.lstrip("_"),
            "tags": [e.tag],
            "responses": responses,
        }
        if e.description:
            op["description"] = e.description
        groups = (("path", e.path_params), ("query", e.params), ("header", e.headers))
        parameters = [
            {
                "name": p.name,
                "in": where,
                "required": p.required or where == "path",
                "schema": p.schema,
                **({"description": p.description} if p.description else {}),
            }
            for where, group in groups
            for p in group
        ]
        if parameters:
            op["parameters"] = parameters
        if e.request_body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": e.request_body}},
            }
        paths.setdefault(e.path, {})[e.method.lower()] = op
    paths["/openapi.json"] = {
        "get": {
            "summary": "This OpenAPI document",
            "operationId": "openapi",
            "tags": ["meta"],
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "401": {"description": "missing or wrong bearer token", "content": error},
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "GFL node control API",
            "version": gfl.__version__,
            "description": "Controls one GFL node. Every request needs "
            "`Authorization: Bearer <DATADIR/api.token>`.",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": ERROR_SCHEMA},
        },
    }
